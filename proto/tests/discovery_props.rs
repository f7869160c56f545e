//! Properties of `proto::discovery`: arbitrary bytes never panic and never find anything; a
//! decoded packet re-encodes to the same bytes; a member's packet with any byte changed is
//! never accepted.

use std::net::SocketAddr;

use clearskies_proto::Timestamp;
use clearskies_proto::discovery::{Announcement, Discovery, DiscoveryConfig, MAX_PACKET_LEN, seal};
use proptest::prelude::*;

const WALL: u64 = 1_700_000_000_000_000;
const SHARE: [u8; 32] = [9; 32];

fn member() -> Discovery {
    let mut d = Discovery::new(DiscoveryConfig::new([1; 32]), Timestamp::ZERO).unwrap();
    d.set_shares(Timestamp::ZERO, [SHARE]).unwrap();
    d.set_port(Timestamp::ZERO, 4000);
    d
}

fn from() -> SocketAddr {
    "10.0.0.9:27183".parse().unwrap()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_find_nothing(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        wall in any::<u64>(),
    ) {
        let mut d = member();
        prop_assert!(d.handle_packet(Timestamp::ZERO, wall, from(), &bytes).is_err());
        if let Ok(a) = Announcement::decode(&bytes) {
            prop_assert!(bytes.len() <= MAX_PACKET_LEN);
            prop_assert_eq!(a.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn a_changed_byte_is_never_accepted(
        port in 1u16..,
        nonce in any::<[u8; 8]>(),
        skew in -300_000_000i64..300_000_000,
        index in any::<prop::sample::Index>(),
        flip in 1u8..,
    ) {
        let time = WALL.saturating_add_signed(skew);
        let packet = seal(&[SHARE], 0, port, time, nonce).unwrap();
        let mut d = member();
        let mut changed = packet.clone();
        let i = index.index(changed.len());
        changed[i] ^= flip;
        prop_assert!(d.handle_packet(Timestamp::ZERO, WALL, from(), &changed).is_err());
        let found = d.handle_packet(Timestamp::ZERO, WALL, from(), &packet).unwrap();
        prop_assert_eq!(found.addr.port(), port);
        prop_assert_eq!(found.shares, vec![SHARE]);
    }
}
