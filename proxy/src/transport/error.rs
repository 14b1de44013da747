//! Why an exchange with an endpoint failed, as types: a connection that
//! could not be made (and why: refused, timed out, TLS), an upstream that
//! failed after it (a reset, a refused HTTP/2 stream), or a request body
//! the client broke. Retry and outlier decisions read these types; the
//! server edge turns them into a status and reason once.

use std::error::Error as StdError;
use std::time::Duration;

use crate::body::ClientBodyError;

/// Why a request could not get a response from the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: ConnectError,
    },
    #[error("exchange with {endpoint}")]
    Upstream {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    /// The request cannot be put in the form the endpoint's protocol needs.
    #[error("request form")]
    Form(#[source] http::Error),
}

/// Why a connection could not be made (or was lost before the request).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TCP")]
    Io(#[source] std::io::Error),
    #[error("TLS")]
    Tls(#[source] TlsError),
    #[error("HTTP handshake")]
    Handshake(#[source] hyper::Error),
    #[error("connection closed before the request")]
    Closed,
}

/// Why an mTLS connection to an endpoint's sidecar was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("mTLS required, and this proxy has no workload certificate")]
    NoCertificate,
    #[error("handshake timed out")]
    Timeout,
    #[error("handshake")]
    Handshake(#[source] std::io::Error),
    #[error("the server presented no workload identity")]
    NoPeerIdentity,
    #[error("the server is {peer}, not an identity allowed to serve this endpoint ({allowed})")]
    UnexpectedIdentity { peer: String, allowed: String },
}

/// Every error in `error`'s chain, itself first.
pub fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn StdError + 'static)| {
        (*e).source()
    })
}

/// The client broke the request (its body), somewhere in the chain.
pub fn is_client_fault(error: &(dyn StdError + 'static)) -> bool {
    chain(error).any(|e| e.is::<ClientBodyError>())
}

impl SendError {
    /// The endpoint refused the HTTP/2 stream (REFUSED_STREAM): the request
    /// was not processed, so any method may be sent again.
    pub fn is_refused_stream(&self) -> bool {
        match self {
            Self::Upstream { source, .. } => chain(source).any(|e| {
                e.downcast_ref::<h2::Error>()
                    .is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
            }),
            _ => false,
        }
    }

    /// The failure came from the client's request body, not the endpoint.
    pub fn is_client_fault(&self) -> bool {
        is_client_fault(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_keeps_every_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = SendError::Connect {
            endpoint: "127.0.0.1:1".into(),
            source: ConnectError::Io(io),
        };
        let text: Vec<String> = chain(&e).map(ToString::to_string).collect();
        assert_eq!(text, ["connect to 127.0.0.1:1", "TCP", "refused"]);
        assert!(!e.is_refused_stream() && !e.is_client_fault());
    }
}
