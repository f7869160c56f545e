//! Discovery announcements fed arbitrary bytes.
//!
//! Input: 8 bytes of receiver wall time (big-endian), then one datagram. The datagram is
//! decoded and handed to a receiver that holds the shares of the seed corpus's vectors.
//! Invariants: no panic; whatever decodes re-encodes to the same bytes; a packet is accepted
//! at most once (a second delivery is a replay); MAC work stays within the token buckets.
#![no_main]

use std::net::SocketAddr;

use clearskies_proto::Timestamp;
use clearskies_proto::discovery::{
    Announcement, Discovery, DiscoveryConfig, GLOBAL_BUCKET_CAPACITY, Rejected,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((wall, packet)) = data.split_first_chunk::<8>() else {
        return;
    };
    let wall = u64::from_be_bytes(*wall);
    if let Ok(a) = Announcement::decode(packet) {
        assert_eq!(a.encode().as_deref(), Ok(packet));
    }
    let Ok(mut d) = Discovery::new(DiscoveryConfig::new([3; 32]), Timestamp::ZERO) else {
        return;
    };
    let counting: [u8; 32] = core::array::from_fn(|i| i as u8);
    let shares = [[1; 32], counting];
    if d.set_shares(Timestamp::ZERO, shares).is_err() {
        return;
    }
    d.set_port(Timestamp::ZERO, 1234);
    let from: SocketAddr = SocketAddr::from(([192, 0, 2, 7], 27183));
    let first = d.handle_packet(Timestamp::ZERO, wall, from, packet);
    let again = d.handle_packet(Timestamp::ZERO, wall, from, packet);
    if first.is_ok() {
        assert_eq!(again, Err(Rejected::Replay));
    }
    assert!(d.stats().macs_verified <= u64::from(GLOBAL_BUCKET_CAPACITY));
});
