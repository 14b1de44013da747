//! The Trellis sidecar proxy.
//!
//! Request path (outbound HTTP): `outbound::server` accepts and detects
//! HTTP/1 or HTTP/2 -> `outbound::logical` finds the virtual host and route in
//! the current `discovery::RouteTable` and picks a weighted destination ->
//! `outbound::forward` applies the route's fault, timeout and retry layers
//! (`layers/`) -> `outbound::endpoint` makes one attempt at one endpoint over
//! a pooled connection from `transport::client`. Local failures become 4xx/5xx replies
//! with `x-trellis-reason` (`outbound::local_reply`).

#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod capture;
pub mod config;
pub mod discovery;
pub mod fuzzing;
pub mod identity;
pub mod inbound;
pub mod layers;
pub mod memory;
pub mod metrics;
pub mod outbound;
pub mod transport;
pub mod wait_ready;

pub use app::App;
pub use config::Config;
