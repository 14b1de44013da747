//! `--watch-dir DIR`: the YAML files of a directory (`*.yaml`, `*.yml`) are
//! the source `file`. The leader checks the directory every interval; when
//! its content differs from what was last synced, it loads and validates
//! every file together. An invalid set is logged with every error (file,
//! line, column, field) and nothing is proposed; a valid one is compared
//! with the replicated state and only the difference is proposed, in one
//! entry. A replica that becomes leader compares again, so a change is
//! neither lost nor proposed twice when leadership moves.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use trellis_crds::{load_str, validate, Diagnostics, RuleSet};

use crate::replica::{Replica, WriteError};
use crate::state::resources::{diff, documents};
use crate::state::MeshCommand;

/// The `source` of what this source writes.
pub const SOURCE: &str = "file";

/// The file source of one replica.
#[derive(Debug)]
pub struct FileSource {
    pub dir: PathBuf,
    pub interval: Duration,
    pub replica: Arc<Replica>,
}

impl FileSource {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Hash of the content last synced (or last found invalid) as leader.
        let mut synced: Option<u64> = None;
        let mut read_error: Option<String> = None;
        loop {
            if !self.replica.is_leader() {
                synced = None;
            } else {
                match read_dir(&self.dir).await {
                    Err(e) => {
                        let message = e.to_string();
                        if read_error.as_ref() != Some(&message) {
                            tracing::warn!(dir = %self.dir.display(), error = %message, "cannot read the watched directory");
                            read_error = Some(message);
                        }
                    }
                    Ok(files) => {
                        read_error = None;
                        let hash = content_hash(&files);
                        if synced != Some(hash) && self.sync(&files).await {
                            synced = Some(hash);
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Brings the replicated state in line with `files`. False when it
    /// should be tried again (leadership moved, no quorum).
    async fn sync(&self, files: &[(String, String)]) -> bool {
        let metrics = &self.replica.metrics;
        let rules = match load(files) {
            Ok(rules) => rules,
            Err(errors) => {
                for e in errors.iter() {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    dir = %self.dir.display(),
                    errors = errors.len(),
                    "watched directory rejected; nothing proposed, the mesh keeps its last good config"
                );
                metrics.source_errors.set(errors.len() as i64);
                return true;
            }
        };
        let docs = match documents(&rules) {
            Ok(docs) => docs,
            Err(e) => {
                tracing::error!("{e}");
                return true;
            }
        };
        if let Err(e) = self.replica.linearize().await {
            tracing::debug!(error = %e, "not syncing the watched directory yet");
            return false;
        }
        let mut commands = self.replica.sm.read(|a| diff(&a.state, SOURCE, docs));
        if commands.is_empty() {
            metrics.source_errors.set(0);
            return true;
        }
        let count = commands.len();
        let command = if count == 1 {
            commands.remove(0)
        } else {
            MeshCommand::Batch(commands)
        };
        match self.replica.propose(command).await {
            Ok((index, _)) => {
                metrics.source_errors.set(0);
                tracing::info!(dir = %self.dir.display(), changes = count, version = index, "watched directory synced");
                true
            }
            Err(WriteError::Invalid(errors)) => {
                for e in &errors {
                    tracing::error!("{e}");
                }
                tracing::error!(dir = %self.dir.display(), errors = errors.len(), "watched directory conflicts with the mesh configuration; nothing proposed");
                metrics.source_errors.set(errors.len() as i64);
                true
            }
            Err(WriteError::Unavailable(e)) => {
                tracing::warn!(error = %e, "proposing the watched directory failed; retrying");
                false
            }
        }
    }
}

/// Loads and validates every file together.
fn load(files: &[(String, String)]) -> Result<RuleSet, Diagnostics> {
    let mut rules = RuleSet::default();
    let mut errors = Vec::new();
    for (name, text) in files {
        match load_str(name, text) {
            Ok(loaded) => rules.extend(loaded),
            Err(Diagnostics(mut e)) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    let invalid = validate(&rules);
    if invalid.is_empty() {
        Ok(rules)
    } else {
        Err(invalid)
    }
}

/// `(path, text)` of each YAML file in `dir`, sorted by name.
async fn read_dir(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut paths = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => files.push((path.display().to_string(), text)),
            // Removed between listing and reading: it is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ))
            }
        }
    }
    Ok(files)
}

fn content_hash(files: &[(String, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    h.finish()
}
