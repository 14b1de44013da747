//! Connections to one endpoint: idle HTTP/1.1 connections reused one
//! request at a time, or one shared HTTP/2 (h2c) connection; new ones are
//! dialled within the destination's connect timeout, and a connection is
//! retired after `maxRequestsPerConnection` requests. An HTTP/1 connection
//! goes back to the idle list when its response body has been read to the
//! end; a request that a stale idle connection could not even send is sent
//! again on a fresh one.
//!
//! To an endpoint with a sidecar the pool originates mTLS with the proxy's
//! current certificate, checks that the server's SPIFFE id is one allowed
//! to serve the endpoint, and multiplexes every request (HTTP/1.1 from the
//! app included) over one HTTP/2 connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use super::error::SendError;
use super::error::{ConnectError, TlsError};
use super::io::MaybeTls;
use crate::body::RequestBody;
use crate::identity::{verify::io_failure_reason, Identity};

/// Idle HTTP/1 connections older than this are closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How connections to an endpoint are made and retired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub http2: bool,
    pub connect_timeout: Duration,
    /// 0 = unlimited.
    pub max_requests_per_connection: u32,
    /// Originate mTLS, accepting a server with one of these identities
    /// (`spiffe://...` or `ns/x/sa/y` in the proxy's trust domain).
    pub mtls: Option<Arc<[String]>>,
}

#[derive(Debug)]
struct Http1Conn {
    sender: http1::SendRequest<RequestBody>,
    used: u32,
    idle_since: Instant,
}

#[derive(Debug)]
struct Http2Conn {
    sender: http2::SendRequest<RequestBody>,
    used: AtomicU32,
}

/// The connections of one endpoint.
#[derive(Debug)]
pub struct EndpointPool {
    address: String,
    pub config: PoolConfig,
    identity: Option<Arc<Identity>>,
    idle: Mutex<Vec<Http1Conn>>,
    h2: tokio::sync::Mutex<Option<Http2Conn>>,
}

