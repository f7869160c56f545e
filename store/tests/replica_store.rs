//! The replica store on real files: batches round-trip, a reopened store restarts a replica
//! exactly where it was, and an acknowledged batch survives `kill -9` of the writing process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, Output, Replica, ReplicaState};
use clearskies_store::ReplicaStore;

const SHARE: [u8; 32] = [3; 32];

fn replica(state: ReplicaState) -> Replica {
    let key = DeviceKey::from_secret(&[5; 32]);
    let members = BTreeMap::from([(
        key.device_id(),
        Member {
            public_key: key.public_key(),
            access: Access::ReadWrite,
        },
    )]);
    Replica::new(SHARE, key, members, state, 77)
}

/// Drains the replica into the store, confirming each batch once it is durable.
fn settle(replica: &mut Replica, store: &ReplicaStore) -> Vec<u64> {
    let mut acked = Vec::new();
    while let Some(out) = replica.poll_output() {
        match out {
            Output::Persist { id, ops } => {
                store.apply(&ops).expect("batch applied");
                replica.handle_persisted(id);
            }
            Output::Event(clearskies_proto::db::Event::WriteAcked { dot }) => {
                acked.push(dot.counter)
            }
            Output::Event(_) => {}
        }
    }
    acked
}

#[test]
fn a_reopened_store_restarts_the_replica_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let (store, state) = ReplicaStore::open(&path).unwrap();
    assert_eq!(state.meta.index, 0, "a new store is empty");
    let mut r = replica(state);
    for i in 0..50 {
        r.put(
            1_700_000_000_000_000 + i,
            &format!("k{}", i % 20),
            Bytes::from(format!("v{i}")),
        )
        .unwrap();
    }
    r.delete(1_700_000_000_000_100, "k3").unwrap();
    settle(&mut r, &store);
    let before: Vec<_> = r.records().map(|(s, rec)| (s, rec.clone())).collect();
    let meta = r.meta();
    drop(store);

    let (_store, state) = ReplicaStore::open(&path).unwrap();
    assert_eq!(state.meta, meta);
    let mut loaded = state.records.clone();
    loaded.sort_by_key(|(s, _)| *s);
    assert_eq!(
        loaded, before,
        "exactly the current records, superseded ones removed"
    );
    assert_eq!(loaded.len(), 20);
    let again = replica(state);
    assert_eq!(again.get("k5").map(|v| v.to_vec()), Some(b"v45".to_vec()));
    assert!(again.entry("k3").unwrap().winner().is_tombstone());
}

#[test]
fn an_unreadable_file_is_refused_with_its_path_and_others_are_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let (store, state) = ReplicaStore::open(&path).unwrap();
    let mut r = replica(state);
    r.put(1, "k", Bytes::from_static(b"v")).unwrap();
    settle(&mut r, &store);
    drop(store);
    let bogus = dir.path().join("bogus.redb");
    std::fs::write(&bogus, b"this is not a database").unwrap();
    let err = ReplicaStore::open(&bogus).unwrap_err();
    assert!(err.to_string().contains("bogus.redb"), "{err}");
    let (_, state) = ReplicaStore::open(&path).unwrap();
    assert_eq!(state.records.len(), 1);
}

const CHILD_ENV: &str = "CLEARSKIES_STORE_CRASH_CHILD";

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        // The child: write forever, announcing each acknowledged write.
        let (store, state) = ReplicaStore::open(std::path::Path::new(&path)).unwrap();
        let mut r = replica(state);
        for i in 0.. {
            r.put(
                1_700_000_000_000_000 + i,
                &format!("k{i:06}"),
                Bytes::from(vec![7u8; 200]),
            )
            .unwrap();
            for counter in settle(&mut r, &store) {
                println!("acked {counter}");
            }
        }
        unreachable!();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "acknowledged_writes_survive_kill_9",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut last_acked = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("acked ") {
            last_acked = n.parse().unwrap();
            if last_acked >= 200 {
                // SIGKILL in the middle of the next write.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert!(last_acked >= 200);
    let (_, state) = ReplicaStore::open(&path).unwrap();
    let r = replica(state);
    for i in 0..last_acked {
        assert!(
            r.get(&format!("k{i:06}")).is_some(),
            "acknowledged write {} lost",
            i + 1
        );
    }
    assert!(
        r.meta().write_counter >= last_acked,
        "the write counter went backwards"
    );
}

#[test]
fn collected_tombstones_leave_the_store_and_what_was_forgotten_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let (store, state) = ReplicaStore::open(&path).unwrap();
    let mut r = replica(state);
    let hour = 3_600_000_000;
    r.set_horizon(hour);
    r.put(1_700_000_000_000_000, "kept", Bytes::from_static(b"v"))
        .unwrap();
    r.put(1_700_000_000_000_001, "gone", Bytes::from_static(b"v"))
        .unwrap();
    r.delete(1_700_000_000_000_002, "gone").unwrap();
    settle(&mut r, &store);
    assert_eq!(r.collect_garbage(1_700_000_000_000_002 + hour), 1);
    settle(&mut r, &store);
    let forgotten = r.forgotten().clone();
    assert_eq!(forgotten.floor, 3);
    assert_eq!(forgotten.version.get(&r.device()), 3);
    let meta = r.meta();
    drop(store);

    let (_store, state) = ReplicaStore::open(&path).unwrap();
    assert_eq!(state.meta, meta);
    assert_eq!(state.forgotten, forgotten);
    assert_eq!(state.records.len(), 1, "only the live record is left");
    assert_eq!(state.records[0].1.key, "kept");
    let again = replica(state);
    assert!(again.entry("gone").is_none());
    assert_eq!(again.forgotten(), &forgotten);
}
