//! Device identity: the [`DeviceId`] that names a device's Ed25519 key.
//!
//! `spec/identity.md` § Device IDs is normative. Each device holds an Ed25519 key pair; its
//! device ID is the SHA-256 hash of the 32-byte public key. Peers pin device IDs (never a CA),
//! and people compare or type them, so the text form carries check characters: base32 in four
//! groups of 13 symbols, each followed by its Luhn mod 32 check character, shown in eight
//! blocks of seven separated by dashes.
//!
//! proto does not do Ed25519 itself; the caller passes the public key's bytes.
//!
//! ```
//! use clearskies_proto::identity::DeviceId;
//!
//! let id = DeviceId::from_bytes([0; 32]);
//! let text = id.to_string();
//! assert_eq!(text, "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA");
//! assert_eq!(text.to_lowercase().replace('-', " ").parse::<DeviceId>(), Ok(id));
//! ```

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::text;

/// Bytes of a device ID (a SHA-256 hash).
pub const DEVICE_ID_BYTES: usize = 32;
/// Bytes of the Ed25519 public key a device ID is computed from.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Check groups in the text form.
pub const DEVICE_ID_GROUPS: usize = 4;
/// Base32 symbols of the ID in each check group (4 × 13 = 52 = the unpadded base32 of 32 bytes).
pub const DEVICE_ID_GROUP_SYMBOLS: usize = 13;
/// Characters of the text form without separators: 4 groups of 13 symbols and 1 check character.
pub const DEVICE_ID_CHARS: usize = DEVICE_ID_GROUPS * (DEVICE_ID_GROUP_SYMBOLS + 1);
/// Characters per dash-separated block in the displayed form.
pub const DEVICE_ID_BLOCK: usize = 7;
/// Length of the displayed form: 8 blocks of 7 and 7 dashes.
pub const DEVICE_ID_TEXT_LEN: usize = DEVICE_ID_CHARS + DEVICE_ID_CHARS / DEVICE_ID_BLOCK - 1;

/// A device's identity: `SHA-256(Ed25519 public key)`.
///
/// Ordered and compared by its bytes. Serialized (serde) as a 32-byte byte string; displayed
/// and parsed in the checked text form of `spec/identity.md`; [`Debug`](fmt::Debug) shows
/// only the first block, enough to tell devices apart in logs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(#[serde(with = "serde_bytes")] [u8; DEVICE_ID_BYTES]);

impl DeviceId {
    /// The device ID of an Ed25519 public key, given as its 32 bytes (RFC 8032 encoding).
    pub fn from_public_key(public_key: &[u8; PUBLIC_KEY_BYTES]) -> DeviceId {
        DeviceId(Sha256::digest(public_key).into())
    }

    /// The device ID with these bytes (the hash itself, as stored or received).
    pub const fn from_bytes(bytes: [u8; DEVICE_ID_BYTES]) -> DeviceId {
        DeviceId(bytes)
    }

    /// The 32 bytes of the hash.
    pub const fn as_bytes(&self) -> &[u8; DEVICE_ID_BYTES] {
        &self.0
    }

    /// The 56 characters of the text form, without dashes.
    fn checked_symbols(&self) -> String {
        let data = text::base32_encode(&self.0);
        let mut out = String::with_capacity(DEVICE_ID_CHARS);
        for group in data.as_bytes().chunks(DEVICE_ID_GROUP_SYMBOLS) {
            let values = group
                .iter()
                .filter_map(|&b| text::symbol_value(char::from(b)));
            out.extend(group.iter().map(|&b| char::from(b)));
            out.push(text::symbol(text::luhn_mod32_value(values)));
        }
        out
    }

