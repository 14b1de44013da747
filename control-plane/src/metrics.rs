//! Prometheus metric families of a replica (prometheus-client), served on
//! the admin port at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric a replica exports. Raft gauges are refreshed from openraft's
/// metrics when scraped.
#[derive(Debug)]
pub struct Metrics {
    pub raft_term: Gauge,
    pub raft_leader: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_applied_index: Gauge,
    pub raft_commit_duration: Histogram,
    pub config_version: Gauge,
    pub connected_proxies: Gauge,
    pub pushes: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    pub push_ack_duration: Histogram,
    pub source_errors: Gauge,
    pub certificates_signed: Counter,
    pub certificate_refusals: Counter,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Self {
        let latency = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let m = Self {
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_commit_duration: latency(),
            config_version: Gauge::default(),
            connected_proxies: Gauge::default(),
            pushes: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            push_ack_duration: latency(),
            source_errors: Gauge::default(),
            certificates_signed: Counter::default(),
            certificate_refusals: Counter::default(),
            registry: Registry::default(),
        };
        let mut registry = Registry::default();
        let r = &mut registry;
        r.register(
            "trellis_raft_term",
            "Current Raft term",
            m.raft_term.clone(),
        );
        r.register(
            "trellis_raft_leader",
            "Node id of the known leader (0: none)",
            m.raft_leader.clone(),
        );
        r.register(
            "trellis_raft_is_leader",
            "1 on the leader",
            m.raft_is_leader.clone(),
        );
        r.register(
            "trellis_raft_applied_index",
            "Last log index applied to the state machine",
            m.raft_applied_index.clone(),
        );
        r.register(
            "trellis_raft_commit_duration_seconds",
            "Time from proposing a write to its being applied on the leader",
            m.raft_commit_duration.clone(),
        );
        r.register(
            "trellis_config_version",
            "Config version this replica serves (last index that changed the state)",
            m.config_version.clone(),
        );
        r.register(
            "trellis_xds_connected_proxies",
            "Proxies with an open stream to this replica",
            m.connected_proxies.clone(),
        );
        r.register(
            "trellis_xds_pushes",
            "Configs pushed to proxies",
            m.pushes.clone(),
        );
        r.register("trellis_xds_acks", "Pushes proxies ACKed", m.acks.clone());
        r.register(
            "trellis_xds_nacks",
            "Pushes proxies NACKed",
            m.nacks.clone(),
        );
        r.register(
            "trellis_xds_push_ack_duration_seconds",
            "Time from a push to its ACK or NACK",
            m.push_ack_duration.clone(),
        );
        r.register(
            "trellis_source_errors",
            "Errors in the watched directory now (0: the files are valid)",
            m.source_errors.clone(),
        );
        r.register(
            "trellis_ca_certificates_signed",
            "Workload certificates this replica signed",
            m.certificates_signed.clone(),
        );
        r.register(
            "trellis_ca_certificate_refusals",
            "CSRs refused (bad credential, identity or CSR)",
            m.certificate_refusals.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
