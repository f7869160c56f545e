//! Version vectors and dots.
//!
//! Every write gets a [`Dot`]: the writer's device ID and the writer's own write counter, which
//! grows by one for each write the device makes to any key and is never reused (it is persisted
//! with the write). A record's [`VersionVector`] holds, per writer, the highest counter of that
//! writer's writes the record supersedes, its own dot included. Only the writer adds its own
//! entry, and only when it writes; receiving or relaying a record never changes it, so equal
//! vectors mean the same record everywhere and a signature over it survives any relay.

use core::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::DeviceId;

/// One write: who made it and the writer's counter at that write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The writer.
    pub writer: DeviceId,
    /// The writer's write counter (starts at 1).
    pub counter: u64,
}

/// How two versions relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The same version.
    Equal,
    /// The left version is older: the right one supersedes it.
    Before,
    /// The left version is newer: it supersedes the right one.
    After,
    /// Neither has seen the other: a conflict.
    Concurrent,
}

/// Per writer, the highest counter of its writes that a version supersedes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector: supersedes nothing.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The counter for `writer` (0 if absent).
    pub fn get(&self, writer: &DeviceId) -> u64 {
        self.0.get(writer).copied().unwrap_or(0)
    }

    /// Entries in device order.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, u64)> {
        self.0.iter().map(|(d, c)| (d, *c))
    }

    /// Number of writers in the vector.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Raises each entry to the maximum of both vectors.
    pub fn merge(&mut self, other: &VersionVector) {
        for (d, c) in other.iter() {
            let e = self.0.entry(*d).or_insert(0);
            *e = (*e).max(c);
        }
    }

    /// Records `dot` (the writer's own new write).
    pub fn set(&mut self, dot: Dot) {
        let e = self.0.entry(dot.writer).or_insert(0);
        *e = (*e).max(dot.counter);
    }

    /// Whether this vector supersedes-or-equals the write `dot`.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.get(&dot.writer) >= dot.counter
    }

    /// Compares two versions.
    pub fn causality(&self, other: &VersionVector) -> Causality {
        let mut less = false;
        let mut greater = false;
        let mut a = self.0.iter().peekable();
        let mut b = other.0.iter().peekable();
        loop {
            let ord = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((da, _)), Some((db, _))) => da.cmp(db),
            };
            match ord {
                // A writer only `self` knows of (its count is > 0).
                Ordering::Less => {
                    greater |= a.next().is_some_and(|(_, c)| *c > 0);
                }
                Ordering::Greater => {
                    less |= b.next().is_some_and(|(_, c)| *c > 0);
                }
                Ordering::Equal => {
                    let (Some((_, ca)), Some((_, cb))) = (a.next(), b.next()) else {
                        break;
                    };
                    greater |= ca > cb;
                    less |= ca < cb;
                }
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether this version supersedes or equals `other`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        matches!(self.causality(other), Causality::Equal | Causality::After)
    }
}

impl FromIterator<(DeviceId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (DeviceId, u64)>>(iter: I) -> Self {
        let mut v = VersionVector::new();
        for (writer, counter) in iter {
            v.set(Dot { writer, counter });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId::from_bytes([n; 32])
    }

    fn vv(entries: &[(u8, u64)]) -> VersionVector {
        entries.iter().map(|&(d, c)| (dev(d), c)).collect()
    }

    #[test]
    fn causality() {
        assert_eq!(vv(&[]).causality(&vv(&[])), Causality::Equal);
        assert_eq!(vv(&[(1, 1)]).causality(&vv(&[(1, 1)])), Causality::Equal);
        assert_eq!(vv(&[(1, 1)]).causality(&vv(&[(1, 2)])), Causality::Before);
        assert_eq!(vv(&[(1, 2)]).causality(&vv(&[(1, 1)])), Causality::After);
        assert_eq!(
            vv(&[(1, 1)]).causality(&vv(&[(2, 1)])),
            Causality::Concurrent
        );
        assert_eq!(
            vv(&[(1, 1)]).causality(&vv(&[(1, 1), (2, 1)])),
            Causality::Before
        );
        assert_eq!(
            vv(&[(1, 2), (3, 1)]).causality(&vv(&[(1, 1), (2, 1)])),
            Causality::Concurrent
        );
        assert_eq!(vv(&[]).causality(&vv(&[(2, 5)])), Causality::Before);
    }

    #[test]
    fn merge_takes_maxima() {
        let mut a = vv(&[(1, 3), (2, 1)]);
        a.merge(&vv(&[(2, 4), (3, 1)]));
        assert_eq!(a, vv(&[(1, 3), (2, 4), (3, 1)]));
        assert!(a.contains(&Dot {
            writer: dev(2),
            counter: 4
        }));
        assert!(!a.contains(&Dot {
            writer: dev(2),
            counter: 5
        }));
    }
}
