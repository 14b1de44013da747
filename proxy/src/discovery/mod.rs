//! Where the proxy's configuration comes from and where it is kept: the
//! [`ConfigStore`] holds the current [`RouteTable`], swapped atomically on
//! every accepted config; sources feed it: the static file, or the
//! control-plane stream ([`remote`]).

pub mod cluster;
pub mod error;
pub mod matcher;
pub mod model;
pub mod remote;
pub mod static_file;
pub mod tcp;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use trellis_api as api;

use crate::config::NodeConfig;

pub use cluster::{Cluster, Endpoint, Env};
pub use model::{ModelError, Route, RouteTable, VirtualHost};

/// The configuration in use. Readers take a snapshot per request; a new
/// config replaces it atomically, so in-flight requests finish on the one
/// they started with.
#[derive(Debug)]
pub struct ConfigStore {
    table: ArcSwap<RouteTable>,
    ready: AtomicBool,
    /// Shutting down: not ready, whatever the config.
    draining: AtomicBool,
}

impl ConfigStore {
    /// An empty store: no routes, not ready.
    pub fn new() -> Self {
        Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The current table.
    pub fn load(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Puts `table` in service, marks the proxy ready and hands back the
    /// table it replaced.
    fn replace(&self, table: RouteTable) -> Arc<RouteTable> {
        let replaced = self.table.swap(Arc::new(table));
        self.ready.store(true, Ordering::Release);
        replaced
    }

    /// Builds `config` for this node on the config thread (never on the
    /// thread serving requests) and puts it in service (counted as a
    /// successful reload); the reasons when it cannot run, in which case
    /// the last config stays.
    pub async fn install(
        &self,
        config: Arc<api::ProxyConfig>,
        node: &NodeConfig,
        env: &Env,
    ) -> Result<(), Vec<String>> {
        let previous = self.load();
        let (built, node, env_copy) = (config.clone(), node.clone(), env.clone());
        let built = worker::run(move || {
            let table = RouteTable::build(&built, &node, Some(&previous), &env_copy)?;
            Ok::<_, Vec<ModelError>>((removed_destinations(&previous, &table), table))
        })
        .await
        .map_err(|e| vec![format!("building the config failed: {e}")])?;
        match built {
            Ok((gone, table)) => {
                let replaced = self.replace(table);
                for (service, subset) in gone {
                    env.metrics.forget_destination(&service, &subset);
                }
                env.metrics
                    .config_version
                    .set(i64::try_from(config.version).unwrap_or(i64::MAX));
                env.metrics.reload(true);
                // The replaced table is dropped where it was built (unless
                // requests in flight still hold it), and its memory given
                // back to the system there.
                let _ = worker::run(move || drop(replaced)).await;
                Ok(())
            }
            Err(errors) => Err(errors.iter().map(ToString::to_string).collect()),
        }
    }

    /// True once a config has been applied.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// From now on `/ready` says no (the proxy is shutting down).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

/// The (service, subset) destinations of `old` that `new` no longer has.
fn removed_destinations(old: &RouteTable, new: &RouteTable) -> Vec<(String, String)> {
    let kept: std::collections::HashSet<(&str, &str)> = new
        .clusters
        .iter()
        .map(|c| (c.service.as_str(), c.subset.as_str()))
        .collect();
    let mut gone: Vec<(String, String)> = old
        .clusters
        .iter()
        .filter(|c| !kept.contains(&(c.service.as_str(), c.subset.as_str())))
        .map(|c| (c.service.clone(), c.subset.clone()))
        .collect();
    gone.sort();
    gone.dedup();
    gone
}
