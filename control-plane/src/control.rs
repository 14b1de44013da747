//! `MeshControl`, the operator API on `--raft-addr` that `trellisctl`
//! talks to. Any replica answers: writes, reads and membership changes are
//! forwarded to the leader; status is local; proxy status gathers every
//! member's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tonic::{Request, Response, Status};
use trellis_api as api;

use crate::operator::{Access, OperatorTokens};
use crate::replica::{Replica, Route, FORWARDED};
use crate::state::{MeshCommand, ResourceKey};

/// The service of one replica.
#[derive(Clone, Debug)]
pub struct Control {
    pub replica: Arc<Replica>,
    /// Who may call (`--operator-tokens`; replicas always may).
    pub tokens: Arc<OperatorTokens>,
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// `message` as a request marked forwarded. A leader that does not answer
/// within [`FORWARD_TIMEOUT`] (frozen, cut off) fails the request as
/// unavailable, so the caller retries, by then likely with a new leader.
fn forward<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request.set_timeout(FORWARD_TIMEOUT);
    request
}

/// How long a forwarded request may wait for the leader (a commit takes
/// milliseconds; adding a learner waits for it to catch up, which a
/// snapshot keeps short).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

fn key_of(r: Option<api::ResourceRef>) -> Result<ResourceKey, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("change without a resource"))?;
    if r.kind.is_empty() || r.name.is_empty() {
        return Err(Status::invalid_argument(
            "a resource needs a kind and a name",
        ));
    }
    Ok(ResourceKey {
        kind: r.kind,
        namespace: if r.namespace.is_empty() {
            trellis_crds::resource::DEFAULT_NAMESPACE.to_string()
        } else {
            r.namespace
        },
        name: r.name,
    })
}

/// The log entry a write request makes.
pub fn command_of(request: api::WriteRequest) -> Result<MeshCommand, Status> {
    let source = if request.source.is_empty() {
        "cli".to_string()
    } else {
        request.source
    };
    let mut commands = Vec::with_capacity(request.changes.len());
    for change in request.changes {
        let key = key_of(change.resource)?;
        if change.document_json.is_empty() {
            commands.push(MeshCommand::Delete { key });
        } else {
            let document = serde_json::from_str(&change.document_json).map_err(|e| {
                Status::invalid_argument(format!("{key}: document is not JSON: {e}"))
            })?;
            commands.push(MeshCommand::Apply {
                key,
                document,
                source: source.clone(),
            });
        }
    }
    Ok(match commands.len() {
        1 => commands.remove(0),
        _ => MeshCommand::Batch(commands),
    })
}

fn member(id: u64, node: &BasicNode) -> api::Member {
    api::Member {
        id,
        addr: node.addr.clone(),
    }
}

#[tonic::async_trait]
impl api::mesh_control_server::MeshControl for Control {
    async fn write(
        &self,
        request: Request<api::WriteRequest>,
    ) -> Result<Response<api::WriteReply>, Status> {
        self.tokens.authorize(&request, Access::Write)?;
        let r = &self.replica;
        match r.route(is_forwarded(&request)).await? {
            Route::Leader(mut leader) => leader.write(forward(request.into_inner())).await,
            Route::Local => {
                let command = command_of(request.into_inner())?;
                let (index, changed) = r.propose(command).await?;
                Ok(Response::new(api::WriteReply { index, changed }))
            }
        }
    }

    async fn get(
        &self,
        request: Request<api::GetRequest>,
    ) -> Result<Response<api::GetReply>, Status> {
        self.tokens.authorize(&request, Access::Read)?;
        let r = &self.replica;
        if let Route::Leader(mut leader) = r.route(is_forwarded(&request)).await? {
            return leader.get(forward(request.into_inner())).await;
        }
        r.linearize().await?;
        let q = request.into_inner();
        let matches = |field: &str, want: &str| want.is_empty() || field == want;
        let reply = r.sm.read(|a| api::GetReply {
            resources: a
                .state
                .resources()
                .filter(|(k, _)| {
                    matches(&k.kind, &q.kind)
                        && matches(&k.namespace, &q.namespace)
                        && matches(&k.name, &q.name)
                })
                .map(|(k, record)| api::StoredResource {
                    resource: Some(api::ResourceRef {
                        kind: k.kind.clone(),
                        namespace: k.namespace.clone(),
                        name: k.name.clone(),
                    }),
                    document_json: record.document.to_string(),
                    source: record.source.clone(),
                    version: record.version,
                })
                .collect(),
            version: a.version,
            state_hash: a.state.hash(),
        });
        Ok(Response::new(reply))
    }

