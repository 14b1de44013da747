//! What a replica knows of the proxies streaming from it, for
//! `trellisctl proxy-status` and the admin endpoint.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use trellis_api as api;

use super::super::metrics::Metrics;

/// Proxies connected to this replica, by proxy id.
#[derive(Debug)]
pub struct Registry {
    replica: u64,
    proxies: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    session: u64,
    namespace: String,
    service: String,
    pushed_version: u64,
    acked_version: u64,
    status: &'static str,
    last_error: String,
    config_hash: String,
    last_seen: Instant,
}

impl Registry {
    pub fn new(replica: u64) -> Self {
        Self {
            replica,
            proxies: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        f(&mut self
            .proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A stream opened; the proxy runs `version` with `hash` (0: nothing).
    pub fn connect(&self, session: u64, node: &api::Node, version: u64, hash: String, m: &Metrics) {
        let count = self.with(|p| {
            p.insert(
                node.id.clone(),
                Entry {
                    session,
                    namespace: node.namespace.clone(),
                    service: node.service.clone(),
                    pushed_version: version,
                    acked_version: version,
                    status: if version == 0 { "PENDING" } else { "ACK" },
                    last_error: String::new(),
                    config_hash: hash,
                    last_seen: Instant::now(),
                },
            );
            p.len()
        });
        m.connected_proxies.set(count as i64);
    }

    /// The stream of `session` ended.
    pub fn disconnect(&self, id: &str, session: u64, m: &Metrics) {
        let count = self.with(|p| {
            if p.get(id).is_some_and(|e| e.session == session) {
                p.remove(id);
            }
            p.len()
        });
        m.connected_proxies.set(count as i64);
    }

    pub fn pushed(&self, id: &str, session: u64, version: u64) {
        self.update(id, session, |e| {
            e.pushed_version = version;
            e.status = "PENDING";
        });
    }

    /// The proxy answered: ACK when `errors` is empty.
    pub fn answered(&self, id: &str, session: u64, version: u64, hash: &str, errors: &[String]) {
        self.update(id, session, |e| {
            e.last_seen = Instant::now();
            if errors.is_empty() {
                e.status = "ACK";
                e.acked_version = version;
                e.config_hash = hash.to_string();
                e.last_error.clear();
            } else {
                e.status = "NACK";
                e.last_error = errors.join("; ");
            }
        });
    }

    fn update(&self, id: &str, session: u64, f: impl FnOnce(&mut Entry)) {
        self.with(|p| {
            if let Some(e) = p.get_mut(id).filter(|e| e.session == session) {
                f(e);
            }
        });
    }

    /// Every connected proxy as JSON (the admin `/proxy-status`).
    pub fn to_json(&self) -> serde_json::Value {
        self.records().iter().map(record_json).collect()
    }

    /// Every connected proxy, sorted by id.
    pub fn records(&self) -> Vec<api::ProxyRecord> {
        let mut records: Vec<api::ProxyRecord> = self.with(|p| {
            p.iter()
                .map(|(id, e)| api::ProxyRecord {
                    proxy: id.clone(),
                    namespace: e.namespace.clone(),
                    service: e.service.clone(),
                    replica: self.replica,
                    pushed_version: e.pushed_version,
                    acked_version: e.acked_version,
                    status: e.status.to_string(),
                    last_error: e.last_error.clone(),
                    config_hash: e.config_hash.clone(),
                    age_ms: u64::try_from(e.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX),
                    connected: true,
                })
                .collect()
        });
        records.sort_by(|a, b| a.proxy.cmp(&b.proxy));
        records
    }
}

/// One proxy's row as JSON: what `trellisctl proxy-status -o json` and the
/// admin `/proxy-status` print.
pub fn record_json(r: &api::ProxyRecord) -> serde_json::Value {
    serde_json::json!({
        "proxy": r.proxy, "namespace": r.namespace, "service": r.service,
        "replica": r.replica, "version": r.acked_version,
        "pushedVersion": r.pushed_version, "status": r.status,
        "lastError": r.last_error, "configHash": r.config_hash, "ageMs": r.age_ms,
    })
}
