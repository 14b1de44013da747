//! One replica: its Raft, state machine, metrics and proxy registry, and
//! the operations every front end (gRPC, file source) goes through: writes
//! validated and proposed on the leader, reads made linearizable there, and
//! the way to reach the leader from a follower.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tonic::transport::Channel;
use tonic::Status;

use crate::metrics::Metrics;
use crate::operator::{self, Bearer, OperatorClient};
use crate::push::Registry;
use crate::raft::{network, NodeId, Raft, StateMachineStore};
use crate::state::resources::errors_of;
use crate::state::MeshCommand;

/// How long a request waits for a leader to be known.
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// The gRPC metadata key marking a request one replica forwarded to another.
pub const FORWARDED: &str = "x-trellis-forwarded";

/// Shared by every part of a running replica.
pub struct Replica {
    pub id: NodeId,
    /// Where peers and `trellisctl` reach this replica's `--raft-addr`.
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// TLS to other replicas (this replica's certificate).
    peers_tls: Arc<rustls::ClientConfig>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why a write was not applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The write would make the mesh configuration invalid.
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// No leader, or leadership moved while writing; the write may be retried.
    #[error("{0}")]
    Unavailable(String),
}

impl From<WriteError> for Status {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(_) => Status::invalid_argument(e.to_string()),
            WriteError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

/// Where a request goes: handled here (this replica leads) or at the leader.
pub enum Route {
    Local,
    Leader(Box<OperatorClient>),
}

impl Replica {
    pub fn new(
        id: NodeId,
        addr: String,
        raft: Raft,
        sm: StateMachineStore,
        metrics: Arc<Metrics>,
        peers_tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            id,
            addr,
            raft,
            sm,
            metrics,
            registry: Arc::new(Registry::new(id)),
            peers_tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The leader and its address, as this replica knows them.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The leader, waiting up to [`LEADER_WAIT`] for one to be elected
    /// (woken by openraft's metrics as they change, not by polling).
    pub async fn wait_leader(&self) -> Option<(NodeId, String)> {
        let mut changes = self.raft.metrics();
        let elected = async {
            loop {
                if let Some(leader) = self.leader() {
                    return Some(leader);
                }
                changes.changed().await.ok()?;
            }
        };
        tokio::time::timeout(LEADER_WAIT, elected)
            .await
            .ok()
            .flatten()
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// A client of the replica at `addr` (channels are kept and reused).
    pub fn client(&self, addr: &str) -> Result<OperatorClient, Status> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = network::channel(addr, self.peers_tls.clone())
                    .map_err(|e| Status::internal(format!("bad peer address {addr}: {e}")))?;
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        // Replicas authenticate to each other by certificate.
        Ok(operator::client(channel, Bearer::none()))
    }

    /// Where a leader-only request goes. A request already forwarded once is
    /// not forwarded again (the caller retries instead).
    pub async fn route(&self, forwarded: bool) -> Result<Route, Status> {
        match self.wait_leader().await {
            None => Err(Status::unavailable("no leader elected")),
            Some((id, _)) if id == self.id => Ok(Route::Local),
            Some((id, _)) if forwarded => Err(Status::unavailable(format!(
                "not the leader (node {id} is); retry"
            ))),
            Some((_, addr)) => Ok(Route::Leader(Box::new(self.client(&addr)?))),
        }
    }

    /// Validates and proposes `command` on this replica, which must lead;
    /// returns the log index once committed and applied, and whether the
    /// state changed.
    pub async fn propose(&self, command: MeshCommand) -> Result<(u64, bool), WriteError> {
        self.check(&command)?;
        let started = Instant::now();
        match self.raft.client_write(command).await {
            Ok(r) => {
                self.metrics
                    .raft_commit_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok((r.log_id.index, r.data.changed))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(WriteError::Unavailable(format!(
                    "leadership moved (to {:?}) during the write; retry",
                    f.leader_id
                )))
            }
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Rejects a command that adds errors to the mesh configuration.
    fn check(&self, command: &MeshCommand) -> Result<(), WriteError> {
        let before = self.sm.read(|a| a.state.clone());
        let mut after = before.clone();
        after.apply(command.clone(), u64::MAX);
        let known: BTreeSet<String> = errors_of(&before).into_iter().collect();
        let new: Vec<String> = errors_of(&after)
            .into_iter()
            .filter(|e| !known.contains(e))
            .collect();
        if new.is_empty() {
            Ok(())
        } else {
            Err(WriteError::Invalid(new))
        }
    }

    /// Waits until this replica, as leader, has applied everything
    /// committed before now.
    pub async fn linearize(&self) -> Result<(), Status> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}
