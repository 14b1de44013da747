//! `--kubernetes`: the Kubernetes API as the source `kube`. On the leader
//! only, `kube::runtime` watchers keep local copies of the rule custom
//! resources (Trellis's groups and, when installed, Istio's), Services,
//! EndpointSlices (the version the server serves) and Pods. On every change
//! the leader turns the difference between those copies and the
//! replicated state into one Raft entry, as the file source does; a
//! resource that would make the mesh invalid is kept out (the last good
//! one stays) and its status says why. Because each pass compares whole
//! states, a relist (410 Gone, a dropped watch, an apiserver restart) or a
//! new leader loses and repeats nothing. Replicas serve proxies from Raft
//! alone. The leader also publishes the mesh root in every namespace
//! ([`root_cert`]).

pub mod root_cert;
pub mod status;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use self::root_cert::{cluster_role_owner, Publisher};
use self::status::Verdict;
use crate::control::all_proxies;
use crate::inject::webhook::keep_ca_bundle;
use crate::push::applied::applied;
use crate::replica::{Replica, WriteError};
use crate::state::resources::{admit, diff, Refused};
use crate::state::{MeshCommand, ResourceKey};

/// The `source` of what this source writes.
pub const SOURCE: &str = "kube";

/// Rule groups, in precedence order: a Trellis resource shadows an Istio
/// one of the same kind, namespace and name.
const RULE_GROUPS: &[&str] = &[
    "networking.trellis.io",
    "security.trellis.io",
    "networking.istio.io",
    "security.istio.io",
];

/// The rule kinds read from those groups.
const RULE_KINDS: &[&str] = &[
    "VirtualService",
    "DestinationRule",
    "ServiceEntry",
    "PeerAuthentication",
    "AuthorizationPolicy",
];

/// How often the leader looks for newly installed rule groups.
const REDISCOVER: Duration = Duration::from_secs(5);

/// The Kubernetes source of one replica.
#[derive(Clone)]
pub struct KubeSource {
    pub client: Client,
    pub replica: Arc<Replica>,
    /// How often the leader refreshes `status.applied`.
    pub status_interval: Duration,
    /// The injection webhook's MutatingWebhookConfiguration, whose
    /// caBundle the leader keeps equal to the mesh root.
    pub webhook_config: Option<String>,
    /// The installation's ClusterRole, owner of what the control plane
    /// creates (the root-certificate ConfigMaps).
    pub owner_cluster_role: Option<String>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("replica", &self.replica.id)
            .finish_non_exhaustive()
    }
}

/// What discovery found: the rule kinds served, and EndpointSlices.
#[derive(Clone, Debug, PartialEq)]
struct Kinds {
    rules: Vec<ApiResource>,
    slices: ApiResource,
}

/// The watched copies.
struct Stores {
    rules: Vec<(ApiResource, Store<DynamicObject>)>,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<DynamicObject>,
}

/// One rule resource as last evaluated.
struct Evaluated {
    resource: ApiResource,
    namespace: String,
    name: String,
    generation: Option<i64>,
    status: Option<serde_json::Value>,
    outcome: Outcome,
}

enum Outcome {
    /// Loads and checks: stored (or to be) under `key` as `document`.
    Candidate {
        key: ResourceKey,
        document: serde_json::Value,
    },
    Refused(Verdict),
}

