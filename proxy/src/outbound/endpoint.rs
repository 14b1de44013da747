//! One attempt of a request: picks an endpoint of the destination (one not
//! yet tried by this request when there is one) and sends the request over
//! a pooled connection, streaming the body.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::future::{self, Either, MapErr, Ready, TryFutureExt};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::ResponseFuture;

use super::local_reply::{LocalError, Reason};
use crate::body::{BoxError, RequestBody};
use crate::discovery::model::Cluster;
use crate::transport::client::Clients;

/// Endpoints this request has been sent to, shared by its attempts.
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(Arc<Mutex<Vec<Authority>>>);

impl TriedEndpoints {
    fn snapshot(&self) -> Vec<Authority> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn push(&self, endpoint: Authority) {
        if let Ok(mut tried) = self.0.lock() {
            tried.push(endpoint);
        }
    }
}

/// Sends one attempt to an endpoint of `cluster`.
#[derive(Clone, Debug)]
pub struct Attempt {
    clients: Clients,
    cluster: Arc<Cluster>,
}

impl Attempt {
    pub fn new(clients: Clients, cluster: Arc<Cluster>) -> Self {
        Self { clients, cluster }
    }
}

/// The client's response future with errors classified, or an immediate failure.
pub type AttemptFuture = Either<
    MapErr<ResponseFuture, fn(hyper_util::client::legacy::Error) -> BoxError>,
    Ready<Result<Response<Incoming>, BoxError>>,
>;

fn fail(reason: Reason) -> AttemptFuture {
    Either::Right(future::ready(Err(LocalError(reason).into())))
}

fn classify(e: hyper_util::client::legacy::Error) -> BoxError {
    tracing::debug!(error = %e, "upstream request failed");
    let reason = if e.is_connect() {
        Reason::ConnectFailure
    } else {
        Reason::UpstreamReset
    };
    LocalError(reason).into()
}

impl tower::Service<Request<RequestBody>> for Attempt {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> AttemptFuture {
        let tried = req.extensions().get::<TriedEndpoints>().cloned();
        let avoid = tried
            .as_ref()
            .map(TriedEndpoints::snapshot)
            .unwrap_or_default();
        let Some(endpoint) = self.cluster.next_endpoint_avoiding(&avoid) else {
            return fail(Reason::NoHealthyUpstream);
        };
        let authority = endpoint.authority.clone();
        if let Some(tried) = &tried {
            tried.push(authority.clone());
        }
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        match Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return fail(Reason::BadRequest),
        }
        let request = self.clients.get(self.cluster.protocol).request(req);
        Either::Left(request.map_err(classify as fn(_) -> BoxError))
    }
}
