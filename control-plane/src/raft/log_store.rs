//! The Raft log, vote and committed index in redb ([`super::db`]). An
//! append is acknowledged to openraft only after its transaction is
//! durable.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, Vote};
use redb::{Database, ReadableTable};

use super::db::{blocking, from_json, read_meta, to_json, write_meta, LOGS, META};
use super::{Entry, LogId, NodeId, StorageError, StorageIOError, TypeConfig};

/// Handle to the log; clones share the database.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    async fn meta<T>(&self, name: &'static str) -> Result<Option<T>, redb::Error>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || read_meta(&db, name)).await
    }

    async fn set_meta<T>(&self, name: &'static str, value: T) -> Result<(), redb::Error>
    where
        T: serde::Serialize + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || write_meta(&db, name, &value)).await
    }
}

fn io(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let db = self.db.clone();
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let mut entries = Vec::new();
            for item in table.range::<u64>(bounds)? {
                let (_, value) = item?;
                entries.push(from_json::<Entry>(value.value())?);
            }
            Ok(entries)
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::read_logs(io(e))))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self
            .meta("last_purged")
            .await
            .map_err(|e| StorageError::from(StorageIOError::read_logs(io(e))))?;
        let db = self.db.clone();
        let last = blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let last = match table.last()? {
                Some((_, value)) => Some(from_json::<Entry>(value.value())?.log_id),
                None => None,
            };
            Ok(last)
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::read_logs(io(e))))?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.set_meta("vote", *vote)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(io(e))))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta("vote")
            .await
            .map_err(|e| StorageError::from(StorageIOError::read_vote(io(e))))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.set_meta("committed", committed)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write(io(e))))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.meta::<Option<LogId>>("committed")
            .await
            .map(Option::flatten)
            .map_err(|e| StorageError::from(StorageIOError::read(io(e))))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| serde_json::to_vec(&e).map(|bytes| (e.log_id.index, bytes)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageError::from(StorageIOError::write_logs(io(e))))?;
        let db = self.db.clone();
        let written = blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(message)));
                Err(StorageError::from(StorageIOError::write_logs(io(e))))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove((Bound::Included(log_id.index), Bound::Unbounded), None)
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove(
            (Bound::Unbounded, Bound::Included(log_id.index)),
            Some(log_id),
        )
        .await
    }
}

impl LogStore {
    /// Removes the entries in `range`; records `purged` as the last purged
    /// log id in the same transaction.
    async fn remove(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<LogId>,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOGS)?;
                table.retain_in::<u64, _>(range, |_, _| false)?;
                if let Some(purged) = purged {
                    let bytes = to_json(&purged)?;
                    txn.open_table(META)?
                        .insert("last_purged", bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::write_logs(io(e))))
    }
}
