//! The Trellis control plane: a Raft group (openraft) whose replicated log
//! is the ordered history of mesh configuration (`raft/`, `state/`).
//! Sources, rendering and the push stream to proxies build on it.

#![forbid(unsafe_code)]

pub mod raft;
pub mod state;
