//! Frame encode/decode throughput: `cargo bench -p clearskies-proto --bench frame`.
//!
//! Encode: a 1 MiB extension message queued and pulled out of a Session as frames.
//! Decode: the same frames pushed through a Session in 64 KiB reads (what a driver does).
//! Both report bytes per second of message payload.

use std::hint::black_box;

use bytes::Bytes;
use clearskies_proto::Timestamp;
use clearskies_proto::session::{Event, Priority, Session, SessionConfig};
use clearskies_proto::wire::{ExtensionMessage, FrameDecoder, Message, Reassembler};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EXT: &str = "com.example.bench";

fn established_pair() -> (Session, Session) {
    let config = SessionConfig {
        extensions: vec![EXT.into()],
        ..SessionConfig::default()
    };
    let now = Timestamp::ZERO;
    let mut a = Session::new(config.clone(), now).unwrap();
    let mut b = Session::new(config, now).unwrap();
    while let Some(bytes) = a.poll_transmit(now) {
        b.handle_bytes(now, &bytes);
    }
    while let Some(bytes) = b.poll_transmit(now) {
        a.handle_bytes(now, &bytes);
    }
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    (a, b)
}

fn message(size: usize) -> Message {
    Message::Extension(ExtensionMessage {
        name: EXT.into(),
        payload: Bytes::from(vec![0xa5; size]),
    })
}

fn bench_frames(c: &mut Criterion) {
    let size = 1024 * 1024 - 64;
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(size as u64));

    group.bench_function("encode_1MiB_message", |bench| {
        let (mut a, _b) = established_pair();
        let msg = message(size);
        bench.iter(|| {
            a.send(msg.clone(), Priority::Bulk).unwrap();
            let mut total = 0;
            while let Some(bytes) = a.poll_transmit(Timestamp::ZERO) {
                total += bytes.len();
            }
            black_box(total)
        })
    });

    // The wire bytes of one message, captured once.
    let (mut a, _b) = established_pair();
    a.send(message(size), Priority::Bulk).unwrap();
    let mut wire = Vec::new();
    while let Some(bytes) = a.poll_transmit(Timestamp::ZERO) {
        wire.extend_from_slice(&bytes);
    }

    group.bench_function("decode_1MiB_message_frames_only", |bench| {
        bench.iter(|| {
            let mut decoder = FrameDecoder::without_preface();
            let mut reassembler = Reassembler::new();
            let mut messages = 0;
            for chunk in wire.chunks(64 * 1024) {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    if reassembler.push(frame).unwrap().is_some() {
                        messages += 1;
                    }
                }
            }
            assert_eq!(messages, 1);
        })
    });

    group.bench_function("decode_1MiB_message_session", |bench| {
        let (_a, mut b) = established_pair();
        bench.iter(|| {
            for chunk in wire.chunks(64 * 1024) {
                b.handle_bytes(Timestamp::ZERO, chunk);
            }
            let Some(Event::Message(m)) = b.poll_event() else {
                panic!("no message")
            };
            black_box(m)
        })
    });
    group.finish();

    let mut small = c.benchmark_group("frame_small");
    let msg = message(100);
    small.throughput(Throughput::Elements(1));
    small.bench_function("round_trip_100B_message", |bench| {
        let (mut a, mut b) = established_pair();
        bench.iter(|| {
            a.send(msg.clone(), Priority::Control).unwrap();
            while let Some(bytes) = a.poll_transmit(Timestamp::ZERO) {
                b.handle_bytes(Timestamp::ZERO, &bytes);
            }
            black_box(b.poll_event())
        })
    });
    small.finish();
}

criterion_group!(benches, bench_frames);
criterion_main!(benches);
