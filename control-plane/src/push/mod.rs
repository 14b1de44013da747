//! The proxy stream (`MeshDiscovery`, on `--xds-addr`). Every replica
//! serves proxies from its own applied state. On a stream, versions only
//! increase: a proxy that says it runs version v gets nothing until this
//! replica has a newer one. One push is outstanding at a time; the proxy
//! answers each with an ACK (the hash of what it now runs) or a NACK (why
//! it refused, while it keeps its last good config).

pub mod applied;
pub mod registry;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use trellis_api as api;

pub use registry::Registry;

use crate::metrics::Metrics;
use crate::render::Rendered;

/// The stream service of one replica.
#[derive(Clone, Debug)]
pub struct Push {
    pub replica: u64,
    pub rendered: watch::Receiver<Arc<Rendered>>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    pub sessions: Arc<AtomicU64>,
}

type Pushes = Pin<Box<dyn Stream<Item = Result<api::DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl api::mesh_discovery_server::MeshDiscovery for Push {
    type StreamConfigStream = Pushes;

    async fn stream_config(
        &self,
        request: Request<Streaming<api::DiscoveryRequest>>,
    ) -> Result<Response<Pushes>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before saying who it is"))?;
        let node = first
            .node
            .clone()
            .filter(|n| !n.id.is_empty())
            .ok_or_else(|| Status::invalid_argument("the first message must carry node.id"))?;
        let (tx, rx) = mpsc::channel(2);
        let session = Session {
            id: self.sessions.fetch_add(1, Ordering::Relaxed),
            node,
            push: self.clone(),
            tx,
        };
        tokio::spawn(session.run(first, inbound));
        let out = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (Ok(m), rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// One proxy's stream.
struct Session {
    id: u64,
    node: api::Node,
    push: Push,
    tx: mpsc::Sender<api::DiscoveryResponse>,
}

/// A push not yet answered.
struct Outstanding {
    nonce: String,
    version: u64,
    sent: Instant,
}

impl Session {
    async fn run(
        self,
        first: api::DiscoveryRequest,
        mut inbound: Streaming<api::DiscoveryRequest>,
    ) {
        let p = &self.push;
        let id = self.node.id.clone();
        tracing::info!(proxy = %id, version = first.version, "proxy connected");
        p.registry.connect(
            self.id,
            &self.node,
            first.version,
            first.config_hash,
            &p.metrics,
        );
        let mut rendered = p.rendered.clone();
        let mut shutdown = p.shutdown.clone();
        // The newest version the proxy has or has been sent.
        let mut sent = first.version;
        let mut outstanding: Option<Outstanding> = None;
        let mut nonces = 0u64;
        let reason = loop {
            if outstanding.is_none() {
                let current = rendered.borrow_and_update().clone();
                if current.version > sent {
                    nonces += 1;
                    let nonce = format!("{}-{nonces}", self.id);
                    let push = api::DiscoveryResponse {
                        version: current.version,
                        nonce: nonce.clone(),
                        config: Some(current.config.clone()),
                        replica: p.replica.to_string(),
                    };
                    if self.tx.send(push).await.is_err() {
                        break "stream closed";
                    }
                    p.metrics.pushes.inc();
                    p.registry.pushed(&id, self.id, current.version);
                    sent = current.version;
                    outstanding = Some(Outstanding {
                        nonce,
                        version: current.version,
                        sent: Instant::now(),
                    });
                }
            }
            tokio::select! {
                changed = rendered.changed() => if changed.is_err() { break "replica stopping" },
                message = inbound.message() => match message {
                    Ok(Some(m)) => {
                        let Some(o) = outstanding.take_if(|o| o.nonce == m.response_nonce) else {
                            continue; // not an answer to the outstanding push
                        };
                        p.metrics.push_ack_duration.observe(o.sent.elapsed().as_secs_f64());
                        if m.errors.is_empty() {
                            p.metrics.acks.inc();
                        } else {
                            p.metrics.nacks.inc();
                            tracing::warn!(proxy = %id, version = o.version, errors = ?m.errors, "proxy refused config");
                        }
                        p.registry.answered(&id, self.id, o.version, &m.config_hash, &m.errors);
                    }
                    Ok(None) => break "proxy closed the stream",
                    Err(_) => break "stream error",
                },
                _ = shutdown.changed() => break "replica stopping",
                () = self.tx.closed() => break "stream closed",
            }
        };
        tracing::info!(proxy = %id, reason, "proxy disconnected");
        p.registry.disconnect(&id, self.id, &p.metrics);
    }
}
