//! The pod runner's kubelet-to-apiserver side: its Node (registered, heartbeat),
//! binding pods to it, their status, and removing a deleted pod for good.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::{Env, NODE};

/// Creates the Node `pod-runner` (Ready) unless it exists.
pub(super) async fn register_node(env: &Env) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    if api.get_opt(NODE).await?.is_none() {
        let node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        }))?;
        api.create(&PostParams::default(), &node).await?;
    }
    node_status(env).await
}

/// The node's Ready condition, with a fresh heartbeat.
pub(super) async fn node_status(env: &Env) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let now = timestamp();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "PodRunnerReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": env.gateway}],
    }});
    api.patch_status(NODE, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

/// Binds `pod` to the runner's node, as the scheduler would.
pub(super) async fn bind(env: &Env, ns: &str, name: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
    });
    let bound = api
        .create_subresource::<_, Value>("binding", name, &PostParams::default(), &binding)
        .await;
    if let Err(e) = bound {
        // Bound already (by an earlier attempt) is bound.
        let pod = api.get_opt(name).await?;
        let node = pod.and_then(|p| p.spec).and_then(|s| s.node_name);
        if node.as_deref() != Some(NODE) {
            return Err(e).with_context(|| format!("binding pod {ns}/{name}"));
        }
    }
    Ok(())
}

/// What the kubelet does once a deleted pod's containers are gone: removes
/// the pod object for good.
pub(super) async fn remove_pod(env: &Env, ns: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let params = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = api.delete(name, &params).await;
}

pub(super) async fn patch_status(env: &Env, ns: &str, name: &str, status: Value) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .with_context(|| format!("status of pod {ns}/{name}"))?;
    Ok(())
}

pub(super) async fn patch_condition(
    env: &Env,
    ns: &str,
    name: &str,
    kind: &str,
    on: bool,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let Some(pod) = api.get_opt(name).await? else {
        return Ok(());
    };
    let mut conditions = pod
        .status
        .and_then(|s| s.conditions)
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .unwrap_or_else(|| json!([]));
    if let Some(list) = conditions.as_array_mut() {
        for c in list.iter_mut() {
            if c["type"] == kind {
                c["status"] = json!(if on { "True" } else { "False" });
            }
        }
    }
    patch_status(env, ns, name, json!({"conditions": conditions})).await
}

pub(super) fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = now / 86_400;
    let secs = now % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::timestamp;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = timestamp();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
