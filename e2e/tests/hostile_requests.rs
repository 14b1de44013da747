//! End-to-end: requests built to confuse or hold the proxy. One `Host`,
//! the authority routed on (absolute-form wins, HTTP/2 `:authority` and
//! `host` must agree, malformed or repeated hosts are refused, `Connection`
//! cannot strip `Host` or the proxy's own headers); `CONNECT` and
//! authority-form get an answer, not a dropped connection; heads over the
//! limits get 431/414/400; a stalled or trickling body gets 408 and frees
//! the endpoint; an idle connection is closed.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_e2e::client;
use trellis_e2e::harness::{Echo, Proxy};
use trellis_e2e::rules;

/// Sends `request` on a new connection and reads until the proxy closes
/// it (or 10 s): the status line and the whole answer.
async fn raw(proxy: &Proxy, request: &[u8]) -> Result<(String, String)> {
    let mut s = TcpStream::connect(proxy.outbound).await?;
    s.write_all(request).await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    Ok((text.lines().next().unwrap_or("").to_string(), text))
}

/// The JSON the echo answered with, from a raw HTTP/1.1 answer.
fn echo_json(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null)
}

fn two_services(reviews: &Echo, ratings: &Echo) -> String {
    format!(
        "{}---\n{}",
        rules::service("reviews", &[("v1", reviews)], ""),
        rules::service("ratings", &[("v1", ratings)], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_the_one_routed_on() -> Result<()> {
    let (reviews, ratings) = (Echo::start("reviews", "v1")?, Echo::start("ratings", "v1")?);
    let proxy = Proxy::start(&two_services(&reviews, &ratings))?;

    // An absolute-form target wins over Host, and is the Host sent on.
    let (status, answer) = raw(
        &proxy,
        b"GET http://reviews/x HTTP/1.1\r\nhost: ratings\r\nconnection: close\r\n\r\n",
    )
    .await?;
    assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
    let json = echo_json(&answer);
    assert_eq!(json["name"], "reviews", "{answer}");
    assert_eq!(json["headers"]["host"], "reviews", "{answer}");

    // Two Hosts, or one that is not host[:port]: 400, with an answer.
    let bad_hosts = [
        "host: reviews\r\nhost: ratings",
        "host: reviews@ratings",
        "host: reviews/x",
        "host: reviews x",
        "host: reviews:99999",
        "host: reviews, ratings",
    ];
    for host in bad_hosts {
        let request = format!("GET / HTTP/1.1\r\n{host}\r\nconnection: close\r\n\r\n");
        let (status, answer) = raw(&proxy, request.as_bytes()).await?;
        assert!(status.starts_with("HTTP/1.1 400"), "{host:?}: {answer}");
    }

    // `Connection` cannot make Host or the proxy's own headers hop-by-hop.
    let (status, answer) = raw(
        &proxy,
        b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close, host, x-request-id\r\n\r\n",
    )
    .await?;
    assert!(status.starts_with("HTTP/1.1 200"), "{answer}");
    let headers = &echo_json(&answer)["headers"];
    assert_eq!(headers["host"], "reviews", "{answer}");
    assert!(headers["x-request-id"].is_string(), "{answer}");

    // CONNECT is not tunnelled (405) and authority-form is for CONNECT
    // only (400): answered, not dropped.
    let (status, answer) = raw(
        &proxy,
        b"CONNECT reviews:80 HTTP/1.1\r\nhost: reviews:80\r\n\r\n",
    )
    .await?;
    assert!(status.starts_with("HTTP/1.1 405"), "{answer:?}");
    let (status, answer) = raw(
        &proxy,
        b"GET reviews:80 HTTP/1.1\r\nhost: reviews:80\r\nconnection: close\r\n\r\n",
    )
    .await?;
    assert!(status.starts_with("HTTP/1.1 400"), "{answer:?}");

    // HTTP/2: `host` must agree with `:authority`.
    let h2 = client::http2(proxy.outbound).await?;
    let disagree = client::get(&h2, proxy.outbound, "reviews", "/", &[("host", "ratings")]).await?;
    assert_eq!(disagree.status, 400);
    let agree = client::get(&h2, proxy.outbound, "reviews", "/", &[("host", "reviews")]).await?;
    assert_eq!(agree.status, 200);
    assert_eq!(agree.json()?["name"], "reviews");
    assert_eq!(ratings.stats()?["requests"], 0, "nothing reached ratings");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_the_limits_are_refused() -> Result<()> {
    let reviews = Echo::start("reviews", "v1")?;
    let proxy = Proxy::start(&rules::service("reviews", &[("v1", &reviews)], ""))?;
    let get = |extra: &str, target: &str, method: &str| {
        format!("{method} {target} HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n{extra}\r\n")
    };
    let big = |kib: usize| format!("x-big: {}\r\n", "b".repeat(kib << 10));
    let cases = [
        (get(&big(50), "/", "GET"), "200"),
        (get(&big(61), "/", "GET"), "431"),
        (get(&big(200), "/", "GET"), "431"),
        (get("", &format!("/{}", "a".repeat(15 << 10)), "GET"), "200"),
        (get("", &format!("/{}", "a".repeat(17 << 10)), "GET"), "414"),
        (get("", "/", &"A".repeat(33)), "400"),
    ];
    for (request, expected) in cases {
        let (status, answer) = raw(&proxy, request.as_bytes()).await?;
        assert!(
            status.starts_with(&format!("HTTP/1.1 {expected}")),
            "{} bytes: expected {expected}, got {status:?} ({} bytes answered)",
            request.len(),
            answer.len()
        );
    }
    assert_eq!(
        reviews.stats()?["requests"],
        2,
        "only the two within the limits"
    );
    Ok(())
}

/// Sends a POST announcing 100 bytes, then `sent` of them one per
/// `every`, and waits for the answer: its status line and when it came.
async fn slow_post(proxy: &Proxy, sent: usize, every: Duration) -> Result<(String, Duration)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.outbound).await?;
    s.write_all(b"POST / HTTP/1.1\r\nhost: reviews\r\ncontent-length: 100\r\n\r\n")
        .await?;
    let (mut read, mut write) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..sent {
            tokio::time::sleep(every).await;
            if write.write_all(b"x").await.is_err() {
                break;
            }
        }
        // keep the connection open: the proxy must decide, not the client
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(write);
    });
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(15), read.read(&mut answer))
        .await
        .unwrap_or(Ok(0))?;
    trickle.abort();
    let text = String::from_utf8_lossy(&answer[..n]);
    Ok((
        text.lines().next().unwrap_or("").to_string(),
        started.elapsed(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_trickling_bodies_get_408_and_free_the_endpoint() -> Result<()> {
    let reviews = Echo::start("reviews", "v1")?;
    let policy = "    outlierDetection: {consecutiveGatewayErrors: 1, consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}\n";
    let yaml = rules::service_with_policy("reviews", &[("v1", &reviews)], policy, "");
    let proxy = Proxy::start_with(
        &yaml,
        &[
            "--request-body-timeout",
            "1s",
            "--request-body-min-rate",
            "20",
        ],
    )?;
    // Nothing after the head: the body timeout.
    let (status, took) = slow_post(&proxy, 0, Duration::from_secs(1)).await?;
    assert!(
        status.starts_with("HTTP/1.1 408"),
        "stalled body: {status:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "stalled body answered after {took:?}"
    );
    // A byte every 200 ms never stalls 1 s, but is far below 20 bytes/s.
    let (status, took) = slow_post(&proxy, 100, Duration::from_millis(200)).await?;
    assert!(
        status.starts_with("HTTP/1.1 408"),
        "trickled body: {status:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "trickled body answered after {took:?}"
    );
    // The endpoint was not blamed and still serves.
    let ejections = proxy.metric_sum("trellis_outlier_ejections_total", &[])?;
    assert_eq!(ejections, 0.0, "a slow client ejected the endpoint");
    let timeouts = proxy.metric_sum(
        "trellis_requests_total",
        &["reason=\"request-body-timeout\""],
    )?;
    assert_eq!(timeouts, 2.0);
    let reply = client::send(
        &client::http1(),
        proxy.outbound,
        "POST",
        "reviews",
        "/",
        &[],
        Bytes::from(vec![b'y'; 4096]),
    )
    .await?;
    assert_eq!(reply.status, 200, "a normal body still passes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() -> Result<()> {
    let reviews = Echo::start("reviews", "v1")?;
    let proxy = Proxy::start_with(
        &rules::service("reviews", &[("v1", &reviews)], ""),
        &["--idle-timeout", "1s"],
    )?;
    for request in [
        &b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n"[..],
        // HTTP/2 prior knowledge, one request, then silence
        &b""[..],
    ] {
        let started = Instant::now();
        let closed = if request.is_empty() {
            let h2 = client::http2(proxy.outbound).await?;
            let reply = client::get(&h2, proxy.outbound, "reviews", "/", &[]).await?;
            assert_eq!(reply.status, 200);
            // the connection task ends when the proxy sends GOAWAY and closes
            let client::HttpClient::Http2(mut sender) = h2 else {
                unreachable!("an HTTP/2 client")
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                while sender.ready().await.is_ok() && !sender.is_closed() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .is_ok()
        } else {
            let mut s = TcpStream::connect(proxy.outbound).await?;
            s.write_all(request).await?;
            let mut buf = vec![0u8; 64 << 10];
            let first = s.read(&mut buf).await?;
            assert!(first > 0, "answered");
            // the next read sees the proxy close the idle connection
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            })
            .await
            .is_ok()
        };
        let took = started.elapsed();
        assert!(closed, "idle connection still open after {took:?}");
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
    }
    Ok(())
}
