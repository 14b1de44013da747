//! `retryOn`: which outcomes of an attempt may be retried (Envoy/Istio
//! names), and why.

use http::{HeaderMap, StatusCode};

use crate::body::BoxError;
use crate::layers::timeout::{Elapsed, TimeoutKind};
use crate::transport::error::SendError;

/// Why an attempt is retried (the `reason` label of `trellis_retries_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// An upstream response with a retriable status.
    Status,
    /// A gRPC response with a retriable `grpc-status`.
    Grpc,
    ConnectFailure,
    RefusedStream,
    Reset,
    PerTryTimeout,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Grpc => "grpc-status",
            Self::ConnectFailure => "connect-failure",
            Self::RefusedStream => "refused-stream",
            Self::Reset => "reset",
            Self::PerTryTimeout => "per-try-timeout",
        }
    }

    /// The request never reached the upstream application: safe to retry
    /// whatever its method.
    pub fn never_reached_upstream(self) -> bool {
        matches!(self, Self::ConnectFailure | Self::RefusedStream)
    }
}

/// Parsed `retryOn`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryConditions {
    five_xx: bool,
    gateway_error: bool,
    reset: bool,
    connect_failure: bool,
    refused_stream: bool,
    retriable_4xx: bool,
    codes: Vec<u16>,
    /// gRPC status codes to retry (`cancelled`, `unavailable`, ...).
    grpc: Vec<u16>,
}

/// Istio's gRPC `retryOn` tokens and the status code each stands for.
pub const GRPC_RETRY_ON: &[(&str, u16)] = &[
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

impl RetryConditions {
    /// From `retryOn` tokens; unknown tokens are ignored (validation
    /// rejects them before they get here).
    pub fn parse<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        let mut c = Self::default();
        for token in tokens {
            match token.trim() {
                "5xx" => c.five_xx = true,
                "gateway-error" => c.gateway_error = true,
                "reset" => c.reset = true,
                "connect-failure" => c.connect_failure = true,
                "refused-stream" => c.refused_stream = true,
                "retriable-4xx" => c.retriable_4xx = true,
                // the codes themselves come as bare numbers
                "retriable-status-codes" => {}
                other => match GRPC_RETRY_ON.iter().find(|(name, _)| *name == other) {
                    Some((_, code)) => c.grpc.push(*code),
                    None => c.codes.extend(other.parse::<u16>().ok()),
                },
            }
        }
        c
    }

    /// The retry reason of a response: its status, or the `grpc-status`
    /// of a trailers-only gRPC response (in its headers, as Envoy reads it).
    pub fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<RetryReason> {
        let code = status.as_u16();
        let retry = (self.five_xx && status.is_server_error())
            || (self.gateway_error && matches!(code, 502..=504))
            || (self.retriable_4xx && code == 409)
            || self.codes.contains(&code);
        if retry {
            return Some(RetryReason::Status);
        }
        if self.grpc.is_empty() {
            return None;
        }
        let grpc = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())?;
        self.grpc.contains(&grpc).then_some(RetryReason::Grpc)
    }

    /// The retry reason of an attempt that failed with `error`, decided by
    /// its type: a connect failure, a refused stream, a reset, a per-try
    /// timeout. A failure of the client's own body is never retried.
    pub fn on_error(&self, error: &BoxError) -> Option<RetryReason> {
        let (reason, allowed) = if let Some(e) = error.downcast_ref::<SendError>() {
            match e {
                _ if e.is_client_fault() => return None,
                SendError::Connect { .. } => (
                    RetryReason::ConnectFailure,
                    self.connect_failure || self.five_xx,
                ),
                SendError::Upstream { .. } if e.is_refused_stream() => (
                    RetryReason::RefusedStream,
                    self.refused_stream || self.five_xx,
                ),
                SendError::Upstream { .. } => (
                    RetryReason::Reset,
                    self.reset || self.five_xx || self.gateway_error,
                ),
                SendError::Form(_) => return None,
            }
        } else if error
            .downcast_ref::<Elapsed>()
            .is_some_and(|e| e.kind == TimeoutKind::PerTry)
        {
            (
                RetryReason::PerTryTimeout,
                self.five_xx || self.gateway_error || self.reset,
            )
        } else {
            return None;
        };
        allowed.then_some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::error::ConnectError;

    #[test]
    fn status_conditions() {
        let none = HeaderMap::new();
        let c = RetryConditions::parse(["gateway-error", "409", "retriable-status-codes"]);
        assert_eq!(
            c.on_response(StatusCode::SERVICE_UNAVAILABLE, &none),
            Some(RetryReason::Status)
        );
        assert_eq!(
            c.on_response(StatusCode::INTERNAL_SERVER_ERROR, &none),
            None
        );
        assert_eq!(
            c.on_response(StatusCode::CONFLICT, &none),
            Some(RetryReason::Status)
        );
        let five = RetryConditions::parse(["5xx"]);
        assert_eq!(
            five.on_response(StatusCode::INTERNAL_SERVER_ERROR, &none),
            Some(RetryReason::Status)
        );
        assert_eq!(five.on_response(StatusCode::NOT_FOUND, &none), None);
    }

    #[test]
    fn grpc_conditions_read_grpc_status() {
        let mut unavailable = HeaderMap::new();
        unavailable.insert("grpc-status", http::HeaderValue::from_static("14"));
        let mut not_found = HeaderMap::new();
        not_found.insert("grpc-status", http::HeaderValue::from_static("5"));
        let c = RetryConditions::parse(["unavailable", "cancelled"]);
        assert_eq!(
            c.on_response(StatusCode::OK, &unavailable),
            Some(RetryReason::Grpc)
        );
        assert_eq!(c.on_response(StatusCode::OK, &not_found), None);
        assert_eq!(c.on_response(StatusCode::OK, &HeaderMap::new()), None);
        let http_only = RetryConditions::parse(["5xx"]);
        assert_eq!(http_only.on_response(StatusCode::OK, &unavailable), None);
    }

    #[test]
    fn error_conditions_follow_the_error_type() {
        // Resets and refused streams need a real HTTP/2 peer: e2e tests
        // (retry_on.rs) provoke them.
        let connect: BoxError = SendError::Connect {
            endpoint: "127.0.0.1:1".into(),
            source: ConnectError::Closed,
        }
        .into();
        let form: BoxError = SendError::Form(
            http::Uri::builder()
                .scheme("a b")
                .build()
                .expect_err("a bad scheme"),
        )
        .into();
        let c = RetryConditions::parse(["connect-failure"]);
        assert_eq!(c.on_error(&connect), Some(RetryReason::ConnectFailure));
        assert_eq!(RetryConditions::parse(["reset"]).on_error(&connect), None);
        let five = RetryConditions::parse(["5xx"]);
        assert_eq!(five.on_error(&connect), Some(RetryReason::ConnectFailure));
        assert_eq!(five.on_error(&form), None);
        assert!(RetryReason::ConnectFailure.never_reached_upstream());
        assert!(!RetryReason::Reset.never_reached_upstream());
    }
}
