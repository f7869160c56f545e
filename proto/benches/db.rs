//! Database hot paths: `cargo bench -p clearskies-proto --bench db`.
//!
//! * `db/catch_up_100k`: a replica applies a 100,000-record catch-up (decode, verify the
//!   Ed25519 signature, apply) from the wire bytes a peer produced. Reports records/s.
//! * `db/local_put`: one signed local write, applied and persisted (store completes at once).
//!
//! Before the timed runs it prints, for the same catch-up: wire bytes per record, heap bytes
//! per record held by the replica (measured with a counting allocator), and the payload bytes
//! of an idle reconnect.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, DbMessage, Member, Output, Replica, ReplicaState};
use clearskies_proto::identity::DeviceId;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// Safety is not in question here: this wraps the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SHARE: [u8; 32] = [4; 32];
const N: usize = 100_000;

fn members() -> BTreeMap<DeviceId, Member> {
    [1u8, 2]
        .iter()
        .map(|&i| {
            let k = DeviceKey::from_secret(&[i; 32]);
            (
                k.device_id(),
                Member {
                    public_key: k.public_key(),
                    access: Access::ReadWrite,
                },
            )
        })
        .collect()
}

fn replica(n: u8) -> Replica {
    let mut r = Replica::new(
        SHARE,
        DeviceKey::from_secret(&[n; 32]),
        members(),
        ReplicaState::default(),
        10 + u64::from(n),
    );
    settle(&mut r);
    r
}

fn settle(r: &mut Replica) {
    while let Some(out) = r.poll_output() {
        if let Output::Persist { id, .. } = out {
            r.handle_persisted(id);
        }
    }
}

/// A realistic small document: a note title and a few fields, as CBOR.
fn doc(i: usize) -> Bytes {
    let mut v = vec![0xa3, 0x65];
    v.extend_from_slice(b"title");
    let title = format!("note number {i} about something");
    v.push(0x60 + title.len() as u8);
    v.extend_from_slice(title.as_bytes());
    v.extend_from_slice(&[
        0x64, b'd', b'o', b'n', b'e', 0xf4, 0x63, b't', b'a', b'g', 0x64, b'h', b'o', b'm', b'e',
    ]);
    Bytes::from(v)
}

/// The wire payloads a peer with N records sends in a catch-up.
fn catch_up_messages() -> (Vec<Bytes>, DeviceId) {
    let mut a = replica(1);
    for i in 0..N {
        a.put(
            1_700_000_000_000_000 + i as u64,
            &format!("notes/{i:06}"),
            doc(i),
        )
        .unwrap();
        settle(&mut a);
    }
    let b = DeviceKey::from_secret(&[2; 32]).device_id();
    a.peer_connected(b);
    a.handle_message(
        b,
        DbMessage::decode(
            &DbMessage::SyncRequest(clearskies_proto::db::msg::SyncRequest {
                share: clearskies_proto::db::replica::share_tag(&SHARE),
                index: 0,
                after: 0,
            })
            .encode(),
        )
        .unwrap()
        .unwrap(),
    );
    let mut out = Vec::new();
    let _own_request = a.poll_message(&b);
    while let Some(m) = a.poll_message(&b) {
        out.push(m.encode());
    }
    (out, a.device())
}

fn apply_all(messages: &[Bytes], from: DeviceId) -> Replica {
    let mut b = replica(2);
    b.peer_connected(from);
    for m in messages {
        b.handle_message(from, DbMessage::decode(m).unwrap().unwrap());
        settle(&mut b);
    }
    b
}

fn bench_db(c: &mut Criterion) {
    let (messages, from) = catch_up_messages();
    let wire: usize = messages.iter().map(Bytes::len).sum();
    let before = LIVE.load(Ordering::Relaxed);
    let b = apply_all(&messages, from);
    let resident = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(b.len(), N);
    println!(
        "catch-up of {N} records: {} messages, {:.1} wire bytes/record (payload, before framing); replica holds {:.1} heap bytes/record",
        messages.len(),
        wire as f64 / N as f64,
        resident as f64 / N as f64
    );
    drop(b);

    let mut group = c.benchmark_group("db");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("catch_up_100k", |bench| {
        bench.iter_batched(
            || (),
            |()| black_box(apply_all(&messages, from)),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("db_write");
    group.throughput(Throughput::Elements(1));
    let mut r = replica(1);
    let mut i = 0u64;
    group.bench_function("local_put", |bench| {
        bench.iter(|| {
            i += 1;
            r.put(
                1_700_000_000_000_000 + i,
                &format!("k{}", i % 1000),
                doc(i as usize),
            )
            .unwrap();
            settle(&mut r);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_db);
criterion_main!(benches);