    async fn cluster_init(
        &self,
        request: Request<api::ClusterInitRequest>,
    ) -> Result<Response<api::ClusterReply>, Status> {
        self.tokens.authorize(&request, Access::Write)?;
        let r = &self.replica;
        let mut members: BTreeMap<u64, BasicNode> = request
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.id, BasicNode::new(m.addr)))
            .collect();
        if members.is_empty() {
            members.insert(r.id, BasicNode::new(r.addr.clone()));
        }
        let ids: Vec<String> = members.keys().map(ToString::to_string).collect();
        r.raft
            .initialize(members)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(api::ClusterReply {
            message: format!("initialized a group of node(s) {}", ids.join(", ")),
        }))
    }

    async fn add_learner(
        &self,
        request: Request<api::Member>,
    ) -> Result<Response<api::ClusterReply>, Status> {
        self.tokens.authorize(&request, Access::Write)?;
        let r = &self.replica;
        if let Route::Leader(mut leader) = r.route(is_forwarded(&request)).await? {
            return leader.add_learner(forward(request.into_inner())).await;
        }
        let m = request.into_inner();
        r.raft
            .add_learner(m.id, BasicNode::new(m.addr.clone()), true)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(api::ClusterReply {
            message: format!(
                "node {} ({}) added as a learner and caught up",
                m.id, m.addr
            ),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<api::ChangeMembershipRequest>,
    ) -> Result<Response<api::ClusterReply>, Status> {
        self.tokens.authorize(&request, Access::Write)?;
        let r = &self.replica;
        if let Route::Leader(mut leader) = r.route(is_forwarded(&request)).await? {
            return leader
                .change_membership(forward(request.into_inner()))
                .await;
        }
        let voters: BTreeSet<u64> = request.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("at least one voter is needed"));
        }
        let text: Vec<String> = voters.iter().map(ToString::to_string).collect();
        r.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(api::ClusterReply {
            message: format!("voters are now {}", text.join(", ")),
        }))
    }

    async fn status(
        &self,
        request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusReply>, Status> {
        self.tokens.authorize(&request, Access::Read)?;
        let r = &self.replica;
        let m = r.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
        let (voters, learners): (Vec<_>, Vec<_>) = membership
            .nodes()
            .map(|(id, node)| member(*id, node))
            .partition(|m| voter_ids.contains(&m.id));
        let leader_id = m.current_leader.unwrap_or(0);
        let leader_addr = m
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        let (config_version, state_hash, resources) =
            r.sm.read(|a| (a.version, a.state.hash(), a.state.len() as u64));
        Ok(Response::new(api::StatusReply {
            node_id: r.id,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader_id,
            leader_addr,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            config_version,
            state_hash,
            resources,
            voters,
            learners,
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            connected_proxies: r.registry.records().len() as u64,
        }))
    }

    async fn trust_bundle(
        &self,
        request: Request<api::TrustBundleRequest>,
    ) -> Result<Response<api::TrustBundleReply>, Status> {
        self.tokens.authorize(&request, Access::Read)?;
        let reply = self.replica.sm.read(|a| match a.state.ca() {
            Some(ca) => api::TrustBundleReply {
                trust_domain: ca.trust_domain.clone(),
                pem: ca.cert_pem.clone(),
            },
            None => api::TrustBundleReply::default(),
        });
        Ok(Response::new(reply))
    }

    async fn proxy_status(
        &self,
        request: Request<api::ProxyStatusRequest>,
    ) -> Result<Response<api::ProxyStatusReply>, Status> {
        self.tokens.authorize(&request, Access::Read)?;
        let r = &self.replica;
        if request.into_inner().local_only {
            return Ok(Response::new(api::ProxyStatusReply {
                proxies: r.registry.records(),
                unreachable: Vec::new(),
            }));
        }
        Ok(Response::new(all_proxies(r).await?))
    }
}

/// Every proxy connected to any member, with the members that did not
/// answer within a second.
pub async fn all_proxies(r: &Replica) -> Result<api::ProxyStatusReply, Status> {
    let mut reply = api::ProxyStatusReply {
        proxies: r.registry.records(),
        unreachable: Vec::new(),
    };
    let peers: Vec<(u64, String)> = {
        let m = r.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != r.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    };
    for (id, addr) in peers {
        let mut ask = Request::new(api::ProxyStatusRequest { local_only: true });
        ask.set_timeout(Duration::from_secs(1));
        match r.client(&addr)?.proxy_status(ask).await {
            Ok(peer) => reply.proxies.extend(peer.into_inner().proxies),
            Err(e) => reply
                .unreachable
                .push(format!("node {id} ({addr}): {}", e.message())),
        }
    }
    reply.proxies.sort_by(|a, b| a.proxy.cmp(&b.proxy));
    Ok(reply)
}
