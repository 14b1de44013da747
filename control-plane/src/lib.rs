//! The Trellis control plane: a Raft group (openraft) whose replicated log
//! is the ordered history of mesh configuration (`raft/`, `state/`), the
//! sources that feed it on the leader (`sources/`), the configs rendered
//! from it (`render/`) and pushed to proxies (`push/`), and the operator
//! API (`control`, `operator`) and admin endpoint (`admin`), all over TLS
//! with the replica's own certificate (`tls`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod ca;
pub mod control;
pub mod grpc;
pub mod https;
pub mod inject;
pub mod metrics;
pub mod operator;
pub mod push;
pub mod raft;
pub mod render;
pub mod replica;
pub mod server;
pub mod sources;
pub mod state;
pub mod tls;
