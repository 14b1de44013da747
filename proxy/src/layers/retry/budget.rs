//! The retry budget of a destination: over any 10 s window, retries may be
//! at most 20% of the requests plus 10 per second — so a failing upstream
//! receives at most 1.2× its normal load + 10/s.
//!
//! Not tower's `TpsBudget`: that one keeps a standing reserve on top of the
//! per-second floor and lets expired generations refill it, which admits
//! measurably more than the rule above.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    /// Length of a bucket in nanoseconds (at least 1).
    bucket_ns: u64,
    created: Instant,
    window: Mutex<Window>,
}

/// Requests and retries per bucket (`bucket` long each), newest at `head`.
#[derive(Debug, Default)]
struct Window {
    head: u64,
    requests: [u64; BUCKETS],
    retries: [u64; BUCKETS],
}

impl RetryBudget {
    /// Retries ≤ `ratio` × requests + `min_per_sec` × seconds, over `ttl`.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        Self {
            ratio: f64::from(ratio),
            min_per_sec: f64::from(min_per_sec),
            bucket_ns: nanos(ttl / BUCKETS as u32).max(1),
            created: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    /// Whether this budget has these settings (a reload keeps it if so).
    pub fn has_settings(&self, min_per_sec: u32, ratio: f32) -> bool {
        self.min_per_sec == f64::from(min_per_sec) && self.ratio == f64::from(ratio)
    }

    /// A request was made.
    pub fn deposit(&self) {
        self.with_window(|w, i| w.requests[i] += 1);
    }

    /// Takes one retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        // The floor covers exactly the time the buckets cover: the full
        // older buckets plus the elapsed part of the current one.
        let elapsed = self.created.elapsed();
        let into_current = Duration::from_nanos(nanos(elapsed) % self.bucket_ns);
        let older = Duration::from_nanos(self.bucket_ns * (BUCKETS as u64 - 1));
        let span = (older + into_current).min(elapsed);
        let floor = self.min_per_sec * span.as_secs_f64();
        self.with_window(|w, i| {
            let requests: u64 = w.requests.iter().sum();
            let retries: u64 = w.retries.iter().sum();
            let allowed = self.ratio * requests as f64 + floor;
            if (retries + 1) as f64 <= allowed {
                w.retries[i] += 1;
                true
            } else {
                false
            }
        })
    }

    /// Requests and retries in the current window, for `/config_dump`.
    pub fn describe(&self) -> serde_json::Value {
        self.with_window(|w, _| {
            serde_json::json!({
                "window_requests": w.requests.iter().sum::<u64>(),
                "window_retries": w.retries.iter().sum::<u64>(),
                "ratio": self.ratio,
                "min_per_second": self.min_per_sec,
            })
        })
    }

    /// Runs `f` on the window rotated to now, with the current bucket index.
    fn with_window<T>(&self, f: impl FnOnce(&mut Window, usize) -> T) -> T {
        let now = nanos(self.created.elapsed()) / self.bucket_ns;
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = now.saturating_sub(w.head).min(BUCKETS as u64);
        for k in 1..=stale {
            let i = ((w.head + k) % BUCKETS as u64) as usize;
            w.requests[i] = 0;
            w.retries[i] = 0;
        }
        w.head = w.head.max(now);
        let i = (now % BUCKETS as u64) as usize;
        f(&mut w, i)
    }
}

/// Whole nanoseconds, in 64 bits (585 years): cheaper to divide than `as_nanos`.
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 10, 0.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_fifth_of_requests_plus_the_floor_so_far() {
        let b = RetryBudget::new(Duration::from_secs(10), 10, 0.2);
        for _ in 0..100 {
            b.deposit();
        }
        // at once: 20% of 100, and a floor of ~0 (no time has passed)
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20);
        std::thread::sleep(Duration::from_millis(300));
        // 0.3 s later: about 3 more from the floor of 10/s
        let more = (0..100).filter(|_| b.withdraw()).count();
        assert!((2..=4).contains(&more), "{more}");
    }

    #[test]
    fn zero_budget_allows_nothing() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.0);
        b.deposit();
        assert!(!b.withdraw());
    }
}
