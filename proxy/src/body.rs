//! The body type of every response the proxy returns: a streamed upstream
//! body or a small local reply, boxed behind one type.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Error of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of responses the proxy serves.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete, in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A streamed upstream body.
pub fn stream(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed_unsync()
}
