//! Endpoint selection for a destination: `ROUND_ROBIN`, `RANDOM`,
//! `LEAST_REQUEST` (power of two choices on in-flight requests), ring-hash
//! `consistentHash`, and the default: power of two choices on peak-EWMA
//! latency × in-flight requests.
//!
//! Not `tower::balance`: its `Balance` is driven through `&mut self` and
//! must sit behind a `Buffer` (one more task hop per request) to be shared
//! by concurrent connections. Our endpoints keep their load in atomics
//! ([`EndpointLoad`]) that every connection reads and updates directly.

mod load;
mod ring;

pub use load::EndpointLoad;
pub use ring::{stable_hash, Ring};

use std::sync::atomic::{AtomicUsize, Ordering};

/// How a destination picks among its eligible endpoints.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(AtomicUsize),
    Random,
    LeastRequest,
    PeakEwma,
    /// Ring hash over endpoint indexes; requests without a key fall back to P2C.
    RingHash(Ring),
}

impl Balancer {
    /// Picks an index of `loads` for which `eligible` holds. `key` is the
    /// request's hash key (consistent hashing only).
    pub fn pick<'a>(
        &self,
        n: usize,
        load: &dyn Fn(usize) -> &'a EndpointLoad,
        eligible: &dyn Fn(usize) -> bool,
        key: Option<u64>,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self {
            Self::RoundRobin(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|i| eligible(*i))
            }
            Self::Random => {
                let start = fastrand::usize(..n);
                (0..n).map(|k| (start + k) % n).find(|i| eligible(*i))
            }
            Self::LeastRequest => p2c(n, eligible, |i| f64::from(load(i).in_flight())),
            Self::PeakEwma => p2c(n, eligible, |i| load(i).cost()),
            Self::RingHash(ring) => match key {
                Some(key) => ring.lookup(key, eligible),
                None => p2c(n, eligible, |i| load(i).cost()),
            },
        }
    }
}

/// Power of two choices: two distinct random eligible endpoints, the one
/// with the lower `cost` wins. No allocation: each choice scans from a
/// random start to the next eligible endpoint.
fn p2c(n: usize, eligible: &dyn Fn(usize) -> bool, cost: impl Fn(usize) -> f64) -> Option<usize> {
    let from = |start: usize, skip: Option<usize>| {
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| Some(*i) != skip && eligible(*i))
    };
    let a = from(fastrand::usize(..n), None)?;
    match from(fastrand::usize(..n), Some(a)) {
        Some(b) if cost(b) < cost(a) => Some(b),
        _ => Some(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(n: usize) -> Vec<EndpointLoad> {
        (0..n).map(|_| EndpointLoad::default()).collect()
    }

    #[test]
    fn round_robin_cycles_over_eligible() {
        let l = loads(3);
        let b = Balancer::RoundRobin(AtomicUsize::new(0));
        let picks: Vec<_> = (0..6)
            .filter_map(|_| b.pick(3, &|i| &l[i], &|i| i != 1, None))
            .collect();
        assert!(picks.iter().all(|i| *i != 1));
        assert!(picks.contains(&0) && picks.contains(&2));
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let l = loads(2);
        for _ in 0..10 {
            l[0].start();
        }
        let b = Balancer::LeastRequest;
        assert!((0..100).all(|_| b.pick(2, &|i| &l[i], &|_| true, None) == Some(1)));
    }

    #[test]
    fn nothing_eligible_picks_nothing() {
        let l = loads(2);
        for b in [
            Balancer::Random,
            Balancer::PeakEwma,
            Balancer::RoundRobin(AtomicUsize::new(0)),
        ] {
            assert_eq!(b.pick(2, &|i| &l[i], &|_| false, None), None);
        }
    }
}
