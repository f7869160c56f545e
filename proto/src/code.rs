//! Access codes: what one device shows and another types to pair into a share.
//!
//! `spec/identity.md` § Access codes is normative. An access code is 16 random bytes, split
//! in two halves of 8:
//!
//! * the **locator** is public: discovery looks up [`AccessCode::locator_id`], a hash of it,
//!   to find the device that issued the code;
//! * the **secret** never leaves the device: it keys the PAKE that pairing runs (DESIGN.md,
//!   "Pairing replaces TLS-SRP"). [`Debug`](core::fmt::Debug) never prints it.
//!
//! The text form is the 2014 one (G1/G2): the magic bytes [`ACCESS_CODE_MAGIC`] and the 16
//! bytes in base32, 32 symbols that always start with `SYNC`, then one Luhn mod 32 check
//! character, 33 characters in all. A mistyped character is caught by the check character
//! before any network use, and reported as a typo.
//!
//! ```
//! use clearskies_proto::code::{AccessCode, AccessCodeError};
//!
//! let code = AccessCode::from_bytes([0; 16]);
//! assert_eq!(code.to_string(), "SYNC74YAAAAAAAAAAAAAAAAAAAAAAAAA4");
//! let typed = "clearskies: sync 74ya aaaa aaaa aaaa aaaa aaaa aaaa 4";
//! assert_eq!(typed.parse::<AccessCode>(), Ok(code));
//! let typo = AccessCode::parse("SYNC74YAAAAAAAAAAAABAAAAAAAAAAAA4");
//! assert_eq!(typo, Err(AccessCodeError::Typo));
//! ```

use core::fmt;
use core::str::FromStr;

use sha2::{Digest, Sha256};

use crate::text;

/// The 4 bytes placed before the payload in the text form; in base32 they spell `SYNC74`
/// followed by the two high bits of the seventh symbol.
pub const ACCESS_CODE_MAGIC: [u8; 4] = [0x96, 0x1a, 0x2f, 0xf3];
/// The first characters of every access code's text.
pub const ACCESS_CODE_PREFIX: &str = "SYNC";
/// Characters in an access code's text, check character included, separators excluded.
pub const ACCESS_CODE_LEN: usize = 33;
/// Bytes of an access code: the locator, then the secret.
pub const ACCESS_CODE_BYTES: usize = 16;
/// Bytes of the public locator half.
pub const LOCATOR_LEN: usize = 8;
/// Bytes of the secret half.
pub const SECRET_LEN: usize = 8;
/// The optional scheme a parser strips (case-insensitive), so links like
/// `clearskies:SYNC...` can be pasted whole.
pub const ACCESS_CODE_SCHEME: &str = "clearskies:";
/// The domain-separation string hashed before the locator in [`AccessCode::locator_id`].
pub const LOCATOR_ID_CONTEXT: &[u8] = b"clearskies access code locator v1";

/// An access code: a public locator and a secret, 8 bytes each.
///
/// [`Display`](fmt::Display) writes the full text, secret included: show it only to the person
/// who is to type it. [`Debug`](fmt::Debug) writes the locator and redacts the secret, so a
/// code that ends up in a log does not leak.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessCode {
    locator: [u8; LOCATOR_LEN],
    secret: [u8; SECRET_LEN],
}

impl AccessCode {
    /// The access code with these 16 bytes (locator, then secret): the inverse of
    /// [`to_bytes`](Self::to_bytes), for a code read back from storage or a test vector.
    pub fn from_bytes(bytes: [u8; ACCESS_CODE_BYTES]) -> AccessCode {
        let mut locator = [0; LOCATOR_LEN];
        let mut secret = [0; SECRET_LEN];
        locator.copy_from_slice(&bytes[..LOCATOR_LEN]);
        secret.copy_from_slice(&bytes[LOCATOR_LEN..]);
        AccessCode { locator, secret }
    }

    /// A new access code. `random` MUST come from a cryptographically secure random number
    /// generator: the secret's 64 bits are all that stands between a stranger and the share,
    /// and proto has no randomness source of its own.
    pub fn from_random(random: [u8; ACCESS_CODE_BYTES]) -> AccessCode {
        AccessCode::from_bytes(random)
    }

