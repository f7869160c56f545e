//! Content-defined chunking (`spec/files.md` § Chunking).
//!
//! A FastCDC-style gear hash with normalized chunking: a cut may fall only where the content
//! says so, so inserting a byte near the start of a file moves one or two boundaries, not all
//! of them (fixed-size blocks would re-send the whole file).
//!
//! For every byte the rolling fingerprint is `fp = (fp << 1) + GEAR[byte]` (wrapping), so the
//! top bits of `fp` depend on the last 64 bytes only. A chunk of length `L` (counting the byte
//! just hashed) ends when `L == max`, or when `L >= min` and the top bits selected by the mask
//! for `L` are all zero: [`ChunkParams::mask_small`] (stricter) while `L < avg`,
//! [`ChunkParams::mask_large`] (looser) from `avg` on. Hashing starts at the byte that makes
//! `L == min` with `fp = 0`; the bytes before it are skipped, which is also where most of the
//! speed comes from.
//!
//! Large files use a larger size class ([`class_for`]) so that a file's chunk list, stored in
//! its record, stays well under the database's document limit.
//!
//! ```
//! use clearskies_proto::files::chunker::{Chunker, chunk_lengths};
//!
//! let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
//! let mut chunker = Chunker::new(0);
//! let mut lengths = Vec::new();
//! let mut start = 0;
//! for buffer in data.chunks(4096) {
//!     let mut rest = buffer;
//!     while let Some(cut) = chunker.next_cut(rest) {
//!         lengths.push(chunker.position() - start);
//!         start = chunker.position();
//!         rest = &rest[cut..];
//!     }
//! }
//! lengths.extend(chunker.finish().map(u64::from));
//! let expected: Vec<u64> = chunk_lengths(&data, 0).into_iter().map(u64::from).collect();
//! assert_eq!(lengths, expected);
//! ```

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The domain-separation prefix of the gear table: `GEAR[i]` is the first 8 bytes, read
/// little-endian, of SHA-256(`GEAR_SEED` ‖ `i`).
pub const GEAR_SEED: &[u8] = b"clearskies/gear/v1";

/// log2 of the minimum chunk length of class 0 (16 KiB).
pub const MIN_BITS: u32 = 14;
/// log2 of the average (normal) chunk length of class 0 (64 KiB).
pub const AVG_BITS: u32 = 16;
/// log2 of the maximum chunk length of class 0 (256 KiB).
pub const MAX_BITS: u32 = 18;
/// Normalization level: the small mask has `AVG_BITS + k + NORMALIZATION` bits, the large one
/// `AVG_BITS + k - NORMALIZATION`.
pub const NORMALIZATION: u32 = 2;
/// A file is chunked with the smallest class `k` for which `size <= MAX_CHUNKS_PER_FILE × avg(k)`.
pub const MAX_CHUNKS_PER_FILE: u64 = 8192;
/// The largest size class (maximum chunk 2 GiB, so every length fits a `u32`). Files beyond
/// `MAX_CHUNKS_PER_FILE × avg(MAX_CLASS)` (4 PiB) use it too.
pub const MAX_CLASS: u32 = 13;

/// The gear table (256 pseudo-random 64-bit words), computed once.
pub fn gear() -> &'static [u64; 256] {
    static GEAR: OnceLock<[u64; 256]> = OnceLock::new();
    GEAR.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, word) in table.iter_mut().enumerate() {
            let digest = Sha256::new()
                .chain_update(GEAR_SEED)
                .chain_update([i as u8])
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            *word = u64::from_le_bytes(first);
        }
        table
    })
}

/// The size class a file of `size` bytes is chunked with: the smallest `k` such that
/// `size <= 8192 × 64 KiB × 2^k`, at most [`MAX_CLASS`].
pub fn class_for(size: u64) -> u32 {
    let mut class = 0;
    while class < MAX_CLASS && size > MAX_CHUNKS_PER_FILE << (AVG_BITS + class) {
        class += 1;
    }
    class
}

/// The constants of one size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    /// No content-defined cut makes a chunk shorter than this (only the end of the data).
    pub min: u32,
    /// Where the stricter mask gives way to the looser one.
    pub avg: u32,
    /// A chunk is cut here whatever the content.
    pub max: u32,
    /// Mask while the chunk is shorter than `avg`: the top `AVG_BITS + class + 2` bits.
    pub mask_small: u64,
    /// Mask from `avg` on: the top `AVG_BITS + class − 2` bits.
    pub mask_large: u64,
}

