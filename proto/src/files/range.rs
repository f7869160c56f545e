//! Which chunks cover a byte range of a file (shallow replicas read ranges on demand).

use super::meta::{FileMeta, Hash};

/// One chunk needed for a range, and which of its bytes the range takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The chunk.
    pub hash: Hash,
    /// The chunk's length.
    pub len: u32,
    /// First byte of the chunk in the range.
    pub from: u32,
    /// One past the last byte of the chunk in the range.
    pub to: u32,
}

/// The pieces of `meta`'s chunks that cover bytes `start ..= end` (inclusive, clamped to the
/// file), in order. Empty when `start` is past the end or the file is empty.
pub fn pieces(meta: &FileMeta, start: u64, end: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    if meta.size == 0 || start >= meta.size || end < start {
        return out;
    }
    let end = end.min(meta.size - 1);
    let mut offset = 0u64;
    for c in &meta.chunks {
        let len = u64::from(c.len());
        let (lo, hi) = (offset, offset + len);
        offset = hi;
        if hi <= start {
            continue;
        }
        if lo > end {
            break;
        }
        // The chunk overlaps [start, end]: take its part of it.
        let from = start.saturating_sub(lo);
        let to = (end + 1).min(hi) - lo;
        out.push(Piece {
            hash: c.0,
            len: c.len(),
            from: from as u32,
            to: to as u32,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{ChunkRef, FileKind};

    fn meta(lens: &[u32]) -> FileMeta {
        FileMeta {
            kind: FileKind::File,
            mode: 0o644,
            mtime_ns: 0,
            size: lens.iter().map(|&l| u64::from(l)).sum(),
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, &l)| ChunkRef([i as u8; 32], l))
                .collect(),
            target: None,
            conflict_of: None,
        }
    }

    #[test]
    fn ranges_map_to_the_chunks_that_cover_them() {
        let m = meta(&[10, 20, 30]);
        // Inside one chunk.
        assert_eq!(
            pieces(&m, 12, 15),
            vec![Piece {
                hash: [1; 32],
                len: 20,
                from: 2,
                to: 6
            }]
        );
        // Across a boundary.
        let p = pieces(&m, 8, 11);
        assert_eq!((p[0].from, p[0].to, p[1].from, p[1].to), (8, 10, 0, 2));
        // The whole file, and a range past its end clamped.
        assert_eq!(pieces(&m, 0, u64::MAX).len(), 3);
        let last = pieces(&m, 59, 100);
        assert_eq!((last[0].hash, last[0].from, last[0].to), ([2; 32], 29, 30));
        // Nothing past the end or in an empty file.
        assert!(pieces(&m, 60, 70).is_empty());
        assert!(pieces(&meta(&[]), 0, 0).is_empty());
        // The lengths of the pieces add up to the range.
        let total: u32 = pieces(&m, 5, 44).iter().map(|p| p.to - p.from).sum();
        assert_eq!(total, 40);
    }
}
