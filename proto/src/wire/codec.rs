//! The CBOR codec: the only module that names the CBOR library.
//!
//! serde_cbor is archived upstream; keeping it behind these two functions means replacing it
//! (with ciborium or minicbor) touches one file, and the vectors in `spec/vectors/` prove the
//! replacement produces the same bytes.
//!
//! Encoding rules (`spec/wire.md` § Encoding): definite lengths, shortest integer forms, struct
//! fields as text keys in declaration order. Decoding accepts any well-formed CBOR of the right
//! shape, ignores unknown map keys, and rejects trailing bytes.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolViolation;

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing into a Vec cannot fail for our types: CBOR can express every map key they
    // use (text, or byte strings in version vectors), no sequence has an unknown length, and
    // Vec's writer is infallible.
    serde_cbor::to_vec(value).expect("CBOR encoding of a proto type cannot fail")
}

/// Decodes one CBOR item that must fill `bytes` exactly.
pub fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ProtocolViolation> {
    serde_cbor::from_slice(bytes).map_err(|e| ProtocolViolation::MalformedMessage {
        detail: e.to_string(),
    })
}
