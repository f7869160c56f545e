//! Membership as replicated, signed state ("authorization is in the data").
//!
//! Who belongs to a share is kept in the share's own database, under the reserved keys
//! [`MEMBERS_PREFIX`]`<device ID in hex>`, one record per device, written (and so signed) by a
//! read-write member. A replica starts from the members it was configured with (the creator,
//! or the list a pairing grant carried) and applies every membership record it holds or
//! receives on top. A removal is not a deletion: it is a record saying up to which of the
//! removed device's own write counters its records stay valid, so what it wrote while it was
//! a member still replicates to devices that join later, and nothing it writes afterwards is
//! accepted anywhere (`spec/database.md` § Membership).

use serde::{Deserialize, Serialize};

use super::replica::{Access, Member};
use crate::error::ProtocolViolation;
use crate::identity::DeviceId;
use crate::wire::codec;

/// Keys of membership records start with this; applications may not write under it.
pub const MEMBERS_PREFIX: &str = "!members/";

/// The key of `device`'s membership record.
pub fn member_key(device: &DeviceId) -> String {
    let mut key = String::with_capacity(MEMBERS_PREFIX.len() + 64);
    key.push_str(MEMBERS_PREFIX);
    for b in device.as_bytes() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// Whether `key` is reserved for membership records.
pub fn is_member_key(key: &str) -> bool {
    key.starts_with(MEMBERS_PREFIX)
}

/// A device's standing in a share, as one membership record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// A member with this access.
    Member(Member),
    /// Removed; its records with a write counter up to `until` stay valid.
    Removed {
        /// The device's public key.
        public_key: [u8; 32],
        /// Its last write counter the remover had seen.
        until: u64,
    },
}

impl Standing {
    /// The device's public key.
    pub fn public_key(&self) -> [u8; 32] {
        match self {
            Standing::Member(m) => m.public_key,
            Standing::Removed { public_key, .. } => *public_key,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Doc {
    /// The device's Ed25519 public key.
    #[serde(rename = "k", with = "serde_bytes")]
    key: [u8; 32],
    /// 0 read-write, 1 read-only, 2 removed.
    #[serde(rename = "a")]
    access: u8,
    /// For a removal: the last write counter of the device that stays valid.
    #[serde(rename = "u", default, skip_serializing_if = "is_zero")]
    until: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The document of a membership record.
pub fn encode(standing: &Standing) -> Vec<u8> {
    let doc = match standing {
        Standing::Member(m) => Doc {
            key: m.public_key,
            access: match m.access {
                Access::ReadWrite => 0,
                Access::ReadOnly => 1,
            },
            until: 0,
        },
        Standing::Removed { public_key, until } => Doc {
            key: *public_key,
            access: 2,
            until: *until,
        },
    };
    codec::encode(&doc)
}

/// Reads the membership record stored under `key`: the document must decode and name the
/// device the key names.
pub fn decode(key: &str, value: &[u8]) -> Result<(DeviceId, Standing), ProtocolViolation> {
    let bad = |detail: &str| ProtocolViolation::MalformedMessage {
        detail: format!("membership record {key:?}: {detail}"),
    };
    let doc: Doc = codec::decode(value)?;
    let device = DeviceId::from_public_key(&doc.key);
    if key != member_key(&device) {
        return Err(bad("the key does not name the device of the public key"));
    }
    let standing = match doc.access {
        0 | 1 => Standing::Member(Member {
            public_key: doc.key,
            access: if doc.access == 0 {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            },
        }),
        2 => Standing::Removed {
            public_key: doc.key,
            until: doc.until,
        },
        other => return Err(bad(&format!("unknown access {other}"))),
    };
    Ok((device, standing))
}
