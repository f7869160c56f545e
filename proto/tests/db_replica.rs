//! Replica-level tests without a network: messages are moved by hand, so each scenario is
//! exactly the one named.

use std::collections::BTreeMap;

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::msg::Records;
use clearskies_proto::db::replica::share_tag;
use clearskies_proto::db::{
    Access, DbMessage, Dot, Event, Member, Output, Replica, ReplicaState, ShareId,
};
use clearskies_proto::identity::DeviceId;

const SHARE: ShareId = [9u8; 32];

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

fn members(n: u8) -> BTreeMap<DeviceId, Member> {
    (1..=n)
        .map(|i| {
            (
                key(i).device_id(),
                Member {
                    public_key: key(i).public_key(),
                    access: Access::ReadWrite,
                },
            )
        })
        .collect()
}

/// A replica whose store completes every batch at once.
struct Node {
    replica: Replica,
    events: Vec<Event>,
}

impl Node {
    fn new(n: u8, of: u8) -> Node {
        let mut node = Node {
            replica: Replica::new(
                SHARE,
                key(n),
                members(of),
                ReplicaState::default(),
                1000 + u64::from(n),
            ),
            events: Vec::new(),
        };
        node.settle();
        node
    }

    fn id(&self) -> DeviceId {
        self.replica.device()
    }

    fn settle(&mut self) {
        while let Some(out) = self.replica.poll_output() {
            match out {
                Output::Persist { id, .. } => self.replica.handle_persisted(id),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    fn put(&mut self, k: &str, v: &str) -> Dot {
        let dot = self
            .replica
            .put(1_700_000_000_000_000, k, Bytes::from(v.to_owned()))
            .unwrap();
        self.settle();
        dot
    }
}

/// Connects `a` and `b` and moves messages both ways until both are quiet. Returns the
/// number of payload bytes moved.
fn sync(a: &mut Node, b: &mut Node) -> usize {
    let (ida, idb) = (a.id(), b.id());
    a.replica.peer_connected(idb);
    b.replica.peer_connected(ida);
    let mut bytes = 0;
    loop {
        let mut moved = false;
        while let Some(m) = a.replica.poll_message(&idb) {
            let wire = m.encode();
            bytes += wire.len();
            b.replica
                .handle_message(ida, DbMessage::decode(&wire).unwrap().unwrap());
            b.settle();
            moved = true;
        }
        while let Some(m) = b.replica.poll_message(&ida) {
            let wire = m.encode();
            bytes += wire.len();
            a.replica
                .handle_message(idb, DbMessage::decode(&wire).unwrap().unwrap());
            a.settle();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    a.replica.peer_disconnected(&idb);
    b.replica.peer_disconnected(&ida);
    bytes
}

#[test]
fn relay_delivering_a_later_write_first_does_not_hide_the_earlier_one() {
    // W writes k1 then k2. A relay C holds only k2 (it got W's later change first, as the 2014
    // live push could deliver it) and passes it to B. With the 2014 per-writer watermark B
    // would now ask A for "W's changes after 2" and never see k1. With per-peer cursors, B
    // asks A for "A's changes after what B has from A" and gets k1.
    let mut w = Node::new(1, 4);
    let mut a = Node::new(2, 4);
    let mut b = Node::new(3, 4);
    let mut c = Node::new(4, 4);
    let k1 = w.put("k1", "first");
    let k2 = w.put("k2", "second");
    sync(&mut w, &mut a);
    // C receives only W's second record, from W.
    let (_, record2) = w
        .replica
        .records()
        .find(|(_, r)| r.dot == k2)
        .map(|(s, r)| (s, r.clone()))
        .unwrap();
    c.replica.peer_connected(w.id());
    c.replica.handle_message(
        w.id(),
        DbMessage::Records(Records {
            share: share_tag(&SHARE),
            index: w.replica.meta().index,
            records: vec![(2, record2)],
        }),
    );
    c.settle();
    c.replica.peer_disconnected(&w.id());
    // C relays it to B: B now holds W's counter 2 but not counter 1.
    sync(&mut c, &mut b);
    assert!(b.replica.entry("k2").is_some());
    assert!(b.replica.entry("k1").is_none());
    // What a per-writer watermark would ask for: W's writes above 2. Nothing A has qualifies.
    let watermark = b
        .replica
        .records()
        .filter(|(_, r)| r.dot.writer == w.id())
        .map(|(_, r)| r.dot.counter)
        .max();
    assert_eq!(watermark, Some(2));
    assert!(
        a.replica
            .records()
            .all(|(_, r)| r.dot.writer != w.id() || r.dot.counter <= 2)
    );
    // The per-peer cursor asks A for everything after B's position in A's feed (nothing yet).
    sync(&mut a, &mut b);
    assert_eq!(b.replica.entry("k1").map(|e| e.winner().dot), Some(k1));
}

#[test]
fn idle_reconnect_is_a_few_dozen_bytes_and_catch_up_is_one_round_trip() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    for i in 0..1000 {
        a.put(
            &format!("notes/{i:05}"),
            "a document of a few dozen bytes, like a note title",
        );
    }
    let first = sync(&mut a, &mut b);
    assert_eq!(b.replica.len(), 1000);
    let idle = sync(&mut a, &mut b);
    // Two SyncRequests and two CaughtUps of about 23 bytes each.
    assert!(idle <= 100, "idle reconnect moved {idle} payload bytes");
    eprintln!(
        "catch-up of 1000 records: {first} payload bytes ({} per record); idle reconnect: {idle} bytes",
        first / 1000
    );
}

#[test]
fn a_write_after_a_conflict_resolves_it_on_every_replica() {
    let mut a = Node::new(1, 3);
    let mut b = Node::new(2, 3);
    let mut c = Node::new(3, 3);
    a.put("doc", "from a");
    b.put("doc", "from b");
    sync(&mut a, &mut c);
    sync(&mut b, &mut c);
    sync(&mut a, &mut c);
    for n in [&a, &c] {
        let e = n.replica.entry("doc").unwrap();
        assert!(e.is_conflict());
        assert!(n.events.iter().any(|e| matches!(e, Event::Conflict { key, siblings } if key == "doc" && siblings.len() == 2)));
    }
    assert_eq!(
        a.replica.entry("doc").unwrap().winner(),
        c.replica.entry("doc").unwrap().winner()
    );
    c.put("doc", "merged by c");
    sync(&mut c, &mut a);
    sync(&mut c, &mut b);
    for n in [&a, &b, &c] {
        let e = n.replica.entry("doc").unwrap();
        assert!(!e.is_conflict());
        assert_eq!(
            n.replica.get("doc").map(|v| &v[..]),
            Some(&b"merged by c"[..])
        );
    }
}

#[test]
fn a_tampered_record_is_refused_and_the_sender_is_told() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    a.put("k", "honest");
    let (seq, mut record) = a
        .replica
        .records()
        .map(|(s, r)| (s, r.clone()))
        .next()
        .unwrap();
    record.value = Some(Bytes::from_static(b"tampered"));
    b.replica.peer_connected(a.id());
    b.replica.handle_message(
        a.id(),
        DbMessage::Records(Records {
            share: share_tag(&SHARE),
            index: a.replica.meta().index,
            records: vec![(seq, record)],
        }),
    );
    b.settle();
    assert!(b.replica.entry("k").is_none());
    assert!(b.events.iter().any(
        |e| matches!(e, Event::Refused { error, by_peer: false, .. } if error == "bad-signature")
    ));
    let reply = std::iter::from_fn(|| b.replica.poll_message(&a.id()))
        .find(|m| matches!(m, DbMessage::Refused(_)));
    assert!(matches!(reply, Some(DbMessage::Refused(r)) if r.error == "bad-signature"));
}

#[test]
fn a_replica_recreated_with_the_same_key_never_reuses_a_write_counter() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    let first = a.put("doc", "v1");
    sync(&mut a, &mut b);
    // A loses its database but keeps its device key; it catches up from B, then writes.
    let mut a = Node::new(1, 2);
    sync(&mut b, &mut a);
    let second = a.put("doc", "v2");
    assert!(
        second.counter > first.counter,
        "counter reused: {first:?} then {second:?}"
    );
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.replica.get("doc").map(|v| &v[..]), Some(&b"v2"[..]));
    }
}

