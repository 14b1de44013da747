//! The mesh root published as the ConfigMap `trellis-ca-root-cert` (key
//! `root-cert.pem`) in every namespace, as Istio publishes
//! `istio-ca-root-cert`: injected sidecars mount it as their
//! `--trust-bundle`. The leader writes it (server-side apply, field manager
//! `trellis`) into each namespace it sees, again when the root changes, and
//! every minute (one deleted by hand comes back). With an owner (the
//! installation's ClusterRole, `--owner-cluster-role`), each copy names it,
//! so uninstalling removes them all (the garbage collector).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

/// An owner reference to the ClusterRole `name` (cluster-scoped, so any
/// namespace's objects may name it), or `None` when it does not exist.
pub async fn cluster_role_owner(client: &Client, name: &str) -> Result<Option<Value>, kube::Error> {
    let api: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    Ok(api.get_opt(name).await?.and_then(|role| {
        role.metadata.uid.map(|uid| {
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "name": name,
                "uid": uid,
            })
        })
    }))
}

/// Makes the PersistentVolumeClaim `namespace/claim` owned by `owner`, so
/// it goes when the installation does.
pub async fn own_claim(
    client: &Client,
    namespace: &str,
    claim: &str,
    owner: &Value,
) -> Result<(), kube::Error> {
    let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
    api.patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The ConfigMap's name and its key.
pub const CONFIG_MAP: &str = "trellis-ca-root-cert";
pub const KEY: &str = "root-cert.pem";

/// How often each namespace's copy is written again.
const REFRESH: Duration = Duration::from_secs(60);

/// What has been written where.
#[derive(Debug, Default)]
pub struct Publisher {
    /// Namespace -> (the PEM written, when).
    published: BTreeMap<String, (String, Instant)>,
}

impl Publisher {
    /// Writes `root_pem` into every namespace of `namespaces` that lacks
    /// it or was last written over a minute ago.
    pub async fn publish(
        &mut self,
        client: &Client,
        namespaces: &Store<Namespace>,
        root_pem: &str,
        owner: Option<&Value>,
    ) {
        let now = Instant::now();
        for ns in namespaces.state() {
            if ns.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = ns.name_any();
            let fresh = self
                .published
                .get(&name)
                .is_some_and(|(pem, at)| pem == root_pem && now.duration_since(*at) < REFRESH);
            if fresh {
                continue;
            }
            let mut map = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": CONFIG_MAP,
                    "labels": {"app.kubernetes.io/managed-by": "trellis"},
                },
                "data": {KEY: root_pem},
            });
            if let Some(owner) = owner {
                map["metadata"]["ownerReferences"] = serde_json::json!([owner]);
            }
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
            let params = PatchParams::apply("trellis").force();
            match api.patch(CONFIG_MAP, &params, &Patch::Apply(&map)).await {
                Ok(_) => {
                    tracing::debug!(namespace = name, "root certificate published");
                    self.published.insert(name, (root_pem.to_string(), now));
                }
                Err(e) => {
                    tracing::warn!(namespace = name, error = %e, "cannot publish the root certificate")
                }
            }
        }
    }
}
