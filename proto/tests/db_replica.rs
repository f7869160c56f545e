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

    fn delete(&mut self, k: &str) -> Dot {
        let dot = self.replica.delete(1_700_000_000_000_000, k).unwrap();
        self.settle();
        dot
    }

    /// Collects garbage at `wall` and returns how many tombstones went.
    fn collect(&mut self, wall: u64) -> usize {
        let n = self.replica.collect_garbage(wall);
        self.settle();
        n
    }

    fn shows(&self, k: &str) -> Option<String> {
        self.replica
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every current version as (key, dot), tombstones included.
    fn versions(&self) -> Vec<(String, Dot)> {
        let mut v: Vec<_> = self
            .replica
            .records()
            .map(|(_, r)| (r.key.clone(), r.dot))
            .collect();
        v.sort();
        v
    }
}

/// Connects `a` and `b` and moves messages both ways until both are quiet. Returns the
/// number of payload bytes moved.
fn sync(a: &mut Node, b: &mut Node) -> usize {
    exchange(a, b).0
}

/// [`sync`], also returning how many `Forgotten` messages (resets) crossed each way: (from
/// `a`, from `b`).
fn exchange(a: &mut Node, b: &mut Node) -> (usize, (usize, usize)) {
    let (ida, idb) = (a.id(), b.id());
    a.replica.peer_connected(idb);
    b.replica.peer_connected(ida);
    let mut bytes = 0;
    let mut resets = (0, 0);
    loop {
        let mut moved = false;
        while let Some(m) = a.replica.poll_message(&idb) {
            resets.0 += usize::from(matches!(m, DbMessage::Forgotten(_)));
            let wire = m.encode();
            bytes += wire.len();
            b.replica
                .handle_message(ida, DbMessage::decode(&wire).unwrap().unwrap());
            b.settle();
            moved = true;
        }
        while let Some(m) = b.replica.poll_message(&ida) {
            resets.1 += usize::from(matches!(m, DbMessage::Forgotten(_)));
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
    (bytes, resets)
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

// ---- tombstone collection and resets (spec/database.md § 9.7) ---------------------------

/// Hybrid time of every write in these tests, and a horizon of one hour.
const T0: u64 = 1_700_000_000_000_000;
const HOUR: u64 = 3_600_000_000;

#[test]
fn a_tombstone_is_collected_only_after_the_horizon() {
    let mut a = Node::new(1, 2);
    a.replica.set_horizon(HOUR);
    a.put("k", "v");
    a.delete("k");
    assert_eq!(a.collect(T0 + HOUR - 1), 0, "younger than the horizon");
    assert!(a.replica.entry("k").is_some());
    assert_eq!(a.collect(T0 + HOUR + 1), 1);
    assert!(a.replica.entry("k").is_none());
    assert_eq!(a.replica.records().count(), 0);
    let f = a.replica.forgotten();
    assert_eq!(
        f.version.get(&a.id()),
        2,
        "the tombstone's vector is remembered"
    );
    assert_eq!(f.floor, 2, "the tombstone's sequence number");
    // Nothing left to collect.
    assert_eq!(a.collect(T0 + 10 * HOUR), 0);
}

#[test]
fn before_the_horizon_a_returning_device_catches_up_incrementally() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    a.replica.set_horizon(HOUR);
    a.put("k", "v");
    a.put("other", "x");
    sync(&mut a, &mut b);
    a.delete("k");
    assert_eq!(a.collect(T0 + HOUR / 2), 0);
    let (_, resets) = exchange(&mut a, &mut b);
    assert_eq!(resets, (0, 0), "an incremental catch-up, no reset");
    assert!(b.replica.entry("k").unwrap().winner().is_tombstone());
    // Once every device had the tombstone, collecting it needs no reset either.
    assert_eq!(a.collect(T0 + 2 * HOUR), 1);
    let (_, resets) = exchange(&mut a, &mut b);
    assert_eq!(resets, (0, 0));
    assert_eq!(b.shows("other").as_deref(), Some("x"));
}

#[test]
fn a_device_back_after_the_horizon_drops_what_was_deleted_and_keeps_its_own_writes() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    a.replica.set_horizon(HOUR);
    b.replica.set_horizon(HOUR);
    for k in ["k", "edited", "kept"] {
        a.put(k, "original");
    }
    sync(&mut a, &mut b);
    // B goes away. A deletes k and writes more; B writes a new key and edits another one
    // that A edits too.
    a.delete("k");
    a.put("new-on-a", "a");
    a.put("edited", "by a");
    b.put("new-on-b", "b");
    b.put("edited", "by b");
    // The horizon passes; A forgets the tombstone.
    assert_eq!(a.collect(T0 + 2 * HOUR), 1);
    assert!(a.replica.entry("k").is_none());
    assert_eq!(b.shows("k").as_deref(), Some("original"));
    let (_, resets) = exchange(&mut a, &mut b);
    assert!(resets.0 >= 1, "A resets B");
    for n in [&a, &b] {
        assert_eq!(n.shows("k"), None, "k stays deleted");
        assert!(n.replica.entry("k").is_none());
        assert_eq!(n.shows("new-on-b").as_deref(), Some("b"));
        assert_eq!(n.shows("new-on-a").as_deref(), Some("a"));
        assert_eq!(n.shows("kept").as_deref(), Some("original"));
        let edited = n.replica.entry("edited").unwrap();
        assert!(edited.is_conflict(), "both concurrent edits are kept");
        assert_eq!(edited.siblings().count(), 2);
    }
    assert_eq!(a.versions(), b.versions());
    assert!(
        b.replica
            .forgotten()
            .version
            .dominates(&a.replica.forgotten().version)
    );
    assert!(
        b.events
            .iter()
            .any(|e| matches!(e, Event::Changed { key } if key == "k")),
        "the app heard that k is gone"
    );
    // Settled: the next reconnect is incremental both ways.
    let (idle, resets) = exchange(&mut a, &mut b);
    assert_eq!(resets, (0, 0));
    assert!(idle <= 100, "idle reconnect moved {idle} bytes");
}

#[test]
fn an_old_version_from_a_returning_device_does_not_resurrect_a_collected_key() {
    // C got k from B and went away before B learned that A deleted it. A collects the
    // tombstone. C then talks to A first: A must not take k back, and C must drop it.
    let mut a = Node::new(1, 3);
    let mut b = Node::new(2, 3);
    let mut c = Node::new(3, 3);
    a.replica.set_horizon(HOUR);
    b.put("k", "from b");
    sync(&mut a, &mut b);
    sync(&mut b, &mut c);
    a.delete("k");
    sync(&mut a, &mut b);
    assert!(b.replica.entry("k").unwrap().winner().is_tombstone());
    assert_eq!(a.collect(T0 + 2 * HOUR), 1);
    // C's record of k, as C would stream it to a peer that never synced with it.
    let stale = c.replica.entry("k").unwrap().winner().clone();
    a.replica.peer_connected(c.id());
    a.replica.handle_message(
        c.id(),
        DbMessage::Records(Records {
            share: share_tag(&SHARE),
            index: c.replica.meta().index,
            records: vec![(1, stale)],
        }),
    );
    a.settle();
    a.replica.peer_disconnected(&c.id());
    assert!(a.replica.entry("k").is_none(), "ignored, not applied");
    assert!(
        !a.events.iter().any(|e| matches!(e, Event::Refused { .. })),
        "ignored like a superseded version, not refused"
    );
    sync(&mut a, &mut c);
    for n in [&a, &c] {
        assert!(n.replica.entry("k").is_none());
    }
    sync(&mut b, &mut c);
    sync(&mut a, &mut b);
    assert_eq!(a.versions(), c.versions());
    assert_eq!(b.shows("k"), None);
}

#[test]
fn a_peer_that_received_a_dropped_version_is_reset_too() {
    // B returns after the horizon and drops k. D got k from B earlier and only ever talks to
    // B: B must reset D as well.
    let mut a = Node::new(1, 3);
    let mut b = Node::new(2, 3);
    let mut d = Node::new(3, 3);
    a.replica.set_horizon(HOUR);
    a.put("k", "v");
    sync(&mut a, &mut b);
    sync(&mut b, &mut d);
    a.delete("k");
    assert_eq!(a.collect(T0 + 2 * HOUR), 1);
    sync(&mut a, &mut b);
    assert!(b.replica.entry("k").is_none());
    let (_, resets) = exchange(&mut b, &mut d);
    assert_eq!(resets.0, 1, "B resets D");
    assert!(d.replica.entry("k").is_none());
    assert_eq!(exchange(&mut b, &mut d).1, (0, 0), "once");
}

#[test]
fn a_live_sibling_of_a_collected_tombstone_is_kept() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    a.replica.set_horizon(HOUR);
    a.put("k", "v");
    sync(&mut a, &mut b);
    a.delete("k");
    b.put("k", "edited concurrently");
    sync(&mut a, &mut b);
    assert!(a.replica.entry("k").unwrap().is_conflict());
    assert_eq!(a.collect(T0 + 2 * HOUR), 1);
    let e = a.replica.entry("k").unwrap();
    assert!(!e.is_conflict());
    assert_eq!(a.shows("k").as_deref(), Some("edited concurrently"));
    sync(&mut a, &mut b);
    assert_eq!(b.shows("k").as_deref(), Some("edited concurrently"));
}

