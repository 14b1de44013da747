//! The head of a request as it goes upstream: its `Host`, the route's
//! rewrite, hop-by-hop headers removed, header operations applied, and the
//! form of the destination's protocol (origin-form HTTP/1.1 or HTTP/2).

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Uri, Version};
use trellis_api::{HeaderOperations, Protocol};

use super::headers;
use super::local_reply::Reason;
use crate::discovery::model::Route;
use crate::transport::pool::into_http2_form;

/// Host, path rewrite, hop-by-hop headers, header operations (the route's,
/// then `extra`: a destination's) and protocol of the upstream request. A
/// mirror's copy (`shadow`) has `-shadow` appended to its host, as Envoy
/// does. The endpoint is filled in per attempt.
pub fn prepare(
    parts: &mut http::request::Parts,
    route: &Route,
    protocol: Protocol,
    extra: Option<&HeaderOperations>,
    shadow: bool,
) -> Result<(), Reason> {
    // `head::admit` left one Host, the authority routed on (HTTP/2's too).
    if let Some(authority) = route
        .rewrite
        .as_ref()
        .map(|r| r.authority.as_str())
        .filter(|a| !a.is_empty())
    {
        let host = HeaderValue::from_str(authority).map_err(|_| Reason::BadRequest)?;
        parts.headers.insert(HOST, host);
    }
    if shadow {
        let shadowed = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(shadow_host)
            .and_then(|h| HeaderValue::from_str(&h).ok());
        if let Some(host) = shadowed {
            parts.headers.insert(HOST, host);
        }
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
    headers::strip_hop_by_hop(&mut parts.headers);
    // Before the form: a `host` the operations set becomes HTTP/2's
    // :authority instead of a second, disagreeing authority.
    headers::apply(&mut parts.headers, route.request_headers.as_ref());
    headers::apply(&mut parts.headers, extra);
    if protocol == Protocol::Http2 {
        // HTTP/2 carries the authority as :authority, from the URI.
        into_http2_form(parts, path_and_query).map_err(|_| Reason::BadRequest)?;
    } else {
        parts.uri = Uri::from(path_and_query);
        parts.version = Version::HTTP_11;
    }
    Ok(())
}

/// `host[:port]` with `-shadow` after the host: `reviews:9080` becomes
/// `reviews-shadow:9080`.
fn shadow_host(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shadow_hosts_keep_their_port() {
        assert_eq!(super::shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(
            super::shadow_host("reviews.ns.svc"),
            "reviews.ns.svc-shadow"
        );
    }
}
