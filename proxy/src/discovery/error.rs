//! Why a pushed or loaded config cannot be run: the reasons of a NACK, or
//! of a rejected static reload.

use super::matcher::MatchError;

/// One reason a config cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("route {route}: {source}")]
    Match { route: String, source: MatchError },
    #[error("route {route}: unknown cluster {cluster:?}")]
    UnknownCluster { route: String, cluster: String },
    #[error("tcp service {service}: {address:?} is not an IP address")]
    BadAddress { service: String, address: String },
    #[error("cluster {cluster}: endpoint {address}:{port} is not a valid authority")]
    BadEndpoint {
        cluster: String,
        address: String,
        port: u32,
    },
}
