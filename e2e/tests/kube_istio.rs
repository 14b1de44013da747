//! Istio's bookinfo YAML applied unchanged (under Istio's group) routes
//! like Trellis's own; a proxy with a Pod's service-account token gets that
//! identity and no other (TokenReview).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use trellis_e2e::harness::wait_until;
use trellis_e2e::kube_mesh::*;
use trellis_e2e::mesh::ConnectedProxy;

/// Istio's CRDs (the shape, under Istio's group) for a test: Trellis's
/// schemas renamed, without short names so `vs` stays unambiguous.
fn istio_crds(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("istio-crds.yaml");
    let mut text = String::new();
    for (file, group) in [
        ("virtualservices.networking.trellis.io.yaml", "networking"),
        ("destinationrules.networking.trellis.io.yaml", "networking"),
    ] {
        let yaml = std::fs::read_to_string(repo("crds/manifests").join(file))?;
        let yaml = yaml.replace(&format!("{group}.trellis.io"), &format!("{group}.istio.io"));
        // Drop the `categories:` and `shortNames:` lists.
        let mut skipping = None;
        for line in yaml.lines() {
            let indent = line.len() - line.trim_start().len();
            if let Some(at) = skipping {
                if indent >= at && line.trim_start().starts_with("- ") {
                    continue;
                }
                skipping = None;
            }
            if matches!(line.trim(), "categories:" | "shortNames:") {
                skipping = Some(indent);
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("---\n");
    }
    std::fs::write(&out, text)?;
    Ok(out)
}

#[test]
fn istio_bookinfo_yaml_applies_unchanged_and_tokens_get_their_own_identity() -> Result<()> {
    let cluster = Cluster::start(true, None)?;
    let kube = &cluster.kube;
    let crds = istio_crds(kube.dir())?;
    kube.kubectl_ok(&["apply", "-f", &crds.display().to_string()])?;
    kube.kubectl_ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd/virtualservices.networking.istio.io",
        "crd/destinationrules.networking.istio.io",
    ])?;
    let cp = cluster.control_plane(&[])?;
    let proxies = proxies(&cp)?;
    let bookinfo = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio-bookinfo");
    for file in [
        "destination-rule-all.yaml",
        "virtual-service-reviews-90-10.yaml",
    ] {
        kube.kubectl_ok(&["apply", "-f", &bookinfo.join(file).display().to_string()])?;
    }
    wait_weights(&cp, &proxies, (90, 10));
    for p in &proxies {
        assert_90_10(p);
    }
    let shown = wait_until(Duration::from_secs(10), || {
        status_of(kube, "virtualservices.networking.istio.io/reviews").0 == "True"
    });
    assert!(
        shown,
        "{:?}",
        status_of(kube, "virtualservices.networking.istio.io/reviews")
    );

    // A proxy with pod A's service-account token gets A's identity.
    kube.kubectl_ok(&["create", "serviceaccount", "ratings"])?;
    let token = kube.kubectl_ok(&[
        "create",
        "token",
        "bookinfo-reviews",
        "--audience",
        "trellis",
    ])?;
    let token_file = kube.dir().join("reviews.token");
    std::fs::write(&token_file, token.trim())?;
    let with_token = |id: &str, sa: &str| -> Result<ConnectedProxy> {
        ConnectedProxy::spawn_with(
            id,
            &cp,
            &[
                "--service-account-token-file".into(),
                token_file.display().to_string(),
                "--service-account".into(),
                sa.into(),
                "--namespace".into(),
                "default".into(),
            ],
        )
    };
    let own = with_token("reviews-pod", "bookinfo-reviews")?;
    let id = || {
        config_dump(&own)["identity"]["spiffe_id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let certified = wait_until(Duration::from_secs(20), || {
        id() == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    });
    assert!(certified, "identity {:?}\n{}", id(), own.process.log_text());

    // The same token asking for another identity is refused.
    let other = with_token("ratings-pod", "ratings")?;
    let refused = wait_until(Duration::from_secs(20), || {
        other.process.log_text().contains("PermissionDenied")
    });
    assert!(refused, "{}", other.process.log_text());
    assert!(
        config_dump(&other)["identity"].is_null(),
        "{}",
        config_dump(&other)["identity"]
    );
    assert!(
        cp.logs()
            .contains("bookinfo-reviews's; it may not ask for default/ratings"),
        "{}",
        cp.logs()
    );
    Ok(())
}
