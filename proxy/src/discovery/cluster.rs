//! A destination (service, subset) as the proxy runs it: its endpoints with
//! their shared load and outlier state, its balancer, hash policy, outlier
//! settings and retry budget. State that must outlive a config reload
//! (endpoint load and health, the budget) is carried over from the previous
//! cluster of the same name.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trellis_api as api;

use super::model::ModelError;
use crate::layers::balance::{Balancer, EndpointLoad, Ring};
use crate::layers::breaker::{PoolLimit, RetryGate};
use crate::layers::outlier::{
    max_ejected, Health, Outcome, OutlierConfig, OutlierState, Transition,
};
use crate::layers::retry::RetryBudget;
use crate::transport::pool::{EndpointPool, PoolConfig};

/// A (service, subset) and its endpoints.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub service: String,
    pub subset: String,
    pub protocol: api::Protocol,
    pub endpoints: Vec<Endpoint>,
    pub balancer: Balancer,
    /// What consistent hashing hashes, if the destination uses it.
    pub hash: Option<HashPolicy>,
    pub outlier: Option<OutlierConfig>,
    /// Caps retries to this destination.
    pub budget: Arc<RetryBudget>,
    /// `connectionPool` request limits, when any is set.
    pub pool: Option<Arc<PoolLimit>>,
    /// `connectionPool.http.maxRetries`, when set.
    pub retry_gate: Option<Arc<RetryGate>>,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `address:port`, the URI authority used to reach it.
    pub authority: http::uri::Authority,
    pub labels: HashMap<String, String>,
    pub state: Arc<EndpointState>,
    /// Connections to this endpoint.
    pub pool: Arc<EndpointPool>,
}

/// Settings that come from the proxy's flags rather than the rules.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// Connect timeout of destinations without `connectTimeout`.
    pub connect_timeout: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// Load and health of one endpoint, shared by all connections and kept
/// across config reloads.
#[derive(Debug, Default)]
pub struct EndpointState {
    pub load: EndpointLoad,
    pub outlier: OutlierState,
}

/// `consistentHash` key source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

/// The balancer's choice for one attempt.
#[derive(Debug, Clone, Copy)]
pub struct Selected {
    pub index: usize,
    /// Every endpoint was ejected: sent anyway.
    pub panic: bool,
}

impl Cluster {
    /// Builds `c`, reusing endpoint state, connections and budget from `previous`.
    pub fn build(
        c: &api::Cluster,
        previous: Option<&Cluster>,
        defaults: &Defaults,
    ) -> Result<Self, ModelError> {
        let policy = c.policy.as_ref();
        let pool_cfg = policy.and_then(|p| p.connection_pool.as_ref());
        let pool_config = PoolConfig {
            http2: c.protocol() == api::Protocol::Http2,
            connect_timeout: pool_cfg
                .and_then(|p| p.connect_timeout)
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(defaults.connect_timeout),
            max_requests_per_connection: pool_cfg.map_or(0, |p| p.max_requests_per_connection),
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
                let state = old.map(|old| old.state.clone()).unwrap_or_default();
                let pool = old
                    .map(|old| old.pool.clone())
                    .filter(|pool| pool.config == pool_config)
                    .unwrap_or_else(|| {
                        Arc::new(EndpointPool::new(authority.as_str(), pool_config))
                    });
                Ok(Endpoint {
                    authority,
                    labels: e.labels.clone(),
                    state,
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
            .map(|o| OutlierConfig {
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
        let retry_gate = pool_cfg
            .map(|p| p.max_retries)
            .filter(|m| *m > 0)
            .map(|max| Arc::new(RetryGate::new(max, &c.service, &c.subset)));
        Ok(Self {
            pool,
            retry_gate,
            name: c.name.clone(),
            service: c.service.clone(),
            subset: c.subset.clone(),
            protocol: c.protocol(),
            endpoints,
            balancer,
            hash,
            outlier,
            budget: previous.map(|p| p.budget.clone()).unwrap_or_default(),
        })
    }

    /// Picks an endpoint for one attempt: among available endpoints, those
    /// not yet `tried` by this request when there are any; when every
    /// endpoint is ejected, among all (panic mode).
    pub fn select(&self, key: Option<u64>, tried: &[http::uri::Authority]) -> Option<Selected> {
        let n = self.endpoints.len();
        let now = Instant::now();
        let load = |i: usize| &self.endpoints[i].state.load;
        let available =
            |i: usize| self.outlier.is_none() || self.endpoints[i].state.outlier.available(now);
        let fresh = |i: usize| available(i) && !tried.contains(&self.endpoints[i].authority);
        let pick = |eligible: &dyn Fn(usize) -> bool| self.balancer.pick(n, &load, eligible, key);
        if let Some(index) = pick(&fresh).or_else(|| pick(&available)) {
            self.endpoints[index].state.outlier.admit(now);
            return Some(Selected {
                index,
                panic: false,
            });
        }
        pick(&|_| true).map(|index| Selected { index, panic: true })
    }

    /// Records the outcome of an attempt at endpoint `index`.
    pub fn report(&self, index: usize, outcome: Outcome) -> Transition {
        let Some(cfg) = &self.outlier else {
            return Transition::None;
        };
        let Some(endpoint) = self.endpoints.get(index) else {
            return Transition::None;
        };
        // Counting the ejected endpoints takes a lock each: only on failure.
        let may_eject = outcome != Outcome::Success && {
            let out = self
                .endpoints
                .iter()
                .filter(|e| e.state.outlier.is_out())
                .count();
            out < max_ejected(self.endpoints.len(), cfg.max_ejection_percent)
        };
        endpoint
            .state
            .outlier
            .report(outcome, cfg, may_eject, Instant::now())
    }

    /// Endpoints by health: (healthy, ejected, probing).
    pub fn health_counts(&self) -> (usize, usize, usize) {
        self.endpoints
            .iter()
            .fold((0, 0, 0), |(h, e, p), ep| match ep.state.outlier.health() {
                Health::Healthy => (h + 1, e, p),
                Health::Ejected { .. } => (h, e + 1, p),
                Health::Probing => (h, e, p + 1),
            })
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
        Cluster::build(&c, None, &Defaults::default()).expect("valid cluster")
    }

    #[test]
    fn retries_avoid_endpoints_already_tried() {
        let c = cluster(3, false);
        for _ in 0..50 {
            let tried = vec![
                c.endpoints[0].authority.clone(),
                c.endpoints[1].authority.clone(),
            ];
            let s = c.select(None, &tried).expect("an endpoint");
            assert_eq!(s.index, 2);
        }
        // all tried: any endpoint rather than none
        let all: Vec<_> = c.endpoints.iter().map(|e| e.authority.clone()).collect();
        assert!(c.select(None, &all).is_some());
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_all_are_out() {
        let c = cluster(2, true);
        assert_eq!(
            c.report(0, Outcome::ServerError { gateway: false }),
            Transition::Ejected(Duration::from_secs(30))
        );
        for _ in 0..50 {
            let s = c.select(None, &[]).expect("an endpoint");
            assert_eq!((s.index, s.panic), (1, false));
        }
        c.report(1, Outcome::GatewayFailure);
        assert_eq!(c.health_counts(), (0, 2, 0));
        let s = c.select(None, &[]).expect("panic mode still sends");
        assert!(s.panic);
    }
}
