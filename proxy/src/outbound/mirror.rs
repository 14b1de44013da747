//! Mirroring (`mirror`, `mirrorPercentage`, `mirrors`), as Envoy does it: a
//! copy of the request goes to each mirror that samples it, with `-shadow`
//! appended to its host, fire and forget. The copy never delays or fails
//! the main request: it is sent by a task of its own once the main
//! request's body has passed (the body is teed as it streams, never
//! buffered whole ahead of the main request), its response is discarded,
//! and a body over 64 KiB is not mirrored. Each copy is counted in
//! `trellis_mirror_requests_total{result}`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::Request;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use super::endpoint::Upstream;
use super::request::prepare;
use super::sample::chance;
use crate::body::{BodyCopy, BoxError, RequestBody, REPLAY_LIMIT};
use crate::discovery::cluster::Cluster;
use crate::discovery::model::Route;
use crate::layers::balance::Balance;
use crate::layers::outlier::Outlier;
use crate::metrics::Metrics;

/// Copies in flight at once, all mirrors together; more are dropped
/// (`overflow`) rather than queued behind a slow mirror.
const MAX_IN_FLIGHT: usize = 1024;

/// A copy that gets no answer within this long (or the route's timeout,
/// if shorter) is abandoned.
const COPY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends copies of requests to their route's mirrors.
#[derive(Clone, Debug)]
pub struct Mirrors {
    metrics: Arc<Metrics>,
    in_flight: Arc<Semaphore>,
}

impl Mirrors {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Starts the copies of a request (`head` as received, `body` about to
    /// go upstream) for the mirrors of `route` that sample it.
    pub fn start(&self, route: &Route, head: &Parts, body: &mut RequestBody) {
        let chosen: Vec<&Arc<Cluster>> = route
            .mirrors
            .iter()
            .filter(|m| chance(m.percentage))
            .map(|m| &m.cluster)
            .collect();
        if chosen.is_empty() {
            return;
        }
        let mut copies = Vec::with_capacity(chosen.len());
        for cluster in chosen {
            let mut parts = request_head(head);
            if prepare(&mut parts, route, cluster.protocol, None, true).is_err() {
                self.metrics.mirror(&cluster.service, "failed");
                continue;
            }
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                self.metrics.mirror(&cluster.service, "overflow");
                continue;
            };
            copies.push(Shadow {
                cluster: cluster.clone(),
                parts,
                _permit: permit,
            });
        }
        if copies.is_empty() {
            return;
        }
        let timeout = route.timeout.map_or(COPY_TIMEOUT, |t| t.min(COPY_TIMEOUT));
        let metrics = self.metrics.clone();
        match body.copy_for_mirror(REPLAY_LIMIT) {
            BodyCopy::TooLarge => count(&metrics, copies, "too-large"),
            BodyCopy::Ready(bytes) => send_all(copies, &bytes, timeout, &metrics),
            BodyCopy::Pending(copied) => {
                tokio::spawn(async move {
                    match copied.await {
                        Ok(Some(bytes)) => send_all(copies, &bytes, timeout, &metrics),
                        Ok(None) => count(&metrics, copies, "too-large"),
                        // The main request ended before its body did.
                        Err(_) => count(&metrics, copies, "incomplete"),
                    }
                });
            }
        }
    }
}

/// Sends each copy with `body`, each on a task of its own.
fn send_all(copies: Vec<Shadow>, body: &Bytes, timeout: Duration, metrics: &Arc<Metrics>) {
    for copy in copies {
        tokio::spawn(copy.send(body.clone(), timeout, metrics.clone()));
    }
}

/// Counts copies that end as `result` without being sent.
fn count(metrics: &Metrics, copies: Vec<Shadow>, result: &'static str) {
    for c in copies {
        metrics.mirror(&c.cluster.service, result);
    }
}

/// One copy of a request for a mirror, holding its place among those in
/// flight.
struct Shadow {
    cluster: Arc<Cluster>,
    parts: Parts,
    _permit: OwnedSemaphorePermit,
}

impl Shadow {
    /// Sends the copy to an endpoint of its mirror and reads the answer to
    /// its end (so the connection can be used again), discarding it.
    async fn send(self, body: Bytes, timeout: Duration, metrics: Arc<Metrics>) {
        let cluster = self.cluster;
        let body = RequestBody::Buffered {
            data: Some(body).filter(|b| !b.is_empty()),
            trailers: None,
        };
        let request = Request::from_parts(self.parts, body);
        let endpoint = Balance::new(
            Outlier::new(Upstream::new(cluster.clone()), cluster.outlier.clone()),
            cluster.targets.clone(),
        )
        .for_request(None, false);
        let exchange = async {
            let response = endpoint.oneshot(request).await?;
            response.into_body().collect().await?;
            Ok::<_, BoxError>(())
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => "sent",
            _ => "failed",
        };
        metrics.mirror(&cluster.service, result);
    }
}

/// Copies `head`'s method, URI, version and headers (not its extensions).
pub fn request_head(head: &Parts) -> Parts {
    let mut request = Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request.into_parts().0
}
