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
///
/// On the wire it is the CBOR array `[writer, counter]` (`spec/database.md` § 4): a record
/// carries one, so its encoding is kept to the 32-byte ID, the counter and two header bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// The writer.
    pub writer: DeviceId,
    /// The writer's write counter (starts at 1).
    pub counter: u64,
}

impl Serialize for Dot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.writer, self.counter).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Dot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Exactly two items: the codec refuses a shorter or longer array.
        let (writer, counter) = <(DeviceId, u64)>::deserialize(d)?;
        Ok(Dot { writer, counter })
    }
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
///
/// Kept as a vector sorted by device ID with no zero entries: a record names a handful of
/// writers, and a sorted vector costs 40 bytes per writer where a map node costs hundreds.
/// On the wire it is a CBOR map from device ID (32-byte string) to counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(Vec<(DeviceId, u64)>);

impl VersionVector {
    /// The empty vector: supersedes nothing.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The counter for `writer` (0 if absent).
    pub fn get(&self, writer: &DeviceId) -> u64 {
        self.0
            .binary_search_by(|(d, _)| d.cmp(writer))
            .map_or(0, |i| self.0[i].1)
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

    /// Whether every entry is non-zero (the canonical form writers produce).
    pub fn is_canonical(&self) -> bool {
        self.0.iter().all(|(_, c)| *c > 0)
    }

    /// Raises each entry to the maximum of both vectors.
    pub fn merge(&mut self, other: &VersionVector) {
        for (d, c) in other.iter() {
            self.set(Dot {
                writer: *d,
                counter: c,
            });
        }
    }

    /// Raises `dot.writer`'s entry to `dot.counter` (a writer's own new write).
    pub fn set(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        match self.0.binary_search_by(|(d, _)| d.cmp(&dot.writer)) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(dot.counter),
            Err(i) => self.0.insert(i, (dot.writer, dot.counter)),
        }
    }

    /// Whether this vector supersedes-or-equals the write `dot`.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.get(&dot.writer) >= dot.counter
    }

    /// Compares two versions.
    pub fn causality(&self, other: &VersionVector) -> Causality {
        let mut less = false;
        let mut greater = false;
        let (mut a, mut b) = (self.0.iter().peekable(), other.0.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                // A writer only one side knows of (canonical entries are never zero).
                (Some(_), None) => {
                    greater = true;
                    break;
                }
                (None, Some(_)) => {
                    less = true;
                    break;
                }
                (Some((da, ca)), Some((db, cb))) => match da.cmp(db) {
                    Ordering::Less => {
                        greater = true;
                        a.next();
                    }
                    Ordering::Greater => {
                        less = true;
                        b.next();
                    }
                    Ordering::Equal => {
                        greater |= ca > cb;
                        less |= ca < cb;
                        a.next();
                        b.next();
                    }
                },
            }
            if less && greater {
                break;
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

impl Serialize for VersionVector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (d, c) in &self.0 {
            m.serialize_entry(d, c)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Kept exactly as received (sorted by the map): the writer signed these entries. A
        // zero counter is not canonical and `Record::check_shape` refuses it.
        let map: BTreeMap<DeviceId, u64> = BTreeMap::deserialize(d)?;
        Ok(VersionVector(map.into_iter().collect()))
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

    #[test]
    fn a_dot_is_a_two_item_array_on_the_wire() {
        let dot = Dot {
            writer: dev(7),
            counter: 300,
        };
        let bytes = crate::wire::codec::encode(&dot);
        let mut want = vec![0x82, 0x58, 0x20];
        want.extend_from_slice(&[7; 32]);
        want.extend_from_slice(&[0x19, 0x01, 0x2c]);
        assert_eq!(bytes, want);
        assert_eq!(crate::wire::codec::decode::<Dot>(&bytes).ok(), Some(dot));
        // One item more or less is malformed.
        let mut three = bytes.clone();
        three[0] = 0x83;
        three.push(0x00);
        assert!(crate::wire::codec::decode::<Dot>(&three).is_err());
        let mut one = vec![0x81, 0x58, 0x20];
        one.extend_from_slice(&[7; 32]);
        assert!(crate::wire::codec::decode::<Dot>(&one).is_err());
    }
}