#[test]
fn an_interrupted_reset_is_asked_for_again_and_completes() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    a.replica.set_horizon(HOUR);
    a.put("k", "v");
    a.put("x", "x");
    sync(&mut a, &mut b);
    a.delete("k");
    assert_eq!(a.collect(T0 + 2 * HOUR), 1);
    // B asks, A answers with Forgotten and records, and the connection drops before the
    // CaughtUp.
    let (ida, idb) = (a.id(), b.id());
    a.replica.peer_connected(idb);
    b.replica.peer_connected(ida);
    let request = b.replica.poll_message(&ida).unwrap();
    a.replica.handle_message(idb, request);
    let _own = a.replica.poll_message(&idb);
    let forgotten = a.replica.poll_message(&idb).unwrap();
    assert!(matches!(forgotten, DbMessage::Forgotten(_)));
    b.replica.handle_message(ida, forgotten);
    b.settle();
    let records = a.replica.poll_message(&idb).unwrap();
    assert!(matches!(records, DbMessage::Records(_)));
    b.replica.handle_message(ida, records);
    b.settle();
    a.replica.peer_disconnected(&idb);
    b.replica.peer_disconnected(&ida);
    assert_eq!(
        b.replica.cursor(&ida).seq,
        0,
        "the reset starts over next time"
    );
    assert_eq!(
        b.shows("k").as_deref(),
        Some("v"),
        "not dropped before the end"
    );
    let (_, resets) = exchange(&mut a, &mut b);
    assert_eq!(resets.0, 1);
    assert!(b.replica.entry("k").is_none());
    assert_eq!(b.shows("x").as_deref(), Some("x"));
}