    /// Parses a device ID as a person may type or paste it: lowercase, whitespace and dashes
    /// anywhere around or between characters, and `0`/`1` for `O`/`L` are accepted.
    /// The check characters must all match: a mismatch is a [`DeviceIdError::Typo`] naming the
    /// first group that has one.
    pub fn parse(input: &str) -> Result<DeviceId, DeviceIdError> {
        let symbols = text::normalize(input).map_err(|e| DeviceIdError::InvalidCharacter {
            ch: e.ch,
            position: e.position,
        })?;
        if symbols.len() != DEVICE_ID_CHARS {
            return Err(DeviceIdError::WrongLength {
                found: symbols.len(),
            });
        }
        let mut data = String::with_capacity(DEVICE_ID_GROUPS * DEVICE_ID_GROUP_SYMBOLS);
        // `normalize` returns ASCII only, so byte offsets are character offsets.
        for (i, group) in symbols
            .as_bytes()
            .chunks(DEVICE_ID_GROUP_SYMBOLS + 1)
            .enumerate()
        {
            let (body, check) = group.split_at(DEVICE_ID_GROUP_SYMBOLS);
            let body = core::str::from_utf8(body).map_err(|_| DeviceIdError::NonCanonical)?;
            if text::luhn_mod32(body) != check.first().map(|&c| char::from(c)) {
                return Err(DeviceIdError::Typo { group: i + 1 });
            }
            data.push_str(body);
        }
        let bytes = text::base32_decode(&data).map_err(|_| DeviceIdError::NonCanonical)?;
        let bytes = <[u8; DEVICE_ID_BYTES]>::try_from(bytes.as_slice())
            .map_err(|_| DeviceIdError::NonCanonical)?;
        Ok(DeviceId(bytes))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbols = self.checked_symbols();
        for (i, block) in symbols.as_bytes().chunks(DEVICE_ID_BLOCK).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            for &b in block {
                write!(f, "{}", char::from(b))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first block is the first 35 bits of the hash: plenty to tell devices apart.
        let symbols = text::base32_encode(&self.0[..5]);
        write!(f, "DeviceId({})", &symbols[..DEVICE_ID_BLOCK])
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<DeviceId, DeviceIdError> {
        DeviceId::parse(s)
    }
}

/// Why a text is not a device ID. Each message tells the person what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceIdError {
    /// A character that no device ID contains (after the leniency rules).
    InvalidCharacter {
        /// The character as typed.
        ch: char,
        /// Its 1-based position in the input as given, in characters.
        position: usize,
    },
    /// Not [`DEVICE_ID_CHARS`] characters, not counting separators.
    WrongLength {
        /// How many there are.
        found: usize,
    },
    /// A check character does not match: a character of this group was mistyped.
    Typo {
        /// The group, 1 to 4: characters `14 * (group - 1) + 1 ..= 14 * group` without
        /// dashes, blocks `2 * group - 1` and `2 * group` of the displayed form.
        group: usize,
    },
    /// All check characters match, but the last symbol of the ID has unused bits set: the text
    /// was not written by an encoder.
    NonCanonical,
}

impl DeviceIdError {
    /// The stable, kebab-case name of this error, as used in `spec/vectors/device_ids.json`.
    pub fn code(&self) -> &'static str {
        match self {
            DeviceIdError::InvalidCharacter { .. } => "invalid-character",
            DeviceIdError::WrongLength { .. } => "wrong-length",
            DeviceIdError::Typo { .. } => "typo",
            DeviceIdError::NonCanonical => "non-canonical",
        }
    }
}

impl fmt::Display for DeviceIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceIdError::InvalidCharacter { ch, position } => write!(
                f,
                "the device ID cannot contain {ch:?} (character {position}): device IDs use \
                 only the letters A-Z and the digits 2-7; check it letter by letter"
            ),
            DeviceIdError::WrongLength { found: 0 } => write!(f, "no device ID given"),
            DeviceIdError::WrongLength { found } => write!(
                f,
                "the device ID has {found} letters and digits, but device IDs have \
                 {DEVICE_ID_CHARS} (8 blocks of 7): check that you copied all of it"
            ),
            DeviceIdError::Typo { group } => write!(
                f,
                "the device ID has a typo in blocks {} and {} (of 8): check them letter by letter",
                2 * group - 1,
                2 * group
            ),
            DeviceIdError::NonCanonical => write!(
                f,
                "this is not a valid device ID (its last block is impossible): copy it again \
                 from the device"
            ),
        }
    }
}

