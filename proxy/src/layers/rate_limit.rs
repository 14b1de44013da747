//! Local rate limiting: a token bucket per route or per destination
//! (`rateLimit: {requestsPerSecond, burst}`), kept as one atomic with no
//! lock (GCRA: the "theoretical arrival time" of the next request).
//!
//! Up to `burst` requests pass at once; after that one more every
//! `1 / requestsPerSecond`. A request over the limit is answered 429
//! `rate-limited` by the caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The settings of a bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    /// Requests that may pass at once (at least 1).
    pub burst: u32,
}

#[derive(Debug)]
pub struct RateLimit {
    pub config: RateLimitConfig,
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now the arrival time may run: `burst` intervals.
    tolerance: u64,
    start: Instant,
    /// When the bucket is next empty, in nanoseconds since `start`.
    tat: AtomicU64,
}

impl RateLimit {
    pub fn new(config: RateLimitConfig) -> Self {
        let per_second = config.requests_per_second.max(f64::MIN_POSITIVE);
        let interval = Duration::from_secs_f64((1.0 / per_second).min(1e9));
        let interval = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            config,
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst.max(1))),
            start: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token; false when the bucket is empty.
    pub fn try_acquire(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next - now > self.tolerance {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: f64, burst: u32) -> RateLimit {
        RateLimit::new(RateLimitConfig {
            requests_per_second: rps,
            burst,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_at_once_then_the_rate() {
        let l = limit(20.0, 20);
        assert_eq!((0..100).filter(|_| l.try_acquire()).count(), 20);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..100).filter(|_| l.try_acquire()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_requests_over_a_second_get_burst_plus_rate() {
        let l = limit(20.0, 20);
        let mut passed = 0;
        for _ in 0..100 {
            passed += usize::from(l.try_acquire());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!((39..=41).contains(&passed), "{passed}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_holds_no_more_than_its_burst() {
        let l = limit(10.0, 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..10).filter(|_| l.try_acquire()).count(), 2);
    }
}
