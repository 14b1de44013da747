//! Pooled keep-alive connections to endpoints: one pool for HTTP/1.1
//! endpoints and one for HTTP/2 (h2c prior knowledge) endpoints per connect
//! timeout in use, keyed by endpoint address and shared across destinations
//! and config reloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use trellis_api::Protocol;

use crate::body::RequestBody;

pub type HttpClient = Client<HttpConnector, RequestBody>;

/// The proxy's client pools.
#[derive(Clone, Debug)]
pub struct Clients {
    default_timeout: Duration,
    http1: HttpClient,
    http2: HttpClient,
    /// Pools for destinations with their own `connectTimeout`.
    other: Arc<Mutex<HashMap<(bool, Duration), HttpClient>>>,
}

fn build(connect_timeout: Duration, http2: bool) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60));
    if http2 {
        builder.http2_only(true);
    }
    builder.build(connector)
}

impl Clients {
    /// Pools whose connections time out after `connect_timeout` unless a
    /// destination says otherwise.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            default_timeout: connect_timeout,
            http1: build(connect_timeout, false),
            http2: build(connect_timeout, true),
            other: Arc::default(),
        }
    }

    /// The pool for endpoints speaking `protocol` with `connect_timeout`
    /// (the default when `None`).
    pub fn get(&self, protocol: Protocol, connect_timeout: Option<Duration>) -> HttpClient {
        let http2 = protocol == Protocol::Http2;
        match connect_timeout.filter(|t| *t != self.default_timeout) {
            None if http2 => self.http2.clone(),
            None => self.http1.clone(),
            Some(t) => self
                .other
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry((http2, t))
                .or_insert_with(|| build(t, http2))
                .clone(),
        }
    }
}
