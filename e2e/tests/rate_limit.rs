//! End-to-end local rate limiting through a real `trellis-proxy`: a route's
//! and a destination's token bucket, answered 429 `rate-limited` and counted.

use std::time::Duration;

use anyhow::Result;
use trellis_e2e::client::{self, get};
use trellis_e2e::harness::{Echo, Proxy};
use trellis_e2e::rules;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_bucket_lets_burst_plus_rate_through_and_answers_429() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let vs = rules::virtual_service(
        "reviews",
        "  - rateLimit: {requestsPerSecond: 20, burst: 20}
    route: [{destination: {host: reviews, subset: v1}}]
",
    );
    let proxy = Proxy::start(&rules::service("reviews", &[("v1", &v1)], &vs))?;
    let client = client::http1();
    // 100 requests spread over one second: the burst of 20, then 20 more.
    let start = tokio::time::Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..100u64 {
        tokio::time::sleep_until(start + Duration::from_millis(i * 10)).await;
        let r = get(&client, proxy.outbound, "reviews", "/", &[]).await?;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.header("x-trellis-reason"), Some("rate-limited"));
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!((35..=45).contains(&ok), "{ok} passed, {limited} limited");
    assert_eq!(ok + limited, 100);
    let counted = proxy.metric_sum(
        "trellis_requests_total",
        &["response_code=\"429\"", "reason=\"rate-limited\""],
    )?;
    assert_eq!(counted as usize, limited);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_bucket_limits_every_route_to_it() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let vs = rules::virtual_service(
        "reviews",
        "  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews, subset: v1}}]
",
    );
    let policy = "    rateLimit: {requestsPerSecond: 0.5, burst: 3}\n";
    let proxy = Proxy::start(&rules::service_with_policy(
        "reviews",
        &[("v1", &v1)],
        policy,
        &vs,
    ))?;
    let client = client::http1();
    let mut statuses = Vec::new();
    for path in ["/a", "/b", "/a", "/b", "/a", "/b"] {
        let r = get(&client, proxy.outbound, "reviews", path, &[]).await?;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    Ok(())
}
