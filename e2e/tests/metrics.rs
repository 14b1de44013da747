//! End-to-end: what the admin endpoints serve passes `promtool check
//! metrics` (Prometheus text unless the scraper asks for OpenMetrics), and
//! a proxy without mTLS exports no certificate expiry.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Result};
use trellis_e2e::client::{self, get};
use trellis_e2e::harness::{tool, Echo, Proxy};
use trellis_e2e::mesh::ControlPlane;
use trellis_e2e::rules;

/// `promtool check metrics` on `text`: its findings, empty when clean.
fn promtool(text: &str) -> Result<String> {
    let mut child = Command::new(tool("promtool")?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() || !findings.is_empty(),
        "promtool failed silently"
    );
    Ok(if out.status.success() {
        String::new()
    } else {
        findings
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_replica_metrics_pass_promtool() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let proxy = Proxy::start(&rules::service("reviews", &[("v1", &v1)], ""))?;
    let client = client::http1();
    for path in ["/", "/a"] {
        get(&client, proxy.outbound, "reviews", path, &[]).await?;
    }
    get(&client, proxy.outbound, "nowhere", "/", &[]).await?;
    let text = proxy.metrics()?;
    assert!(text.contains("trellis_requests_total{"), "{text}");
    assert!(
        !text.contains("# EOF"),
        "Prometheus text, not OpenMetrics:\n{text}"
    );
    let findings = promtool(&text)?;
    assert!(findings.is_empty(), "proxy /metrics:\n{findings}\n{text}");
    assert!(
        !text.contains("trellis_identity_cert_expiry_seconds"),
        "no mTLS, yet a certificate expiry:\n{text}"
    );

    let cp = tokio::task::block_in_place(|| ControlPlane::start(1, &[]))?;
    let (_, text) = cp.admin_get(cp.replicas[0].admin, "/metrics")?;
    assert!(text.contains("trellis_raft_term"), "{text}");
    let findings = promtool(&text)?;
    assert!(findings.is_empty(), "replica /metrics:\n{findings}\n{text}");
    Ok(())
}
