//! The redb file a replica keeps its Raft state in, and its tables. Every
//! write transaction commits with redb's default durability (fsync), so
//! whatever openraft is told is stored survives a crash.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, TableDefinition};

/// Log entries by index, JSON.
pub(super) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Small values by name: `vote`, `committed`, `last_purged`, `snapshot`.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

#[derive(Debug, thiserror::Error)]
#[error("raft store {path}: {source}")]
pub struct StoreError {
    path: String,
    source: redb::Error,
}

impl StoreError {
    /// An error of the store in `dir`.
    pub(super) fn of(dir: &Path) -> impl Fn(redb::Error) -> Self {
        let path = dir.join(FILE).display().to_string();
        move |source| Self {
            path: path.clone(),
            source,
        }
    }
}

const FILE: &str = "raft.redb";

/// Opens (or creates) `dir/raft.redb` with its tables. The directory is
/// made 0700 and the file 0600: the log holds the mesh's CA key.
pub(super) fn open_database(dir: &Path) -> Result<Arc<Database>, StoreError> {
    let err = StoreError::of(dir);
    let io = |e: std::io::Error| err(redb::Error::from(e));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    let db = Database::create(dir.join(FILE)).map_err(|e| err(e.into()))?;
    std::fs::set_permissions(dir.join(FILE), std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let txn = db.begin_write().map_err(|e| err(e.into()))?;
    txn.open_table(LOGS).map_err(|e| err(e.into()))?;
    txn.open_table(META).map_err(|e| err(e.into()))?;
    txn.commit().map_err(|e| err(e.into()))?;
    Ok(Arc::new(db))
}

/// Runs a blocking redb operation off the async runtime's threads.
pub(super) async fn blocking<T, F>(f: F) -> Result<T, redb::Error>
where
    F: FnOnce() -> Result<T, redb::Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| redb::Error::from(std::io::Error::other(e)))?
}

/// Reads `META[name]` as JSON.
pub(super) fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    name: &str,
) -> Result<Option<T>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(META)?;
    let Some(value) = table.get(name)? else {
        return Ok(None);
    };
    from_json(value.value()).map(Some)
}

/// Writes `META[name]` as JSON, durably.
pub(super) fn write_meta<T: serde::Serialize>(
    db: &Database,
    name: &str,
    value: &T,
) -> Result<(), redb::Error> {
    let bytes = to_json(value)?;
    let txn = db.begin_write()?;
    txn.open_table(META)?.insert(name, bytes.as_slice())?;
    txn.commit()?;
    Ok(())
}

/// How values are stored: JSON, its errors as redb I/O errors.
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, redb::Error> {
    serde_json::to_vec(value).map_err(|e| redb::Error::from(std::io::Error::other(e)))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, redb::Error> {
    serde_json::from_slice(bytes).map_err(|e| redb::Error::from(std::io::Error::other(e)))
}
