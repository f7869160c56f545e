//! Device keys and signatures (Ed25519), behind a small surface so the rest of proto never
//! names the crypto library.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::DeviceId;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        let arr: [u8; SIGNATURE_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))?;
        Ok(Signature(arr))
    }
}

/// A device's signing key. The secret never leaves this type except through
/// [`DeviceKey::secret_bytes`] (for the store to persist it).
pub struct DeviceKey {
    key: ed25519_dalek::SigningKey,
    id: DeviceId,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Clone for DeviceKey {
    fn clone(&self) -> Self {
        DeviceKey::from_secret(&self.key.to_bytes())
    }
}

impl DeviceKey {
    /// The key whose secret is `secret` (32 random bytes from the caller's CSPRNG).
    pub fn from_secret(secret: &[u8; 32]) -> DeviceKey {
        let key = ed25519_dalek::SigningKey::from_bytes(secret);
        let id = DeviceId::from_public_key(&key.verifying_key().to_bytes());
        DeviceKey { key, id }
    }

    /// The secret, to persist.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The device ID: the hash of the public key.
    pub fn device_id(&self) -> DeviceId {
        self.id
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.key.sign(message).to_bytes())
    }
}

/// Whether `signature` over `message` verifies with `public_key` (strict verification: no
/// malleable signatures, no small-order keys).
pub fn verify_signature(public_key: &[u8; 32], message: &[u8], signature: &Signature) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(message, &sig).is_ok()
}
