//! The byte encodings that carry a device's Ed25519 key through TLS: the RFC 7250 raw public key
//! (a DER `SubjectPublicKeyInfo`) and the PKCS#8 private key rustls loads.
//!
//! Both encodings of an Ed25519 key are a fixed prefix followed by the 32 key bytes, so they are
//! written and parsed by comparing prefixes; no DER parser is involved (`spec/transport.md` §
//! Keys).

use std::sync::Arc;

use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::identity::{DeviceId, PUBLIC_KEY_BYTES};
use rustls::crypto::ring::sign::any_eddsa_type;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410 § 4): `SEQUENCE(42) {
/// SEQUENCE(5) { OID 1.3.101.112 }, BIT STRING(33) with no unused bits }`; the 32-byte public
/// key follows.
pub const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an Ed25519 `SubjectPublicKeyInfo`: the prefix and the 32-byte key.
pub const SPKI_LEN: usize = SPKI_PREFIX.len() + PUBLIC_KEY_BYTES;

/// The DER prefix of a PKCS#8 v1 Ed25519 private key (RFC 8410 § 7): `SEQUENCE(46) { INTEGER 0,
/// SEQUENCE(5) { OID 1.3.101.112 }, OCTET STRING(34) { OCTET STRING(32) } }`; the 32-byte seed
/// follows.
pub(crate) const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The raw public key (RFC 7250) that stands for `public_key` in the TLS `Certificate`
/// message: its DER `SubjectPublicKeyInfo`.
pub fn spki(public_key: &[u8; PUBLIC_KEY_BYTES]) -> [u8; SPKI_LEN] {
    let mut out = [0; SPKI_LEN];
    out[..SPKI_PREFIX.len()].copy_from_slice(&SPKI_PREFIX);
    out[SPKI_PREFIX.len()..].copy_from_slice(public_key);
    out
}

/// The Ed25519 public key inside `spki`, if `spki` is exactly an Ed25519
/// `SubjectPublicKeyInfo` ([`SPKI_PREFIX`] and 32 bytes). Anything else (another algorithm, an
/// X.509 certificate, trailing bytes, a non-minimal DER length) is `None`.
pub fn public_key_from_spki(spki: &[u8]) -> Option<[u8; PUBLIC_KEY_BYTES]> {
    spki.strip_prefix(&SPKI_PREFIX)?.try_into().ok()
}

/// The key a peer proved it holds during the TLS handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PeerKey {
    /// The peer's device ID: SHA-256 of [`PeerKey::public_key`].
    pub device_id: DeviceId,
    /// The peer's Ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_BYTES],
}

impl PeerKey {
    /// The peer key whose public key is `public_key`.
    pub fn from_public_key(public_key: [u8; PUBLIC_KEY_BYTES]) -> PeerKey {
        PeerKey {
            device_id: DeviceId::from_public_key(&public_key),
            public_key,
        }
    }

    /// The peer key carried by a raw public key `spki`, if it is an Ed25519 one.
    pub fn from_spki(spki: &[u8]) -> Option<PeerKey> {
        public_key_from_spki(spki).map(PeerKey::from_public_key)
    }

