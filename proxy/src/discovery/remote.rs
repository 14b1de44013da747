//! Connected mode: the client of the control-plane stream
//! (`--control-plane URL[,URL...]`). It connects to one replica, says who
//! it is and which version it runs, and answers every push: ACK with the
//! hash of the config it now runs, or NACK with every reason it cannot run
//! it (the last good config keeps serving). When the stream breaks it moves
//! to the next replica. With `--state-dir` each accepted config is written
//! to disk (off the runtime thread), and a restarted proxy serves it before
//! reaching any replica.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;
use trellis_api as api;
use trellis_api::mesh_discovery_client::MeshDiscoveryClient;
use trellis_api::tls::channel::{describe, Connector};

use super::{ConfigStore, Env};
use crate::config::NodeConfig;

/// File under `--state-dir` holding the last accepted config (protobuf).
const STATE_FILE: &str = "config.pb";

/// The stream client.
#[derive(Debug)]
pub struct Remote {
    urls: Vec<String>,
    /// TLS that verifies the replica (`--trust-bundle`).
    tls: Arc<rustls::ClientConfig>,
    state_dir: Option<PathBuf>,
    store: Arc<ConfigStore>,
    node: NodeConfig,
    env: Env,
    /// Version and hash of the config in service (0 / empty: none).
    version: u64,
    hash: String,
    /// The latest accepted config, for the writer of `--state-dir`.
    persist: Option<watch::Sender<Arc<[u8]>>>,
}

impl Remote {
    pub fn new(
        urls: Vec<String>,
        tls: Arc<rustls::ClientConfig>,
        state_dir: Option<PathBuf>,
        store: Arc<ConfigStore>,
        node: NodeConfig,
        env: Env,
    ) -> Self {
        Self {
            urls,
            tls,
            state_dir,
            store,
            node,
            env,
            version: 0,
            hash: String::new(),
            persist: None,
        }
    }

    /// Serves the persisted config if any, then streams until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.restore().await;
        if let Some(dir) = self.state_dir.clone() {
            let (tx, rx) = watch::channel(Arc::from(Vec::new()));
            tokio::spawn(write_accepted(dir, rx));
            self.persist = Some(tx); // dropped with `self`: the writer ends
        }
        let mut backoff = MIN_BACKOFF;
        let mut next = 0usize;
        loop {
            let url = self.urls[next % self.urls.len()].clone();
            next += 1;
            let mut received = false;
            let result = tokio::select! {
                r = self.stream(&url, &mut received) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(()) => tracing::warn!(%url, "control plane closed the stream"),
                Err(e) => {
                    tracing::warn!(%url, error = %e, "control-plane stream failed; trying the next replica")
                }
            }
            backoff = if received {
                MIN_BACKOFF
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
            // The next replica is tried at once after a working stream broke;
            // a full round of failures waits.
            if !received || next % self.urls.len() == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// One stream to `url`, until it ends.
    async fn stream(&mut self, url: &str, received: &mut bool) -> Result<(), String> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .connect_with_connector(Connector::new(self.tls.clone()))
            .await
            .map_err(|e| format!("connect: {}", describe(&e)))?;
        let (tx, rx) = mpsc::channel(4);
        let hello = api::DiscoveryRequest {
            node: Some(api::Node {
                id: self.node.id.clone(),
                namespace: self.node.namespace.clone(),
                service: self.node.service.clone(),
                service_account: String::new(),
                labels: self.node.labels.clone(),
            }),
            version: self.version,
            config_hash: self.hash.clone(),
            ..Default::default()
        };
        let _ = tx.send(hello).await;
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut inbound = MeshDiscoveryClient::new(channel)
            .stream_config(outbound)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        tracing::info!(%url, version = self.version, "connected to the control plane");
        while let Some(push) = inbound
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            *received = true;
            let answer = self.accept(push).await;
            tx.send(answer)
                .await
                .map_err(|_| "stream closed".to_string())?;
        }
        Ok(())
    }

    /// Applies a push if it can run; the ACK or NACK that answers it.
    async fn accept(&mut self, push: api::DiscoveryResponse) -> api::DiscoveryRequest {
        let mut answer = api::DiscoveryRequest {
            response_nonce: push.nonce,
            ..Default::default()
        };
        let result = match push.config {
            None => Err(vec!["push without a config".to_string()]),
            Some(_) if push.version <= self.version => Err(vec![format!(
                "version {} is not newer than the running {}",
                push.version, self.version
            )]),
            Some(mut config) => {
                config.version = push.version;
                let config = Arc::new(config);
                self.store
                    .install(config.clone(), &self.node, &self.env)
                    .await
                    .map(|()| config)
            }
        };
        match result {
            Ok(config) => {
                let bytes = config.encode_to_vec();
                self.version = push.version;
                self.hash = hash(&bytes);
                tracing::info!(version = self.version, replica = %push.replica, "config applied");
                if let Some(persist) = &self.persist {
                    persist.send_replace(Arc::from(bytes));
                }
            }
            Err(errors) => {
                self.env.metrics.reload(false);
                for e in &errors {
                    tracing::warn!(version = push.version, "{e}");
                }
                tracing::warn!(
                    version = push.version,
                    errors = errors.len(),
                    "pushed config refused (NACK); keeping the last good config"
                );
                answer.errors = errors;
            }
        }
        answer.version = self.version;
        answer.config_hash = self.hash.clone();
        answer
    }

    /// Serves the config persisted under `--state-dir`, if any.
    async fn restore(&mut self) {
        let Some(dir) = &self.state_dir else { return };
        let path = dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the persisted config");
                return;
            }
        };
        let config = match api::ProxyConfig::decode(bytes.as_slice()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "persisted config is corrupt; ignored");
                return;
            }
        };
        let config = Arc::new(config);
        match self
            .store
            .install(config.clone(), &self.node, &self.env)
            .await
        {
            Ok(()) => {
                self.version = config.version;
                self.hash = hash(&bytes);
                tracing::info!(version = self.version, path = %path.display(), "serving the persisted config until a control plane answers");
            }
            Err(errors) => {
                tracing::warn!(path = %path.display(), ?errors, "persisted config cannot run; ignored");
            }
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Writes `bytes` to `dir/config.pb` atomically (write, fsync, rename).
/// Writes each accepted config to `dir` on the blocking pool, never on the
/// proxy's runtime thread; a config that came while a write was running
/// waits for it, and only the latest of several is written.
async fn write_accepted(dir: PathBuf, mut accepted: watch::Receiver<Arc<[u8]>>) {
    while accepted.changed().await.is_ok() {
        let bytes = accepted.borrow_and_update().clone();
        let target = dir.clone();
        match tokio::task::spawn_blocking(move || persist(&target, &bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot persist the config")
            }
            Err(e) => tracing::warn!(error = %e, "the config writer stopped"),
        }
    }
}

fn persist(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))
}

/// FNV-1a (64 bit) of the encoded config, hex: equal configs, equal hashes.
pub fn hash(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}
