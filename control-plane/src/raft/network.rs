//! Raft RPC over tonic and mutual TLS: [`Network`] sends a replica's
//! requests to a peer (the client side), [`RaftRpc`] answers them (the
//! server side, on `--raft-addr`) only for a current member presenting its
//! own replica certificate. Requests and results travel as openraft's own
//! types in JSON inside one bytes field, so the wire follows openraft
//! exactly.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use trellis_api::raft_client::RaftClient;
use trellis_api::tls::channel::{Connector, Peer};
use trellis_api::RaftPayload;

use super::{NodeId, TypeConfig};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A lazily connected TLS channel to the replica at `addr` (`host:port`).
pub fn channel(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector_lazy(Connector::new(tls)))
}

/// Makes a [`Network`] per peer.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    /// Presents this replica's certificate, verifies the peer's.
    pub tls: Arc<rustls::ClientConfig>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network {
            target,
            client: channel(&node.addr, self.tls.clone())
                .map(RaftClient::new)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct Network {
    target: NodeId,
    /// Err when the peer's address does not parse.
    client: Result<RaftClient<Channel>, String>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl Network {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Message(e.clone())))),
        };
        let json =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            Kind::Append => client.append_entries(request).await,
            Kind::Vote => client.vote(request).await,
            Kind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| {
            if status.code() == tonic::Code::Unavailable {
                RPCError::Unreachable(Unreachable::new(&status))
            } else {
                RPCError::Network(NetworkError::new(&status))
            }
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().json)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Kind::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A peer that is down is retried often enough to notice its return
        // within a heartbeat or two.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// The server side: answers peers' Raft RPCs with the local Raft.
#[derive(Clone)]
pub struct RaftRpc {
    pub raft: super::Raft,
}

impl RaftRpc {
    /// Decodes a peer's request, if the caller may send it: a replica
    /// certificate whose node is the request's sender (the candidate or
    /// leader it names) and a member of the group as this replica knows it
    /// (any replica while this one has no membership yet: it is joining).
    fn decode<T: DeserializeOwned>(
        &self,
        request: tonic::Request<RaftPayload>,
        sender: impl Fn(&T) -> Option<NodeId>,
    ) -> Result<T, tonic::Status> {
        let caller = request
            .extensions()
            .get::<Peer>()
            .and_then(Peer::replica)
            .ok_or_else(|| {
                tonic::Status::permission_denied(
                    "raft: only control-plane replicas (their certificate) may call",
                )
            })?;
        let rpc: T = serde_json::from_slice(&request.into_inner().json)
            .map_err(|e| tonic::Status::invalid_argument(format!("not a raft request: {e}")))?;
        if sender(&rpc) != Some(caller) {
            return Err(tonic::Status::permission_denied(format!(
                "raft: replica {caller} sent a request in the name of {:?}",
                sender(&rpc)
            )));
        }
        let metrics = self.raft.metrics();
        let membership = metrics.borrow().membership_config.clone();
        let known = membership.membership().nodes().count() > 0;
        if known && membership.membership().get_node(&caller).is_none() {
            return Err(tonic::Status::permission_denied(format!(
                "raft: replica {caller} is not a member"
            )));
        }
        Ok(rpc)
    }
}

/// The node a vote names: the candidate, or the leader sending entries.
fn voter<NID: openraft::NodeId>(vote: &openraft::Vote<NID>) -> Option<NID> {
    vote.leader_id().voted_for()
}

fn encode<T: Serialize>(result: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    serde_json::to_vec(result)
        .map(|json| tonic::Response::new(RaftPayload { json }))
        .map_err(|e| tonic::Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl trellis_api::raft_server::Raft for RaftRpc {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc = self.decode(request, |r: &AppendEntriesRequest<TypeConfig>| {
            voter(&r.vote)
        })?;
        let result = self.raft.append_entries(rpc).await;
        encode(&result)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc = self.decode(request, |r: &VoteRequest<NodeId>| voter(&r.vote))?;
        let result = self.raft.vote(rpc).await;
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let rpc = self.decode(request, |r: &InstallSnapshotRequest<TypeConfig>| {
            voter(&r.vote)
        })?;
        let result = self.raft.install_snapshot(rpc).await;
        encode(&result)
    }
}