    /// The peer key in the certificate list a TLS stack reports for the peer (for instance
    /// quinn's `peer_identity`, a `Vec<CertificateDer>`): exactly one entry, an Ed25519 raw
    /// public key.
    pub fn from_certificates(certificates: &[CertificateDer<'_>]) -> Option<PeerKey> {
        match certificates {
            [only] => PeerKey::from_spki(only.as_ref()),
            _ => None,
        }
    }
}

/// The PKCS#8 v1 DER encoding of the Ed25519 key whose seed is `seed`.
fn pkcs8(seed: &[u8; 32]) -> Zeroizing<[u8; PKCS8_PREFIX.len() + 32]> {
    let mut out = Zeroizing::new([0u8; PKCS8_PREFIX.len() + 32]);
    out[..PKCS8_PREFIX.len()].copy_from_slice(&PKCS8_PREFIX);
    out[PKCS8_PREFIX.len()..].copy_from_slice(seed);
    out
}

/// `key` as rustls presents it: the raw public key as the one "certificate", and the signing key
/// loaded by the ring provider from PKCS#8.
pub(crate) fn certified_key(key: &DeviceKey) -> Arc<CertifiedKey> {
    let pkcs8 = pkcs8(&Zeroizing::new(key.secret_bytes()));
    // Invariant: `pkcs8` is a well-formed PKCS#8 v1 Ed25519 key (fixed prefix and a 32-byte
    // seed), and every 32-byte string is a valid Ed25519 seed, so ring cannot refuse it. The
    // unit test `certified_key_matches_device_key` covers the encoding.
    let signing_key = any_eddsa_type(&PrivatePkcs8KeyDer::from(&pkcs8[..]))
        .expect("a PKCS#8 v1 Ed25519 key built from a 32-byte seed always loads");
    let certificate = CertificateDer::from(spki(&key.public_key()).to_vec());
    Arc::new(CertifiedKey::new(vec![certificate], signing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trip() {
        let key = [0x42; 32];
        let encoded = spki(&key);
        assert_eq!(encoded.len(), 44);
        assert_eq!(public_key_from_spki(&encoded), Some(key));
        // One byte short, one byte long, and a different algorithm (X25519, OID 1.3.101.110).
        assert_eq!(public_key_from_spki(&encoded[..43]), None);
        let mut long = encoded.to_vec();
        long.push(0);
        assert_eq!(public_key_from_spki(&long), None);
        let mut x25519 = encoded;
        x25519[8] = 0x6e;
        assert_eq!(public_key_from_spki(&x25519), None);
    }

    #[test]
    fn certified_key_matches_device_key() {
        let key = DeviceKey::from_secret(&[7; 32]);
        let certified = certified_key(&key);
        // ring derives the public key from the seed; it must be the key proto derives.
        let from_ring = certified
            .key
            .public_key()
            .expect("ring's Ed25519 keys report their public key");
        assert_eq!(from_ring.as_ref(), spki(&key.public_key()).as_slice());
        assert_eq!(certified.cert.len(), 1);
        assert_eq!(certified.cert[0].as_ref(), from_ring.as_ref());
        assert_eq!(
            PeerKey::from_certificates(&certified.cert),
            Some(PeerKey::from_public_key(key.public_key()))
        );
        assert_eq!(
            PeerKey::from_public_key(key.public_key()).device_id,
            key.device_id()
        );
    }

    fn hex_field(case: &serde_json::Value, field: &str) -> Vec<u8> {
        hex::decode(case[field].as_str().expect("vector fields are strings"))
            .expect("vector fields are hex")
    }

    /// `spec/vectors/transport.json`, written by an independent implementation
    /// (`generate_transport.py`, OpenSSL through Python's `cryptography`).
    #[test]
    fn spec_vectors() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../spec/vectors/transport.json"))
                .expect("transport.json is JSON");
        let keys = vectors["keys"].as_array().expect("a list of keys");
        assert!(keys.len() >= 3);
        for case in keys {
            let name = &case["name"];
            let seed: [u8; 32] = hex_field(case, "seed").try_into().expect("32-byte seed");
            let key = DeviceKey::from_secret(&seed);
            assert_eq!(
                key.public_key().to_vec(),
                hex_field(case, "public_key"),
                "{name}"
            );
            assert_eq!(
                spki(&key.public_key()).to_vec(),
                hex_field(case, "spki"),
                "{name}"
            );
            assert_eq!(pkcs8(&seed).to_vec(), hex_field(case, "pkcs8"), "{name}");
            assert_eq!(
                key.device_id().as_bytes().to_vec(),
                hex_field(case, "device_id"),
                "{name}"
            );
            let peer = PeerKey::from_spki(&hex_field(case, "spki")).expect("an Ed25519 SPKI");
            assert_eq!(peer.device_id, key.device_id(), "{name}");
            // What ring loads from the PKCS#8 bytes presents the vector's SPKI.
            let certified = certified_key(&key);
            let loaded = certified.key.public_key().expect("Ed25519 keys report it");
            assert_eq!(
                loaded.as_ref(),
                hex_field(case, "spki").as_slice(),
                "{name}"
            );
        }
        let refused = vectors["not_ed25519"].as_array().expect("a list");
        assert!(refused.len() >= 5);
        for case in refused {
            let bytes = hex_field(case, "spki");
            assert_eq!(public_key_from_spki(&bytes), None, "{}", case["name"]);
        }
    }
}
