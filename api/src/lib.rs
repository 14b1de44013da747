//! Wire model shared by the proxy and the control plane: the compiled proxy
//! config (`ProxyConfig`) and the discovery stream (`MeshDiscovery`), the
//! metrics exposition format both sides serve ([`exposition`]), and the
//! TLS both sides speak: SPIFFE identities, their verification, and the
//! control plane's channels ([`tls`]).
//!
//! Generated from `proto/` at build time; see `build.rs`.

#![allow(clippy::all, missing_docs)]

/// `trellis.v1`: config and discovery messages, client and server.
pub mod v1 {
    tonic::include_proto!("trellis.v1");
}

pub use v1::*;

pub mod exposition;
pub mod tls;

/// Well-known protobuf types used by the messages (`Duration`).
pub use prost_types;
