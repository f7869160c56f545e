//! The database's messages, carried as payloads of the session extension
//! [`DB_EXTENSION`](super::DB_EXTENSION).
//!
//! Each payload is one CBOR array `[type, body]` like the core messages; bodies are maps with
//! one-letter keys (unknown keys ignored), unknown types ignored.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::record::Record;
use super::vv::VersionVector;
use crate::error::ProtocolViolation;
use crate::wire::codec;

/// A share as named on the wire: the first 8 bytes of its ID, enough to tell apart the few
/// shares two devices have in common.
pub type ShareTag = u64;

/// Asks the peer for every change after its local sequence number `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// The peer's index ID as the requester last saw it (0: never).
    #[serde(rename = "i")]
    pub index: u64,
    /// The last of the peer's sequence numbers the requester has (0: none).
    #[serde(rename = "a")]
    pub after: u64,
}

/// A batch of changes, in the sender's sequence order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// The sender's index ID.
    #[serde(rename = "i")]
    pub index: u64,
    /// `(sender's sequence number, record)` pairs, ascending.
    #[serde(rename = "r")]
    pub records: Vec<(u64, Record)>,
}

/// The catch-up is complete up to `seq`; live changes follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtUp {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// The sender's index ID.
    #[serde(rename = "i")]
    pub index: u64,
    /// The sender's latest sequence number.
    #[serde(rename = "q")]
    pub seq: u64,
}

/// A record the receiver refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// The key.
    #[serde(rename = "k")]
    pub key: String,
    /// The refused record's writer counter and writer.
    #[serde(rename = "d")]
    pub dot: super::vv::Dot,
    /// The stable error code (`RecordError::code`).
    #[serde(rename = "e")]
    pub error: String,
}

/// The sender has collected tombstones the receiver may not have seen: a **reset** follows
/// (`spec/database.md` § 9.7). The sender's feed is streamed again from its start, then a
/// `CaughtUp`; every version the receiver holds that `forgotten` dominates and that the stream
/// did not contain was deleted, and is dropped when that `CaughtUp` arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forgotten {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// The sender's index ID.
    #[serde(rename = "i")]
    pub index: u64,
    /// The merge of the version vectors of every version the sender has forgotten.
    #[serde(rename = "f")]
    pub forgotten: VersionVector,
}

/// The sender's membership records (`spec/database.md` § Membership) that are newer than
/// the receiver's cursor, sent before the feed that follows a `SyncRequest`, so that the
/// receiver knows every writer (including removed ones, and up to where their records stay
/// valid) before it judges their records. The same records also come in the feed, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The share.
    #[serde(rename = "s")]
    pub share: ShareTag,
    /// The membership records.
    #[serde(rename = "r")]
    pub records: Vec<Record>,
}

/// A database message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbMessage {
    /// `0`
    SyncRequest(SyncRequest),
    /// `1`
    Records(Records),
    /// `2`
    CaughtUp(CaughtUp),
    /// `3`
    Refused(Refused),
    /// `4`
    Forgotten(Forgotten),
    /// `5`
    Members(Members),
}

impl DbMessage {
    /// The share the message is about.
    pub fn share(&self) -> ShareTag {
        match self {
            DbMessage::SyncRequest(m) => m.share,
            DbMessage::Records(m) => m.share,
            DbMessage::CaughtUp(m) => m.share,
            DbMessage::Refused(m) => m.share,
            DbMessage::Forgotten(m) => m.share,
            DbMessage::Members(m) => m.share,
        }
    }

    /// Encodes the message as an extension payload.
    pub fn encode(&self) -> Bytes {
        let bytes = match self {
            DbMessage::SyncRequest(m) => codec::encode(&(0u8, m)),
            DbMessage::Records(m) => codec::encode(&(1u8, m)),
            DbMessage::CaughtUp(m) => codec::encode(&(2u8, m)),
            DbMessage::Refused(m) => codec::encode(&(3u8, m)),
            DbMessage::Forgotten(m) => codec::encode(&(4u8, m)),
            DbMessage::Members(m) => codec::encode(&(5u8, m)),
        };
        Bytes::from(bytes)
    }

    /// Decodes an extension payload; `Ok(None)` for a type this version does not know.
    pub fn decode(payload: &[u8]) -> Result<Option<DbMessage>, ProtocolViolation> {
        let (kind, _): (u64, serde::de::IgnoredAny) = codec::decode(payload)?;
        Ok(Some(match kind {
            0 => DbMessage::SyncRequest(codec::decode::<(u8, SyncRequest)>(payload)?.1),
            1 => DbMessage::Records(codec::decode::<(u8, Records)>(payload)?.1),
            2 => DbMessage::CaughtUp(codec::decode::<(u8, CaughtUp)>(payload)?.1),
            3 => DbMessage::Refused(codec::decode::<(u8, Refused)>(payload)?.1),
            4 => DbMessage::Forgotten(codec::decode::<(u8, Forgotten)>(payload)?.1),
            5 => DbMessage::Members(codec::decode::<(u8, Members)>(payload)?.1),
            _ => return Ok(None),
        }))
    }
}
