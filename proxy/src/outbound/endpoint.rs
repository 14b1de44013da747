//! Forwards a routed request to one endpoint of its destination over a
//! pooled connection, streaming bodies both ways.

use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use trellis_api::Protocol;

use super::headers;
use super::local_reply::Reason;
use crate::body::{self, ProxyBody};
use crate::discovery::model::{Route, WeightedCluster};
use crate::transport::client::Clients;

/// Sends requests to endpoints.
#[derive(Clone, Debug)]
pub struct Forward {
    clients: Clients,
}

impl Forward {
    pub fn new(clients: Clients) -> Self {
        Self { clients }
    }

    /// Forwards `req` to an endpoint of `destination`. The client's
    /// authority travels as `Host` (HTTP/1.1) or in the request (HTTP/2).
    pub async fn send(
        &self,
        req: Request<Incoming>,
        route: &Route,
        destination: &WeightedCluster,
    ) -> Result<Response<ProxyBody>, Reason> {
        let cluster = &destination.cluster;
        let endpoint = cluster.next_endpoint().ok_or(Reason::NoHealthyUpstream)?;
        let (mut parts, body) = req.into_parts();

        // An HTTP/2 request names its authority only in the URI: keep it as Host.
        if !parts.headers.contains_key(HOST) {
            if let Some(a) = parts.uri.authority() {
                let host = HeaderValue::from_str(a.as_str()).map_err(|_| Reason::BadRequest)?;
                parts.headers.insert(HOST, host);
            }
        }
        if let Some(authority) = route
            .rewrite
            .as_ref()
            .map(|r| r.authority.as_str())
            .filter(|a| !a.is_empty())
        {
            let host = HeaderValue::from_str(authority).map_err(|_| Reason::BadRequest)?;
            parts.headers.insert(HOST, host);
        }
        let path_and_query = match route.rewrite_path(parts.uri.path()) {
            Some(path) => match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            }
            .parse()
            .map_err(|_| Reason::BadRequest)?,
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(endpoint.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Reason::BadRequest)?;
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.version = match cluster.protocol {
            Protocol::Http2 => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        headers::apply(&mut parts.headers, route.request_headers.as_ref());
        headers::apply(&mut parts.headers, destination.request_headers.as_ref());

        let upstream = Request::from_parts(parts, body::stream(body));
        let resp = self
            .clients
            .get(cluster.protocol)
            .request(upstream)
            .await
            .map_err(|e| {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.authority, error = %e, "upstream request failed");
                if e.is_connect() {
                    Reason::ConnectFailure
                } else {
                    Reason::UpstreamReset
                }
            })?;
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::apply(&mut parts.headers, destination.response_headers.as_ref());
        headers::apply(&mut parts.headers, route.response_headers.as_ref());
        Ok(Response::from_parts(parts, body::stream(body)))
    }
}
