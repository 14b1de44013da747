//! openraft's storage test suite against the redb store, and a restart test.

use openraft::testing::{StoreBuilder, Suite};

use super::{open, LogStore, StateMachineStore, StorageError, StorageIOError, TypeConfig};

/// A fresh store in its own directory; the directory goes with the guard.
struct Fresh;

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    TempDir(std::env::temp_dir().join(format!("trellis-raft-{}-{n}", std::process::id())))
}

/// The store in `dir`, its error as openraft's.
fn open_in(dir: &TempDir) -> Result<(LogStore, StateMachineStore), StorageError> {
    open(&dir.0).map_err(|e| StorageError::from(StorageIOError::write(openraft::AnyError::new(&e))))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Fresh {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = temp_dir();
        let (log, sm) = open_in(&dir)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Fresh)
}

/// What a replica stored is there after it restarts: log, vote, committed
/// index, and the state machine (from its snapshot, the rest re-applied by
/// openraft from the log).
#[tokio::test]
async fn a_reopened_store_has_everything_it_acknowledged() -> Result<(), StorageError> {
    use crate::state::{MeshCommand, ResourceKey};
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{
        CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, Vote,
    };

    let dir = temp_dir();
    let entry = |index: u64, name: &str| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(MeshCommand::Apply {
            key: ResourceKey {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: name.into(),
            },
            document: serde_json::json!({ "name": name }),
            source: "cli".into(),
        }),
    };
    let expected_hash = {
        let (mut log, mut sm) = open_in(&dir)?;
        log.save_vote(&Vote::new_committed(1, 0)).await?;
        log.blocking_append((1..=4).map(|i| entry(i, &format!("r{i}"))))
            .await?;
        log.save_committed(Some(entry(4, "").log_id)).await?;
        sm.apply((1..=3).map(|i| entry(i, &format!("r{i}"))))
            .await?;
        sm.get_snapshot_builder().await.build_snapshot().await?;
        log.purge(entry(2, "").log_id).await?;
        sm.read(|a| a.state.hash())
    };

    let (mut log, mut sm) = open_in(&dir)?;
    assert_eq!(log.read_vote().await?, Some(Vote::new_committed(1, 0)));
    assert_eq!(log.read_committed().await?, Some(entry(4, "").log_id));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
    let kept: Vec<u64> = log
        .try_get_log_entries(0..10)
        .await?
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(kept, [3, 4]);
    let (applied, _) = sm.applied_state().await?;
    assert_eq!(
        applied.map(|l| l.index),
        Some(3),
        "restored from the snapshot"
    );
    assert_eq!(sm.read(|a| a.state.hash()), expected_hash);
    assert_eq!(sm.read(|a| a.state.len()), 3);
    assert!(sm.get_current_snapshot().await?.is_some());
    Ok(())
}
