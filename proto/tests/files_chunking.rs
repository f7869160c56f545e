//! Properties of content-defined chunking: boundaries follow content, not offsets, and
//! streaming in any buffer split gives the same boundaries as one pass.
//!
//! Cases default to 16 per property (debug builds chunk slowly); `PROPTEST_CASES=1000` runs
//! more.

use std::collections::BTreeSet;

use clearskies_proto::files::chunker::{
    ChunkParams, Chunker, MAX_CLASS, chunk_lengths, class_for, gear,
};
use proptest::prelude::*;

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for megabytes in debug.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The chunks of `data` as slices.
fn chunks(data: &[u8], class: u32) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for len in chunk_lengths(data, class) {
        out.push(&data[at..at + len as usize]);
        at += len as usize;
    }
    out
}

/// How many chunks of `new` do not occur in `old`; also checks that they are one run: the
/// chunks before it and after it are exactly the old ones (boundaries resynchronised).
fn new_chunks(old: &[u8], new: &[u8]) -> usize {
    let old = chunks(old, 0);
    let new = chunks(new, 0);
    let known: BTreeSet<&[u8]> = old.iter().copied().collect();
    let changed: Vec<usize> = (0..new.len())
        .filter(|&i| !known.contains(new[i]))
        .collect();
    if let (Some(&first), Some(&last)) = (changed.first(), changed.last()) {
        assert_eq!(&new[..first], &old[..first], "common prefix");
        let tail = new.len() - last - 1;
        assert_eq!(&new[last + 1..], &old[old.len() - tail..], "common suffix");
    }
    changed.len()
}

/// A change can cascade: a new cut shortly before an old one hides the old one behind the
/// minimum length. Each further chunk is about ten times rarer (6,000 trials: insertion at
/// the start changed one chunk 5,999 times and three once; a one-byte overwrite changed one
/// chunk 5,987 times, never more than four); more than this many means the hash is broken.
const MAX_CASCADE: usize = 8;

/// The common case, measured on fixed inputs: almost every edit re-sends exactly one chunk.
#[test]
fn edits_usually_change_exactly_one_chunk() {
    let (mut insert_one, mut overwrite_one) = (0, 0);
    let trials = 200u64;
    for s in 0..trials {
        let old = noise(s * 7919 + 1, 400_000);
        let mut new = vec![s as u8];
        new.extend_from_slice(&old);
        insert_one += usize::from(new_chunks(&old, &new) == 1);
        let mut new = old.clone();
        new[(s as usize * 104_729) % old.len()] ^= 0x5a;
        overwrite_one += usize::from(new_chunks(&old, &new) == 1);
    }
    assert!(
        insert_one >= 196 && overwrite_one >= 196,
        "{insert_one} {overwrite_one}"
    );
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn insertion_at_start_changes_one_run_of_chunks(seed: u64, byte: u8, len in 400_000usize..1_200_000) {
        let old = noise(seed, len);
        let mut new = vec![byte];
        new.extend_from_slice(&old);
        prop_assert!((1..=MAX_CASCADE).contains(&new_chunks(&old, &new)));
    }

    #[test]
    fn overwrite_in_middle_changes_one_run_of_chunks(
        seed: u64,
        len in 400_000usize..1_200_000,
        at in 0.0f64..1.0,
        patch in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let old = noise(seed, len);
        let mut new = old.clone();
        let start = ((len - patch.len()) as f64 * at) as usize;
        new[start..start + patch.len()].copy_from_slice(&patch);
        prop_assume!(new != old);
        prop_assert!((1..=MAX_CASCADE).contains(&new_chunks(&old, &new)));
    }

    #[test]
    fn streaming_equals_one_shot(
        seed: u64,
        len in 0usize..700_000,
        splits in proptest::collection::vec(1usize..100_000, 0..40),
        class in 0u32..2,
    ) {
        let data = noise(seed, len);
        let expected: Vec<u64> = chunk_lengths(&data, class).into_iter().map(u64::from).collect();
        let mut chunker = Chunker::new(class);
        let mut got = Vec::new();
        let mut last = 0u64;
        let mut rest = &data[..];
        let mut split = splits.iter().cycle();
        while !rest.is_empty() {
            let n = split.next().copied().unwrap_or(rest.len()).min(rest.len());
            let (buffer, tail) = rest.split_at(n);
            rest = tail;
            let base = chunker.position();
            for cut in chunker.push(buffer) {
                let end = base + cut as u64;
                got.push(end - last);
                last = end;
            }
        }
        got.extend(chunker.finish().map(u64::from));
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn lengths_respect_min_and_max_and_add_up() {
    let data = noise(7, 3 << 20);
    for class in 0..2 {
        let p = ChunkParams::of(class);
        let lengths = chunk_lengths(&data, class);
        assert_eq!(
            lengths.iter().map(|&l| u64::from(l)).sum::<u64>(),
            data.len() as u64
        );
        let (last, body) = lengths.split_last().expect("chunks");
        assert!(body.iter().all(|&l| l >= p.min && l <= p.max), "{body:?}");
        assert!(*last <= p.max);
    }
}

#[test]
fn constant_data_cuts_at_max() {
    // Zero bytes never satisfy a mask (GEAR[0] has top bits set), so every chunk is `max`.
    let data = vec![0u8; 600_000];
    let p = ChunkParams::of(0);
    let lengths = chunk_lengths(&data, 0);
    if gear()[0] & p.mask_large != 0 {
        assert_eq!(lengths, vec![p.max, p.max, 600_000 - 2 * p.max]);
    }
    assert!(chunk_lengths(&[], 0).is_empty());
    assert_eq!(chunk_lengths(&[1, 2, 3], 0), vec![3]);
}

#[test]
fn classes_by_size() {
    assert_eq!(class_for(0), 0);
    assert_eq!(class_for(8192 << 16), 0);
    assert_eq!(class_for((8192 << 16) + 1), 1);
    assert_eq!(class_for(8192 << 17), 1);
    assert_eq!(class_for((8192 << 17) + 1), 2);
    assert_eq!(class_for(u64::MAX), MAX_CLASS);
    let p = ChunkParams::of(1);
    assert_eq!((p.min, p.avg, p.max), (32 << 10, 128 << 10, 512 << 10));
    assert_eq!(p.mask_small.count_ones(), 19);
    assert_eq!(p.mask_large.count_ones(), 15);
    assert_eq!(ChunkParams::of(MAX_CLASS).max, 1 << 31);
}
