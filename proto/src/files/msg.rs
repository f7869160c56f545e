//! The chunk-transfer messages, carried as payloads of the session extension
//! [`FILES_EXTENSION`](super::FILES_EXTENSION).
//!
//! Content is pulled, never pushed: a device asks a peer for a piece of a chunk by its hash
//! and the peer answers with the bytes or says it does not have them. Each payload is one CBOR
//! array `[type, body]`; bodies are maps with one-letter keys (unknown keys ignored), unknown
//! types ignored (`spec/files.md` § Chunk transfer).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::meta::Hash;
use crate::db::msg::ShareTag;
use crate::error::ProtocolViolation;
use crate::wire::codec;

/// The most bytes one [`Data`] answer carries; larger chunks are asked for in pieces.
pub const MAX_PIECE: u32 = 256 * 1024;

/// The most requests a device may have outstanding with one peer; a peer that sends more is
/// closed with a protocol error.
pub const MAX_OUTSTANDING_REQUESTS: usize = 256;

/// Asks for bytes `offset .. offset + len` of the chunk `hash` of a share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// The request's id, chosen by the asker, echoed in the answer.
    #[serde(rename = "i")]
    pub id: u32,
    /// The chunk's SHA-256.
    #[serde(rename = "h", with = "serde_bytes")]
    pub hash: Hash,
    /// The first byte wanted, within the chunk.
    #[serde(rename = "o")]
    pub offset: u32,
    /// How many bytes (1 to [`MAX_PIECE`]).
    #[serde(rename = "n")]
    pub len: u32,
}

/// The bytes asked for by request `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// The request.
    #[serde(rename = "i")]
    pub id: u32,
    /// Exactly the bytes asked for.
    #[serde(rename = "d", with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The peer does not have (or no longer has) the chunk of request `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The request.
    #[serde(rename = "i")]
    pub id: u32,
}

/// How many paths of a share the sender's disk still lacks (0: its folder holds everything
/// its database says). Sent when it changes and when a session starts, so a device checking
/// in can wait until its peers also hold what it brought.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// Paths not yet on the sender's disk as the database has them.
    #[serde(rename = "p")]
    pub pending: u64,
}

/// A chunk-transfer message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilesMessage {
    /// `0`
    Get(Get),
    /// `1`
    Data(Data),
    /// `2`
    Missing(Missing),
    /// `3`
    Progress(Progress),
}

impl FilesMessage {
    /// Encodes the message as an extension payload.
    pub fn encode(&self) -> Bytes {
        let bytes = match self {
            FilesMessage::Get(m) => codec::encode(&(0u8, m)),
            FilesMessage::Data(m) => codec::encode(&(1u8, m)),
            FilesMessage::Missing(m) => codec::encode(&(2u8, m)),
            FilesMessage::Progress(m) => codec::encode(&(3u8, m)),
        };
        Bytes::from(bytes)
    }

    /// Decodes an extension payload; `Ok(None)` for a type this version does not know.
    pub fn decode(payload: &[u8]) -> Result<Option<FilesMessage>, ProtocolViolation> {
        let (kind, _): (u64, serde::de::IgnoredAny) = codec::decode(payload)?;
        Ok(Some(match kind {
            0 => {
                let m = codec::decode::<(u8, Get)>(payload)?.1;
                if m.len == 0 || m.len > MAX_PIECE {
                    return Err(ProtocolViolation::MalformedMessage {
                        detail: format!("chunk request of {} bytes (1 to {MAX_PIECE})", m.len),
                    });
                }
                FilesMessage::Get(m)
            }
            1 => FilesMessage::Data(codec::decode::<(u8, Data)>(payload)?.1),
            2 => FilesMessage::Missing(codec::decode::<(u8, Missing)>(payload)?.1),
            3 => FilesMessage::Progress(codec::decode::<(u8, Progress)>(payload)?.1),
            _ => return Ok(None),
        }))
    }
}
