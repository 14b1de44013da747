//! The outlier state of one endpoint: healthy, ejected until a time, or
//! probing (half-open), and the failure counts that move it between them.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Settings from `trafficPolicy.outlierDetection`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// 0 = off.
    pub consecutive_5xx: u32,
    /// 0 = off.
    pub consecutive_gateway: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    /// `interval`: ejected endpoints are looked at again only on this
    /// period's ticks (Envoy's sweep), so an ejection lasts a whole number
    /// of intervals. Zero: it ends as soon as its time is up.
    pub interval: Duration,
}

impl OutlierConfig {
    /// How long an ejection of nominal length `d` lasts: `d` rounded up to
    /// a whole number of intervals.
    fn ejection(&self, d: Duration) -> Duration {
        if self.interval.is_zero() {
            return d;
        }
        let ticks = d.as_nanos().div_ceil(self.interval.as_nanos()).max(1);
        self.interval * u32::try_from(ticks).unwrap_or(u32::MAX)
    }
}

/// What an attempt at an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx response; `gateway` for 502, 503 and 504.
    ServerError {
        gateway: bool,
    },
    /// Connect failure or reset: no response at all.
    GatewayFailure,
}

/// The health of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Ejected {
        until: Instant,
    },
    /// Its ejection is over; one probe request is in flight.
    Probing,
}

#[derive(Debug)]
struct State {
    health: Health,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    last_ejection: Duration,
}

/// Outlier state of one endpoint, shared by every connection.
#[derive(Debug)]
pub struct OutlierState {
    state: Mutex<State>,
    /// What the state comes to, written under its lock and read without:
    /// the healthy endpoints of nearly every request need neither the lock
    /// nor the clock.
    summary: AtomicU8,
}

/// `summary`: healthy with no failure counted.
const QUIET: u8 = 0;
/// `summary`: healthy, some consecutive failures counted.
const COUNTING: u8 = 1;
/// `summary`: ejected or probing.
const OUT: u8 = 2;

impl Default for OutlierState {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                health: Health::Healthy,
                consecutive_5xx: 0,
                consecutive_gateway: 0,
                ejections: 0,
                last_ejection: Duration::ZERO,
            }),
            summary: AtomicU8::new(QUIET),
        }
    }
}

impl State {
    fn summary(&self) -> u8 {
        match self.health {
            Health::Healthy if self.consecutive_5xx == 0 && self.consecutive_gateway == 0 => QUIET,
            Health::Healthy => COUNTING,
            Health::Ejected { .. } | Health::Probing => OUT,
        }
    }
}

/// The state under its lock; the summary is brought up to date on unlock.
struct Locked<'a> {
    guard: std::sync::MutexGuard<'a, State>,
    summary: &'a AtomicU8,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.summary.store(self.guard.summary(), Ordering::Release);
    }
}

/// A change worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected(Duration),
    Restored,
}

