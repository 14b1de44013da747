//! End-to-end resilience through a real `trellis-proxy`: retries, route
//! timeouts with cancellation, the retry budget, Istio's fault-injection
//! samples, and request identity.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use trellis_e2e::client::{self, get, send, HttpClient};
use trellis_e2e::harness::{Echo, Proxy};
use trellis_e2e::rules;

fn route(http: &str) -> String {
    rules::virtual_service("reviews", http)
}

/// `Echo::stats` off the runtime's threads.
async fn stats(echo: &Echo) -> Result<serde_json::Value> {
    tokio::task::block_in_place(|| echo.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_transient_503s() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let vs = route(
        "  - retries: {attempts: 3, perTryTimeout: 1s, retryOn: \"5xx,reset,connect-failure\"}
    route: [{destination: {host: reviews, subset: v1}}]
",
    );
    let proxy = Proxy::start(&rules::service("reviews", &[("v1", &v1)], &vs))?;
    let client = client::http1();
    // 200 requests at 20/s: half of them fail their first attempt with 503.
    // (At this rate the default retry budget, 20% + 10/s, does not bind once
    // its 10/s floor has had a second to accrue, as on any running proxy.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = 200u64;
    let start = tokio::time::Instant::now();
    let mut ok = 0;
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_millis(i * 1000 / 20)).await;
        let r = get(
            &client,
            proxy.outbound,
            "reviews",
            "/",
            &[("x-echo-fail-once", "0.5")],
        )
        .await?;
        ok += u64::from(r.status == 200);
    }
    let rate = ok as f64 / n as f64;
    assert!(rate >= 0.995, "success {rate}");
    let retried = proxy.metric_sum("trellis_retries_total", &["reason=\"status\""])?;
    assert!(
        (60.0..140.0).contains(&retried),
        "retries counted: {retried}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_after_reaching_upstream_but_get_is() -> Result<()> {
    let (get_backend, post_backend) =
        (Echo::start("reviews", "v1")?, Echo::start("ratings", "v1")?);
    let retries = "retries: {attempts: 3, retryOn: 5xx}";
    let text = format!(
        "{}---\n{}",
        rules::service(
            "reviews",
            &[("v1", &get_backend)],
            &route(&format!("  - {retries}\n    route: [{{destination: {{host: reviews}}}}]\n"))
        ),
        rules::service(
            "ratings",
            &[("v1", &post_backend)],
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n  - {retries}\n    route: [{{destination: {{host: ratings}}}}]\n"
            )
        )
    );
    let proxy = Proxy::start(&text)?;
    let client = client::http1();
    let fail = [("x-echo-fail-once", "1")];
    // a second for the retry budget's 10/s floor to accrue after start-up
    tokio::time::sleep(Duration::from_secs(1)).await;
    let post = send(
        &client,
        proxy.outbound,
        "POST",
        "ratings",
        "/",
        &fail,
        Bytes::from_static(b"{}"),
    )
    .await?;
    assert_eq!(post.status, 503, "the POST's own 503 comes back");
    assert_eq!(
        stats(&post_backend).await?["by_method"]["POST"],
        1,
        "POST sent once"
    );

    let get_reply = get(&client, proxy.outbound, "reviews", "/", &fail).await?;
    assert_eq!(get_reply.status, 200, "the GET was retried");
    assert_eq!(
        stats(&get_backend).await?["by_method"]["GET"],
        2,
        "GET sent twice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_answers_504_and_cancels_the_upstream_request() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let vs = route("  - timeout: 300ms\n    route: [{destination: {host: reviews}}]\n");
    let proxy = Proxy::start(&rules::service("reviews", &[("v1", &v1)], &vs))?;
    for client in [client::http1(), client::http2(proxy.outbound).await?] {
        let before = stats(&v1).await?["cancelled"].as_u64().unwrap_or(0);
        let started = Instant::now();
        let r = get(
            &client,
            proxy.outbound,
            "reviews",
            "/",
            &[("x-echo-delay", "5s")],
        )
        .await?;
        let took = started.elapsed();
        assert_eq!(r.status, 504);
        assert_eq!(r.header("x-trellis-reason"), Some("timeout"));
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(350),
            "{took:?}"
        );
        // the backend sees its request abandoned within 100 ms
        let answered = Instant::now();
        let mut cancelled = before;
        while cancelled == before && answered.elapsed() < Duration::from_millis(100) {
            cancelled = stats(&v1).await?["cancelled"].as_u64().unwrap_or(0);
        }
        assert_eq!(
            cancelled,
            before + 1,
            "cancellation not seen by the backend within 100 ms"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_load_on_a_failing_backend() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let vs = route(
        "  - retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: reviews}}]
",
    );
    let proxy = Proxy::start(&rules::service("reviews", &[("v1", &v1)], &vs))?;
    // 50 requests per second for 10 s, every one answered 503 by the backend
    let client = client::http1();
    let (rate, seconds) = (50u64, 10u64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..rate * seconds {
        tokio::time::sleep_until(start + Duration::from_millis(i * 1000 / rate)).await;
        let client: HttpClient = client.clone();
        let addr = proxy.outbound;
        tasks.push(tokio::spawn(async move {
            get(&client, addr, "reviews", "/", &[("x-echo-status", "503")])
                .await
                .map(|r| r.status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, 503);
    }
    let duration = start.elapsed().as_secs_f64();
    let received = stats(&v1).await?["requests"].as_u64().unwrap_or(0);
    let sent = rate * seconds;
    // received rate ≤ 1.2 × client rate + 10/s, over the test's duration
    let cap = (1.2 * sent as f64 + 10.0 * duration) as u64;
    assert!(
        received <= cap,
        "backend got {received} for {sent} requests (cap {cap})"
    );
    assert!(
        received > sent,
        "some retries should have been allowed: {received}"
    );
    Ok(())
}

fn bookinfo(file: &str) -> Result<String> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/istio-bookinfo");
    Ok(std::fs::read_to_string(dir.join(file))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_fault_injection_samples_behave_as_in_istio() -> Result<()> {
    let v1 = Echo::start("ratings", "v1")?;
    // Istio's own samples, unchanged: subsets from destination-rule-all.yaml.
    let base = format!(
        "{}---\n{}",
        rules::service_entry("ratings", &[("v1", &v1)]),
        bookinfo("destination-rule-all.yaml")?
    );
    let proxy = Proxy::start(&format!(
        "{base}{}",
        bookinfo("virtual-service-ratings-test-abort.yaml")?
    ))?;
    let client = client::http1();
    for _ in 0..20 {
        let jason = get(
            &client,
            proxy.outbound,
            "ratings",
            "/",
            &[("end-user", "jason")],
        )
        .await?;
        assert_eq!(jason.status, 500);
        let other = get(
            &client,
            proxy.outbound,
            "ratings",
            "/",
            &[("end-user", "bob")],
        )
        .await?;
        assert_eq!(other.status, 200);
    }
    assert_eq!(
        stats(&v1).await?["requests"],
        20,
        "aborted requests never reach the backend"
    );

    proxy.write_config(&format!(
        "{base}{}",
        bookinfo("virtual-service-ratings-test-delay.yaml")?
    ))?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = Instant::now();
    let other = get(&client, proxy.outbound, "ratings", "/", &[]).await?;
    assert_eq!(other.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500));
    let started = Instant::now();
    let jason = get(
        &client,
        proxy.outbound,
        "ratings",
        "/",
        &[("end-user", "jason")],
    )
    .await?;
    let took = started.elapsed();
    assert_eq!(jason.status, 200);
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_millis(7500),
        "{took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_added_and_trace_headers_pass_unchanged() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let proxy = Proxy::start(&rules::service("reviews", &[("v1", &v1)], ""))?;
    let client = client::http1();
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    for _ in 0..50 {
        let r = get(&client, proxy.outbound, "reviews", "/", &[]).await?;
        let id = r.json()?["headers"]["x-request-id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(id.len(), 36, "{id:?}");
        assert!(
            seen.lock().expect("not poisoned").insert(id),
            "request ids repeat"
        );
    }
    let trace = [
        ("x-request-id", "given-id"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ];
    let r = get(&client, proxy.outbound, "reviews", "/", &trace).await?;
    let headers = &r.json()?["headers"];
    for (k, v) in trace {
        assert_eq!(headers[k], v, "{k}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_connect_timeout_bounds_connecting() -> Result<()> {
    // A listener that never accepts, its backlog full: new connects hang.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = stuck.local_addr()?;
    let mut fillers = Vec::new();
    while fillers.len() < 4096 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    assert!(fillers.len() < 4096, "could not fill the listen backlog");
    let rules = format!(
        "apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {{name: stuck}}
spec:
  hosts: [stuck]
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {}}}}}]
---
apiVersion: networking.trellis.io/v1
kind: DestinationRule
metadata: {{name: stuck}}
spec:
  host: stuck
  trafficPolicy:
    connectionPool:
      tcp: {{connectTimeout: 200ms}}
",
        addr.port()
    );
    let proxy = Proxy::start(&rules)?;
    let started = Instant::now();
    let r = get(&client::http1(), proxy.outbound, "stuck", "/", &[]).await?;
    let took = started.elapsed();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-trellis-reason"), Some("connect-failure"));
    // the destination's 200 ms, not the 1 s default
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(600),
        "{took:?}"
    );
    drop(stuck);
    Ok(())
}
