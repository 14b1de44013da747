//! Header handling on the way through: hop-by-hop headers are not
//! forwarded (but `te: trailers`, which gRPC needs, is), and routes'
//! set/add/remove operations are applied. `Connection` cannot make an
//! end-to-end header the proxy relies on hop-by-hop: `Host`, the body's
//! `Content-Length`, and the headers the proxy adds itself (`x-request-id`,
//! `x-forwarded-client-cert`) stay whatever it names.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, PROXY_AUTHENTICATE, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use trellis_api::HeaderOperations;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers `Connection` may name without effect.
fn end_to_end(name: &HeaderName) -> bool {
    name == http::header::HOST
        || name == http::header::CONTENT_LENGTH
        || name.as_str() == "x-request-id"
        || name.as_str() == "x-forwarded-client-cert"
}

fn hop_by_hop() -> [HeaderName; 7] {
    [
        CONNECTION,
        TE,
        TRANSFER_ENCODING,
        UPGRADE,
        PROXY_AUTHENTICATE,
        KEEP_ALIVE,
        PROXY_CONNECTION,
    ]
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one scan of cheap name comparisons, no hashing.
    let hop = hop_by_hop();
    if !headers.keys().any(|k| hop.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !end_to_end(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    // `te: trailers` is end to end in practice: gRPC servers require it.
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for name in hop {
        headers.remove(name);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Applies `ops` (remove, then set, then add), skipping invalid names/values.
pub fn apply(headers: &mut HeaderMap, ops: Option<&HeaderOperations>) {
    let Some(ops) = ops else { return };
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
    let parse = |k: &str, v: &str| {
        Some((
            HeaderName::from_bytes(k.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        ))
    };
    for (k, v) in &ops.set {
        if let Some((k, v)) = parse(k, v) {
            headers.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let Some((k, v)) = parse(k, v) {
            headers.append(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_cannot_name_end_to_end_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("host, x-request-id, X-Forwarded-Client-Cert, content-length"),
        );
        for name in [
            "host",
            "x-request-id",
            "x-forwarded-client-cert",
            "content-length",
        ] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("b", HeaderValue::from_static("1"));
        let ops = HeaderOperations {
            set: [("a".to_string(), "2".to_string())].into_iter().collect(),
            add: [("c".to_string(), "3".to_string())].into_iter().collect(),
            remove: vec!["b".into()],
        };
        apply(&mut h, Some(&ops));
        assert_eq!(h.get("a").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert!(!h.contains_key("b"));
        assert_eq!(h.get("c").map(|v| v.as_bytes()), Some(&b"3"[..]));
    }
}
