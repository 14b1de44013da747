//! Starting and stopping a replica: storage, Raft, the gRPC ports (Raft +
//! `MeshControl` on `--raft-addr`, the proxy stream on `--xds-addr`), the
//! admin port, the renderer and the file source.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Server;
use trellis_api::identity_server::IdentityServer;
use trellis_api::mesh_control_server::MeshControlServer;
use trellis_api::mesh_discovery_server::MeshDiscoveryServer;
use trellis_api::raft_server::RaftServer;

use crate::ca::service::{IdentityConfig, IdentityService};
use crate::control::Control;
use crate::grpc::Dispatch;
use crate::metrics::Metrics;
use crate::push::Push;
use crate::raft::network::{NetworkFactory, RaftRpc};
use crate::raft::{NodeId, Raft};
use crate::render::{self, Rendered};
use crate::replica::Replica;
use crate::sources::file::FileSource;
use crate::sources::kube::KubeSource;
use crate::tls::ReplicaTls;
use trellis_api::tls::channel::{self, TlsConn};

/// Everything a replica needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub raft_addr: SocketAddr,
    /// How peers reach `raft_addr` (default: its address, loopback for an
    /// unspecified one, or this node's entry in `peers`).
    pub advertise: Option<String>,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub watch_dir: Option<PathBuf>,
    pub watch_interval: Duration,
    /// The initial group (`id=host:port`), for StatefulSet-style start; the
    /// lowest id forms it when nothing is stored yet.
    pub peers: Vec<(NodeId, String)>,
    pub heartbeat: Duration,
    /// Lower bound of the election timeout; the upper bound is twice it.
    pub election_timeout: Duration,
    /// Build a snapshot after this many entries.
    pub snapshot_after: u64,
    /// Entries kept in the log behind a snapshot (a peer further behind
    /// catches up through the snapshot).
    pub keep_logs: u64,
    /// The mesh's root CA (from `--ca-cert`, `--ca-key`) with its trust
    /// domain: signs workload certificates and this replica's own.
    pub ca: crate::ca::CaRecord,
    /// Who may use the operator API (`--operator-tokens`).
    pub operator_tokens: Arc<crate::operator::OperatorTokens>,
    /// Who may obtain workload certificates, and for how long.
    pub identity: IdentityConfig,
    /// `--kubernetes`: the apiserver the leader mirrors into Raft.
    pub kubernetes: Option<Kubernetes>,
    /// Mesh-wide settings pushed to every proxy.
    pub mesh: render::MeshSettings,
}

/// The Kubernetes source's settings.
#[derive(Clone)]
pub struct Kubernetes {
    pub client: kube::Client,
    /// How often the leader refreshes `status.applied`.
    pub status_interval: Duration,
    /// The injection webhook, when served.
    pub webhook: Option<WebhookConfig>,
    /// The installation's ClusterRole: owner of the objects the control
    /// plane creates and of its own data claim, so uninstalling removes them.
    pub owner_cluster_role: Option<String>,
    /// This replica's PersistentVolumeClaim (`namespace`, `name`), made
    /// owned by that ClusterRole at start.
    pub data_claim: Option<(String, String)>,
}

/// The injection webhook's settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// The DNS names the apiserver reaches it by (its certificate's).
    pub dns_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle the leader keeps.
    pub config_name: String,
    pub webhook: crate::inject::webhook::Webhook,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("status_interval", &self.status_interval)
            .finish_non_exhaustive()
    }
}

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{source} (--data-dir {dir})")]
    Storage {
        dir: String,
        source: Box<crate::raft::StoreError>,
    },
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        addr: SocketAddr,
        name: &'static str,
        source: std::io::Error,
    },
}

/// A running replica.
#[derive(Debug)]
pub struct Running {
    pub raft_addr: SocketAddr,
    pub xds_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub replica: Arc<Replica>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

async fn bind(addr: SocketAddr, name: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, name, source })
}

