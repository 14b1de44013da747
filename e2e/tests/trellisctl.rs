//! End-to-end `trellisctl` against a real replica: `apply` validates
//! against what the mesh holds (a DestinationRule first, then a
//! VirtualService alone), refuses a change that breaks an applied rule and
//! names it, short kind names, `delete KIND NAME`, "unchanged", and clear
//! errors for unreadable files and for a server that is not a replica.

use std::time::Duration;

use anyhow::Result;
use trellis_e2e::harness::{bin, wait_until, Echo, TempDir};
use trellis_e2e::mesh::{ConnectedProxy, ControlPlane};
use trellis_e2e::rules;

fn all_to(subset: &str) -> String {
    rules::virtual_service(
        "reviews",
        &format!("  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"),
    )
}

#[test]
fn apply_checks_rules_against_the_mesh_not_the_files_alone() -> Result<()> {
    let (v1, v2) = (Echo::start("reviews", "v1")?, Echo::start("reviews", "v2")?);
    let cp = ControlPlane::start(1, &[])?;
    let mut proxy = ConnectedProxy::spawn("client", &cp)?;
    let dir = TempDir::new("trellisctl")?;
    let file = |name: &str, yaml: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, yaml)?;
        Ok(path.display().to_string())
    };

    // The DestinationRule (and the service) first, then the VirtualService alone.
    let service = file(
        "service.yaml",
        &rules::service("reviews", &[("v1", &v1), ("v2", &v2)], ""),
    )?;
    let (ok, out, err) = cp.ctl(&["apply", "-f", &service])?;
    assert!(ok, "{out}{err}");
    let routes = file("routes.yaml", &all_to("v2"))?;
    let (ok, out, err) = cp.ctl(&["apply", "-f", &routes])?;
    assert!(
        ok,
        "a VirtualService using applied subsets is refused: {out}{err}"
    );
    proxy.wait_ready(Duration::from_secs(10))?;
    let routed = wait_until(Duration::from_secs(5), || {
        proxy.version_of("reviews").is_ok_and(|v| v == "v2")
    });
    assert!(routed, "routing does not follow the applied VirtualService");

    // The same file again changes nothing, and says so.
    let (ok, out, _) = cp.ctl(&["apply", "-f", &routes])?;
    assert!(ok && out.contains("unchanged"), "{out}");

    // A VirtualService naming a subset nobody defines: refused at its position.
    let (ok, out, _) = cp.ctl(&["apply", "-f", &file("v9.yaml", &all_to("v9"))?])?;
    assert!(!ok);
    assert!(
        out.contains("v9.yaml:7:") && out.contains("subset \"v9\""),
        "{out}"
    );

    // Removing v2 from the DestinationRule while the VirtualService uses it:
    // refused, with the VirtualService named.
    let only_v1 = file(
        "only-v1.yaml",
        &rules::service("reviews", &[("v1", &v1)], ""),
    )?;
    let (ok, out, _) = cp.ctl(&["apply", "-f", &only_v1])?;
    assert!(!ok, "removing a subset in use was accepted");
    assert!(
        out.contains("VirtualService default/reviews") && out.contains("subset \"v2\""),
        "{out}"
    );
    assert_eq!(proxy.version_of("reviews")?, "v2");

    // Short kind names for get and delete.
    let (ok, out, _) = cp.ctl(&["get", "vs"])?;
    assert!(
        ok && out.contains("VirtualService") && !out.contains("DestinationRule"),
        "{out}"
    );
    let (ok, out, err) = cp.ctl(&["delete", "vs", "reviews"])?;
    assert!(ok && out.contains("deleted"), "{out}{err}");
    let (ok, _, err) = cp.ctl(&["delete", "nope", "reviews"])?;
    assert!(!ok && err.contains("unknown kind"), "{err}");
    Ok(())
}

#[test]
fn usage_and_connection_errors_say_what_is_wrong() -> Result<()> {
    let missing = std::process::Command::new(bin("trellisctl")?)
        .args(["validate", "-f", "/nonexistent/rules.yaml"])
        .output()?;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/rules.yaml"));

    // An HTTP/1 server where a replica should be.
    let echo = Echo::start("web", "v1")?;
    let addr = format!("127.0.0.1:{}", echo.port());
    let pki = TempDir::new("pki")?;
    trellis_e2e::mesh::pki_init(pki.path())?;
    let (ok, _, err) = trellis_e2e::mesh::ctl_as(
        &pki.path().join("ca.pem"),
        Some(&pki.path().join("admin.token")),
        &addr,
        &["--timeout", "2s", "get"],
    )?;
    assert!(!ok);
    assert!(
        err.contains(&addr) && err.contains("is not a Trellis replica"),
        "{err}"
    );
    Ok(())
}
