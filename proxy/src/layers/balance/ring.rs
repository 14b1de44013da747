//! Ring hash for `consistentHash`: each endpoint owns many points on a
//! ring; a key goes to the first eligible endpoint clockwise from its hash.
//! Removing one of N endpoints moves only the keys it owned (about 1/N).

use std::hash::{Hash, Hasher};

/// Points per endpoint: enough for an even spread over a handful of endpoints.
const POINTS: usize = 160;

#[derive(Debug)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, usize)>,
}

/// A stable 64-bit hash (the same in every proxy and every run).
pub fn stable_hash(value: impl Hash) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7472_656c_6c69_7321, 0x7269_6e67_6861_7368);
    value.hash(&mut h);
    h.finish()
}

impl Ring {
    /// A ring over endpoints named by `keys` (their addresses), so a key's
    /// place depends on the endpoint, not on its index.
    pub fn new<K: Hash>(keys: &[K]) -> Self {
        let mut points: Vec<(u64, usize)> = keys
            .iter()
            .enumerate()
            .flat_map(|(i, k)| (0..POINTS).map(move |p| (stable_hash((k, p)), i)))
            .collect();
        points.sort_unstable();
        Self { points }
    }

    /// The endpoint for `key`: first eligible clockwise.
    pub fn lookup(&self, key: u64, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < key);
        (0..self.points.len())
            .map(|k| self.points[(start + k) % self.points.len()].1)
            .find(|i| eligible(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_one_of_n_moves_about_one_nth_of_keys() {
        let names: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:80")).collect();
        let full = Ring::new(&names);
        let fewer = Ring::new(&names[..4]);
        let keys: Vec<u64> = (0..10_000).map(stable_hash).collect();
        let owner =
            |r: &Ring, k: u64, names: &[String]| r.lookup(k, &|_| true).map(|i| names[i].clone());
        let moved = keys
            .iter()
            .filter(|k| owner(&full, **k, &names) != owner(&fewer, **k, &names[..4]))
            .count();
        // exactly the keys of the removed endpoint move: ~1/5, and only those
        let owned_by_removed = keys
            .iter()
            .filter(|k| owner(&full, **k, &names).as_deref() == Some("10.0.0.4:80"))
            .count();
        assert_eq!(moved, owned_by_removed);
        assert!((1_200..2_800).contains(&moved), "moved {moved} of 10000");
    }

    #[test]
    fn same_key_same_endpoint() {
        let names = ["a:1", "b:1", "c:1"];
        let ring = Ring::new(&names);
        let first = ring.lookup(stable_hash("user-42"), &|_| true);
        assert!((0..100).all(|_| ring.lookup(stable_hash("user-42"), &|_| true) == first));
    }
}