    /// The 16 bytes: locator, then secret. Handle them like the secret they contain.
    pub fn to_bytes(&self) -> [u8; ACCESS_CODE_BYTES] {
        let mut out = [0; ACCESS_CODE_BYTES];
        out[..LOCATOR_LEN].copy_from_slice(&self.locator);
        out[LOCATOR_LEN..].copy_from_slice(&self.secret);
        out
    }

    /// The public half. Discovery uses [`locator_id`](Self::locator_id), derived from it.
    pub fn locator(&self) -> &[u8; LOCATOR_LEN] {
        &self.locator
    }

    /// The secret half, the PAKE password of pairing. It MUST NOT be sent to anyone, in any
    /// form a listener could test guesses against.
    pub fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// What discovery looks up to find the issuing device:
    /// `SHA-256(LOCATOR_ID_CONTEXT || locator)`.
    pub fn locator_id(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(LOCATOR_ID_CONTEXT);
        hash.update(self.locator);
        hash.finalize().into()
    }

    /// Parses an access code as a person may type or paste it: an optional `clearskies:`
    /// scheme (any case, after any leading whitespace), lowercase, whitespace and dashes
    /// anywhere around or between characters, and `0`/`1` for `O`/`L` are all accepted.
    ///
    /// The checks run in this order, so the first one that fails names the most useful fix:
    /// characters, prefix, length, check character (a typo), magic bytes.
    pub fn parse(input: &str) -> Result<AccessCode, AccessCodeError> {
        let trimmed = input.trim_start();
        let mut skipped = input.len() - trimmed.len();
        if trimmed
            .get(..ACCESS_CODE_SCHEME.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(ACCESS_CODE_SCHEME))
        {
            skipped += ACCESS_CODE_SCHEME.len();
        }
        // Positions count characters of `input` as given; `skipped` is a byte offset of a
        // char boundary (whitespace, then an ASCII scheme).
        let offset = input[..skipped].chars().count();
        let symbols =
            text::normalize(&input[skipped..]).map_err(|e| AccessCodeError::InvalidCharacter {
                ch: e.ch,
                position: e.position + offset,
            })?;
        let found = symbols.len();
        if !symbols.starts_with(ACCESS_CODE_PREFIX) {
            // Too short to tell, but what is there agrees with the prefix: a cut-off code.
            return Err(if ACCESS_CODE_PREFIX.starts_with(symbols.as_str()) {
                AccessCodeError::WrongLength { found }
            } else {
                AccessCodeError::NotAccessCode
            });
        }
        if found != ACCESS_CODE_LEN {
            return Err(AccessCodeError::WrongLength { found });
        }
        let (body, check) = symbols.split_at(ACCESS_CODE_LEN - 1);
        if text::luhn_mod32(body) != check.chars().next() {
            return Err(AccessCodeError::Typo);
        }
        // 32 normalized symbols always decode to exactly 20 bytes; a failure here would be
        // a bug in `normalize`, reported as not-an-access-code rather than a panic.
        let bytes = text::base32_decode(body).map_err(|_| AccessCodeError::NotAccessCode)?;
        let Some((magic, payload)) = bytes.split_first_chunk::<4>() else {
            return Err(AccessCodeError::NotAccessCode);
        };
        let Ok(payload) = <[u8; ACCESS_CODE_BYTES]>::try_from(payload) else {
            return Err(AccessCodeError::NotAccessCode);
        };
        if *magic != ACCESS_CODE_MAGIC {
            return Err(AccessCodeError::NotAccessCode);
        }
        Ok(AccessCode::from_bytes(payload))
    }
}

impl fmt::Display for AccessCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = [0; 4 + ACCESS_CODE_BYTES];
        bytes[..4].copy_from_slice(&ACCESS_CODE_MAGIC);
        bytes[4..].copy_from_slice(&self.to_bytes());
        let body = text::base32_encode(&bytes);
        let check = text::symbol(text::luhn_mod32_value(
            body.chars().filter_map(text::symbol_value),
        ));
        write!(f, "{body}{check}")
    }
}