impl std::error::Error for DeviceIdError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    #[test]
    fn text_shape() {
        let text = DeviceId::from_bytes(counting()).to_string();
        assert_eq!(text.len(), DEVICE_ID_TEXT_LEN);
        assert_eq!(DEVICE_ID_TEXT_LEN, 63);
        assert_eq!(text.matches('-').count(), 7);
        assert!(text.split('-').all(|b| b.len() == DEVICE_ID_BLOCK));
        // The data symbols, with every 14th (a check character) removed, are plain base32.
        let symbols: String = text.chars().filter(|&c| c != '-').collect();
        let data: String = symbols
            .chars()
            .enumerate()
            .filter(|(i, _)| i % 14 != 13)
            .map(|(_, c)| c)
            .collect();
        assert_eq!(data, text::base32_encode(&counting()));
        assert_eq!(DeviceId::parse(&text), Ok(DeviceId::from_bytes(counting())));
    }

    #[test]
    fn from_public_key_is_sha256() {
        let key = [7u8; 32];
        let id = DeviceId::from_public_key(&key);
        assert_eq!(id.as_bytes(), &<[u8; 32]>::from(Sha256::digest(key)));
        assert_ne!(id, DeviceId::from_bytes(key));
    }

    #[test]
    fn debug_is_the_first_block() {
        let id = DeviceId::from_bytes(counting());
        let first = id.to_string()[..7].to_owned();
        assert_eq!(format!("{id:?}"), format!("DeviceId({first})"));
    }

    #[test]
    fn typo_names_the_group() {
        let id = DeviceId::from_bytes(counting());
        let symbols: Vec<char> = id.to_string().chars().filter(|&c| c != '-').collect();
        for i in 0..DEVICE_ID_CHARS {
            let mut changed = symbols.clone();
            changed[i] = if changed[i] == 'B' { 'C' } else { 'B' };
            let changed: String = changed.into_iter().collect();
            assert_eq!(
                DeviceId::parse(&changed),
                Err(DeviceIdError::Typo { group: i / 14 + 1 }),
                "character {i}"
            );
        }
        assert_eq!(
            DeviceIdError::Typo { group: 2 }.to_string(),
            "the device ID has a typo in blocks 3 and 4 (of 8): check them letter by letter"
        );
    }

    #[test]
    fn parse_errors() {
        let text = DeviceId::from_bytes(counting()).to_string();
        assert_eq!(
            DeviceId::parse(&text[..62]),
            Err(DeviceIdError::WrongLength { found: 55 })
        );
        assert_eq!(
            DeviceId::parse(""),
            Err(DeviceIdError::WrongLength { found: 0 })
        );
        let bad = format!(" {}!{}", &text[..10], &text[10..]);
        assert_eq!(
            DeviceId::parse(&bad),
            Err(DeviceIdError::InvalidCharacter {
                ch: '!',
                position: 12
            })
        );
        // The last data symbol carries 4 unused bits: "B" (1) sets one, with a matching check.
        let mut symbols: String = text.chars().filter(|&c| c != '-').collect();
        symbols.truncate(42);
        let last = format!("{}B", "A".repeat(12));
        symbols.push_str(&last);
        symbols.push(text::luhn_mod32(&last).unwrap());
        assert_eq!(DeviceId::parse(&symbols), Err(DeviceIdError::NonCanonical));
    }

    #[test]
    fn ordered_by_bytes() {
        let a = DeviceId::from_bytes([0; 32]);
        let mut b = [0; 32];
        b[31] = 1;
        let b = DeviceId::from_bytes(b);
        let c = DeviceId::from_bytes([0xff; 32]);
        assert!(a < b && b < c);
    }

    #[test]
    fn serde_as_32_bytes() {
        let id = DeviceId::from_bytes(counting());
        let cbor = serde_cbor::to_vec(&id).unwrap();
        // CBOR byte string of length 32: major type 2, length in one following byte.
        assert_eq!(cbor[..2], [0x58, 32]);
        assert_eq!(cbor[2..], counting());
        assert_eq!(serde_cbor::from_slice::<DeviceId>(&cbor).unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
    }
}
