//! End-to-end outlier ejection, connection-pool limits and load balancing
//! through a real `trellis-proxy`: a failing endpoint is ejected and later
//! restored by a single probe; requests over the pool limits fail fast with
//! 503 `overflow`; a consistent-hash key sticks to one endpoint.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use trellis_e2e::client::{self, blocking_get, get};
use trellis_e2e::harness::{Echo, Proxy};
use trellis_e2e::rules;

/// A pool of one connection with one request waiting at most.
const ONE_ACTIVE_ONE_PENDING: &str = "    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
";

fn any_route() -> String {
    rules::virtual_service("reviews", "  - route: [{destination: {host: reviews}}]\n")
}

fn requests_of(echo: &Echo) -> Result<u64> {
    Ok(echo.stats()?["requests"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_ejected_then_restored_by_one_probe() -> Result<()> {
    let a = Echo::start("reviews", "a")?;
    let b = Echo::start("reviews", "b")?;
    let bad = Echo::start("reviews", "bad")?;
    blocking_get(bad.addr, "/_echo/set?status=500")?;
    let policy = "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}
";
    let proxy = Proxy::start(&rules::service_with_policy(
        "reviews",
        &[("a", &a), ("b", &b), ("bad", &bad)],
        policy,
        &any_route(),
    ))?;
    let client = client::http1();
    // Round robin reaches the bad endpoint every third request: 3 errors in
    // the first ~9 requests eject it.
    let mut first = Vec::new();
    for _ in 0..9 {
        first.push(
            get(&client, proxy.outbound, "reviews", "/", &[])
                .await?
                .status,
        );
    }
    assert_eq!(
        first.iter().filter(|s| s.as_u16() == 500).count(),
        3,
        "{first:?}"
    );
    assert_eq!(
        proxy.metric_sum("trellis_outlier_ejections_total", &[])?,
        1.0
    );
    assert_eq!(
        proxy.metric_sum("trellis_endpoints", &["state=\"ejected\""])?,
        1.0
    );
    let mut ok = 0;
    for _ in 0..300 {
        ok += u32::from(
            get(&client, proxy.outbound, "reviews", "/", &[])
                .await?
                .status
                == 200,
        );
    }
    assert!(ok >= 297, "success after ejection: {ok}/300");

    // It recovers; after baseEjectionTime one probe brings it back.
    blocking_get(bad.addr, "/_echo/set?status=200")?;
    let before = requests_of(&bad)?;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(requests_of(&bad)?, before, "no traffic while ejected");
    for _ in 0..30 {
        assert_eq!(
            get(&client, proxy.outbound, "reviews", "/", &[])
                .await?
                .status,
            200
        );
    }
    let (_, dump) = blocking_get(proxy.admin, "/config_dump")?;
    assert!(!dump.contains("ejected"), "still ejected: {dump}");
    assert!(
        requests_of(&bad)? >= before + 5,
        "restored endpoint gets its share again"
    );
    assert_eq!(
        proxy.metric_sum("trellis_endpoints", &["state=\"healthy\""])?,
        3.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_key_on_one_endpoint() -> Result<()> {
    let echoes: Vec<Echo> = (0..3)
        .map(|i| Echo::start("reviews", &format!("e{i}")))
        .collect::<Result<_>>()?;
    let versions = ["e0", "e1", "e2"];
    let backends: Vec<(&str, &Echo)> = versions.iter().copied().zip(echoes.iter()).collect();
    let policy = "    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
";
    let proxy = Proxy::start(&rules::service_with_policy(
        "reviews",
        &backends,
        policy,
        &any_route(),
    ))?;
    let client = client::http1();
    let mut owners: HashMap<String, HashSet<String>> = HashMap::new();
    for i in 0..1000 {
        let user = format!("user-{}", i % 20);
        let r = get(
            &client,
            proxy.outbound,
            "reviews",
            "/",
            &[("x-user", &user)],
        )
        .await?;
        assert_eq!(r.status, 200);
        owners
            .entry(user)
            .or_default()
            .insert(r.header("x-echo-version").unwrap_or("?").to_string());
    }
    for (user, set) in &owners {
        assert_eq!(set.len(), 1, "{user} went to {set:?}");
    }
    let used: HashSet<&String> = owners.values().flatten().collect();
    assert!(used.len() >= 2, "20 keys all on one endpoint: {used:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_limits_refuse_the_excess_at_once() -> Result<()> {
    let slow = Echo::start("reviews", "v1")?;
    let proxy = Proxy::start(&rules::service_with_policy(
        "reviews",
        &[("v1", &slow)],
        ONE_ACTIVE_ONE_PENDING,
        &any_route(),
    ))?;
    let client = client::http1();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, addr) = (client.clone(), proxy.outbound);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let r = get(&client, addr, "reviews", "/", &[("x-echo-delay", "1s")]).await;
                r.map(|r| {
                    (
                        r.status.as_u16(),
                        r.header("x-trellis-reason").map(str::to_string),
                        started.elapsed(),
                    )
                })
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await??);
    }
    let ok: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let overflow: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok.len(), 2, "one active + one pending: {results:?}");
    assert_eq!(overflow.len(), 18, "{results:?}");
    for (_, reason, took) in &overflow {
        assert_eq!(reason.as_deref(), Some("overflow"));
        // At once, not after a slot frees (the backend holds each for 1 s):
        // a quarter of that is margin enough on 2 busy cores (10 ms was not).
        assert!(*took < Duration::from_millis(250), "overflow took {took:?}");
    }
    assert_eq!(
        proxy.metric_sum("trellis_circuit_overflow_total", &[])?,
        18.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_pool_slot_still_ends_at_the_route_timeout() -> Result<()> {
    let slow = Echo::start("reviews", "v1")?;
    let route = rules::virtual_service(
        "reviews",
        "  - match: [{uri: {prefix: /long}}]
    timeout: 5s
    route: [{destination: {host: reviews}}]
  - timeout: 300ms
    route: [{destination: {host: reviews}}]
",
    );
    let proxy = Proxy::start(&rules::service_with_policy(
        "reviews",
        &[("v1", &slow)],
        ONE_ACTIVE_ONE_PENDING,
        &route,
    ))?;
    let client = client::http1();
    let send = |client: client::HttpClient, addr, path: &'static str| async move {
        let started = std::time::Instant::now();
        let r = get(&client, addr, "reviews", path, &[("x-echo-delay", "1s")]).await?;
        Ok::<_, anyhow::Error>((r.status.as_u16(), started.elapsed()))
    };
    // Holds the only connection for 1 s.
    let long = tokio::spawn(send(client.clone(), proxy.outbound, "/long"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Waits behind it: its 300 ms count from its arrival, wait included.
    let (status, took) = send(client.clone(), proxy.outbound, "/").await?;
    assert_eq!(status, 504);
    assert!(
        took < Duration::from_millis(350),
        "took {took:?}, over the 300 ms timeout"
    );
    assert_eq!(long.await??.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_until_max_requests_per_connection() -> Result<()> {
    let connections =
        |echo: &Echo| -> Result<u64> { Ok(echo.stats()?["connections"].as_u64().unwrap_or(0)) };
    for (policy, want) in [
        ("", 1),
        (
            "    connectionPool:\n      http: {maxRequestsPerConnection: 5}\n",
            4,
        ),
    ] {
        let echo = Echo::start("reviews", "v1")?;
        let proxy = Proxy::start(&rules::service_with_policy(
            "reviews",
            &[("v1", &echo)],
            policy,
            &any_route(),
        ))?;
        let client = client::http1();
        let before = connections(&echo)?;
        for _ in 0..20 {
            assert_eq!(
                get(&client, proxy.outbound, "reviews", "/", &[])
                    .await?
                    .status,
                200
            );
        }
        // each stats request is a connection of its own
        assert_eq!(connections(&echo)? - before - 1, want, "policy {policy:?}");
    }
    Ok(())
}
