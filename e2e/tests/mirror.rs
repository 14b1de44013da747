//! End-to-end mirroring through a real `trellis-proxy`: a share of the
//! requests reaches the mirror with a `-shadow` host, bodies included (up
//! to 64 KiB), and a mirror that is slow or down never delays or fails the
//! main route.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use trellis_e2e::client::{self, get, send};
use trellis_e2e::harness::{free_port, Echo, Proxy};
use trellis_e2e::rules;

/// `reviews` (v1 at `main`) and `mirror` (at `mirror_port`), routes in `http`.
fn mesh(main: &Echo, mirror_port: u16, http: &str) -> String {
    format!(
        "{}---
{}---
{}",
        rules::service("reviews", &[("v1", main)], ""),
        rules::single_endpoint(&["mirror"], 9080, "HTTP", Some(mirror_port)),
        rules::virtual_service("reviews", http)
    )
}

async fn stats(echo: &Echo) -> Result<serde_json::Value> {
    tokio::task::block_in_place(|| echo.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_gets_its_share_with_a_shadow_host_and_the_bodies() -> Result<()> {
    let (main, shadow) = (Echo::start("reviews", "v1")?, Echo::start("mirror", "v1")?);
    let routes = "  - match: [{uri: {prefix: /half}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: mirror}
    mirrorPercentage: {value: 50}
  - route: [{destination: {host: reviews, subset: v1}}]
    mirrors: [{destination: {host: mirror}}]
";
    let proxy = Proxy::start(&mesh(&main, shadow.port(), routes))?;
    let client = client::http1();
    for _ in 0..200 {
        let r = get(&client, proxy.outbound, "reviews", "/half", &[]).await?;
        assert_eq!(r.status, 200);
    }
    // Every request mirrored: small bodies go along, a large one does not.
    for size in [10usize, 1000, 100 * 1024] {
        let body = Bytes::from(vec![b'x'; size]);
        let r = send(
            &client,
            proxy.outbound,
            "POST",
            "reviews:9080",
            "/all",
            &[],
            body,
        )
        .await?;
        assert_eq!(r.status, 200);
    }
    // Copies are fire and forget: wait until every copy the shadow got has
    // been counted as answered, and nothing more arrives.
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let received = stats(&shadow).await?["requests"].as_u64().unwrap_or(0);
        let sent = proxy.metric_sum("trellis_mirror_requests_total", &["result=\"sent\""])?;
        if received == last && sent as u64 == received {
            break;
        }
        last = received;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let s = stats(&shadow).await?;
    let posts = s["by_method"]["POST"].as_u64().unwrap_or(0);
    let gets = s["by_method"]["GET"].as_u64().unwrap_or(0);
    assert!(
        (70..=130).contains(&gets),
        "50% of 200 mirrored: got {gets}"
    );
    assert_eq!(
        posts, 2,
        "the 10 B and 1 KiB bodies are mirrored, 100 KiB is not"
    );
    let hosts: Vec<&String> = s["by_host"].as_object().expect("by_host").keys().collect();
    assert!(
        hosts.iter().all(|h| h.starts_with("reviews-shadow")),
        "the mirror saw hosts {hosts:?}"
    );
    assert_eq!(main.stats()?["requests"], 203);
    let too_large = proxy.metric_sum("trellis_mirror_requests_total", &["result=\"too-large\""])?;
    assert_eq!(too_large, 1.0);
    Ok(())
}

/// 100 GETs at about 50/s: (successes, p99).
async fn run(proxy: &Proxy) -> Result<(usize, Duration)> {
    let client = client::http1();
    let mut latencies = Vec::new();
    let mut ok = 0;
    let start = tokio::time::Instant::now();
    for i in 0..100u64 {
        tokio::time::sleep_until(start + Duration::from_millis(i * 20)).await;
        let sent = Instant::now();
        let r = get(&client, proxy.outbound, "reviews", "/", &[]).await?;
        latencies.push(sent.elapsed());
        ok += usize::from(r.status == 200);
    }
    latencies.sort();
    Ok((ok, latencies[98]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_mirror_changes_nothing_for_the_main_route() -> Result<()> {
    let main = Echo::start("reviews", "v1")?;
    let all = "  - route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: mirror}
";
    // Slow: a listener that accepts connections (the kernel does) and
    // never answers.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let slow = Proxy::start(&mesh(&main, black_hole.local_addr()?.port(), all))?;
    let (ok, p99) = run(&slow).await?;
    assert_eq!(ok, 100);
    assert!(
        p99 < Duration::from_millis(500),
        "p99 {p99:?} with a mirror that never answers"
    );
    // Down: nothing listens.
    let down = Proxy::start(&mesh(&main, free_port(), all))?;
    let (ok, p99) = run(&down).await?;
    assert_eq!(ok, 100);
    assert!(
        p99 < Duration::from_millis(500),
        "p99 {p99:?} with a mirror that is down"
    );
    let failed = down.metric_sum("trellis_mirror_requests_total", &["result=\"failed\""])?;
    assert!(failed >= 90.0, "failed copies counted: {failed}");
    Ok(())
}