impl OutlierState {
    fn lock(&self) -> Locked<'_> {
        Locked {
            guard: self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            summary: &self.summary,
        }
    }

    /// Healthy (not ejected, not probing), read without the lock.
    pub fn is_healthy(&self) -> bool {
        self.summary.load(Ordering::Acquire) != OUT
    }

    /// Healthy with no failure counted, read without the lock.
    pub(super) fn is_quiet(&self) -> bool {
        self.summary.load(Ordering::Acquire) == QUIET
    }

    pub fn health(&self) -> Health {
        self.lock().health
    }

    /// May take a request now (healthy, or its ejection is over and no
    /// probe is out yet).
    pub fn available(&self, now: Instant) -> bool {
        match self.lock().health {
            Health::Healthy => true,
            Health::Ejected { until } => now >= until,
            Health::Probing => false,
        }
    }

    /// Counts as ejected for `maxEjectionPercent`.
    pub fn is_out(&self) -> bool {
        !matches!(self.lock().health, Health::Healthy)
    }

    /// Called when the balancer picked this endpoint: an expired ejection
    /// turns into the single probe.
    pub fn admit(&self, now: Instant) {
        let mut s = self.lock();
        if matches!(s.health, Health::Ejected { until } if now >= until) {
            s.health = Health::Probing;
        }
    }

    /// A probe was abandoned (the request was cancelled): the next request
    /// may probe again.
    pub fn probe_abandoned(&self, now: Instant) {
        let mut s = self.lock();
        if s.health == Health::Probing {
            s.health = Health::Ejected { until: now };
        }
    }

    /// Records `outcome`; `may_eject` says whether the destination has room
    /// for one more ejected endpoint.
    pub fn report(
        &self,
        outcome: Outcome,
        cfg: &OutlierConfig,
        may_eject: bool,
        now: Instant,
    ) -> Transition {
        let mut s = self.lock();
        let failed = outcome != Outcome::Success;
        match (s.health, failed) {
            (Health::Probing, false) => {
                s.health = Health::Healthy;
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                Transition::Restored
            }
            (Health::Probing, true) => {
                let d = (s.last_ejection * 2).max(cfg.base_ejection);
                s.ejections += 1;
                s.last_ejection = d;
                let d = cfg.ejection(d);
                s.health = Health::Ejected { until: now + d };
                Transition::Ejected(d)
            }
            (Health::Ejected { .. }, _) => Transition::None, // a late answer from before the ejection
            (Health::Healthy, false) => {
                s.consecutive_5xx = 0;
                s.consecutive_gateway = 0;
                Transition::None
            }
            (Health::Healthy, true) => {
                let gateway = matches!(
                    outcome,
                    Outcome::GatewayFailure | Outcome::ServerError { gateway: true }
                );
                let server = matches!(outcome, Outcome::ServerError { .. });
                if server || outcome == Outcome::GatewayFailure {
                    s.consecutive_5xx += 1;
                }
                if gateway {
                    s.consecutive_gateway += 1;
                }
                let tripped = (cfg.consecutive_5xx > 0 && s.consecutive_5xx >= cfg.consecutive_5xx)
                    || (cfg.consecutive_gateway > 0
                        && s.consecutive_gateway >= cfg.consecutive_gateway);
                if tripped && may_eject {
                    s.ejections += 1;
                    let d = cfg.base_ejection * s.ejections;
                    s.last_ejection = d;
                    let d = cfg.ejection(d);
                    s.health = Health::Ejected { until: now + d };
                    s.consecutive_5xx = 0;
                    s.consecutive_gateway = 0;
                    Transition::Ejected(d)
                } else {
                    Transition::None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::outlier::max_ejected;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
            interval: Duration::ZERO,
        }
    }

    #[test]
    fn an_ejection_lasts_whole_intervals() {
        let cfg = OutlierConfig {
            interval: Duration::from_secs(20),
            ..cfg()
        };
        assert_eq!(
            cfg.ejection(Duration::from_secs(30)),
            Duration::from_secs(40)
        );
        assert_eq!(
            cfg.ejection(Duration::from_secs(40)),
            Duration::from_secs(40)
        );
        assert_eq!(
            cfg.ejection(Duration::from_millis(1)),
            Duration::from_secs(20)
        );
        assert_eq!(
            OutlierConfig {
                interval: Duration::ZERO,
                ..cfg
            }
            .ejection(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    const ERR: Outcome = Outcome::ServerError { gateway: false };

    #[test]
    fn ejects_after_consecutive_errors_and_probes_once() {
        let s = OutlierState::default();
        let t0 = Instant::now();
        assert!(s.is_quiet());
        assert_eq!(s.report(ERR, &cfg(), true, t0), Transition::None);
        assert!(s.is_healthy() && !s.is_quiet(), "a failure is counted");
        assert_eq!(
            s.report(Outcome::Success, &cfg(), true, t0),
            Transition::None
        );
        assert!(s.is_quiet(), "a success clears the count");
        for _ in 0..2 {
            assert_eq!(s.report(ERR, &cfg(), true, t0), Transition::None);
        }
        assert_eq!(
            s.report(ERR, &cfg(), true, t0),
            Transition::Ejected(Duration::from_secs(30))
        );
        assert!(!s.is_healthy());
        assert!(!s.available(t0 + Duration::from_secs(29)));
        let later = t0 + Duration::from_secs(30);
        assert!(s.available(later));
        s.admit(later);
        assert_eq!(s.health(), Health::Probing);
        assert!(!s.available(later), "only one probe at a time");
        assert_eq!(
            s.report(Outcome::Success, &cfg(), true, later),
            Transition::Restored
        );
        assert_eq!(s.health(), Health::Healthy);
        assert!(s.is_quiet());
    }

    #[test]
    fn failed_probe_ejects_twice_as_long_and_repeat_ejections_grow() {
        let s = OutlierState::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            s.report(ERR, &cfg(), true, t0);
        }
        let t1 = t0 + Duration::from_secs(30);
        s.admit(t1);
        assert_eq!(
            s.report(ERR, &cfg(), true, t1),
            Transition::Ejected(Duration::from_secs(60))
        );
        let t2 = t1 + Duration::from_secs(60);
        s.admit(t2);
        assert_eq!(
            s.report(Outcome::Success, &cfg(), true, t2),
            Transition::Restored
        );
        for _ in 0..2 {
            s.report(ERR, &cfg(), true, t2);
        }
        // third ejection of this endpoint: 3 × base
        assert_eq!(
            s.report(ERR, &cfg(), true, t2),
            Transition::Ejected(Duration::from_secs(90))
        );
    }

    #[test]
    fn no_room_no_ejection() {
        let s = OutlierState::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(s.report(ERR, &cfg(), false, t0), Transition::None);
        }
        assert_eq!(s.health(), Health::Healthy);
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(3, 0), 0);
    }
}
