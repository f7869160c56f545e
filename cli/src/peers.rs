//! Where peers were reached: `HOME/peers.json`, kept across restarts so that `run` and
//! `sync --once` dial the addresses that worked before, LAN or not.
//!
//! ```json
//! {"peers": {"<device id>": {"last_success": 1764000000,
//!                            "addresses": {"192.0.2.7:27184": {"last_success": 1764000000, "failures": 0}}}}}
//! ```
//!
//! Times are Unix seconds. An address is remembered once a member session was established
//! over it (dialled by this device: an incoming connection's port says nothing), its failures
//! are counted until the next success, and an address that failed [`FORGET_AFTER`] times in a
//! row is forgotten; a device keeps its [`ADDRESSES_PER_PEER`] most recent addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clearskies_proto::identity::DeviceId;
use serde::{Deserialize, Serialize};

/// Consecutive failures after which an address is forgotten.
pub const FORGET_AFTER: u32 = 20;
/// Addresses remembered per device.
pub const ADDRESSES_PER_PEER: usize = 4;

/// The remembered peers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PeerBook {
    #[serde(default)]
    peers: BTreeMap<String, PeerEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PeerEntry {
    #[serde(default)]
    last_success: u64,
    #[serde(default)]
    addresses: BTreeMap<String, AddressEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AddressEntry {
    #[serde(default)]
    last_success: u64,
    #[serde(default)]
    failures: u32,
}

impl PeerBook {
    /// A member session with `device` was established over `addr` at `now`.
    pub fn success(&mut self, device: DeviceId, addr: SocketAddr, now: u64) {
        let key = addr.to_string();
        // An address belongs to one device: one that moved there replaces the other.
        for (id, entry) in self.peers.iter_mut() {
            if *id != device.to_string() {
                entry.addresses.remove(&key);
            }
        }
        let entry = self.peers.entry(device.to_string()).or_default();
        entry.last_success = now;
        entry.addresses.insert(
            key,
            AddressEntry {
                last_success: now,
                failures: 0,
            },
        );
        while entry.addresses.len() > ADDRESSES_PER_PEER {
            let oldest = entry
                .addresses
                .iter()
                .min_by_key(|(_, a)| a.last_success)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => entry.addresses.remove(&k),
                None => break,
            };
        }
    }

    /// Dialling `addr` failed; returns whether the book changed.
    pub fn failure(&mut self, addr: SocketAddr) -> bool {
        let key = addr.to_string();
        let mut changed = false;
        for entry in self.peers.values_mut() {
            if let Some(a) = entry.addresses.get_mut(&key) {
                a.failures = a.failures.saturating_add(1);
                changed = true;
                if a.failures >= FORGET_AFTER {
                    entry.addresses.remove(&key);
                }
            }
        }
        self.peers.retain(|_, e| !e.addresses.is_empty());
        changed
    }

    /// The device last reached at `addr`.
    pub fn device_at(&self, addr: SocketAddr) -> Option<DeviceId> {
        let key = addr.to_string();
        self.peers
            .iter()
            .find(|(_, e)| e.addresses.contains_key(&key))
            .and_then(|(id, _)| DeviceId::parse(id).ok())
    }

    /// Every remembered address, the most recently successful first.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut all: Vec<(u64, SocketAddr)> = self
            .peers
            .values()
            .flat_map(|e| e.addresses.iter())
            .filter_map(|(k, a)| k.parse().ok().map(|addr| (a.last_success, addr)))
            .collect();
        all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        all.into_iter().map(|(_, a)| a).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceId {
        clearskies_proto::crypto::DeviceKey::from_secret(&[n; 32]).device_id()
    }

    #[test]
    fn successes_are_remembered_failures_counted_and_stale_addresses_forgotten() {
        let a: SocketAddr = "192.0.2.7:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.8:1000".parse().unwrap();
        let mut book = PeerBook::default();
        book.success(device(1), a, 10);
        book.success(device(2), b, 20);
        assert_eq!(book.device_at(a), Some(device(1)));
        assert_eq!(book.addresses(), vec![b, a]);
        // Survives a round trip through JSON.
        let text = serde_json::to_string(&book).unwrap();
        let mut book: PeerBook = serde_json::from_str(&text).unwrap();
        assert!(book.failure(a));
        assert!(!book.failure("192.0.2.9:1".parse().unwrap()));
        for _ in 1..FORGET_AFTER {
            book.failure(a);
        }
        assert_eq!(book.device_at(a), None);
        assert_eq!(book.addresses(), vec![b]);
        // Another device at a known address replaces the first.
        book.success(device(3), b, 30);
        assert_eq!(book.device_at(b), Some(device(3)));
        assert_eq!(book.addresses(), vec![b]);
        // Only the most recent addresses of a device are kept.
        for port in 0..10u16 {
            book.success(
                device(3),
                SocketAddr::from(([192, 0, 2, 1], port)),
                40 + u64::from(port),
            );
        }
        assert_eq!(book.addresses().len(), ADDRESSES_PER_PEER);
    }
}
