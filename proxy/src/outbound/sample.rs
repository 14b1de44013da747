//! Sampling a share of requests (fault injection, mirroring).

/// True for `percent`% of calls.
pub fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}
