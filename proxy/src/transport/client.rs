//! Pooled keep-alive connections to endpoints: one pool for HTTP/1.1
//! endpoints and one for HTTP/2 (h2c prior knowledge) endpoints, keyed by
//! endpoint address and shared across config reloads.

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
    http1: HttpClient,
    http2: HttpClient,
}

impl Clients {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(true)
            .build(connector);
        Self { http1, http2 }
    }

    /// The pool for endpoints speaking `protocol`.
    pub fn get(&self, protocol: Protocol) -> &HttpClient {
        match protocol {
            Protocol::Http2 => &self.http2,
            _ => &self.http1,
        }
    }
}