#[test]
fn a_read_only_member_cannot_make_a_replica_forget() {
    let mut a = Node::new(1, 2);
    a.put("k", "v");
    let reader = key(3).device_id();
    a.replica.set_member(
        reader,
        Member {
            public_key: key(3).public_key(),
            access: Access::ReadOnly,
        },
    );
    a.replica.peer_connected(reader);
    let everything: clearskies_proto::db::VersionVector =
        [(a.id(), u64::MAX)].into_iter().collect();
    a.replica.handle_message(
        reader,
        DbMessage::Forgotten(clearskies_proto::db::msg::Forgotten {
            share: share_tag(&SHARE),
            index: 5,
            forgotten: everything,
        }),
    );
    a.replica.handle_message(
        reader,
        DbMessage::CaughtUp(clearskies_proto::db::msg::CaughtUp {
            share: share_tag(&SHARE),
            index: 5,
            seq: 0,
        }),
    );
    a.settle();
    assert_eq!(a.shows("k").as_deref(), Some("v"));
    assert!(a.replica.forgotten().version.is_empty());
}

#[test]
fn a_forgotten_version_arriving_from_elsewhere_during_a_reset_is_dropped_at_its_end() {
    // B never had k. While A resets B, C (which holds k from before A deleted it) gives it to
    // B: the reset's end must drop it too, since A counts on B doing so.
    let mut a = Node::new(1, 3);
    let mut b = Node::new(2, 3);
    let mut c = Node::new(3, 3);
    a.replica.set_horizon(HOUR);
    a.put("x", "x");
    sync(&mut a, &mut b);
    a.put("k", "v");
    sync(&mut a, &mut c);
    a.delete("k");
    assert_eq!(a.collect(T0 + 2 * HOUR), 1);
    let (ida, idb) = (a.id(), b.id());
    a.replica.peer_connected(idb);
    b.replica.peer_connected(ida);
    let request = b.replica.poll_message(&ida).unwrap();
    a.replica.handle_message(idb, request);
    let _own = a.replica.poll_message(&idb);
    let forgotten = a.replica.poll_message(&idb).unwrap();
    assert!(matches!(forgotten, DbMessage::Forgotten(_)));
    b.replica.handle_message(ida, forgotten);
    b.settle();
    sync(&mut b, &mut c);
    assert_eq!(b.shows("k").as_deref(), Some("v"), "taken from C meanwhile");
    while let Some(m) = a.replica.poll_message(&idb) {
        b.replica.handle_message(ida, m);
        b.settle();
    }
    assert!(b.replica.entry("k").is_none());
    assert_eq!(b.shows("x").as_deref(), Some("x"));
    a.replica.peer_disconnected(&idb);
    b.replica.peer_disconnected(&ida);
    // B dropped something C may hold: C is reset by B.
    let (_, resets) = exchange(&mut b, &mut c);
    assert_eq!(resets.0, 1);
    assert!(c.replica.entry("k").is_none());
}

#[test]
fn a_recreated_replica_never_reuses_a_counter_it_only_knows_from_a_forgotten_vector() {
    let mut a = Node::new(1, 2);
    let mut b = Node::new(2, 2);
    b.replica.set_horizon(HOUR);
    a.put("k", "v");
    a.delete("k");
    sync(&mut a, &mut b);
    assert_eq!(b.collect(T0 + 2 * HOUR), 1);
    // A loses its database (a new index ID); the only trace of its counter 2 is B's forgotten
    // vector.
    let mut a = Node {
        replica: Replica::new(SHARE, key(1), members(2), ReplicaState::default(), 7777),
        events: Vec::new(),
    };
    a.settle();
    let (_, resets) = exchange(&mut b, &mut a);
    assert_eq!(resets.0, 1);
    let next = a.put("k", "again");
    assert!(next.counter > 2, "counter reused: {next:?}");
    sync(&mut a, &mut b);
    assert_eq!(
        b.shows("k").as_deref(),
        Some("again"),
        "not taken for forgotten"
    );
}
