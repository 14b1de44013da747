//! One attempt of a request: the destination's balancer picks an endpoint
//! (one not yet tried by this request when there is one, never an ejected
//! one unless all are), the request goes over a pooled connection with its
//! body streamed, and the outcome feeds the endpoint's load and outlier
//! state.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::{self, Either, Ready};
use http::uri::Authority;
use http::{Request, Response};
use pin_project_lite::pin_project;

use super::local_reply::{LocalError, Reason};
use crate::body::{BoxError, RequestBody};
use crate::discovery::cluster::{Cluster, EndpointState};
use crate::layers::outlier::{Outcome, Transition};
use crate::metrics::Metrics;
use crate::transport::pool::{PooledBody, SendError};

/// Endpoints this request has been sent to, shared by its attempts.
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(Arc<Mutex<Vec<Authority>>>);

impl TriedEndpoints {
    /// Runs `f` on the endpoints tried so far.
    fn with<T>(&self, f: impl FnOnce(&[Authority]) -> T) -> T {
        let tried = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&tried)
    }

    fn push(&self, endpoint: Authority) {
        if let Ok(mut tried) = self.0.lock() {
            tried.push(endpoint);
        }
    }
}

/// The consistent-hash key of a request, computed once per request.
#[derive(Clone, Copy, Debug)]
pub struct HashKey(pub u64);

/// Sends one attempt to an endpoint of `cluster`.
#[derive(Clone, Debug)]
pub struct Attempt {
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
}

impl Attempt {
    pub fn new(cluster: Arc<Cluster>, metrics: Arc<Metrics>) -> Self {
        Self { cluster, metrics }
    }
}

type Inner = Either<
    Pin<Box<dyn Future<Output = Result<Response<PooledBody>, BoxError>> + Send>>,
    Ready<Result<Response<PooledBody>, BoxError>>,
>;

pin_project! {
    /// The client's response future with errors classified; reports the
    /// outcome to the endpoint's load and outlier state when it completes
    /// (or only releases the load when it is dropped unfinished).
    pub struct AttemptFuture {
        #[pin]
        inner: Inner,
        report: Option<Report>,
    }

    impl PinnedDrop for AttemptFuture {
        fn drop(this: Pin<&mut Self>) {
            if let Some(report) = this.project().report.take() {
                report.abandoned();
            }
        }
    }
}

impl Future for AttemptFuture {
    type Output = Result<Response<PooledBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(report) = this.report.take() {
            report.finished(&result);
        }
        Poll::Ready(result)
    }
}

/// Where an attempt went, for reporting its outcome.
struct Report {
    cluster: Arc<Cluster>,
    index: usize,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl Report {
    fn state(&self) -> &EndpointState {
        &self.cluster.endpoints[self.index].state
    }

    fn finished(self, result: &Result<Response<PooledBody>, BoxError>) {
        self.state().load.finish(self.started.elapsed());
        let outcome = match result {
            Ok(r) if r.status().is_server_error() => Outcome::ServerError {
                gateway: matches!(r.status().as_u16(), 502..=504),
            },
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::GatewayFailure,
        };
        let endpoint = &self.cluster.endpoints[self.index].authority;
        match self.cluster.report(self.index, outcome) {
            Transition::Ejected(duration) => {
                self.metrics
                    .ejection(&self.cluster.service, &self.cluster.subset);
                tracing::warn!(cluster = %self.cluster.name, %endpoint, ?duration, "endpoint ejected");
            }
            Transition::Restored => {
                tracing::info!(cluster = %self.cluster.name, %endpoint, "endpoint restored after a successful probe");
            }
            Transition::None => {}
        }
    }

    fn abandoned(self) {
        self.state().load.finish(self.started.elapsed());
        self.state().outlier.probe_abandoned(Instant::now());
    }
}

fn fail(reason: Reason) -> AttemptFuture {
    AttemptFuture {
        inner: Either::Right(future::ready(Err(LocalError(reason).into()))),
        report: None,
    }
}

fn classify(e: SendError) -> BoxError {
    tracing::debug!(error = %e, "upstream request failed");
    let reason = match e {
        SendError::Connect { .. } => Reason::ConnectFailure,
        SendError::Upstream(_) => Reason::UpstreamReset,
    };
    LocalError(reason).into()
}

impl tower::Service<Request<RequestBody>> for Attempt {
    type Response = Response<PooledBody>;
    type Error = BoxError;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> AttemptFuture {
        let tried = req.extensions().get::<TriedEndpoints>().cloned();
        let key = req.extensions().get::<HashKey>().map(|k| k.0);
        let selected = match &tried {
            Some(tried) => tried.with(|avoid| self.cluster.select(key, avoid)),
            None => self.cluster.select(key, &[]),
        };
        let Some(selected) = selected else {
            return fail(Reason::NoHealthyUpstream);
        };
        if selected.panic {
            self.metrics
                .panic(&self.cluster.service, &self.cluster.subset);
        }
        let endpoint = &self.cluster.endpoints[selected.index];
        if let Some(tried) = &tried {
            tried.push(endpoint.authority.clone());
        }
        endpoint.state.load.start();
        let pool = endpoint.pool.clone();
        let send = async move { pool.send(req).await.map_err(classify) };
        AttemptFuture {
            inner: Either::Left(Box::pin(send)),
            report: Some(Report {
                cluster: self.cluster.clone(),
                index: selected.index,
                started: Instant::now(),
                metrics: self.metrics.clone(),
            }),
        }
    }
}
