//! A destination (service, subset) as the proxy runs it: its endpoints with
//! their connection pools, the balancer's [`Targets`] (load and health of
//! each endpoint), the [`OutlierGroup`], pool limits and retry budget. State that must outlive a config reload
//! (endpoint load and health, the budget) is carried over from the previous
//! cluster of the same name.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use trellis_api as api;

use super::error::ModelError;
use crate::identity::Identity;
use crate::layers::balance::{Balancer, EndpointLoad, Ring, Targets};
use crate::layers::breaker::{PoolLimit, RetryGate};
use crate::layers::outlier::{Member, OutlierConfig, OutlierGroup, OutlierState};
use crate::layers::rate_limit::{RateLimit, RateLimitConfig};
use crate::layers::retry::RetryBudget;
use crate::metrics::Metrics;
use crate::transport::pool::{EndpointPool, PoolConfig};

/// A (service, subset) and its endpoints.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub service: String,
    pub subset: String,
    pub protocol: api::Protocol,
    pub endpoints: Vec<Endpoint>,
    /// What the balancer picks from, index for index with `endpoints`.
    pub targets: Arc<Targets>,
    /// What consistent hashing hashes, if the destination uses it.
    pub hash: Option<HashPolicy>,
    /// Outlier detection, when configured.
    pub outlier: Option<Arc<OutlierGroup>>,
    /// Caps retries to this destination.
    pub budget: Arc<RetryBudget>,
    /// `connectionPool` request limits, when any is set.
    pub pool: Option<Arc<PoolLimit>>,
    /// `connectionPool.tcp.maxConnections` for opaque TCP, when set.
    pub tcp_connections: Option<Arc<ConnectionLimit>>,
    /// `connectionPool.http.maxRetries`, when set.
    pub retry_gate: Option<Arc<RetryGate>>,
    /// `rateLimit` of the destination, when set.
    pub rate_limit: Option<Arc<RateLimit>>,
    /// Some endpoint is reached over mTLS.
    pub mtls: bool,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `address:port`, the URI authority used to reach it.
    pub authority: http::uri::Authority,
    pub labels: BTreeMap<String, String>,
    pub load: Arc<EndpointLoad>,
    pub health: Arc<OutlierState>,
    /// Connections to this endpoint.
    pub pool: Arc<EndpointPool>,
}

/// Opaque TCP connections open at once to a destination, at most `max`.
#[derive(Debug)]
pub struct ConnectionLimit {
    pub max: u32,
    permits: Arc<tokio::sync::Semaphore>,
}

impl ConnectionLimit {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            permits: Arc::new(tokio::sync::Semaphore::new(max as usize)),
        }
    }

    /// A connection's place, held until dropped; `None` at the limit.
    pub fn try_open(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// The label marking an endpoint that runs a sidecar (Istio's).
const SIDECAR_LABEL: &str = "security.istio.io/tlsMode";

/// What clusters are built with besides the rules: settings from the
/// proxy's flags, and the metrics their layers count into.
#[derive(Clone, Debug)]
pub struct Env {
    /// Connect timeout of destinations without `connectTimeout`.
    pub connect_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// The workload identity mTLS connections present (none: mTLS off).
    pub identity: Option<Arc<Identity>>,
}

impl Default for Env {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            metrics: Arc::new(Metrics::new()),
            identity: None,
        }
    }
}

/// The bucket settings of a compiled `rateLimit`.
pub fn rate_limit_config(r: &api::RateLimit) -> RateLimitConfig {
    RateLimitConfig {
        requests_per_second: r.requests_per_second,
        burst: r.burst.max(1),
    }
}

/// `consistentHash` key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

