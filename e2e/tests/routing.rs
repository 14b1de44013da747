//! End-to-end routing through a real `trellis-proxy` in static mode, against
//! real `trellis-echo` backends on loopback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use trellis_e2e::client::{self, get, send};
use trellis_e2e::harness::{free_port, Echo, Proxy};
use trellis_e2e::payload;

/// ServiceEntry + DestinationRule for `reviews`, then `routes`.
fn rules(backends: &[(&str, &Echo)], routes: &str) -> String {
    trellis_e2e::rules::service("reviews", backends, routes)
}

fn split(v1: u32, v2: u32) -> String {
    trellis_e2e::rules::virtual_service(
        "reviews",
        &format!(
            "  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"
        ),
    )
}

/// Sends `n` GETs, `concurrency` at a time; returns the `x-echo-version` of each 2xx (or the status).
async fn versions(
    proxy: &Proxy,
    host: &str,
    n: usize,
    concurrency: usize,
    headers: &[(&str, &str)],
) -> Vec<String> {
    let client = client::http1();
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let per = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, out, addr, host) = (
                client.clone(),
                out.clone(),
                proxy.outbound,
                host.to_string(),
            );
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            tokio::spawn(async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                for _ in 0..per {
                    let label = match get(&client, addr, &host, "/", &h).await {
                        Ok(r) if r.status.is_success() => {
                            r.header("x-echo-version").unwrap_or("?").to_string()
                        }
                        Ok(r) => format!("status {}", r.status),
                        Err(e) => format!("error {e}"),
                    };
                    out.lock().expect("not poisoned").push(label);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    Arc::try_unwrap(out)
        .expect("tasks done")
        .into_inner()
        .expect("not poisoned")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_90_10_split_lands_within_3_points() -> Result<()> {
    let (v1, v2) = (Echo::start("reviews", "v1")?, Echo::start("reviews", "v2")?);
    let proxy = Proxy::start(&rules(&[("v1", &v1), ("v2", &v2)], &split(90, 10)))?;
    let seen = versions(&proxy, "reviews", 2000, 8, &[]).await;
    assert_eq!(seen.len(), 2000);
    let failures: Vec<_> = seen.iter().filter(|v| *v != "v1" && *v != "v2").collect();
    assert!(
        failures.is_empty(),
        "non-2xx: {:?}",
        &failures[..failures.len().min(5)]
    );
    let v2_share = seen.iter().filter(|v| *v == "v2").count() as f64 / 20.0;
    assert!(
        (7.0..=13.0).contains(&v2_share),
        "v2 got {v2_share}% (want 10 ± 3)"
    );
    // the metric agrees with what the client saw
    let counted = proxy.metric_sum(
        "trellis_requests_total",
        &["destination_subset=\"v2\"", "response_code=\"200\""],
    )?;
    assert_eq!(counted as usize, seen.iter().filter(|v| *v == "v2").count());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_routes_jason_to_v2_and_others_to_v3() -> Result<()> {
    let (v2, v3) = (Echo::start("reviews", "v2")?, Echo::start("reviews", "v3")?);
    let vs = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v3}}]
";
    let proxy = Proxy::start(&rules(&[("v2", &v2), ("v3", &v3)], vs))?;
    let jason = versions(&proxy, "reviews", 200, 4, &[("end-user", "jason")]).await;
    assert!(jason.iter().all(|v| v == "v2"), "jason: {jason:?}");
    let others = versions(
        &proxy,
        "reviews.default.svc.cluster.local:9080",
        200,
        4,
        &[("end-user", "bob")],
    )
    .await;
    assert!(others.iter().all(|v| v == "v3"), "bob: {others:?}");
    let anonymous = versions(&proxy, "reviews.default", 100, 4, &[]).await;
    assert!(
        anonymous.iter().all(|v| v == "v3"),
        "anonymous: {anonymous:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_flip_under_load_has_no_errors_and_applies_within_1s() -> Result<()> {
    let (v1, v2) = (Echo::start("reviews", "v1")?, Echo::start("reviews", "v2")?);
    let proxy = Proxy::start(&rules(&[("v1", &v1), ("v2", &v2)], &split(100, 0)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let client = client::http1();
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, log, client, addr) =
                (stop.clone(), log.clone(), client.clone(), proxy.outbound);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let label = match get(&client, addr, "reviews", "/", &[]).await {
                        Ok(r) if r.status.is_success() => {
                            r.header("x-echo-version").unwrap_or("?").to_string()
                        }
                        Ok(r) => format!("status {} {:?}", r.status, r.header("x-trellis-reason")),
                        Err(e) => format!("error {e}"),
                    };
                    log.lock()
                        .expect("not poisoned")
                        .push((Instant::now(), label));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flipped_at = Instant::now();
    proxy.write_config(&rules(&[("v1", &v1), ("v2", &v2)], &split(0, 100)))?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // An invalid change: weights no longer sum to 100. Old routing stays.
    let failures_before =
        proxy.metric_sum("trellis_config_reloads_total", &["result=\"failure\""])?;
    proxy.write_config(&rules(&[("v1", &v1), ("v2", &v2)], &split(50, 20)))?;
    let counted = trellis_e2e::harness::wait_until(Duration::from_secs(3), || {
        proxy
            .metric_sum("trellis_config_reloads_total", &["result=\"failure\""])
            .is_ok_and(|n| n > failures_before)
    });
    let invalid_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.await?;
    }
    assert!(
        counted,
        "the invalid config did not increment the reload-failure metric"
    );

    let log = log.lock().expect("not poisoned");
    let errors: Vec<_> = log.iter().filter(|(_, v)| v != "v1" && v != "v2").collect();
    assert!(
        errors.is_empty(),
        "{} non-2xx during the flip, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    let last_v1 = log
        .iter()
        .filter(|(_, v)| v == "v1")
        .map(|(t, _)| *t)
        .max()
        .expect("v1 before the flip");
    let took = last_v1.saturating_duration_since(flipped_at);
    assert!(
        took < Duration::from_secs(1),
        "v1 still served {took:?} after the change"
    );
    let after_invalid: Vec<_> = log.iter().filter(|(t, _)| *t > invalid_at).collect();
    assert!(!after_invalid.is_empty());
    assert!(
        after_invalid.iter().all(|(_, v)| v == "v2"),
        "routing changed after an invalid config"
    );
    assert!(
        log.len() > 200,
        "too little load to mean anything: {}",
        log.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_client_works_through_the_proxy() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let proxy = Proxy::start(&rules(&[("v1", &v1)], ""))?;
    let client = client::http2(proxy.outbound).await?;
    for _ in 0..20 {
        let r = get(&client, proxy.outbound, "reviews", "/h2?x=1", &[]).await?;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let json = r.json()?;
        assert_eq!(json["path"], "/h2");
        assert_eq!(json["query"], "x=1");
    }
    Ok(())
}

/// Sidecar to sidecar: the client's proxy sends to the server's inbound
/// listener, which hands the request to its local application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_crosses_two_sidecars_to_the_app() -> Result<()> {
    let app = Echo::start("reviews", "v1")?;
    let inbound = trellis_e2e::harness::free_addr();
    let (inbound_arg, app_arg) = (inbound.to_string(), app.addr.to_string());
    // The server side routes nothing itself: an explicitly empty rule set.
    let server_side = Proxy::start_with(
        "apiVersion: v1\nkind: List\nitems: []\n",
        &[
            "--inbound-addr",
            &inbound_arg,
            "--inbound-forward",
            &app_arg,
        ],
    )?;
    // The client's sidecar has the server sidecar's inbound port as the endpoint.
    let rules = trellis_e2e::rules::service_at("reviews", &[("v1", inbound.port())], "");
    let client_side = Proxy::start(&rules)?;
    let client = client::http1();
    for _ in 0..10 {
        let r = get(
            &client,
            client_side.outbound,
            "reviews",
            "/through?x=2",
            &[],
        )
        .await?;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let json = r.json()?;
        assert_eq!(json["version"], "v1");
        assert_eq!(json["path"], "/through");
        assert_eq!(json["headers"]["host"], "reviews");
    }
    let inbound_ok = server_side.metric_sum(
        "trellis_requests_total",
        &["direction=\"inbound\"", "response_code=\"200\""],
    )?;
    assert_eq!(inbound_ok, 10.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_bodies_pass_intact_both_ways() -> Result<()> {
    const SIZE: usize = 10 * 1024 * 1024;
    let v1 = Echo::start("reviews", "v1")?;
    let proxy = Proxy::start(&rules(&[("v1", &v1)], ""))?;
    let data = Bytes::from(payload::bytes(SIZE));
    let want = payload::sha256_hex(&data);
    for client in [client::http1(), client::http2(proxy.outbound).await?] {
        let up = send(
            &client,
            proxy.outbound,
            "POST",
            "reviews",
            "/upload",
            &[],
            data.clone(),
        )
        .await?;
        assert_eq!(up.status, 200);
        let json = up.json()?;
        assert_eq!(json["body_bytes"], SIZE as u64);
        assert_eq!(json["body_sha256"], want.as_str());

        let down = get(
            &client,
            proxy.outbound,
            "reviews",
            &format!("/download?bytes={SIZE}"),
            &[],
        )
        .await?;
        assert_eq!(down.status, 200);
        assert_eq!(down.body.len(), SIZE);
        assert_eq!(payload::sha256_hex(&down.body), want);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_name_their_reason() -> Result<()> {
    let v1 = Echo::start("reviews", "v1")?;
    let dead_port = free_port();
    let extra = format!(
        "apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {{name: dead}}
spec:
  hosts: [dead]
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {dead_port}}}}}]
---
apiVersion: networking.trellis.io/v1
kind: ServiceEntry
metadata: {{name: empty}}
spec:
  hosts: [empty]
  ports: [{{number: 80, name: http}}]
"
    );
    let proxy = Proxy::start(&rules(&[("v1", &v1)], &extra))?;
    let client = client::http1();
    for (host, status, reason) in [
        ("nowhere.example", 404, "no-route"),
        ("empty", 503, "no-healthy-upstream"),
        ("dead", 502, "connect-failure"),
    ] {
        let r = get(&client, proxy.outbound, host, "/", &[]).await?;
        assert_eq!(r.status, status, "{host}");
        assert_eq!(r.header("x-trellis-reason"), Some(reason), "{host}");
        let n = proxy.metric_sum("trellis_requests_total", &[&format!("reason=\"{reason}\"")])?;
        assert_eq!(n, 1.0, "metric for {reason}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_the_proxy_keeps_serving() -> Result<()> {
    use std::io::{Read, Write};
    let v1 = Echo::start("reviews", "v1")?;
    let mut proxy = Proxy::start(&rules(&[("v1", &v1)], ""))?;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: reviews\r\nX-Big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    for (raw, want) in [
        ("NOT-HTTP garbage\r\n\r\n".to_string(), "HTTP/1.1 400"),
        (huge, "HTTP/1.1 431"),
    ] {
        let mut s = std::net::TcpStream::connect(proxy.outbound)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let _ = s.write_all(raw.as_bytes());
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf)?;
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with(want), "want {want}, got {head:?}");
    }
    proxy.process.check_running()?;
    let r = get(&client::http1(), proxy.outbound, "reviews", "/", &[]).await?;
    assert_eq!(r.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_hosts_routes_and_endpoints() -> Result<()> {
    let (v1, v2) = (Echo::start("reviews", "v1")?, Echo::start("reviews", "v2")?);
    let proxy = Proxy::start(&rules(&[("v1", &v1), ("v2", &v2)], &split(90, 10)))?;
    let (status, body) = client::blocking_get(proxy.admin, "/config_dump")?;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(dump["version"], 1);
    assert!(dump["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("file:")));
    let host = &dump["hosts"].as_array().expect("hosts")[0];
    assert_eq!(host["name"], "reviews.default.svc.cluster.local");
    let weights: Vec<_> = host["routes"][0]["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| d["weight"].as_u64())
        .collect();
    assert_eq!(weights, [Some(90), Some(10)]);
    let endpoints: Vec<String> = dump["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .flat_map(|c| c["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect();
    assert!(endpoints.contains(&v2.addr.to_string()), "{endpoints:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_redirect_sample_answers_301_with_the_new_location() -> Result<()> {
    // Istio's HTTPRedirect sample: a redirect-only route (no `route`).
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings-route
spec:
  hosts:
  - ratings.prod.svc.cluster.local
  http:
  - match:
    - uri:
        exact: /v1/getProductRatings
    redirect:
      uri: /v1/bookRatings
      authority: newratings.default.svc.cluster.local
  - match:
    - uri:
        prefix: /secure
    redirect:
      scheme: https
      derivePort: FROM_PROTOCOL_DEFAULT
      redirectCode: 302
";
    let proxy = Proxy::start(vs)?;
    let client = client::http1();
    let host = "ratings.prod.svc.cluster.local:9080";
    let moved = get(
        &client,
        proxy.outbound,
        host,
        "/v1/getProductRatings?id=7",
        &[],
    )
    .await?;
    assert_eq!(moved.status, 301);
    assert_eq!(
        moved.header("location"),
        Some("http://newratings.default.svc.cluster.local/v1/bookRatings?id=7")
    );
    let secure = get(&client, proxy.outbound, host, "/secure/a", &[]).await?;
    assert_eq!(secure.status, 302);
    assert_eq!(
        secure.header("location"),
        Some("https://ratings.prod.svc.cluster.local/secure/a")
    );
    let other = get(&client, proxy.outbound, host, "/v1/other", &[]).await?;
    assert_eq!(other.status, 404);
    assert_eq!(other.header("x-trellis-reason"), Some("no-route"));
    Ok(())
}
