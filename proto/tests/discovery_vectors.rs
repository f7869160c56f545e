//! `spec/vectors/discovery.json` (generated independently in Python by
//! `spec/vectors/generate_discovery.py`) against `proto::discovery`.

mod common;

use std::net::SocketAddr;

use clearskies_proto::Timestamp;
use clearskies_proto::db::ShareId;
use clearskies_proto::discovery::{
    Announcement, Discovery, DiscoveryConfig, Rejected, discovery_id, discovery_key, seal,
};
use common::{cases, load, s, unhex};
use serde_json::Value;

fn share(v: &Value) -> ShareId {
    unhex(v.as_str().expect("hex share"))
        .try_into()
        .expect("32 bytes")
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("missing {key} in {v}"))
}

#[test]
fn keys_and_rotating_ids_match_the_vectors() {
    let doc = load("discovery.json");
    let keys = doc["keys"].as_array().expect("keys");
    assert!(!keys.is_empty());
    for k in keys {
        let key = discovery_key(&share(&k["share_id"]));
        assert_eq!(
            key.to_vec(),
            unhex(s(k, "discovery_key")),
            "{}",
            s(k, "name")
        );
        for id in k["ids"].as_array().expect("ids") {
            assert_eq!(
                discovery_id(&key, u64_of(id, "epoch")).to_vec(),
                unhex(s(id, "id")),
                "{} epoch {}",
                s(k, "name"),
                id["epoch"]
            );
        }
    }
}

#[test]
fn packets_match_the_vectors_and_decode_to_what_was_sealed() {
    let doc = load("discovery.json");
    let packets = doc["packets"].as_array().expect("packets");
    assert!(!packets.is_empty());
    for p in packets {
        let shares: Vec<ShareId> = p["shares"].as_array().unwrap().iter().map(share).collect();
        let nonce: [u8; 8] = unhex(s(p, "nonce")).try_into().unwrap();
        let port = u16::try_from(u64_of(p, "port")).unwrap();
        let flags = u8::try_from(u64_of(p, "flags")).unwrap();
        let time = u64_of(p, "time");
        let bytes = seal(&shares, flags, port, time, nonce).unwrap();
        assert_eq!(bytes, unhex(s(p, "hex")), "{}", s(p, "name"));
        let decoded = Announcement::decode(&bytes).unwrap();
        assert_eq!(
            (decoded.flags, decoded.port, decoded.time, decoded.nonce),
            (flags, port, time, nonce)
        );
        assert_eq!(decoded.entries.len(), shares.len());
        assert_eq!(decoded.encode().unwrap(), bytes);
    }
}

fn receiver(doc: &Value) -> Discovery {
    let mut d = Discovery::new(DiscoveryConfig::new([42; 32]), Timestamp::ZERO).unwrap();
    let shares: Vec<ShareId> = doc["receiver"]["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(share)
        .collect();
    d.set_shares(Timestamp::ZERO, shares).unwrap();
    d.set_port(Timestamp::ZERO, 1234);
    d
}

#[test]
fn a_receiver_reaches_the_verdict_of_the_vectors() {
    let doc = load("discovery.json");
    let from: SocketAddr = s(&doc["receiver"], "from").parse().unwrap();
    let all = cases(&doc);
    assert!(all.len() >= 10);
    for c in all {
        let name = s(c, "name");
        let bytes = unhex(s(c, "hex"));
        let wall = u64_of(c, "wall");
        let mut d = receiver(&doc);
        let got = d.handle_packet(Timestamp::ZERO, wall, from, &bytes);
        match s(c, "expect") {
            "found" => {
                let found = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                let shares: Vec<ShareId> = c["found_shares"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(share)
                    .collect();
                assert_eq!(found.shares, shares, "{name}");
                assert_eq!(
                    u64::from(found.addr.port()),
                    u64_of(c, "found_port"),
                    "{name}"
                );
                assert_eq!(found.addr.ip(), from.ip(), "{name}");
                // The same packet again is a replay.
                assert_eq!(
                    d.handle_packet(Timestamp::ZERO, wall, from, &bytes),
                    Err(Rejected::Replay),
                    "{name}"
                );
            }
            code => {
                let err = got.expect_err(name);
                assert_eq!(err.code(), code, "{name}: {err}");
                // Only a packet with an ID of ours may cost a MAC.
                if !matches!(code, "bad-mac" | "rate-limited") {
                    assert_eq!(d.stats().macs_verified, 0, "{name}: cost a MAC");
                }
            }
        }
    }
}
