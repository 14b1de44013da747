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

    /// Forwards `req` (addressed to `authority`) to an endpoint of `destination`.
    pub async fn send(
        &self,
        req: Request<Incoming>,
        authority: &str,
        route: &Route,
        destination: &WeightedCluster,
    ) -> Result<Response<ProxyBody>, Reason> {
        let cluster = &destination.cluster;
        let endpoint = cluster.next_endpoint().ok_or(Reason::NoHealthyUpstream)?;
        let (mut parts, body) = req.into_parts();

        let original = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query: PathAndQuery = match route.rewrite_path(parts.uri.path()) {
            Some(path) => match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            }
            .parse()
            .map_err(|_| Reason::BadRequest)?,
            None => original.parse().map_err(|_| Reason::BadRequest)?,
        };
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(endpoint.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Reason::BadRequest)?;
        headers::strip_hop_by_hop(&mut parts.headers);
        let host = match route.rewrite.as_ref().filter(|r| !r.authority.is_empty()) {
            Some(r) => &r.authority,
            None => authority,
        };
        parts.headers.insert(
            HOST,
            HeaderValue::from_str(host).map_err(|_| Reason::BadRequest)?,
        );
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
