//! End-to-end: a request body the client cuts off, or frames badly (a
//! chunk size that is not hexadecimal, or a size line RFC 9112 does not
//! allow), is the client's fault.
//! It is answered 400 (when the client still listens) and never counts
//! against the endpoint: outlier detection ejects no one.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_e2e::harness::{Echo, Proxy};
use trellis_e2e::rules;

/// A POST announcing 1000 bytes that sends 10 and half-closes.
const TRUNCATED: &[u8] =
    b"POST / HTTP/1.1\r\nhost: reviews\r\ncontent-length: 1000\r\n\r\n0123456789";

/// A chunked POST whose second chunk size is not hexadecimal.
const BAD_CHUNK: &[u8] =
    b"POST / HTTP/1.1\r\nhost: reviews\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n";

/// Sends `request` and half-closes; returns the status line the proxy
/// answered, if any.
async fn broken_post(proxy: &Proxy, request: &[u8]) -> Result<String> {
    exchange(proxy, request, true).await
}

/// Sends `request` (half-closing after it if `half_close`); returns the
/// status line the proxy answered, if any.
async fn exchange(proxy: &Proxy, request: &[u8], half_close: bool) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(proxy.outbound).await?;
    s.write_all(request).await?;
    if half_close {
        s.shutdown().await?;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// A proxy to two healthy endpoints of `reviews` that three gateway errors
/// in a row would eject (with the endpoints, kept running).
fn ejecting_proxy() -> Result<([Echo; 2], Proxy)> {
    let (a, b) = (Echo::start("reviews", "v1")?, Echo::start("reviews", "v1")?);
    let vs = rules::virtual_service("reviews", "  - route: [{destination: {host: reviews}}]\n");
    let policy = "    outlierDetection: {consecutiveGatewayErrors: 3, consecutive5xxErrors: 3, baseEjectionTime: 30s, maxEjectionPercent: 100}\n";
    let yaml = rules::service_with_policy("reviews", &[("v1", &a), ("v2", &b)], policy, &vs);
    let proxy = Proxy::start(&yaml)?;
    Ok(([a, b], proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_malformed_bodies_get_400_and_eject_no_endpoint() -> Result<()> {
    let (_endpoints, proxy) = ejecting_proxy()?;
    let mut answers = Vec::new();
    for request in [TRUNCATED, BAD_CHUNK] {
        for _ in 0..8 {
            answers.push(broken_post(&proxy, request).await?);
        }
    }
    for answer in &answers {
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "a broken body was answered {answer:?}"
        );
    }
    let ejections = proxy.metric_sum("trellis_outlier_ejections_total", &[])?;
    assert_eq!(
        ejections, 0.0,
        "the client's broken bodies ejected endpoints"
    );
    let charged = proxy.metric_sum("trellis_requests_total", &["reason=\"upstream-reset\""])?;
    assert_eq!(charged, 0.0, "counted as upstream resets");
    let bad = proxy.metric_sum("trellis_requests_total", &["reason=\"bad-request\""])?;
    assert_eq!(bad, 16.0);
    Ok(())
}

/// Chunk-size lines RFC 9112 does not allow, which hyper alone would take
/// as a size of 5: whitespace not followed by an extension, a control byte
/// or an empty value in an extension.
const LOOSE_SIZE_LINES: &[&str] = &["5 \r\n", "5\t\r\n", "5;a\u{1}\r\n", "5;a=\r\n"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_size_lines_are_parsed_strictly() -> Result<()> {
    let (_endpoints, proxy) = ejecting_proxy()?;
    let post = |size_line: &str| {
        format!(
            "POST / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{size_line}hello\r\n0\r\n\r\n"
        )
    };
    for size_line in LOOSE_SIZE_LINES.iter().cycle().take(8) {
        let answer = exchange(&proxy, post(size_line).as_bytes(), false).await?;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "size line {size_line:?} was answered {answer:?}"
        );
    }
    // What the RFC allows still passes: extensions, with whitespace
    // around `;` and `=`, and a quoted value.
    for size_line in ["5;name=value\r\n", "5 ; n = \"v\"\r\n"] {
        let answer = exchange(&proxy, post(size_line).as_bytes(), false).await?;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "size line {size_line:?} was answered {answer:?}"
        );
    }
    let ejections = proxy.metric_sum("trellis_outlier_ejections_total", &[])?;
    assert_eq!(ejections, 0.0, "badly framed bodies ejected endpoints");
    let bad = proxy.metric_sum("trellis_requests_total", &["reason=\"bad-request\""])?;
    assert_eq!(bad, 8.0);
    Ok(())
}