impl EndpointPool {
    pub fn new(address: &str, config: PoolConfig, identity: Option<Arc<Identity>>) -> Self {
        Self {
            address: address.to_string(),
            config,
            identity,
            idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends `req` (origin-form URI and `Host` for HTTP/1; absolute URI for
    /// HTTP/2) and returns the response with its body still streaming.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        if self.config.mtls.is_some() || self.config.http2 {
            // An HTTP/1.1 request from the application becomes HTTP/2 form.
            self.send_http2(absolute_form(req)?).await
        } else {
            self.send_http1(req).await
        }
    }

    async fn send_http1(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.dial_http1().await?, false),
            };
            if conn.sender.ready().await.is_err() {
                if reused {
                    continue; // it closed while idle
                }
                return Err(self.connect_error(ConnectError::Closed));
            }
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    conn.used += 1;
                    let max = self.config.max_requests_per_connection;
                    let keep = (max == 0 || conn.used < max).then(|| (conn, self.clone()));
                    return Ok(resp.map(|body| PooledBody::new(body, keep)));
                }
                Err(mut e) => match e.take_message() {
                    // never written on a stale connection: send it on another
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(self.upstream_error(e.into_error())),
                },
            }
        }
    }

    async fn send_http2(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let mut sender = {
            let mut shared = self.h2.lock().await;
            let reusable = shared.as_ref().is_some_and(|c| !c.sender.is_closed());
            if !reusable {
                *shared = Some(self.dial_http2().await?);
            }
            let conn = shared.as_ref().expect("set just above");
            let sender = conn.sender.clone();
            let n = conn.used.fetch_add(1, Ordering::Relaxed) + 1;
            let max = self.config.max_requests_per_connection;
            if max != 0 && n >= max {
                *shared = None; // retire it: the next request dials anew
            }
            sender
        };
        sender.ready().await.map_err(|e| self.upstream_error(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.upstream_error(e))?;
        Ok(resp.map(|body| PooledBody::new(body, None)))
    }

    fn connect_error(&self, source: ConnectError) -> SendError {
        SendError::Connect {
            endpoint: self.address.clone(),
            source,
        }
    }

    fn upstream_error(&self, source: hyper::Error) -> SendError {
        SendError::Upstream {
            endpoint: self.address.clone(),
            source,
        }
    }

    fn checkout(&self) -> Option<Http1Conn> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.idle_since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, mut conn: Http1Conn) {
        conn.idle_since = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }

    async fn dial(&self) -> Result<TokioIo<MaybeTls>, SendError> {
        self.connect(false).await.map(TokioIo::new)
    }

    /// A connection for opaque TCP: plain, or mTLS to the endpoint's
    /// sidecar with ALPN `trellis-tcp` (its inbound side relays the bytes).
    pub async fn open_opaque(&self) -> Result<MaybeTls, SendError> {
        self.connect(true).await
    }

    async fn connect(&self, opaque: bool) -> Result<MaybeTls, SendError> {
        let timeout = self.config.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.address.as_str()))
            .await
            .map_err(|_| self.connect_error(ConnectError::Timeout(timeout)))?
            .map_err(|e| self.connect_error(ConnectError::Io(e)))?;
        let _ = stream.set_nodelay(true);
        match &self.config.mtls {
            None => Ok(MaybeTls::Plain(stream)),
            Some(allowed) => self
                .handshake(stream, allowed, opaque)
                .await
                .map_err(|e| self.connect_error(ConnectError::Tls(e))),
        }
    }

    /// mTLS to the endpoint's sidecar; the server must prove one of the
    /// `allowed` identities.
    async fn handshake(
        &self,
        stream: TcpStream,
        allowed: &[String],
        opaque: bool,
    ) -> Result<MaybeTls, TlsError> {
        let identity = self.identity.as_ref();
        let Some(credentials) = identity.and_then(|i| i.current()) else {
            return Err(TlsError::NoCertificate);
        };
        let metrics = identity.map(|i| i.metrics());
        let name =
            rustls::pki_types::ServerName::try_from("sidecar.trellis").expect("a valid DNS name");
        let config = if opaque {
            &credentials.client_tcp
        } else {
            &credentials.client
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tls = match tokio::time::timeout(
            self.config.connect_timeout,
            connector.connect(name, stream),
        )
        .await
        {
            Err(_) => {
                metrics.inspect(|m| m.handshake_failure("outbound", "timeout"));
                return Err(TlsError::Timeout);
            }
            Ok(Err(e)) => {
                let reason = io_failure_reason(&e);
                metrics.inspect(|m| m.handshake_failure("outbound", reason));
                return Err(TlsError::Handshake(e));
            }
            Ok(Ok(tls)) => tls,
        };
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| {
                crate::identity::spiffe::identity_of(leaf, &credentials.trust_domain).ok()
            });
        let Some(peer) = peer else {
            return Err(TlsError::NoPeerIdentity);
        };
        if !allowed
            .iter()
            .any(|id| credentials.expand(id) == peer.as_str())
        {
            metrics.inspect(|m| m.handshake_failure("outbound", "unexpected-identity"));
            return Err(TlsError::UnexpectedIdentity {
                peer: peer.to_string(),
                allowed: allowed.join(", "),
            });
        }
        Ok(MaybeTls::Tls(Box::new(tls.into())))
    }

    async fn dial_http1(&self) -> Result<Http1Conn, SendError> {
        let io = self.dial().await?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| self.connect_error(ConnectError::Handshake(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(Http1Conn {
            sender,
            used: 0,
            idle_since: Instant::now(),
        })
    }

    async fn dial_http2(&self) -> Result<Http2Conn, SendError> {
        let io = self.dial().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| self.connect_error(ConnectError::Handshake(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection closed");
            }
        });
        Ok(Http2Conn {
            sender,
            used: AtomicU32::new(0),
        })
    }
}

/// Puts a request in the form HTTP/2 sends: an absolute `http` URI with
/// `path`, whose authority is the `Host` header (removed) or else the URI's.
pub fn into_http2_form(
    parts: &mut http::request::Parts,
    path: http::uri::PathAndQuery,
) -> Result<(), http::Error> {
    let authority = parts
        .headers
        .remove(HOST)
        .and_then(|h| {
            h.to_str()
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
        })
        .or_else(|| parts.uri.authority().cloned());
    let mut uri = Uri::builder().scheme(http::uri::Scheme::HTTP);
    if let Some(authority) = authority {
        uri = uri.authority(authority);
    }
    parts.uri = uri.path_and_query(path).build()?;
    parts.version = Version::HTTP_2;
    Ok(())
}

/// `req` in HTTP/2 form (an HTTP/1.1 request from the app, say).
fn absolute_form(req: Request<RequestBody>) -> Result<Request<RequestBody>, SendError> {
    if req.version() == Version::HTTP_2 && req.uri().authority().is_some() {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    into_http2_form(&mut parts, path).map_err(SendError::Form)?;
    Ok(Request::from_parts(parts, body))
}

/// An upstream response body; for HTTP/1 it returns its connection to the
/// pool once read to the end (a body dropped early closes the connection).
pub struct PooledBody {
    body: Incoming,
    give_back: Option<(Http1Conn, Arc<EndpointPool>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl PooledBody {
    fn new(body: Incoming, give_back: Option<(Http1Conn, Arc<EndpointPool>)>) -> Self {
        let mut this = Self { body, give_back };
        if http_body::Body::is_end_stream(&this.body) {
            this.release(); // nothing to read: the server may never poll us
        }
        this
    }

    fn release(&mut self) {
        if let Some((conn, pool)) = self.give_back.take() {
            pool.checkin(conn);
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.give_back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
