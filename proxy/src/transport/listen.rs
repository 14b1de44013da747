//! Accept loop shared by every listener: runs the listener's [`Handshake`]
//! (nothing for plaintext listeners, mTLS for the inbound one) in the
//! connection's own task, serves it with HTTP/1.1 or HTTP/2 (prior
//! knowledge) as the client speaks, and drains in-flight requests on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::config::ConnLimits;
use crate::transport::framing::StrictFraming;

/// The client's address, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Turns an accepted TCP connection into the stream HTTP is served on,
/// and what requests on it should know about it; `None` drops it.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Put in every request's extensions ([`PeerAddr`] for plaintext).
    type Peer: Clone + Send + Sync + 'static;

    fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Option<(Self::Io, Self::Peer)>> + Send;

    /// Puts what requests should know of the connection in their extensions.
    fn extend(peer: &Self::Peer, extensions: &mut http::Extensions) {
        extensions.insert(peer.clone());
    }
}

/// No handshake: HTTP straight over TCP.
#[derive(Clone, Copy, Debug)]
pub struct Plaintext;

impl Handshake for Plaintext {
    type Io = TcpStream;
    type Peer = PeerAddr;

    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Self::Io, Self::Peer)> {
        Some((stream, PeerAddr(peer)))
    }
}

/// A hyper service calling `handle(state, request)` for every request.
pub fn service_with<T, F, Fut>(
    state: Arc<T>,
    handle: F,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    hyper::service::service_fn(move |req| {
        let response = handle(state.clone(), req);
        async move { Ok::<_, Infallible>(response.await) }
    })
}

/// Requests of one connection: in flight, and served so far.
#[derive(Debug, Default)]
struct Activity {
    active: AtomicUsize,
    served: AtomicU64,
}

/// Decrements the connection's in-flight count when the response (head)
/// is ready or the request is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.served.fetch_add(1, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a listener serves: a hyper service answering every request.
pub trait HttpService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `listener` until `shutdown` flips, then gives open connections up
/// to `drain` to finish their requests.
pub async fn serve<S, H: Handshake>(
    name: &'static str,
    listener: TcpListener,
    handshake: H,
    service: S,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: ConnLimits,
) where
    S: HttpService,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let builder = Arc::new(builder);
    // Every connection task holds a sender; draining waits for the last.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let connections = Arc::new(AtomicUsize::new(0));
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(listener = name, %peer, error = %e, "set_nodelay failed");
                    }
                    let conn = Connection {
                        name,
                        peer,
                        limits,
                        shutdown: shutdown.clone(),
                        _open: open.clone(),
                        connections: connections.clone(),
                    };
                    tokio::spawn(conn.run(stream, handshake.clone(), service.clone(), builder.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    drop(open);
    let open_now = connections.load(Ordering::Relaxed);
    tracing::info!(listener = name, connections = open_now, "draining");
    if tokio::time::timeout(drain, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain timed out; closing remaining connections"
        );
    }
}

/// One accepted connection's task.
struct Connection {
    name: &'static str,
    peer: SocketAddr,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    /// Dropped when the connection ends.
    _open: tokio::sync::mpsc::Sender<()>,
    connections: Arc<AtomicUsize>,
}

impl Connection {
    async fn run<S, H: Handshake>(
        mut self,
        stream: TcpStream,
        handshake: H,
        service: S,
        builder: Arc<auto::Builder<TokioExecutor>>,
    ) where
        S: HttpService,
    {
        let (name, peer) = (self.name, self.peer);
        let Some((io, info)) = handshake.handshake(stream, peer).await else {
            return;
        };
        self.connections.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::default());
        let counted = activity.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            H::extend(&info, req.extensions_mut());
            counted.active.fetch_add(1, Ordering::Relaxed);
            let in_flight = InFlight(counted.clone());
            let response = service.clone().call(req);
            async move {
                let response = response.await;
                drop(in_flight);
                response
            }
        });
        let io = TokioIo::new(StrictFraming::new(io));
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        let idle = tokio::time::sleep(self.limits.idle_timeout);
        tokio::pin!(idle);
        let mut served_then = 0;
        let mut closing = *self.shutdown.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(listener = name, %peer, error = %e, "connection closed with error");
                    }
                    break;
                }
                _ = self.shutdown.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = &mut idle, if !closing => {
                    let served = activity.served.load(Ordering::Relaxed);
                    if activity.active.load(Ordering::Relaxed) == 0 && served == served_then {
                        tracing::debug!(listener = name, %peer, "idle connection closed");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        served_then = served;
                        idle.as_mut().reset(tokio::time::Instant::now() + self.limits.idle_timeout);
                    }
                }
            }
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
