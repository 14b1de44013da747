//! The recipe the Kubernetes tests stand on, checked against the real
//! apiserver and controller-manager: with no kubelet, a test creates a Node
//! and Pods bound to it and sets their status as a kubelet would; the real
//! EndpointSlice controller then publishes (and withdraws) their addresses,
//! loopback ones included, and TokenRequest issues service-account tokens.

use std::time::Duration;

use anyhow::Result;
use trellis_e2e::harness::wait_until;
use trellis_e2e::kube::KubeCluster;

const OBJECTS: &str = "apiVersion: v1
kind: Node
metadata: {name: node-1}
---
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  labels: {app: reviews, version: v1}
spec:
  nodeName: node-1
  containers: [{name: app, image: trellis-echo}]
";

/// The pod's status as a kubelet would report it.
fn status(ready: bool) -> String {
    let ready = if ready { "True" } else { "False" };
    format!(
        r#"{{"status":{{"phase":"Running","podIP":"127.0.0.11","podIPs":[{{"ip":"127.0.0.11"}}],"conditions":[{{"type":"Ready","status":"{ready}"}}]}}}}"#
    )
}

/// The endpoints of `reviews` in its EndpointSlices: (address, ready).
fn endpoints(cluster: &KubeCluster) -> Vec<(String, bool)> {
    let Ok(out) = cluster.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=reviews",
        "-o",
        "json",
    ]) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .flat_map(|e| {
            let ready = e["conditions"]["ready"].as_bool().unwrap_or(false);
            e["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |a| Some((a.as_str()?.to_string(), ready)))
        })
        .collect()
}

#[test]
fn pods_made_ready_by_the_test_become_endpoint_slices() -> Result<()> {
    let cluster = KubeCluster::up(true)?;
    let file = cluster.dir().join("objects.yaml");
    std::fs::write(&file, OBJECTS)?;
    cluster.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    let patch = |ready| {
        cluster.kubectl_ok(&[
            "patch",
            "pod",
            "reviews-v1",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status(ready),
        ])
    };
    patch(true)?;
    let published = wait_until(Duration::from_secs(20), || {
        endpoints(&cluster) == [("127.0.0.11".to_string(), true)]
    });
    assert!(published, "no ready endpoint: {:?}", endpoints(&cluster));
    patch(false)?;
    let withdrawn = wait_until(Duration::from_secs(20), || {
        endpoints(&cluster).iter().all(|(_, ready)| !ready)
    });
    assert!(withdrawn, "still ready: {:?}", endpoints(&cluster));

    cluster.kubectl_ok(&["create", "serviceaccount", "reviews"])?;
    let token = cluster.kubectl_ok(&["create", "token", "reviews", "--audience", "trellis"])?;
    assert_eq!(token.trim().split('.').count(), 3, "not a JWT: {token}");
    Ok(())
}
