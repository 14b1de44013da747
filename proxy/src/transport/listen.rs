//! Accept loop shared by every listener: runs the listener's [`Handshake`]
//! (nothing for plaintext listeners, mTLS for the inbound one) in the
//! connection's own task, serves it with HTTP/1.1 or HTTP/2 (prior
//! knowledge) as the client speaks, and drains in-flight requests on
//! shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::body::ProxyBody;

/// The client's address, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Turns an accepted TCP connection into the stream HTTP is served on,
/// and what requests on it should know about it; `None` drops it.
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;
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
    type Io = TokioIo<TcpStream>;
    type Peer = PeerAddr;

    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Self::Io, Self::Peer)> {
        Some((TokioIo::new(stream), PeerAddr(peer)))
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

/// Serves `listener` until `shutdown` flips, then gives open connections up
/// to `drain` to finish their requests.
pub async fn serve<S, H: Handshake>(
    name: &'static str,
    listener: TcpListener,
    handshake: H,
    service: S,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(listener = name, %peer, error = %e, "set_nodelay failed");
                    }
                    let inner = service.clone();
                    let watcher = graceful.watcher();
                    let handshake = handshake.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let Some((io, info)) = handshake.handshake(stream, peer).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                            H::extend(&info, req.extensions_mut());
                            inner.call(req)
                        });
                        let conn = builder.serve_connection(io, svc).into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(listener = name, %peer, error = %e, "connection closed with error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tracing::info!(listener = name, connections = graceful.count(), "draining");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "drain timed out; closing remaining connections"
        );
    }
}
