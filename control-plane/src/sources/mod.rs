//! Sources of mesh configuration outside the Raft group, run on the leader
//! only: they turn outside changes into `MeshCommand`s proposed to Raft.

pub mod file;
pub mod kube;
