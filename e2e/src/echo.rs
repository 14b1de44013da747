//! `trellis-echo`: a test backend (HTTP/1.1 and h2c on one port) that
//! answers JSON describing the request, and can be told, by request header
//! `x-echo-<control>` or query parameter `<control>`, to misbehave:
//!
//! | control      | effect                                                  |
//! |--------------|---------------------------------------------------------|
//! | `delay`      | wait this long before answering (`250ms`, `1s`)         |
//! | `status`     | answer with this status                                 |
//! | `fail-rate`  | answer `fail-status` (default 503) with this probability |
//! | `bytes`      | answer this many bytes of the deterministic payload     |
//! | `fail-once`  | with this probability per `x-request-id`, fail the first request carrying that id (`fail-status`), answer its repeats |
//!
//! `GET /_echo/set?status=N` makes N the instance's answer to every later
//! request (as if it broke, or recovered: `status=200`).
//!
//! `GET /_echo/stats` returns `{"requests": N, "connections": K,
//! "by_method": {..}, "by_host": {..}, "cancelled": C}`: requests (by method
//! and by `Host`/`:authority`) and connections received so
//! far, and how many requests were abandoned by the client (connection or
//! stream closed) before the answer was ready.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::payload::{self, Digest};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Identity of one echo instance.
#[derive(Debug)]
pub struct Echo {
    pub name: String,
    pub version: String,
    requests: AtomicU64,
    connections: AtomicU64,
    cancelled: Arc<AtomicU64>,
    by_method: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    by_host: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Status of every answer unless a request says otherwise (0 = 200).
    default_status: std::sync::atomic::AtomicU16,
    /// Request ids seen by `fail-once`.
    seen_ids: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Counts the request as cancelled if it is dropped before it completes.
struct InFlight {
    cancelled: Arc<AtomicU64>,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Echo {
    pub fn new(name: &str, version: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            version: version.into(),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            cancelled: Arc::new(AtomicU64::new(0)),
            by_method: Default::default(),
            by_host: Default::default(),
            seen_ids: Default::default(),
            default_status: std::sync::atomic::AtomicU16::new(0),
        })
    }

    /// Serves on `listener` forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            self.connections.fetch_add(1, Ordering::SeqCst);
            let this = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/_echo/stats" {
            let stats = serde_json::json!({
                "requests": self.requests.load(Ordering::SeqCst),
                "connections": self.connections.load(Ordering::SeqCst),
                "cancelled": self.cancelled.load(Ordering::SeqCst),
                "by_method": *self.by_method.lock().expect("not poisoned"),
                "by_host": *self.by_host.lock().expect("not poisoned"),
            });
            return self.respond(StatusCode::OK, full(format!("{stats}\n")));
        }
        if req.uri().path() == "/_echo/set" {
            let status = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("status="))
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|s| StatusCode::from_u16(*s).is_ok());
            return match status {
                Some(s) => {
                    self.default_status.store(s, Ordering::SeqCst);
                    self.respond(StatusCode::OK, full("ok\n"))
                }
                None => self.respond(StatusCode::BAD_REQUEST, full("want ?status=NNN\n")),
            };
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        *self
            .by_method
            .lock()
            .expect("not poisoned")
            .entry(req.method().to_string())
            .or_default() += 1;
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_string();
        *self
            .by_host
            .lock()
            .expect("not poisoned")
            .entry(host)
            .or_default() += 1;
        let mut in_flight = InFlight {
            cancelled: self.cancelled.clone(),
            done: false,
        };
        let control = |name: &str| -> Option<String> {
            let header = format!("x-echo-{name}");
            if let Some(v) = req
                .headers()
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
            {
                return Some(v.to_string());
            }
            req.uri().query()?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        };
        let delay = control("delay").and_then(|d| parse_duration(&d));
        let status = control("status").and_then(|s| s.parse::<u16>().ok());
        let fail_rate = control("fail-rate").and_then(|s| s.parse::<f64>().ok());
        let fail_status = control("fail-status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(503);
        let size = control("bytes").and_then(|s| s.parse::<u64>().ok());
        let fail_once = control("fail-once").and_then(|s| s.parse::<f64>().ok());
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);

        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect();
        let version = format!("{:?}", req.version());

        // Read (and digest) the request body without keeping it.
        let mut body = req.into_body();
        let mut digest = Digest::new();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        body_bytes += data.len() as u64;
                        digest.update(data);
                    }
                }
                Err(_) => return self.respond(StatusCode::BAD_REQUEST, full("body error\n")),
            }
        }
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let default = Some(self.default_status.load(Ordering::SeqCst)).filter(|s| *s != 0);
        let mut code = status
            .or(default)
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        if fail_rate.is_some_and(|rate| fastrand::f64() < rate) {
            code = StatusCode::from_u16(fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        }
        if let (Some(p), Some(id)) = (fail_once, &request_id) {
            let first = self
                .seen_ids
                .lock()
                .expect("not poisoned")
                .insert(id.clone());
            if first && fraction_of(id) < p {
                code = StatusCode::from_u16(fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            }
        }
        in_flight.done = true;
        if let Some(size) = size {
            return self.respond(code, stream_payload(size));
        }
        let json = serde_json::json!({
            "name": self.name,
            "version": self.version,
            "method": method,
            "path": path,
            "query": query,
            "protocol": version,
            "headers": headers,
            "body_bytes": body_bytes,
            "body_sha256": digest.hex(),
        });
        self.respond(code, full(format!("{json}\n")))
    }

    fn respond(&self, status: StatusCode, body: Body) -> Response<Body> {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.name) {
            h.insert("x-echo-name", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.version) {
            h.insert("x-echo-version", v);
        }
        resp
    }
}

/// A stable number in [0, 1) for a request id.
fn fraction_of(id: &str) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed_unsync()
}

/// `size` payload bytes in 64 KiB chunks, generated as they are sent.
fn stream_payload(size: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let chunks = futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
        let offset = i * CHUNK;
        let len = CHUNK.min(size - offset) as usize;
        Ok::<_, Infallible>(Frame::data(Bytes::from(payload::chunk(offset, len))))
    }));
    StreamBody::new(chunks).boxed_unsync()
}

fn parse_duration(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .map(|v| Duration::from_secs_f64(v / 1000.0));
    }
    s.strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

/// Binds `addr` and serves an echo there; returns the bound address.
pub async fn spawn(addr: SocketAddr, name: &str, version: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(Echo::new(name, version).serve(listener));
    Ok(local)
}
