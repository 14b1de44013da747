//! Replies the proxy makes itself, each with the reason in
//! `x-trellis-reason` (and the same reason as a metric label).

use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, BodyTooSlow, BoxError, ProxyBody};
use crate::layers::balance::NoEndpoint;
use crate::layers::breaker::Overflow;
use crate::layers::retry::RetriesExhausted;
use crate::layers::timeout::Elapsed;
use crate::transport::error::{chain, is_client_fault, SendError};

/// An error of the request path that becomes a local reply.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.as_str())]
pub struct LocalError(pub Reason);

/// The header naming why the proxy answered instead of an upstream.
pub const REASON_HEADER: &str = "x-trellis-reason";

/// Why the proxy answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No virtual host or no route matches the request.
    NoRoute,
    /// The chosen destination has no endpoint.
    NoHealthyUpstream,
    /// Connecting to the endpoint failed.
    ConnectFailure,
    /// The upstream failed after the connection was made.
    UpstreamReset,
    /// The request cannot be forwarded as it is.
    BadRequest,
    /// The route timeout (or the last attempt's per-try timeout) expired.
    Timeout,
    /// Every allowed attempt failed without an upstream response.
    RetriesExhausted,
    /// A `fault.abort` rule answered instead of the upstream.
    FaultAbort,
    /// A connection-pool limit of the destination was reached.
    Overflow,
    /// An AuthorizationPolicy refused the request (inbound).
    RbacDenied,
    /// The path cannot be normalized safely (encoded `/` or `\`, `..` above
    /// the root): refused rather than guessed at.
    InvalidPath,
    /// A route's or destination's `rateLimit` bucket is empty.
    RateLimited,
    /// The request target is over the limit.
    UriTooLong,
    /// The request's header section is over the limit.
    HeadersTooLarge,
    /// `CONNECT`: the sidecar does not tunnel.
    MethodNotAllowed,
    /// The client's body stalled or trickled below the minimum rate.
    BodyTimeout,
}

impl Reason {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailure | Self::UpstreamReset => StatusCode::BAD_GATEWAY,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RetriesExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Self::FaultAbort => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            Self::RbacDenied => StatusCode::FORBIDDEN,
            Self::InvalidPath => StatusCode::BAD_REQUEST,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Value of `x-trellis-reason` and of the `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::NoHealthyUpstream => "no-healthy-upstream",
            Self::ConnectFailure => "connect-failure",
            Self::UpstreamReset => "upstream-reset",
            Self::BadRequest => "bad-request",
            Self::Timeout => "timeout",
            Self::RetriesExhausted => "retries-exhausted",
            Self::FaultAbort => "fault-abort",
            Self::Overflow => "overflow",
            Self::RbacDenied => "rbac-denied",
            Self::InvalidPath => "invalid-path",
            Self::RateLimited => "rate-limited",
            Self::UriTooLong => "uri-too-long",
            Self::HeadersTooLarge => "headers-too-large",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::BodyTimeout => "request-body-timeout",
        }
    }

    /// The reason an error from inside the stack stands for: the one
    /// place errors are classified. The chain is walked from the top, so a
    /// wrapper (retries exhausted) decides before its cause; a client's
    /// broken body anywhere in it is the client's fault (400).
    pub fn of(error: &BoxError) -> Self {
        let error: &(dyn std::error::Error + 'static) = error.as_ref();
        if is_client_fault(error) {
            return if chain(error).any(|e| e.is::<BodyTooSlow>()) {
                Self::BodyTimeout
            } else {
                Self::BadRequest
            };
        }
        for e in chain(error) {
            if let Some(LocalError(reason)) = e.downcast_ref::<LocalError>() {
                return *reason;
            }
            if let Some(send) = e.downcast_ref::<SendError>() {
                return match send {
                    SendError::Connect { .. } => Self::ConnectFailure,
                    SendError::Upstream { .. } => Self::UpstreamReset,
                    SendError::Form(_) => Self::BadRequest,
                };
            }
            if e.is::<RetriesExhausted>() {
                return Self::RetriesExhausted;
            } else if e.is::<Elapsed>() {
                return Self::Timeout;
            } else if e.is::<Overflow>() {
                return Self::Overflow;
            } else if e.is::<NoEndpoint>() {
                return Self::NoHealthyUpstream;
            }
        }
        Self::UpstreamReset
    }

    pub fn response(self) -> Response<ProxyBody> {
        self.response_with(self.status())
    }

    /// The reply to a request: a gRPC status for a gRPC request (HTTP 200,
    /// `grpc-status`, `grpc-message`, no body: trailers-only), else
    /// `status` with the reason as text.
    pub fn reply(self, status: StatusCode, grpc: bool) -> Response<ProxyBody> {
        if !grpc {
            return self.response_with(status);
        }
        let mut resp = Response::new(body::full(""));
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(self.grpc_code(status)));
        headers.insert("grpc-message", HeaderValue::from_static(self.as_str()));
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.as_str()));
        resp
    }

    /// The gRPC status code of this reply (Envoy's HTTP-to-gRPC mapping
    /// where the reason does not say more).
    pub fn grpc_code(self, status: StatusCode) -> u16 {
        const INTERNAL: u16 = 13;
        const UNAVAILABLE: u16 = 14;
        match self {
            Self::NoRoute => 12, // UNIMPLEMENTED
            Self::NoHealthyUpstream
            | Self::ConnectFailure
            | Self::UpstreamReset
            | Self::RetriesExhausted
            | Self::Overflow => UNAVAILABLE,
            Self::Timeout => 4,     // DEADLINE_EXCEEDED
            Self::RbacDenied => 7,  // PERMISSION_DENIED
            Self::RateLimited => 8, // RESOURCE_EXHAUSTED
            Self::BadRequest | Self::InvalidPath => INTERNAL,
            Self::UriTooLong
            | Self::HeadersTooLarge
            | Self::MethodNotAllowed
            | Self::BodyTimeout => 2, // UNKNOWN, as Envoy maps these statuses
            Self::FaultAbort => match status.as_u16() {
                400 => INTERNAL,
                401 => 16, // UNAUTHENTICATED
                403 => 7,
                404 => 12,
                429 | 502..=504 => UNAVAILABLE,
                _ => 2, // UNKNOWN
            },
        }
    }

    /// The reply, with `status` instead of the reason's own.
    pub fn response_with(self, status: StatusCode) -> Response<ProxyBody> {
        let mut resp = Response::new(body::full(format!("{}\n", self.as_str())));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.as_str()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        resp
    }
}

/// A gRPC request (`content-type: application/grpc`, `+proto` and the like).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}