impl fmt::Debug for AccessCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Hex<'a>(&'a [u8]);
        impl fmt::Debug for Hex<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
        struct Redacted;
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }
        f.debug_struct("AccessCode")
            .field("locator", &Hex(&self.locator))
            .field("secret", &Redacted)
            .finish()
    }
}

impl FromStr for AccessCode {
    type Err = AccessCodeError;

    fn from_str(s: &str) -> Result<AccessCode, AccessCodeError> {
        AccessCode::parse(s)
    }
}

/// Why a text is not an access code. Each message tells the person what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessCodeError {
    /// A character that no access code contains (after the leniency rules).
    InvalidCharacter {
        /// The character as typed.
        ch: char,
        /// Its 1-based position in the input as given, in characters.
        position: usize,
    },
    /// The text does not start with `SYNC`, or (with a correct check character) its first
    /// bytes are not [`ACCESS_CODE_MAGIC`]: it is something else, not a mistyped code.
    NotAccessCode,
    /// Not [`ACCESS_CODE_LEN`] characters, not counting the scheme and separators.
    WrongLength {
        /// How many there are.
        found: usize,
    },
    /// The check character does not match: some character was mistyped.
    Typo,
}

impl AccessCodeError {
    /// The stable, kebab-case name of this error, as used in `spec/vectors/access_codes.json`.
    pub fn code(&self) -> &'static str {
        match self {
            AccessCodeError::InvalidCharacter { .. } => "invalid-character",
            AccessCodeError::NotAccessCode => "not-access-code",
            AccessCodeError::WrongLength { .. } => "wrong-length",
            AccessCodeError::Typo => "typo",
        }
    }
}

impl fmt::Display for AccessCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessCodeError::InvalidCharacter { ch, position } => write!(
                f,
                "the access code cannot contain {ch:?} (character {position}): access codes \
                 use only the letters A-Z and the digits 2-7; check it letter by letter"
            ),
            AccessCodeError::NotAccessCode => write!(
                f,
                "this is not a ClearSkies access code (those start with {ACCESS_CODE_PREFIX}): \
                 check that you copied the right text"
            ),
            AccessCodeError::WrongLength { found: 0 } => {
                write!(
                    f,
                    "no access code given: enter the code shown on the other device"
                )
            }
            AccessCodeError::WrongLength { found } => write!(
                f,
                "the access code has {found} letters and digits, but access codes have \
                 {ACCESS_CODE_LEN}: check that you copied all of it, and nothing more"
            ),
            AccessCodeError::Typo => {
                write!(f, "the access code has a typo: check it letter by letter")
            }
        }
    }
}

