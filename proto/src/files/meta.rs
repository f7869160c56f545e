//! The document stored for each path of a folder share.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolViolation;
use crate::wire::codec;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum FileKind {
    /// A regular file (code 0).
    File,
    /// A directory (code 1).
    Dir,
    /// A symbolic link, synced as its target text and never followed (code 2).
    Symlink,
}

impl From<FileKind> for u8 {
    fn from(k: FileKind) -> u8 {
        match k {
            FileKind::File => 0,
            FileKind::Dir => 1,
            FileKind::Symlink => 2,
        }
    }
}

impl TryFrom<u8> for FileKind {
    type Error = String;
    fn try_from(v: u8) -> Result<FileKind, String> {
        match v {
            0 => Ok(FileKind::File),
            1 => Ok(FileKind::Dir),
            2 => Ok(FileKind::Symlink),
            other => Err(format!("unknown file kind {other}")),
        }
    }
}

/// One chunk of a file's content: its SHA-256 and length. Offsets are implied by order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkRef(#[serde(with = "serde_bytes")] pub Hash, pub u32);

impl ChunkRef {
    /// The chunk's SHA-256.
    pub fn hash(&self) -> &Hash {
        &self.0
    }

    /// The chunk's length in bytes.
    pub fn len(&self) -> u32 {
        self.1
    }

    /// Whether the chunk is empty (never true of a valid chunk list).
    pub fn is_empty(&self) -> bool {
        self.1 == 0
    }
}

/// A path's state as recorded in the database: everything needed to recreate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// What the path is.
    #[serde(rename = "k")]
    pub kind: FileKind,
    /// Permission bits (`mode & 0o7777`).
    #[serde(rename = "m")]
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    #[serde(rename = "t")]
    pub mtime_ns: i64,
    /// Content length in bytes (0 for directories; the target's length for symlinks).
    #[serde(rename = "s")]
    pub size: u64,
    /// The content's chunks in order (files only); their lengths add up to `size`.
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// The link's target text, unchanged (symlinks only).
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For a conflict copy: the path whose losing version this file keeps.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub conflict_of: Option<String>,
}

impl FileMeta {
    /// The CBOR document stored in the database.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes and checks a document (see [`FileMeta::check`]).
    pub fn decode(bytes: &[u8]) -> Result<FileMeta, ProtocolViolation> {
        let meta: FileMeta = codec::decode(bytes)?;
        meta.check().map_err(|detail| ProtocolViolation::MalformedMessage {
            detail: detail.to_owned(),
        })?;
        Ok(meta)
    }

    /// Whether the document is consistent: chunk lengths add up to the size and are not
    /// zero, only files have chunks, only symlinks have a target.
    pub fn check(&self) -> Result<(), &'static str> {
        match self.kind {
            FileKind::File => {
                if self.target.is_some() {
                    return Err("a file has no link target");
                }
                if self.chunks.iter().any(ChunkRef::is_empty) {
                    return Err("empty chunk");
                }
                let total: u64 = self.chunks.iter().map(|c| u64::from(c.len())).sum();
                if total != self.size {
                    return Err("chunk lengths do not add up to the size");
                }
            }
            FileKind::Dir => {
                if !self.chunks.is_empty() || self.target.is_some() || self.size != 0 {
                    return Err("a directory has no content");
                }
            }
            FileKind::Symlink => {
                let Some(t) = &self.target else {
                    return Err("a symlink needs a target");
                };
                if !self.chunks.is_empty() || self.size != t.len() as u64 {
                    return Err("a symlink's size is its target's length");
                }
            }
        }
        if self.mode & !0o7777 != 0 {
            return Err("mode has bits beyond 0o7777");
        }
        Ok(())
    }

    /// Whether two states have the same content and attributes (what a sync must make equal).
    pub fn same_content(&self, other: &FileMeta) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.chunks == other.chunks
            && self.target == other.target
    }
}
