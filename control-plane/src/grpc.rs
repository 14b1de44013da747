//! Two gRPC services on one port, told apart by the path's service name:
//! Raft + `MeshControl` on `--raft-addr`, `Identity` + `MeshDiscovery` on
//! `--xds-addr`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

/// Sends requests for `A`'s service name to `a`, all others to `b`.
#[derive(Clone)]
pub struct Dispatch<A, B> {
    pub a: A,
    pub b: B,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<A, B> Service<http::Request<Body>> for Dispatch<A, B>
where
    A: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    A::Future: Send + 'static,
    B: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    B::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Generated tonic servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let for_a = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(A::NAME))
            .is_some_and(|rest| rest.starts_with('/'));
        if for_a {
            Box::pin(self.a.call(request))
        } else {
            Box::pin(self.b.call(request))
        }
    }
}

impl<A: NamedService, B> NamedService for Dispatch<A, B> {
    const NAME: &'static str = A::NAME;
}
