//! A sidecar's shutdown as a pod's end needs it: on SIGTERM it fails
//! readiness at once, keeps serving the application through the shutdown
//! delay (while endpoints drop it), then drains and exits.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use trellis_e2e::client::{self, blocking_get, get};
use trellis_e2e::harness::{wait_until, Echo, Proxy};
use trellis_e2e::rules;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_first_then_drains_and_exits() -> Result<()> {
    let echo = Echo::start("reviews", "v1")?;
    let mut proxy = Proxy::start_with(
        &rules::service("reviews", &[("v1", &echo)], ""),
        &["--shutdown-delay", "1500ms"],
    )?;
    ensure!(
        wait_until(Duration::from_secs(10), || blocking_get(
            proxy.admin,
            "/ready"
        )
        .is_ok_and(|(s, _)| s == 200)),
        "never ready"
    );
    let http = client::http1();
    proxy.process.signal("TERM")?;
    let signalled = Instant::now();
    let draining = wait_until(Duration::from_secs(1), || {
        blocking_get(proxy.admin, "/ready")
            .is_ok_and(|(s, body)| s == 503 && body.contains("draining"))
    });
    ensure!(draining, "/ready did not fail within a second of SIGTERM");
    // Still serving the application meanwhile.
    let reply = get(&http, proxy.outbound, "reviews", "/", &[]).await?;
    ensure!(reply.status == 200, "during the delay: {}", reply.status);
    ensure!(
        signalled.elapsed() < Duration::from_millis(1500),
        "checked too late to mean anything: {:?}",
        signalled.elapsed()
    );
    let exited = wait_until(Duration::from_secs(10), || proxy.process.has_exited());
    ensure!(exited, "still running 10 s after SIGTERM");
    ensure!(
        signalled.elapsed() >= Duration::from_millis(1400),
        "exited before the shutdown delay: {:?}",
        signalled.elapsed()
    );
    Ok(())
}