impl std::error::Error for AccessCodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: &str = "SYNC74YAAAAAAAAAAAAAAAAAAAAAAAAA4";
    const COUNTING: &str = "SYNC74YAAEBAGBAFAYDQQCIKBMGA2DQPP";
    const ONES: &str = "SYNC7477777777777777777777777777O";

    fn counting() -> [u8; 16] {
        core::array::from_fn(|i| i as u8)
    }

    #[test]
    fn design_vectors() {
        for (bytes, text) in [
            ([0u8; 16], ZERO),
            (counting(), COUNTING),
            ([0xff; 16], ONES),
        ] {
            let code = AccessCode::from_bytes(bytes);
            assert_eq!(code.to_string(), text);
            assert_eq!(AccessCode::parse(text), Ok(code.clone()));
            assert_eq!(code.to_bytes(), bytes);
            assert_eq!(code.locator()[..], bytes[..8]);
            assert_eq!(code.secret()[..], bytes[8..]);
        }
    }

    #[test]
    fn locator_id_hashes_only_the_locator() {
        let a = AccessCode::from_bytes(counting());
        let mut other = counting();
        other[15] ^= 1;
        let b = AccessCode::from_bytes(other);
        assert_eq!(a.locator_id(), b.locator_id(), "the secret is not in it");
        let mut hash = Sha256::new();
        hash.update(b"clearskies access code locator v1");
        hash.update([0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(a.locator_id(), <[u8; 32]>::from(hash.finalize()));
        assert_ne!(
            a.locator_id(),
            <[u8; 32]>::from(Sha256::digest([0u8, 1, 2, 3, 4, 5, 6, 7])),
            "domain-separated, not the 2014 G2 access ID"
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let code = AccessCode::from_bytes([0xab; 16]);
        let debug = format!("{code:?}");
        assert_eq!(
            debug,
            "AccessCode { locator: abababababababab, secret: <redacted> }"
        );
        assert!(!format!("{code:#?}").contains("ABAB"));
    }

    #[test]
    fn lenient_forms() {
        let code = AccessCode::from_bytes(counting());
        for input in [
            "sync74yaaebagbafaydqqcikbmga2dqpp",
            "  SYNC74YAAEBAGBAFAYDQQCIKBMGA2DQPP\n",
            "clearskies:SYNC74YAAEBAGBAFAYDQQCIKBMGA2DQPP",
            "ClearSkies: SYNC-74YA-AEBA-GBAF-AYDQ-QCIK-BMGA-2DQP-P",
            "SYNC 74YA AEBA GBAF AYDQ QCIK BMGA 2DQP P",
            "SYNC74YAAEBAGBAFAYDQQCIKBMGA2DQPP ",
        ] {
            assert_eq!(AccessCode::parse(input), Ok(code.clone()), "{input:?}");
        }
        // 0 and 1 read as O and L.
        let code = AccessCode::from_bytes([0xff; 16]);
        assert_eq!(
            AccessCode::parse("SYNC74777777777777777777777777770"),
            Ok(code)
        );
    }

    #[test]
    fn errors_in_order() {
        let err = |s: &str| AccessCode::parse(s).unwrap_err();
        assert_eq!(
            err("SYNC74YAAAAAAAAAAA8AAAAAAAAAAAAA4"),
            AccessCodeError::InvalidCharacter {
                ch: '8',
                position: 19
            }
        );
        assert_eq!(
            err("  clearskies:SYNC!"),
            AccessCodeError::InvalidCharacter {
                ch: '!',
                position: 18
            }
        );
        assert_eq!(
            err("clearskies://SYNC"),
            AccessCodeError::InvalidCharacter {
                ch: '/',
                position: 12
            }
        );
        assert_eq!(err(""), AccessCodeError::WrongLength { found: 0 });
        assert_eq!(err("  "), AccessCodeError::WrongLength { found: 0 });
        assert_eq!(
            err("clearskies:"),
            AccessCodeError::WrongLength { found: 0 }
        );
        assert_eq!(err("sy"), AccessCodeError::WrongLength { found: 2 });
        assert_eq!(err("SYNC74YA"), AccessCodeError::WrongLength { found: 8 });
        assert_eq!(err(&ZERO[..32]), AccessCodeError::WrongLength { found: 32 });
        assert_eq!(
            err(&format!("{ZERO}A")),
            AccessCodeError::WrongLength { found: 34 }
        );
        assert_eq!(err("HELLO"), AccessCodeError::NotAccessCode);
        assert_eq!(
            err("SYMC74YAAAAAAAAAAAAAAAAAAAAAAAAA4"),
            AccessCodeError::NotAccessCode
        );
        assert_eq!(
            err("SYNC74YAAAAAAAAAAAAAAAAAAAAAAAAA5"),
            AccessCodeError::Typo
        );
        // SYNC, a valid check character, but the magic's remaining bits are wrong.
        let body = format!("SYNCAA{}", "A".repeat(26));
        let forged = format!("{body}{}", text::luhn_mod32(&body).unwrap());
        assert_eq!(err(&forged), AccessCodeError::NotAccessCode);
    }

    #[test]
    fn error_codes_and_messages() {
        assert_eq!(AccessCodeError::Typo.code(), "typo");
        assert_eq!(
            AccessCodeError::Typo.to_string(),
            "the access code has a typo: check it letter by letter"
        );
        assert_eq!(
            AccessCodeError::WrongLength { found: 3 }.code(),
            "wrong-length"
        );
        assert_eq!(AccessCodeError::NotAccessCode.code(), "not-access-code");
        let invalid = AccessCodeError::InvalidCharacter {
            ch: '!',
            position: 5,
        };
        assert_eq!(invalid.code(), "invalid-character");
        assert!(invalid.to_string().contains("'!' (character 5)"));
    }
}