#[test]
fn a_far_future_timestamp_from_a_peer_cannot_overflow_the_clock() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    let evil_time = u64::MAX;
    let dot = a
        .replica
        .put(evil_time, "k", Bytes::from_static(b"x"))
        .unwrap();
    a.settle();
    sync(&mut a, &mut b);
    assert_eq!(b.replica.entry("k").unwrap().winner().dot, dot);
    // B's next writes neither panic nor go backwards.
    let d1 = b.put("k", "after");
    let d2 = b.put("k2", "after");
    assert!(d2.counter > d1.counter);
    assert_eq!(b.replica.meta().hlc, u64::MAX);
}

#[test]
fn replicas_report_being_in_sync_once_the_exchange_settles() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    a.put("x", "1");
    b.put("y", "2");
    let (ida, idb) = (a.id(), b.id());
    a.replica.peer_connected(idb);
    b.replica.peer_connected(ida);
    assert!(!a.replica.is_synced_with(&idb));
    loop {
        let mut moved = false;
        while let Some(m) = a.replica.poll_message(&idb) {
            b.replica.handle_message(ida, m);
            b.settle();
            moved = true;
        }
        while let Some(m) = b.replica.poll_message(&ida) {
            a.replica.handle_message(idb, m);
            a.settle();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(a.replica.is_synced_with(&idb), "{:#?}", a.replica);
    assert!(b.replica.is_synced_with(&ida));
    // A new local write: not in sync until it has been streamed.
    a.put("z", "3");
    assert!(!a.replica.is_synced_with(&idb));
}
