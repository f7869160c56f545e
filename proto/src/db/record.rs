//! Records: one signed version of one key.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::vv::{Dot, VersionVector};
use crate::crypto::{DeviceKey, SIGNATURE_LEN, Signature, verify_signature};
use crate::identity::DeviceId;

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest document (its CBOR encoding), in bytes.
pub const MAX_VALUE_LEN: usize = 512 * 1024;
/// The most writers one version vector may name.
pub const MAX_VERSION_ENTRIES: usize = 256;
/// Domain separation for record signatures.
pub const RECORD_SIGNATURE_CONTEXT: &[u8] = b"clearskies/db/record/v1\0";

/// A share's identity.
pub type ShareId = [u8; 32];

/// One version of one key, signed by its writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The key.
    #[serde(rename = "k")]
    pub key: String,
    /// The document as CBOR, or `None` for a deletion (tombstone).
    #[serde(rename = "v", with = "opt_bytes")]
    pub value: Option<Bytes>,
    /// Everything this version supersedes, its own dot included.
    #[serde(rename = "vv")]
    pub version: VersionVector,
    /// The write that made this version.
    #[serde(rename = "d")]
    pub dot: Dot,
    /// Hybrid logical time of the write, microseconds since the Unix epoch; breaks ties only.
    #[serde(rename = "t")]
    pub hlc: u64,
    /// The writer's Ed25519 signature over [`Record::signed_bytes`].
    #[serde(rename = "s")]
    pub signature: Signature,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The key is empty or longer than `MAX_KEY_LEN`.
    BadKey,
    /// The document is larger than `MAX_VALUE_LEN`.
    ValueTooLarge,
    /// The version vector names more than `MAX_VERSION_ENTRIES` writers, or does not contain
    /// the record's own dot exactly.
    BadVersion,
    /// The writer is not a member of the share.
    UnknownWriter,
    /// The writer is a read-only member.
    ReadOnlyWriter,
    /// The signature does not verify.
    BadSignature,
    /// A membership record whose document does not decode or does not name the device its
    /// key names.
    BadMembership,
}

impl RecordError {
    /// The stable name of this error.
    pub fn code(&self) -> &'static str {
        match self {
            RecordError::BadKey => "bad-key",
            RecordError::ValueTooLarge => "value-too-large",
            RecordError::BadVersion => "bad-version",
            RecordError::UnknownWriter => "unknown-writer",
            RecordError::ReadOnlyWriter => "read-only-writer",
            RecordError::BadSignature => "bad-signature",
            RecordError::BadMembership => "bad-membership",
        }
    }
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            RecordError::BadKey => "key is empty or too long",
            RecordError::ValueTooLarge => "document is too large",
            RecordError::BadVersion => "version vector is malformed",
            RecordError::UnknownWriter => "writer is not a member of the share",
            RecordError::ReadOnlyWriter => "writer is a read-only member",
            RecordError::BadSignature => "signature does not verify",
            RecordError::BadMembership => "membership record is malformed",
        };
        f.write_str(text)
    }
}

impl Record {
    /// Creates and signs a record.
    pub fn sign(
        share: &ShareId,
        key: String,
        value: Option<Bytes>,
        version: VersionVector,
        dot: Dot,
        hlc: u64,
        signer: &DeviceKey,
    ) -> Record {
        let mut record = Record {
            key,
            value,
            version,
            dot,
            hlc,
            signature: Signature([0; SIGNATURE_LEN]),
        };
        record.signature = signer.sign(&record.signed_bytes(share));
        record
    }

    /// Whether this version is a deletion.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The exact bytes the writer signs (`spec/database.md` § Signatures).
    pub fn signed_bytes(&self, share: &ShareId) -> Vec<u8> {
        let value_len = self.value.as_ref().map_or(0, |v| v.len());
        let mut out = Vec::with_capacity(
            RECORD_SIGNATURE_CONTEXT.len()
                + 32
                + 4
                + self.key.len()
                + 5
                + value_len
                + 4
                + self.version.len() * 40
                + 48,
        );
        out.extend_from_slice(RECORD_SIGNATURE_CONTEXT);
        out.extend_from_slice(share);
        // Lengths fit in u32: checked against MAX_KEY_LEN / MAX_VALUE_LEN / MAX_VERSION_ENTRIES
        // before any record is signed or verified.
        out.extend_from_slice(&(self.key.len() as u32).to_be_bytes());
        out.extend_from_slice(self.key.as_bytes());
        match &self.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
        out.extend_from_slice(&(self.version.len() as u32).to_be_bytes());
        for (writer, counter) in self.version.iter() {
            out.extend_from_slice(writer.as_bytes());
            out.extend_from_slice(&counter.to_be_bytes());
        }
        out.extend_from_slice(self.dot.writer.as_bytes());
        out.extend_from_slice(&self.dot.counter.to_be_bytes());
        out.extend_from_slice(&self.hlc.to_be_bytes());
        out
    }

    /// Checks the record's shape (not its signature).
    pub fn check_shape(&self) -> Result<(), RecordError> {
        if self.key.is_empty() || self.key.len() > MAX_KEY_LEN {
            return Err(RecordError::BadKey);
        }
        if self.value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_LEN) {
            return Err(RecordError::ValueTooLarge);
        }
        if self.version.len() > MAX_VERSION_ENTRIES
            || !self.version.is_canonical()
            || self.dot.counter == 0
            || self.version.get(&self.dot.writer) != self.dot.counter
        {
            return Err(RecordError::BadVersion);
        }
        Ok(())
    }

    /// Checks shape and signature against the writer's public key.
    pub fn verify(&self, share: &ShareId, public_key: &[u8; 32]) -> Result<(), RecordError> {
        self.check_shape()?;
        if DeviceId::from_public_key(public_key) != self.dot.writer {
            return Err(RecordError::BadSignature);
        }
        if verify_signature(public_key, &self.signed_bytes(share), &self.signature) {
            Ok(())
        } else {
            Err(RecordError::BadSignature)
        }
    }
}

/// `Option<Bytes>` as a CBOR byte string or null.
mod opt_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let v: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        Ok(v.map(|b| Bytes::from(b.into_vec())))
    }
}
