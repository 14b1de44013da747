//! Admin endpoint of a replica (default `:15014`, HTTPS with the replica's
//! certificate): `/live`, `/ready` (a leader is known), `/metrics`,
//! `/proxy-status` (this replica's proxies as JSON).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::replica::Replica;

/// Serves `listener` over TLS (`tls`) until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    replica: Arc<Replica>,
    shutdown: watch::Receiver<bool>,
) {
    let handler = move |req: Request<hyper::body::Incoming>| {
        let reply = handle(&replica, &req);
        async move { reply }
    };
    crate::https::serve("admin", listener, tls, handler, shutdown).await;
}

fn handle<B>(replica: &Replica, req: &Request<B>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => match replica.leader() {
            Some((id, _)) => reply(
                StatusCode::OK,
                "text/plain",
                format!("ready; leader {id}\n"),
            ),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no leader known\n".into(),
            ),
        },
        "/metrics" => {
            refresh(replica);
            let accept = req.headers().get(http::header::ACCEPT);
            let (content_type, text) = trellis_api::exposition::negotiate(
                accept.and_then(|a| a.to_str().ok()),
                replica.metrics.encode(),
            );
            reply(StatusCode::OK, content_type, text)
        }
        "/proxy-status" => {
            let text =
                serde_json::to_string_pretty(&replica.registry.to_json()).unwrap_or_default();
            reply(StatusCode::OK, "application/json", text)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Copies openraft's view into the Raft gauges.
fn refresh(replica: &Replica) {
    let m = replica.raft.metrics().borrow().clone();
    let metrics = &replica.metrics;
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    metrics.raft_term.set(gauge(m.current_term));
    metrics
        .raft_leader
        .set(gauge(m.current_leader.unwrap_or(0)));
    metrics
        .raft_is_leader
        .set(i64::from(m.current_leader == Some(replica.id)));
    metrics
        .raft_applied_index
        .set(gauge(m.last_applied.map_or(0, |l| l.index)));
    metrics
        .config_version
        .set(gauge(replica.sm.read(|a| a.version)));
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}