/// Opens the storage, starts Raft and every listener.
pub async fn start(config: ServerConfig) -> Result<Running, StartError> {
    let tls = ReplicaTls::issue(&config.ca, config.node_id).map_err(StartError::Tls)?;
    let (log, sm) = crate::raft::open(&config.data_dir).map_err(|source| StartError::Storage {
        dir: config.data_dir.display().to_string(),
        source: Box::new(source),
    })?;
    let raft_config = openraft::Config {
        cluster_name: "trellis".into(),
        heartbeat_interval: millis(config.heartbeat),
        election_timeout_min: millis(config.election_timeout),
        election_timeout_max: millis(config.election_timeout) * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_after),
        max_in_snapshot_log_to_keep: config.keep_logs,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Config(e.to_string()))?;
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        NetworkFactory {
            tls: tls.peers.clone(),
        },
        log,
        sm.clone(),
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;

    let raft_listener = bind(config.raft_addr, "raft").await?;
    let xds_listener = bind(config.xds_addr, "xds").await?;
    let admin_listener = bind(config.admin_addr, "admin").await?;
    let local = |l: &TcpListener| l.local_addr().map_err(|e| StartError::Raft(e.to_string()));
    let raft_addr = local(&raft_listener)?;
    let xds_addr = local(&xds_listener)?;
    let admin_addr = local(&admin_listener)?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        match config.peers.iter().find(|(id, _)| *id == config.node_id) {
            Some((_, addr)) => addr.clone(),
            None if raft_addr.ip().is_unspecified() => format!("127.0.0.1:{}", raft_addr.port()),
            None => raft_addr.to_string(),
        }
    });

    let metrics = Arc::new(Metrics::new());
    let replica = Arc::new(Replica::new(
        config.node_id,
        advertise,
        raft.clone(),
        sm.clone(),
        metrics.clone(),
        tls.peers.clone(),
    ));
    let (shutdown, rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let (rendered_tx, rendered) = watch::channel(Arc::new(Rendered::default()));
    tasks.spawn(render::run(sm, config.mesh, rendered_tx, rx.clone()));
    tasks.spawn(log_leadership(raft.clone(), rx.clone()));

    let dispatch = Dispatch {
        a: RaftServer::new(RaftRpc { raft: raft.clone() })
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
        b: MeshControlServer::new(Control {
            replica: replica.clone(),
            tokens: config.operator_tokens.clone(),
        }),
    };
    let grpc = |name, listener| channel::incoming(listener, tls.grpc.clone(), name);
    tasks.spawn(grpc_serve(
        "raft",
        grpc("raft", raft_listener),
        dispatch,
        rx.clone(),
    ));
    let push = MeshDiscoveryServer::new(Push {
        replica: config.node_id,
        rendered,
        registry: replica.registry.clone(),
        metrics,
        shutdown: rx.clone(),
        sessions: Arc::new(AtomicU64::new(1)),
    });
    let identity = IdentityServer::new(IdentityService {
        replica: replica.clone(),
        config: config.identity.clone(),
    });
    let xds = Dispatch {
        a: identity,
        b: push,
    };
    tasks.spawn(grpc_serve(
        "xds",
        grpc("xds", xds_listener),
        xds,
        rx.clone(),
    ));
    tasks.spawn(crate::admin::serve(
        admin_listener,
        tls.admin.clone(),
        replica.clone(),
        rx.clone(),
    ));
    tasks.spawn(crate::ca::run(
        replica.clone(),
        config.ca.clone(),
        rx.clone(),
    ));
    if let Some(dir) = &config.watch_dir {
        let source = FileSource {
            dir: dir.clone(),
            interval: config.watch_interval,
            replica: replica.clone(),
        };
        tasks.spawn(source.run(rx.clone()));
    }
    if let Some(k) = &config.kubernetes {
        let source = KubeSource {
            client: k.client.clone(),
            replica: replica.clone(),
            status_interval: k.status_interval,
            webhook_config: k.webhook.as_ref().map(|w| w.config_name.clone()),
            owner_cluster_role: k.owner_cluster_role.clone(),
        };
        if let (Some(role), Some((ns, claim))) = (&k.owner_cluster_role, &k.data_claim) {
            tasks.spawn(own_data_claim(
                k.client.clone(),
                role.clone(),
                ns.clone(),
                claim.clone(),
            ));
        }
        tasks.spawn(source.run(rx.clone()));
        if let Some(w) = &k.webhook {
            let listener = bind(w.addr, "webhook").await?;
            let tls =
                crate::inject::webhook::tls(&config.ca, &w.dns_names).map_err(StartError::Tls)?;
            tasks.spawn(crate::inject::webhook::serve(
                listener,
                tls,
                Arc::new(w.webhook.clone()),
                rx.clone(),
            ));
        }
    }
    if let Some(lowest) = config.peers.iter().map(|(id, _)| *id).min() {
        if lowest == config.node_id && !raft.is_initialized().await.unwrap_or(true) {
            let members: BTreeMap<NodeId, BasicNode> = config
                .peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(peers = ?config.peers, "formed the group from --peers"),
                Err(e) => tracing::warn!(error = %e, "not forming the group from --peers"),
            }
        }
    }
    tracing::info!(node = config.node_id, %raft_addr, %xds_addr, %admin_addr, "control plane replica started");
    Ok(Running {
        raft_addr,
        xds_addr,
        admin_addr,
        replica,
        shutdown,
        tasks,
    })
}

/// Makes this replica's data claim owned by the installation's ClusterRole.
async fn own_data_claim(client: kube::Client, role: String, ns: String, claim: String) {
    use crate::sources::kube::root_cert::{cluster_role_owner, own_claim};
    match cluster_role_owner(&client, &role).await {
        Ok(Some(owner)) => {
            if let Err(e) = own_claim(&client, &ns, &claim, &owner).await {
                tracing::warn!(claim, error = %e, "cannot mark the data claim as the installation's");
            }
        }
        Ok(None) => tracing::warn!(role, "no such ClusterRole to own the data claim"),
        Err(e) => tracing::warn!(role, error = %e, "cannot read the owner ClusterRole"),
    }
}

/// Logs each change of leader as this replica sees it.
async fn log_leadership(raft: Raft, mut shutdown: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    let mut known = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if leader != known {
            match leader {
                Some(id) => tracing::info!(leader = id, term, "leader known"),
                None => tracing::info!(term, "no leader known"),
            }
            known = leader;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

async fn grpc_serve<S, I>(
    name: &'static str,
    incoming: I,
    service: S,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    I: futures_util::Stream<Item = Result<TlsConn, std::io::Error>>,
{
    let signal = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = Server::builder()
        .serve_with_incoming_shutdown(service, incoming, signal)
        .await
    {
        tracing::error!(listener = name, error = %e, "grpc server failed");
    }
}

impl Running {
    /// Stops the listeners and tasks, then Raft.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = self.replica.raft.shutdown().await;
        while self.tasks.join_next().await.is_some() {}
    }
}
