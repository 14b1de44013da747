//! The state machine: applies committed [`MeshCommand`]s to a
//! [`MeshState`] in memory, builds and installs snapshots, and keeps the
//! latest snapshot in redb. After a restart it starts from that snapshot
//! and openraft re-applies the committed entries after it.
//!
//! [`MeshCommand`]: crate::state::MeshCommand

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::db::{blocking, from_json, read_meta, write_meta};
use super::{Entry, LogId, NodeId, StorageError, StorageIOError, TypeConfig};
use crate::state::{MeshResponse, MeshState};

/// The state machine as of `last_applied`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub state: MeshState,
    /// The config version: index of the last entry that changed `state`.
    #[serde(default)]
    pub version: u64,
}

/// A snapshot as stored: its metadata and the serialized [`Applied`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// Handle to the state machine; clones share it (readers use [`Self::read`]).
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    db: Arc<Database>,
    applied: Arc<RwLock<Applied>>,
    /// The config version, for whoever renders configs from the state.
    version: Arc<watch::Sender<u64>>,
}

impl StateMachineStore {
    /// The state machine of `db`, restored from its last snapshot.
    pub(super) fn open(db: Arc<Database>) -> Result<Self, redb::Error> {
        let applied = match read_meta::<StoredSnapshot>(&db, "snapshot")? {
            Some(snapshot) => from_json(&snapshot.data)?,
            None => Applied::default(),
        };
        let version = Arc::new(watch::Sender::new(applied.version));
        Ok(Self {
            db,
            applied: Arc::new(RwLock::new(applied)),
            version,
        })
    }

    /// Follows the config version; it changes after the state does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Runs `f` on the current state.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self
            .applied
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn store_snapshot(&self, snapshot: StoredSnapshot) -> Result<(), StorageError> {
        let db = self.db.clone();
        let signature = snapshot.meta.signature();
        blocking(move || write_meta(&db, "snapshot", &snapshot))
            .await
            .map_err(|e| {
                StorageError::from(StorageIOError::write_snapshot(
                    Some(signature),
                    AnyError::new(&e),
                ))
            })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_log_id, last_membership) = {
            let applied = self.read(Clone::clone);
            let data = serde_json::to_vec(&applied).map_err(|e| {
                StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e)))
            })?;
            (data, applied.last_applied, applied.membership)
        };
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unique()),
            None => format!("empty-{}", unique()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.store_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Distinguishes snapshots of the same log id built at different times.
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok(self.read(|a| (a.last_applied, a.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MeshResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.write();
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => MeshResponse::default(),
                EntryPayload::Normal(command) => {
                    let response = applied.state.apply(command, entry.log_id.index);
                    if response.changed {
                        applied.version = entry.log_id.index;
                    }
                    response
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    MeshResponse::default()
                }
            };
            responses.push(response);
        }
        let version = applied.version;
        drop(applied);
        self.version
            .send_if_modified(|v| std::mem::replace(v, version) != version);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut installed: Applied = from_json(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        installed.last_applied = meta.last_log_id;
        installed.membership = meta.last_membership.clone();
        self.store_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .await?;
        let version = installed.version;
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            resources = installed.state.len(),
            "installed snapshot from the leader"
        );
        *self.write() = installed;
        self.version.send_replace(version);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || read_meta::<StoredSnapshot>(&db, "snapshot"))
            .await
            .map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&e)))
            })?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
