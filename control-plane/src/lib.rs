//! The Trellis control plane: a Raft group (openraft) whose replicated log
//! is the ordered history of mesh configuration (`raft/`, `state/`), the
//! sources that feed it on the leader (`sources/`), the configs rendered
//! from it (`render/`) and pushed to proxies (`push/`), and the operator
//! API (`control`) and admin endpoint (`admin`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod ca;
pub mod control;
pub mod grpc;
pub mod metrics;
pub mod push;
pub mod raft;
pub mod render;
pub mod replica;
pub mod server;
pub mod sources;
pub mod state;
