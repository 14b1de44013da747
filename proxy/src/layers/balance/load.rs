//! The load of one endpoint, shared by every connection: requests in
//! flight, and a peak-EWMA of response latency (jumps up at once on a slow
//! response, decays over ~10 s), as in Finagle and Linkerd.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint with no measurement yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds (f64 bits).
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in ns since `epoch`.
    updated_ns: AtomicU64,
    epoch: Instant,
}

impl Default for EndpointLoad {
    fn default() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            updated_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl EndpointLoad {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request to this endpoint started.
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request finished after `rtt`.
    pub fn finish(&self, rtt: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.updated_ns.swap(now, Ordering::Relaxed);
        let prev = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let sample = rtt.as_nanos() as f64;
        let next = if sample > prev {
            sample // peak: react to a slow endpoint at once
        } else {
            let elapsed = now.saturating_sub(last) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            prev * w + sample * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Expected cost of sending one more request here.
    pub fn cost(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed)) * f64::from(self.in_flight() + 1)
    }
}