impl ChunkParams {
    /// The parameters of class `class` (clamped to [`MAX_CLASS`]).
    pub fn of(class: u32) -> ChunkParams {
        let k = class.min(MAX_CLASS);
        let top = |bits: u32| !0u64 << (64 - bits);
        ChunkParams {
            min: 1 << (MIN_BITS + k),
            avg: 1 << (AVG_BITS + k),
            max: 1 << (MAX_BITS + k),
            mask_small: top(AVG_BITS + k + NORMALIZATION),
            mask_large: top(AVG_BITS + k - NORMALIZATION),
        }
    }
}

/// A streaming chunker: feed a file in buffers of any size, get the same boundaries as one
/// pass over the whole file.
#[derive(Debug, Clone)]
pub struct Chunker {
    params: ChunkParams,
    gear: &'static [u64; 256],
    /// Bytes of the current (unfinished) chunk.
    len: u32,
    /// The fingerprint over the hashed bytes of the current chunk.
    fp: u64,
    /// Bytes consumed in total.
    position: u64,
}

impl Chunker {
    /// A chunker for size class `class` (see [`class_for`]).
    pub fn new(class: u32) -> Chunker {
        Chunker {
            params: ChunkParams::of(class),
            gear: gear(),
            len: 0,
            fp: 0,
            position: 0,
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Bytes consumed so far (the offset just past the last byte pushed).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Consumes `data` up to and including the next cut. Returns the offset in `data` just
    /// past the chunk's last byte (the caller continues with `&data[cut..]`), or `None` when
    /// all of `data` was consumed without a cut.
    pub fn next_cut(&mut self, data: &[u8]) -> Option<usize> {
        let p = self.params;
        let (min, avg, max) = (p.min as usize, p.avg as usize, p.max as usize);
        let gear = self.gear;
        let mut len = self.len as usize;
        let mut fp = self.fp;
        let mut i = 0;
        let n = data.len();

        // Bytes that bring the chunk to `min - 1`: not hashed.
        if len < min - 1 {
            let take = (min - 1 - len).min(n);
            i += take;
            len += take;
        }
        // Bytes that make the length `min ..= avg - 1`: the strict mask.
        if len < avg - 1 && i < n {
            let end = i + (avg - 1 - len).min(n - i);
            let start = i;
            while i < end {
                fp = (fp << 1).wrapping_add(gear[usize::from(data[i])]);
                i += 1;
                if fp & p.mask_small == 0 {
                    return Some(self.cut(i));
                }
            }
            len += i - start;
        }
        // Bytes that make the length `avg ..= max`: the loose mask, and `max` cuts anyway.
        if i < n {
            let end = i + (max - len).min(n - i);
            let start = i;
            while i < end {
                fp = (fp << 1).wrapping_add(gear[usize::from(data[i])]);
                i += 1;
                if fp & p.mask_large == 0 {
                    return Some(self.cut(i));
                }
            }
            len += i - start;
            if len == max {
                return Some(self.cut(i));
            }
        }
        self.position += n as u64;
        // `len <= max`, which fits a u32 (MAX_CLASS keeps max at 2^31).
        self.len = len as u32;
        self.fp = fp;
        None
    }

    /// Ends the chunk after `i` bytes of the current buffer.
    fn cut(&mut self, i: usize) -> usize {
        self.position += i as u64;
        self.len = 0;
        self.fp = 0;
        i
    }

    /// Cut points of `data`, as offsets in `data` just past each chunk's end.
    pub fn push(&mut self, data: &[u8]) -> Vec<usize> {
        let mut cuts = Vec::new();
        let mut offset = 0;
        while let Some(cut) = self.next_cut(&data[offset..]) {
            offset += cut;
            cuts.push(offset);
        }
        cuts
    }

    /// Ends the data: the length of the last chunk, if any bytes are pending. The chunker is
    /// then ready for a new file (position back to 0).
    pub fn finish(&mut self) -> Option<u32> {
        let last = (self.len > 0).then_some(self.len);
        self.len = 0;
        self.fp = 0;
        self.position = 0;
        last
    }
}

/// The chunk lengths of `data` in one pass (what streaming [`Chunker::next_cut`] also gives).
pub fn chunk_lengths(data: &[u8], class: u32) -> Vec<u32> {
    let mut chunker = Chunker::new(class);
    let mut lengths = Vec::new();
    let mut rest = data;
    let mut last = 0u64;
    while let Some(cut) = chunker.next_cut(rest) {
        // A chunk is at most `max` bytes, which fits a u32.
        lengths.push((chunker.position() - last) as u32);
        last = chunker.position();
        rest = &rest[cut..];
    }
    lengths.extend(chunker.finish());
    lengths
}
