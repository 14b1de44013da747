//! The project's CRDs install on a real kube-apiserver, and rules written
//! for them are accepted there as `kubectl apply` sends them.

use std::path::Path;

use anyhow::Result;
use trellis_e2e::kube::KubeCluster;

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn the_crds_install_and_rules_apply_with_kubectl() -> Result<()> {
    let cluster = KubeCluster::up(true)?;
    cluster.install_crds()?;
    // examples/mtls.yaml has a mesh-wide policy in the root namespace,
    // which the manifests create (with the control plane's RBAC).
    for example in ["canary", "retries", "breaker", "mtls"] {
        cluster.kubectl_ok(&["apply", "-f", &repo(&format!("examples/{example}.yaml"))])?;
    }
    let listed = cluster.kubectl_ok(&["get", "vs,dr,se,pa,ap", "-A", "-o", "name"])?;
    for name in [
        "virtualservice.networking.trellis.io/reviews",
        "destinationrule.networking.trellis.io/reviews",
        "serviceentry.networking.trellis.io/reviews",
    ] {
        assert!(listed.contains(name), "{name} not stored:\n{listed}");
    }
    // The schema refuses what the types cannot hold.
    let bad = cluster.dir().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {name: bad}
spec:
  host: reviews
  trafficPolicy: {tls: {mode: BOGUS}}
",
    )?;
    let (ok, _, err) = cluster.kubectl(&["apply", "-f", &bad.display().to_string()])?;
    assert!(!ok && err.contains("BOGUS"), "{err}");
    Ok(())
}