impl KubeSource {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut leadership = self.replica.raft.metrics();
        loop {
            while !self.replica.is_leader() {
                tokio::select! {
                    changed = leadership.changed() => if changed.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
            let lost = async {
                while self.replica.is_leader() {
                    if leadership.changed().await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                result = self.lead() => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "Kubernetes source: retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                _ = lost => tracing::info!("no longer the leader: Kubernetes watches stopped"),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Watches and syncs while this replica leads; returns to start over
    /// when the served rule kinds change.
    async fn lead(&self) -> Result<(), kube::Error> {
        let kinds = discover(&self.client).await?;
        tracing::info!(
            rules = ?kinds.rules.iter().map(|r| format!("{}.{}", r.plural, r.group)).collect::<Vec<_>>(),
            slices = %kinds.slices.api_version,
            "leading: watching the Kubernetes API"
        );
        let changed = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let stores = Stores {
            rules: kinds
                .rules
                .iter()
                .map(|ar| {
                    let api = Api::<DynamicObject>::all_with(self.client.clone(), ar);
                    (ar.clone(), follow(&mut tasks, api, ar.clone(), &changed))
                })
                .collect(),
            services: follow(&mut tasks, Api::all(self.client.clone()), (), &changed),
            pods: follow(&mut tasks, Api::all(self.client.clone()), (), &changed),
            slices: follow(
                &mut tasks,
                Api::all_with(self.client.clone(), &kinds.slices),
                kinds.slices.clone(),
                &changed,
            ),
        };
        for (_, store) in &stores.rules {
            let _ = store.wait_until_ready().await;
        }
        let _ = stores.services.wait_until_ready().await;
        let _ = stores.pods.wait_until_ready().await;
        let _ = stores.slices.wait_until_ready().await;
        let namespaces = follow(
            &mut tasks,
            Api::<Namespace>::all(self.client.clone()),
            (),
            &changed,
        );
        let _ = namespaces.wait_until_ready().await;
        let mut root_cert = Publisher::default();
        let mut owner = None;
        // The root the webhook configuration was last seen to trust, and
        // when (checked again every 30 s: a reinstall may reset it).
        let mut bundle_kept: Option<(String, std::time::Instant)> = None;
        tracing::info!("Kubernetes state listed");

        let mut evaluated = Vec::new();
        let mut refused = BTreeMap::new();
        let mut logged = BTreeSet::new();
        let mut dirty = true;
        let mut rediscover = tokio::time::interval(REDISCOVER);
        rediscover.tick().await;
        loop {
            if dirty {
                evaluated = evaluate(&stores);
                logged = log_invalid(&evaluated, &logged);
                let synced;
                (synced, refused) = self.sync(&evaluated, &stores, &refused).await;
                dirty = !synced;
            }
            self.write_status(&evaluated, &refused).await;
            let root = self
                .replica
                .sm
                .read(|a| a.state.ca().map(|ca| ca.cert_pem.clone()));
            if let Some(root) = root {
                if owner.is_none() {
                    if let Some(role) = &self.owner_cluster_role {
                        owner = cluster_role_owner(&self.client, role).await.ok().flatten();
                    }
                }
                root_cert
                    .publish(&self.client, &namespaces, &root, owner.as_ref())
                    .await;
                if let Some(name) = &self.webhook_config {
                    let fresh = bundle_kept.as_ref().is_some_and(|(pem, at)| {
                        *pem == root && at.elapsed() < Duration::from_secs(30)
                    });
                    if !fresh {
                        match keep_ca_bundle(&self.client, name, &root).await {
                            Ok(true) => {
                                bundle_kept = Some((root.clone(), std::time::Instant::now()))
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(name, error = %e, "cannot set the webhook's caBundle")
                            }
                        }
                    }
                }
            }
            tokio::select! {
                _ = changed.notified() => {
                    // Let a burst of events land before comparing.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    dirty = true;
                }
                _ = tokio::time::sleep(self.status_interval) => {}
                _ = rediscover.tick() => {
                    match discover(&self.client).await {
                        Ok(now) if now != kinds => {
                            tracing::info!("served rule kinds changed: watching again");
                            return Ok(());
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "discovery failed"),
                    }
                }
            }
        }
    }

    /// Proposes what differs between the watched copies and the replicated
    /// state, as one entry. False when it should be tried again; with the
    /// changes kept out, and why (those not in `before` are logged).
    async fn sync(
        &self,
        evaluated: &[Evaluated],
        stores: &Stores,
        before: &BTreeMap<ResourceKey, Vec<String>>,
    ) -> (bool, BTreeMap<ResourceKey, Vec<String>>) {
        let mut refused = BTreeMap::new();
        let mut desired: BTreeMap<ResourceKey, serde_json::Value> = BTreeMap::new();
        for e in evaluated {
            if let Outcome::Candidate { key, document } = &e.outcome {
                desired.insert(key.clone(), document.clone());
            }
        }
        let pod =
            |namespace: &str, name: &str| stores.pods.get(&ObjectRef::new(name).within(namespace));
        let services =
            translate::service_documents(&stores.services.state(), &stores.slices.state(), pod);
        desired.extend(services);

        if let Err(e) = self.replica.linearize().await {
            tracing::debug!(error = %e, "not syncing Kubernetes yet");
            return (false, before.clone());
        }
        let (commands, kept_out) = self.replica.sm.read(|a| {
            let commands = diff(&a.state, SOURCE, desired.into_iter().collect());
            admit(&a.state, commands)
        });
        for Refused { key, errors } in kept_out {
            if before.get(&key) != Some(&errors) {
                for e in &errors {
                    tracing::error!("{key}: kept out, the last good version stays: {e}");
                }
            }
            refused.insert(key, errors);
        }
        self.replica.metrics.source_errors.set(refused.len() as i64);
        if commands.is_empty() {
            return (true, refused);
        }
        let count = commands.len();
        let command = match commands.len() {
            1 => commands.into_iter().next().expect("one command"),
            _ => MeshCommand::Batch(commands),
        };
        let synced = match self.replica.propose(command).await {
            Ok((index, _)) => {
                tracing::info!(changes = count, version = index, "Kubernetes state synced");
                true
            }
            // Another writer changed the state meanwhile: compare again.
            Err(WriteError::Invalid(errors)) => {
                tracing::warn!(
                    errors = errors.len(),
                    "Kubernetes changes conflict with a concurrent write; comparing again"
                );
                false
            }
            Err(WriteError::Unavailable(e)) => {
                tracing::warn!(error = %e, "proposing Kubernetes changes failed; retrying");
                false
            }
        };
        (synced, refused)
    }

    /// Writes each rule resource's verdict and `applied` where it changed.
    async fn write_status(
        &self,
        evaluated: &[Evaluated],
        refused: &BTreeMap<ResourceKey, Vec<String>>,
    ) {
        let proxies = match all_proxies(&self.replica).await {
            Ok(reply) => reply.proxies,
            Err(e) => {
                tracing::debug!(error = %e, "proxy status unavailable");
                return;
            }
        };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        for e in evaluated {
            let verdict = match &e.outcome {
                Outcome::Refused(v) => v.clone(),
                Outcome::Candidate { key, document } => {
                    if let Some(errors) = refused.get(key) {
                        Verdict::Refused {
                            reason: "Invalid",
                            errors: errors.clone(),
                        }
                    } else {
                        let stored = self.replica.sm.read(|a| {
                            a.state
                                .get(key)
                                .filter(|r| r.same(document, SOURCE))
                                .map(|r| r.version)
                        });
                        match stored {
                            Some(version) => Verdict::Accepted { version },
                            None => continue, // not proposed yet
                        }
                    }
                }
            };
            let applied = match &verdict {
                Verdict::Accepted { version } => {
                    Some(applied(&e.resource.kind, &e.namespace, *version, &proxies))
                }
                Verdict::Refused { .. } => None,
            };
            let Some(body) = status::patch(
                e.status.as_ref(),
                e.generation,
                &verdict,
                applied.as_deref(),
                &now,
            ) else {
                continue;
            };
            let api = Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &e.namespace,
                &e.resource,
            );
            if let Err(err) = api
                .patch_status(&e.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                tracing::warn!(resource = %format!("{} {}/{}", e.resource.kind, e.namespace, e.name), error = %err, "status not written");
            }
        }
    }
}

/// Every rule resource of the watched copies, loaded and checked; a
/// resource shadowed by one of a group listed earlier is refused.
fn evaluate(stores: &Stores) -> Vec<Evaluated> {
    let mut out = Vec::new();
    let mut taken: BTreeMap<ResourceKey, String> = BTreeMap::new();
    for (resource, store) in &stores.rules {
        let mut objects = store.state();
        objects.sort_by_key(|o| (o.namespace(), o.name_any()));
        for object in objects {
            let outcome = match translate::rule_document(&object, &resource.kind) {
                Err(errors) => Outcome::Refused(Verdict::Refused {
                    reason: "Invalid",
                    errors,
                }),
                Ok((key, document)) => match taken.get(&key) {
                    Some(owner) => Outcome::Refused(Verdict::Refused {
                        reason: "Conflict",
                        errors: vec![format!("{key} is already defined by {owner}")],
                    }),
                    None => {
                        taken.insert(key.clone(), resource.api_version.clone());
                        Outcome::Candidate { key, document }
                    }
                },
            };
            out.push(Evaluated {
                resource: resource.clone(),
                namespace: object.namespace().unwrap_or_default(),
                name: object.name_any(),
                generation: object.metadata.generation,
                status: object.data.get("status").cloned(),
                outcome,
            });
        }
    }
    out
}

/// Logs the load errors of `evaluated` not in `logged`; returns them all.
fn log_invalid(evaluated: &[Evaluated], logged: &BTreeSet<String>) -> BTreeSet<String> {
    let mut now = BTreeSet::new();
    for e in evaluated {
        if let Outcome::Refused(Verdict::Refused { errors, .. }) = &e.outcome {
            for error in errors {
                if !logged.contains(error) {
                    tracing::error!("{error}");
                }
                now.insert(error.clone());
            }
        }
    }
    now
}

/// Starts a reflector of `api` on `tasks`; every event wakes `changed`.
fn follow<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    dyntype: K::DynamicType,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let kind = K::kind(&dyntype).to_string();
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let changed = changed.clone();
    tasks.spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::info!(kind, "watch expired (410 Gone): relisting");
                }
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

/// The rule kinds the server serves, and its EndpointSlice version.
async fn discover(client: &Client) -> Result<Kinds, kube::Error> {
    let mut groups: Vec<&str> = RULE_GROUPS.to_vec();
    groups.push("discovery.k8s.io");
    let discovery = kube::Discovery::new(client.clone())
        .filter(&groups)
        .run()
        .await?;
    let mut rules = Vec::new();
    for group in RULE_GROUPS {
        let Some(group) = discovery.get(group) else {
            continue;
        };
        for kind in RULE_KINDS {
            if let Some((resource, _)) = group.recommended_kind(kind) {
                rules.push(resource);
            }
        }
    }
    let slices = discovery
        .get("discovery.k8s.io")
        .and_then(|g| g.recommended_kind("EndpointSlice"))
        .map(|(r, _)| r)
        .ok_or_else(|| {
            kube::Error::Discovery(kube::error::DiscoveryError::MissingKind(
                "EndpointSlice (discovery.k8s.io)".into(),
            ))
        })?;
    let names: BTreeSet<_> = rules
        .iter()
        .map(|r| (r.group.clone(), r.kind.clone()))
        .collect();
    tracing::debug!(?names, "discovered");
    Ok(Kinds { rules, slices })
}
