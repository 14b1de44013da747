//! Replies the proxy makes itself, each with the reason in
//! `x-trellis-reason` (and the same reason as a metric label).

use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, ProxyBody};

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
}

impl Reason {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailure | Self::UpstreamReset => StatusCode::BAD_GATEWAY,
            Self::BadRequest => StatusCode::BAD_REQUEST,
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
        }
    }

    pub fn response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(body::full(format!("{}\n", self.as_str())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(REASON_HEADER, HeaderValue::from_static(self.as_str()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        resp
    }
}
