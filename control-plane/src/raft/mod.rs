//! The Raft group of the control plane: openraft's type configuration, and
//! durable storage in one redb file under `--data-dir` (log, vote,
//! committed index and snapshots; see [`log_store`] and [`state_machine`]).
//! Raft RPC between replicas is in [`network`].

// redb's error type is 160 bytes; it travels only on the failure path of
// disk I/O, where boxing it at every `?` would add noise and save nothing.
#![allow(clippy::result_large_err)]

mod db;
pub mod log_store;
pub mod network;
pub mod state_machine;

#[cfg(test)]
mod tests;

use std::io::Cursor;

pub use db::StoreError;
pub use log_store::LogStore;
pub use state_machine::StateMachineStore;

use crate::state::{MeshCommand, MeshResponse};

/// A replica's id in the group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The control plane's Raft: entries are [`MeshCommand`]s.
    pub TypeConfig:
        D = MeshCommand,
        R = MeshResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Opens (or creates) `dir/raft.redb` and returns the log store and the
/// state machine over it, the state machine restored from its last snapshot.
pub fn open(dir: &std::path::Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = db::open_database(dir)?;
    let state_machine = StateMachineStore::open(db.clone()).map_err(StoreError::of(dir))?;
    Ok((LogStore::new(db), state_machine))
}

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;
