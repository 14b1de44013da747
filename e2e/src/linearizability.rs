//! A linearizability checker for histories of registers (one per key):
//! writes of unique values and reads, each with the time it was invoked
//! and the time it returned. A write whose outcome is unknown (the client
//! gave up) returns "never": it may have taken effect at any time after its
//! call, or not at all. Wing & Gong's search with Lowe's memoization: pick
//! a next operation among those that could come first (invoked before
//! every pending return), apply it to the register if it is legal there,
//! and remember (done set, value) pairs already explored.

use std::collections::{BTreeMap, HashSet};

/// What an operation did to, or saw of, one register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wrote this value (values are unique per key).
    Write(u64),
    /// Read this value (`None`: the key did not exist).
    Read(Option<u64>),
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Operation {
    pub key: String,
    pub action: Action,
    /// When the client invoked it (any clock shared by all clients).
    pub call: f64,
    /// When it returned; `None` for a write whose outcome is unknown.
    pub ret: Option<f64>,
}

/// Why a history is not linearizable: the key whose operations admit no
/// order, and those operations.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub operations: Vec<Operation>,
    /// The furthest the search got: the operations left to order there,
    /// earliest first (the violation is among the first of them), and the
    /// register's value then.
    pub stuck: Vec<Operation>,
    pub value: Option<u64>,
}

/// Checks every key's register on its own (linearizability composes).
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, mut ops) in by_key {
        ops.sort_by(|a, b| a.call.total_cmp(&b.call));
        let mut search = Search::new(&ops);
        if !search.run() {
            let (done, value) = search.furthest.clone();
            let stuck = (0..ops.len())
                .filter(|i| !Search::is_done(&done, *i))
                .map(|i| ops[i].clone())
                .collect();
            return Err(Violation {
                key: key.to_string(),
                operations: ops,
                stuck,
                value,
            });
        }
    }
    Ok(())
}

struct Search<'a> {
    ops: &'a [Operation],
    seen: HashSet<(Vec<u64>, Option<u64>)>,
    /// The state with the most operations ordered.
    furthest: (Vec<u64>, Option<u64>),
    most: u32,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Operation]) -> Self {
        Self {
            ops,
            seen: HashSet::new(),
            furthest: (vec![0; ops.len().div_ceil(64)], None),
            most: 0,
        }
    }

    fn run(&mut self) -> bool {
        let done = vec![0u64; self.ops.len().div_ceil(64)];
        self.step(done, None)
    }

    fn is_done(done: &[u64], i: usize) -> bool {
        done[i / 64] & (1 << (i % 64)) != 0
    }

    /// Orders the rest of the operations after `done`, the register holding `value`.
    fn step(&mut self, done: Vec<u64>, value: Option<u64>) -> bool {
        let pending: Vec<usize> = (0..self.ops.len())
            .filter(|i| !Self::is_done(&done, *i))
            .collect();
        // Finished when only writes that may never have happened are left.
        if pending.iter().all(|i| self.ops[*i].ret.is_none()) {
            return true;
        }
        if !self.seen.insert((done.clone(), value)) {
            return false;
        }
        let ordered = done.iter().map(|w| w.count_ones()).sum::<u32>();
        if ordered >= self.most {
            self.most = ordered;
            self.furthest = (done.clone(), value);
        }
        // The earliest return among pending operations bounds which can go first.
        let horizon = pending
            .iter()
            .filter_map(|i| self.ops[*i].ret)
            .fold(f64::INFINITY, f64::min);
        for &i in pending.iter().filter(|i| self.ops[**i].call <= horizon) {
            let next = match self.ops[i].action {
                Action::Write(v) => Some(v),
                Action::Read(seen) if seen == value => value,
                Action::Read(_) => continue,
            };
            let mut after = done.clone();
            after[i / 64] |= 1 << (i % 64);
            if self.step(after, next) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(action: Action, call: f64, ret: Option<f64>) -> Operation {
        Operation {
            key: "k".into(),
            action,
            call,
            ret,
        }
    }

    #[test]
    fn overlapping_operations_may_go_either_way() {
        let history = [
            op(Action::Write(1), 0.0, Some(1.0)),
            op(Action::Write(2), 2.0, Some(5.0)),
            op(Action::Read(Some(1)), 3.0, Some(4.0)),
            op(Action::Read(Some(2)), 4.5, Some(6.0)),
        ];
        assert!(check(&history).is_ok());
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        let history = [
            op(Action::Write(1), 0.0, Some(1.0)),
            op(Action::Write(2), 2.0, Some(3.0)),
            op(Action::Read(Some(1)), 4.0, Some(5.0)),
        ];
        assert!(check(&history).is_err());
        let absent = [
            op(Action::Write(1), 0.0, Some(1.0)),
            op(Action::Read(None), 2.0, Some(3.0)),
        ];
        assert!(check(&absent).is_err());
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        let history = [
            op(Action::Write(1), 0.0, Some(1.0)),
            op(Action::Write(2), 2.0, Some(3.0)),
            op(Action::Read(Some(1)), 10.0, Some(11.0)),
        ];
        assert!(check(&history).is_err());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_or_may_not_have_happened() {
        let happened = [
            op(Action::Write(1), 0.0, Some(1.0)),
            op(Action::Write(2), 2.0, None),
            op(Action::Read(Some(2)), 10.0, Some(11.0)),
        ];
        assert!(check(&happened).is_ok());
        let not = [
            op(Action::Write(1), 0.0, Some(1.0)),
            op(Action::Write(2), 2.0, None),
            op(Action::Read(Some(1)), 10.0, Some(11.0)),
        ];
        assert!(check(&not).is_ok());
        // but not back and forth
        let flip = [
            op(Action::Write(1), 0.0, Some(1.0)),
            op(Action::Write(2), 2.0, None),
            op(Action::Read(Some(2)), 10.0, Some(11.0)),
            op(Action::Read(Some(1)), 12.0, Some(13.0)),
        ];
        assert!(check(&flip).is_err());
    }

    #[test]
    fn long_histories_are_checked_quickly() {
        // 600 operations of 3 clients, overlapping.
        let mut history = Vec::new();
        let mut value = 0;
        for round in 0..200 {
            let t = f64::from(round) * 10.0;
            value += 1;
            history.push(op(Action::Write(value), t, Some(t + 6.0)));
            history.push(op(
                Action::Read(Some(value - 1).filter(|v| *v > 0)),
                t + 1.0,
                Some(t + 2.0),
            ));
            history.push(op(Action::Read(Some(value)), t + 7.0, Some(t + 9.0)));
        }
        let started = std::time::Instant::now();
        assert!(check(&history).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
