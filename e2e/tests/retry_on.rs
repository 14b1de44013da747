//! End-to-end `retryOn` decided by the error's type, against real peers
//! that misbehave: an HTTP/2 upstream (max_concurrent_streams 1) that
//! answers a connection's first stream with RST_STREAM(REFUSED_STREAM), and
//! an HTTP/1 upstream that closes a connection's first request unanswered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trellis_e2e::client::{self, send};
use trellis_e2e::harness::Proxy;

/// Rules for `flaky` at `port` (`protocol` HTTP or HTTP2), one route with `retry_on`.
fn rules(port: u16, protocol: &str, retry_on: &str) -> String {
    format!(
        "{}---
# A new proxy's budget has had no time to accrue its per-second floor:
# allow one retry per request.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: flaky}}
spec:
  host: flaky
  trafficPolicy:
    retryBudget: {{percent: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - retries: {{attempts: 2, perTryTimeout: 2s, retryOn: \"{retry_on}\"}}
    route: [{{destination: {{host: flaky}}}}]
",
        trellis_e2e::rules::single_endpoint(&["flaky"], 80, protocol, Some(port))
    )
}

/// An h2c server that refuses the first stream of every connection.
async fn refusing_h2(listener: TcpListener, refused: Arc<AtomicU64>) {
    while let Ok((socket, _)) = listener.accept().await {
        let refused = refused.clone();
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::Builder::new()
                .max_concurrent_streams(1)
                .handshake::<_, Bytes>(socket)
                .await
            else {
                return;
            };
            let mut first = true;
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                if std::mem::take(&mut first) {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Ok(mut body) = respond.send_response(http::Response::new(()), false) else {
                    continue;
                };
                let _ = body.send_data(Bytes::from_static(b"served"), true);
            }
        });
    }
}

/// An HTTP/1 server that closes the first connection after reading the
/// request head, and answers on every later one.
async fn resetting_http1(listener: TcpListener, resets: Arc<AtomicU64>) {
    let mut first = true;
    while let Ok((mut socket, _)) = listener.accept().await {
        let reset = std::mem::take(&mut first);
        let resets = resets.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let Ok(n) = socket.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    if reset {
                        resets.fetch_add(1, Ordering::SeqCst);
                        return; // closed with no answer
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nserved";
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    head.clear();
                }
            }
        });
    }
}

async fn post(proxy: &Proxy) -> Result<(u16, Option<String>, Bytes)> {
    let client = client::http1();
    let r = send(
        &client,
        proxy.outbound,
        "POST",
        "flaky",
        "/",
        &[],
        Bytes::from("x"),
    )
    .await?;
    Ok((
        r.status.as_u16(),
        r.header("x-trellis-reason").map(str::to_string),
        r.body,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_retried_when_retry_on_says_so_even_for_a_post() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let refused = Arc::new(AtomicU64::new(0));
    tokio::spawn(refusing_h2(listener, refused.clone()));

    let proxy = Proxy::start(&rules(port, "HTTP2", "refused-stream"))?;
    let (status, reason, body) = post(&proxy).await?;
    assert_eq!((status, reason, &body[..]), (200, None, &b"served"[..]));
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "no REFUSED_STREAM was sent"
    );
    let counted = proxy.metric_sum("trellis_retries_total", &["reason=\"refused-stream\""])?;
    assert_eq!(counted, 1.0);

    // Without refused-stream in retryOn, the refusal is the answer.
    let proxy = Proxy::start(&rules(port, "HTTP2", "connect-failure"))?;
    let (status, reason, _) = post(&proxy).await?;
    assert_eq!((status, reason.as_deref()), (502, Some("upstream-reset")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_retried_on_reset() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let resets = Arc::new(AtomicU64::new(0));
    tokio::spawn(resetting_http1(listener, resets.clone()));

    // A GET may be sent again after a reset.
    let proxy = Proxy::start(&rules(port, "HTTP", "reset"))?;
    let client = client::http1();
    let r = client::get(&client, proxy.outbound, "flaky", "/", &[]).await?;
    assert_eq!(r.status, 200);
    assert_eq!(resets.load(Ordering::SeqCst), 1, "the upstream never reset");
    let counted = proxy.metric_sum("trellis_retries_total", &["reason=\"reset\""])?;
    assert_eq!(counted, 1.0);
    Ok(())
}