impl Cluster {
    /// Builds `c`, reusing endpoint state, connections and budget from `previous`.
    pub fn build(
        c: &api::Cluster,
        previous: Option<&Cluster>,
        env: &Env,
    ) -> Result<Self, ModelError> {
        let policy = c.policy.as_ref();
        let pool_cfg = policy.and_then(|p| p.connection_pool.as_ref());
        let pool_config = PoolConfig {
            http2: c.protocol() == api::Protocol::Http2,
            connect_timeout: pool_cfg
                .and_then(|p| p.connect_timeout)
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(env.connect_timeout),
            max_requests_per_connection: pool_cfg.map_or(0, |p| p.max_requests_per_connection),
            mtls: None,
        };
        let endpoints = c
            .endpoints
            .iter()
            .map(|e| {
                let text = if e.address.contains(':') {
                    format!("[{}]:{}", e.address, e.port)
                } else {
                    format!("{}:{}", e.address, e.port)
                };
                let authority: http::uri::Authority =
                    text.parse().map_err(|_| ModelError::BadEndpoint {
                        cluster: c.name.clone(),
                        address: e.address.clone(),
                        port: e.port,
                    })?;
                let old = previous
                    .and_then(|p| p.endpoints.iter().find(|old| old.authority == authority));
                let load = old.map(|old| old.load.clone()).unwrap_or_default();
                let health = old.map(|old| old.health.clone()).unwrap_or_default();
                // Between two sidecars HTTP is HTTP/2, plaintext or not: the
                // application's HTTP/1.1 connections share one connection.
                let sidecar = e.labels.get(SIDECAR_LABEL).is_some_and(|v| v == "istio");
                let pool_config = PoolConfig {
                    mtls: e.mtls.then(|| Arc::from(e.identities.as_slice())),
                    http2: pool_config.http2 || sidecar,
                    ..pool_config.clone()
                };
                let pool = old
                    .map(|old| old.pool.clone())
                    .filter(|pool| pool.config == pool_config)
                    .unwrap_or_else(|| {
                        Arc::new(EndpointPool::new(
                            authority.as_str(),
                            pool_config,
                            env.identity.clone(),
                        ))
                    });
                Ok(Endpoint {
                    authority,
                    labels: e.labels.clone(),
                    load,
                    health,
                    pool,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lb = policy.and_then(|p| p.load_balancer.as_ref());
        let hash = lb
            .and_then(|l| l.consistent_hash.as_ref())
            .and_then(hash_policy);
        let balancer = if hash.is_some() {
            let names: Vec<&str> = endpoints.iter().map(|e| e.authority.as_str()).collect();
            Balancer::RingHash(Ring::new(&names))
        } else {
            use api::load_balancer::Simple;
            match lb.map(|l| l.simple()) {
                Some(Simple::RoundRobin) => {
                    Balancer::RoundRobin(AtomicUsize::new(fastrand::usize(..)))
                }
                Some(Simple::Random) => Balancer::Random,
                Some(Simple::LeastRequest) => Balancer::LeastRequest,
                _ => Balancer::PeakEwma,
            }
        };
        let outlier = policy
            .and_then(|p| p.outlier_detection.as_ref())
            .map(|o| OutlierGroup {
                config: OutlierConfig {
                    consecutive_5xx: o.consecutive_5xx_errors,
                    consecutive_gateway: o.consecutive_gateway_errors,
                    base_ejection: o
                        .base_ejection_time
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or(Duration::from_secs(30)),
                    max_ejection_percent: if o.max_ejection_percent == 0 {
                        10
                    } else {
                        o.max_ejection_percent
                    },
                    interval: o
                        .interval
                        .and_then(|d| Duration::try_from(d).ok())
                        .unwrap_or(Duration::ZERO),
                },
                members: endpoints
                    .iter()
                    .map(|e| Member {
                        endpoint: e.authority.to_string(),
                        state: e.health.clone(),
                    })
                    .collect(),
                ejections: env.metrics.ejections_of(&c.service, &c.subset),
                name: c.name.clone(),
            })
            .map(Arc::new);
        let targets = Arc::new(Targets {
            balancer,
            loads: endpoints.iter().map(|e| e.load.clone()).collect(),
            health: outlier.clone(),
            panic: env.metrics.panics_of(&c.service, &c.subset),
        });
        let limit = |v: u32| if v == 0 { usize::MAX } else { v as usize };
        let pool = pool_cfg
            .map(|p| {
                (
                    limit(p.max_connections).min(limit(p.http2_max_requests)),
                    limit(p.http1_max_pending_requests),
                )
            })
            .filter(|(active, pending)| *active != usize::MAX || *pending != usize::MAX)
            .map(
                |(active, pending)| match previous.and_then(|p| p.pool.clone()) {
                    // same limits: keep the counters of requests in flight
                    Some(old) if old.limits == (active, pending) => old,
                    _ => Arc::new(PoolLimit::new(active, pending)),
                },
            );
        let tcp_connections = pool_cfg
            .map(|p| p.max_connections)
            .filter(|max| *max > 0)
            .map(
                |max| match previous.and_then(|p| p.tcp_connections.clone()) {
                    // same limit: keep the count of open connections
                    Some(old) if old.max == max => old,
                    _ => Arc::new(ConnectionLimit::new(max)),
                },
            );
        let retry_gate = pool_cfg
            .map(|p| p.max_retries)
            .filter(|m| *m > 0)
            .map(|max| Arc::new(RetryGate::new(max, &c.service, &c.subset)));
        let rate_limit = policy
            .and_then(|p| p.rate_limit.as_ref())
            .map(rate_limit_config)
            .map(|config| match previous.and_then(|p| p.rate_limit.clone()) {
                Some(old) if old.config == config => old,
                _ => Arc::new(RateLimit::new(config)),
            });
        let (min_per_sec, ratio) = policy
            .and_then(|p| p.retry_budget.as_ref())
            .map_or((10, 0.2), |b| {
                (b.min_retries_per_second, (b.percent / 100.0) as f32)
            });
        let budget = previous
            .map(|p| p.budget.clone())
            .filter(|b| b.has_settings(min_per_sec, ratio))
            .unwrap_or_else(|| {
                Arc::new(RetryBudget::new(
                    Duration::from_secs(10),
                    min_per_sec,
                    ratio,
                ))
            });
        Ok(Self {
            rate_limit,
            mtls: c.endpoints.iter().any(|e| e.mtls),
            pool,
            tcp_connections,
            retry_gate,
            name: c.name.clone(),
            service: c.service.clone(),
            subset: c.subset.clone(),
            protocol: c.protocol(),
            endpoints,
            targets,
            hash,
            outlier,
            budget,
        })
    }

    /// Endpoints by health: (healthy, ejected, probing).
    pub fn health_counts(&self) -> (usize, usize, usize) {
        match &self.outlier {
            Some(group) => group.health_counts(),
            None => (self.endpoints.len(), 0, 0),
        }
    }
}

fn hash_policy(h: &api::ConsistentHash) -> Option<HashPolicy> {
    use api::consistent_hash::Key;
    match h.key.as_ref()? {
        Key::HttpHeaderName(name) => http::HeaderName::from_bytes(name.as_bytes())
            .ok()
            .map(HashPolicy::Header),
        Key::HttpCookie(name) => Some(HashPolicy::Cookie(name.clone())),
        Key::UseSourceIp(true) => Some(HashPolicy::SourceIp),
        Key::UseSourceIp(false) => None,
        Key::HttpQueryParameterName(name) => Some(HashPolicy::QueryParameter(name.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: u32, outlier: bool) -> Cluster {
        let c = api::Cluster {
            name: "c".into(),
            endpoints: (0..n)
                .map(|i| api::Endpoint {
                    address: "127.0.0.1".into(),
                    port: 1000 + i,
                    ..Default::default()
                })
                .collect(),
            policy: outlier.then(|| api::TrafficPolicy {
                outlier_detection: Some(api::OutlierDetection {
                    consecutive_5xx_errors: 1,
                    max_ejection_percent: 100,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Cluster::build(&c, None, &Env::default()).expect("valid cluster")
    }

    #[test]
    fn endpoint_state_survives_a_reload_and_lines_up_with_the_layers() {
        let first = cluster(3, true);
        first.endpoints[1].load.start();
        let mut next = api::Cluster {
            name: "c".into(),
            endpoints: (1..4)
                .map(|i| api::Endpoint {
                    address: "127.0.0.1".into(),
                    port: 1000 + i,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        next.policy = Some(api::TrafficPolicy {
            outlier_detection: Some(api::OutlierDetection {
                consecutive_5xx_errors: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let second = Cluster::build(&next, Some(&first), &Env::default()).expect("valid");
        // port 1001 was index 1 and is now index 0: same load, same health
        assert!(Arc::ptr_eq(
            &first.endpoints[1].load,
            &second.endpoints[0].load
        ));
        assert!(Arc::ptr_eq(
            &first.endpoints[1].health,
            &second.endpoints[0].health
        ));
        assert_eq!(second.targets.loads[0].in_flight(), 1);
        assert_eq!(
            second.endpoints[2].load.in_flight(),
            0,
            "a new endpoint starts empty"
        );
        let group = second.outlier.as_ref().expect("outlier detection on");
        for (i, e) in second.endpoints.iter().enumerate() {
            assert!(Arc::ptr_eq(&group.members[i].state, &e.health));
            assert!(Arc::ptr_eq(&second.targets.loads[i], &e.load));
        }
        assert!(Arc::ptr_eq(&first.budget, &second.budget));
    }

    fn with_budget(budget: Option<api::RetryBudget>, previous: Option<&Cluster>) -> Cluster {
        let c = api::Cluster {
            name: "c".into(),
            policy: Some(api::TrafficPolicy {
                retry_budget: budget,
                ..Default::default()
            }),
            ..Default::default()
        };
        Cluster::build(&c, previous, &Env::default()).expect("valid cluster")
    }

    #[test]
    fn the_retry_budget_follows_the_destination_and_defaults_to_a_fifth() {
        let default = with_budget(None, None);
        assert!(default.budget.has_settings(10, 0.2));
        for _ in 0..100 {
            default.budget.deposit();
        }
        let granted = (0..100).filter(|_| default.budget.withdraw()).count();
        assert!((20..=21).contains(&granted), "{granted}");

        let none = api::RetryBudget {
            percent: 0.0,
            min_retries_per_second: 0,
        };
        let strict = with_budget(Some(none), Some(&default));
        strict.budget.deposit();
        assert!(!strict.budget.withdraw(), "a zero budget allows no retry");
        // The same settings on reload keep the window; new ones start afresh.
        let same = with_budget(Some(none), Some(&strict));
        assert!(Arc::ptr_eq(&same.budget, &strict.budget));
        assert!(!Arc::ptr_eq(&default.budget, &strict.budget));
    }
}
