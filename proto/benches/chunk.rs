//! Chunking throughput: `cargo bench -p clearskies-proto --bench chunk`.
//!
//! * `chunk/cdc_64MiB`: content-defined boundaries of 64 MiB of pseudo-random bytes, streamed
//!   in 1 MiB buffers as the folder scanner does.
//! * `chunk/cdc_sha256_64MiB`: the same plus SHA-256 of every chunk (what a scan of a changed
//!   file costs in CPU).

use std::hint::black_box;

use clearskies_proto::files::chunker::Chunker;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};

const LEN: usize = 64 << 20;
const BUFFER: usize = 1 << 20;

fn data() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(LEN);
    while out.len() < LEN {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out
}

fn chunk_only(data: &[u8]) -> usize {
    let mut chunker = Chunker::new(0);
    let mut count = 0;
    for buffer in data.chunks(BUFFER) {
        let mut rest = buffer;
        while let Some(cut) = chunker.next_cut(rest) {
            count += 1;
            rest = &rest[cut..];
        }
    }
    count + usize::from(chunker.finish().is_some())
}

fn chunk_and_hash(data: &[u8]) -> Vec<[u8; 32]> {
    let mut chunker = Chunker::new(0);
    let mut hashes = Vec::new();
    let mut hasher = Sha256::new();
    for buffer in data.chunks(BUFFER) {
        let mut rest = buffer;
        while let Some(cut) = chunker.next_cut(rest) {
            hasher.update(&rest[..cut]);
            hashes.push(hasher.finalize_reset().into());
            rest = &rest[cut..];
        }
        hasher.update(rest);
    }
    if chunker.finish().is_some() {
        hashes.push(hasher.finalize().into());
    }
    hashes
}

fn bench(c: &mut Criterion) {
    let data = data();
    let chunks = chunk_only(&data);
    println!(
        "64 MiB → {chunks} chunks, average {} bytes",
        LEN / chunks.max(1)
    );
    assert_eq!(chunk_and_hash(&data).len(), chunks);
    let mut group = c.benchmark_group("chunk");
    group.throughput(Throughput::Bytes(LEN as u64));
    group.sample_size(10);
    group.bench_function("cdc_64MiB", |b| b.iter(|| chunk_only(black_box(&data))));
    group.bench_function("cdc_sha256_64MiB", |b| {
        b.iter(|| chunk_and_hash(black_box(&data)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
