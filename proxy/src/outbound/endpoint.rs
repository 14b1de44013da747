//! The client for one endpoint: sends an attempt, whose endpoint the
//! balancer has [`Picked`], over that endpoint's connection pool with its
//! body streamed. Failures keep their type ([`SendError`](crate::transport::error::SendError)):
//! the server edge classifies them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use crate::body::{BoxError, RequestBody};
use crate::discovery::cluster::Cluster;
use crate::layers::balance::{NoEndpoint, Picked};
use crate::transport::pool::PooledBody;

/// Sends each request to the endpoint of `cluster` it was picked for.
#[derive(Clone, Debug)]
pub struct Upstream {
    cluster: Arc<Cluster>,
}

impl Upstream {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

type SendFuture = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, BoxError>> + Send>>;

impl tower::Service<Request<RequestBody>> for Upstream {
    type Response = Response<PooledBody>;
    type Error = BoxError;
    type Future = SendFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> SendFuture {
        let pool = req
            .extensions()
            .get::<Picked>()
            .and_then(|Picked(i)| self.cluster.endpoints.get(*i))
            .map(|e| e.pool.clone());
        Box::pin(async move {
            let Some(pool) = pool else {
                return Err(NoEndpoint.into());
            };
            pool.send(req).await.map_err(BoxError::from)
        })
    }
}
