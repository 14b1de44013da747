//! Static mode: rules and ServiceEntry endpoints from one YAML file, checked
//! for changes every interval. A valid change is compiled and swapped in; an
//! invalid one is logged with every error, counted, and the last good config
//! keeps serving. Loading, validating and compiling run on the config
//! thread, so a large or hostile file never stalls requests or the admin
//! port; a file over the loader's size bound is refused unread.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use trellis_crds::{compile, load_str, validate, Endpoints, MAX_SOURCE_BYTES};

use super::{ConfigStore, Env};
use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// The file source.
#[derive(Debug)]
pub struct StaticFile {
    path: PathBuf,
    interval: Duration,
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    node: NodeConfig,
    env: Env,
    /// Accepted configs so far; the version of the next is one more.
    version: u64,
    /// Hash of the last content seen, valid or not.
    last: Option<u64>,
    last_read_error: Option<String>,
}

impl StaticFile {
    pub fn new(
        path: PathBuf,
        interval: Duration,
        store: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        node: NodeConfig,
        env: Env,
    ) -> Self {
        Self {
            env,
            path,
            interval,
            store,
            metrics,
            node,
            version: 0,
            last: None,
            last_read_error: None,
        }
    }

    /// Polls the file until `shutdown` flips.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.poll().await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reads the file once; applies it when its content changed.
    pub async fn poll(&mut self) {
        if let Ok(meta) = tokio::fs::metadata(&self.path).await {
            if meta.len() > MAX_SOURCE_BYTES as u64 {
                let mut hasher = DefaultHasher::new();
                (meta.len(), meta.modified().ok()).hash(&mut hasher);
                let marker = hasher.finish();
                if self.last != Some(marker) {
                    self.last = Some(marker);
                    let error = format!(
                        "{}: the file is {} bytes; rule files are limited to {} MiB",
                        self.path.display(),
                        meta.len(),
                        MAX_SOURCE_BYTES >> 20
                    );
                    self.reject(&[error]);
                }
                return;
            }
        }
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) => {
                let message = e.to_string();
                if self.last_read_error.as_ref() != Some(&message) {
                    tracing::warn!(path = %self.path.display(), error = %message, "cannot read config file; keeping the last good config");
                    self.last_read_error = Some(message);
                }
                return;
            }
        };
        self.last_read_error = None;
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        let hash = hasher.finish();
        if self.last == Some(hash) {
            return;
        }
        self.last = Some(hash);
        match self.apply(text).await {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), version = self.version, "config applied");
            }
            Err(errors) => self.reject(&errors),
        }
    }

    fn reject(&self, errors: &[String]) {
        for e in errors {
            tracing::warn!(path = %self.path.display(), "{e}");
        }
        tracing::warn!(
            path = %self.path.display(),
            errors = errors.len(),
            "config rejected; keeping the last good config"
        );
        self.metrics.reload(false);
    }

    /// Loads, validates and compiles `text` on the config thread; puts it
    /// in service when valid.
    async fn apply(&mut self, text: String) -> Result<(), Vec<String>> {
        let name = self.path.display().to_string();
        let version = self.version + 1;
        let config = super::worker::run(move || {
            let rules = load_str(&name, &text).map_err(|d| d.to_lines())?;
            let errors = validate(&rules);
            if !errors.is_empty() {
                return Err(errors.to_lines());
            }
            let mut config = compile(&rules, &Endpoints::from_service_entries(&rules));
            config.version = version;
            config.source = format!("file:{name}");
            Ok(config)
        })
        .await
        .map_err(|e| vec![format!("loading the config failed: {e}")])??;
        self.store
            .install(Arc::new(config), &self.node, &self.env)
            .await?;
        self.version = version;
        Ok(())
    }
}
