//! The text building blocks of device IDs and access codes: RFC 4648 base32, the Luhn mod 32
//! check character, and the lenient normalisation of what a person typed.
//!
//! `spec/identity.md` is normative; this module implements its sections "Base32", "Luhn mod 32"
//! and "Leniency". Everything here is pure and allocation-bounded by its input.

use core::fmt;

/// The RFC 4648 base32 alphabet: symbol value `v` is `BASE32_ALPHABET[v]`.
pub const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The base32 symbol for the low 5 bits of `value`.
pub fn symbol(value: u8) -> char {
    char::from(BASE32_ALPHABET[usize::from(value & 0x1f)])
}

/// The value of a canonical (uppercase) base32 symbol, or `None` for any other character.
pub fn symbol_value(c: char) -> Option<u8> {
    match c {
        'A'..='Z' => Some(c as u8 - b'A'),
        '2'..='7' => Some(c as u8 - b'2' + 26),
        _ => None,
    }
}

/// Encodes `bytes` as RFC 4648 base32 without padding: uppercase, `ceil(8 * len / 5)`
/// symbols, the unused low bits of the last symbol zero.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
    let mut acc: u16 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        acc = (acc << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(symbol((acc >> bits) as u8));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(symbol((acc << (5 - bits)) as u8));
    }
    out
}

/// Decodes canonical unpadded base32: uppercase symbols only, a length that some byte count
/// encodes to, and zero unused bits in the last symbol. Lenient input goes through
/// [`normalize`] first.
pub fn base32_decode(text: &str) -> Result<Vec<u8>, Base32Error> {
    // Lengths mod 8 of 1, 3 and 6 symbols are never produced by the encoder.
    if matches!(text.len() % 8, 1 | 3 | 6) {
        return Err(Base32Error::ImpossibleLength { len: text.len() });
    }
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc: u16 = 0;
    let mut bits = 0u32;
    for (i, c) in text.chars().enumerate() {
        let v = symbol_value(c).ok_or(Base32Error::InvalidSymbol {
            ch: c,
            position: i + 1,
        })?;
        acc = (acc << 5) | u16::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return Err(Base32Error::NonCanonical);
    }
    Ok(out)
}

/// Why [`base32_decode`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Base32Error {
    /// A character outside [`BASE32_ALPHABET`].
    InvalidSymbol {
        /// The character.
        ch: char,
        /// Its 1-based position, in characters.
        position: usize,
    },
    /// No byte string encodes to this many symbols (length mod 8 is 1, 3 or 6).
    ImpossibleLength {
        /// The number of symbols.
        len: usize,
    },
    /// The unused low bits of the last symbol are not zero, so the encoder would not have
    /// written this text.
    NonCanonical,
}

impl Base32Error {
    /// The stable, kebab-case name of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Base32Error::InvalidSymbol { .. } => "invalid-symbol",
            Base32Error::ImpossibleLength { .. } => "impossible-length",
            Base32Error::NonCanonical => "non-canonical",
        }
    }
}

impl fmt::Display for Base32Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base32Error::InvalidSymbol { ch, position } => {
                write!(f, "{ch:?} at position {position} is not a base32 symbol")
            }
            Base32Error::ImpossibleLength { len } => {
                write!(f, "no byte string encodes to {len} base32 symbols")
            }
            Base32Error::NonCanonical => {
                write!(f, "the last base32 symbol has non-zero unused bits")
            }
        }
    }
}

impl std::error::Error for Base32Error {}

/// The Luhn mod 32 check value of a sequence of base32 symbol values (each `< 32`).
///
/// Walking from the rightmost value, the factor is 2, then 1, then 2, ...; each addend
/// `factor * value` is folded to `addend / 32 + addend % 32`; the check value is
/// `(32 - sum % 32) % 32`. Appending it makes the same walk over the longer sequence (where the
/// check value now gets factor 1) sum to a multiple of 32.
pub fn luhn_mod32_value(values: impl DoubleEndedIterator<Item = u8>) -> u8 {
    let mut sum: u32 = 0;
    let mut factor: u32 = 2;
    for v in values.rev() {
        let addend = factor * u32::from(v & 0x1f);
        sum += addend / 32 + addend % 32;
        factor = 3 - factor;
    }
    ((32 - sum % 32) % 32) as u8
}

/// The Luhn mod 32 check character of canonical base32 text, or `None` if `text` holds a
/// character outside [`BASE32_ALPHABET`].
pub fn luhn_mod32(text: &str) -> Option<char> {
    if !text.chars().all(|c| symbol_value(c).is_some()) {
        return None;
    }
    Some(symbol(luhn_mod32_value(
        text.chars().filter_map(symbol_value),
    )))
}

/// Whether `c` is a separator that [`normalize`] drops: any Unicode whitespace
/// ([`char::is_whitespace`]: space, tab, line breaks, no-break space, ...) or `-`.
pub fn is_separator(c: char) -> bool {
    c.is_whitespace() || c == '-'
}

/// Turns what a person typed into canonical base32 symbols: separators (see
/// [`is_separator`]) are dropped, lowercase letters are upper-cased, and the digits `0` and
/// `1`, which are not in the alphabet, are read as the letters `O` and `L` they resemble.
///
/// Any other character is refused, with its 1-based position in `input` counted in
/// characters (separators included), so a message can point at what the person typed.
pub fn normalize(input: &str) -> Result<String, InvalidCharacter> {
    let mut out = String::with_capacity(input.len());
    for (i, c) in input.chars().enumerate() {
        if is_separator(c) {
            continue;
        }
        let canonical = match c {
            '0' => 'O',
            '1' => 'L',
            _ => c.to_ascii_uppercase(),
        };
        if symbol_value(canonical).is_none() {
            return Err(InvalidCharacter {
                ch: c,
                position: i + 1,
            });
        }
        out.push(canonical);
    }
    Ok(out)
}

/// A character that is neither a base32 symbol (after the leniency of [`normalize`]) nor a
/// separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidCharacter {
    /// The character as typed.
    pub ch: char,
    /// Its 1-based position in the input, in characters.
    pub position: usize,
}

impl fmt::Display for InvalidCharacter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} at position {} is not allowed: only the letters A-Z and the digits 2-7",
            self.ch, self.position
        )
    }
}

impl std::error::Error for InvalidCharacter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        // RFC 4648 section 10, without the padding.
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), encoded);
            assert_eq!(base32_decode(encoded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn decode_refuses_non_canonical_text() {
        assert_eq!(
            base32_decode("MZ").unwrap_err(),
            Base32Error::NonCanonical,
            "MZ has a non-zero unused bit"
        );
        assert_eq!(
            base32_decode("MZX").unwrap_err(),
            Base32Error::ImpossibleLength { len: 3 }
        );
        assert_eq!(
            base32_decode("MZxQ").unwrap_err(),
            Base32Error::InvalidSymbol {
                ch: 'x',
                position: 3
            }
        );
        assert_eq!(base32_decode("A").unwrap_err().code(), "impossible-length");
    }

    #[test]
    fn round_trip_every_length() {
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for len in 0..40 {
            let text = base32_encode(&bytes[..len]);
            assert_eq!(text.len(), (len * 8).div_ceil(5));
            assert_eq!(base32_decode(&text).unwrap(), &bytes[..len]);
        }
    }

    #[test]
    fn luhn_worked_example() {
        // spec/identity.md § Luhn mod 32, the worked example.
        assert_eq!(luhn_mod32("SYNC"), Some('M'));
        assert_eq!(luhn_mod32(""), Some('A'));
        assert_eq!(luhn_mod32("sync"), None);
    }

    #[test]
    fn luhn_catches_every_single_substitution() {
        // Doubling with the fold is a permutation of 0..32, so no single changed symbol can
        // leave the sum unchanged, whatever its factor.
        let base = "MZXW6YTBOI";
        let check = luhn_mod32(base).unwrap();
        for i in 0..base.len() {
            for &s in BASE32_ALPHABET {
                let mut changed: Vec<u8> = base.bytes().collect();
                if changed[i] == s {
                    continue;
                }
                changed[i] = s;
                let changed = String::from_utf8(changed).unwrap();
                assert_ne!(luhn_mod32(&changed), Some(check), "{changed}");
            }
        }
    }

    #[test]
    fn luhn_misses_only_the_a7_transposition() {
        // Swapping adjacent symbols x, y goes unnoticed iff g(x) == g(y) where
        // g(v) = fold(2v) - v (mod 32); that holds only for {0, 31}, i.e. "A7" <-> "7A".
        let mut missed = Vec::new();
        for x in 0..32u8 {
            for y in 0..32u8 {
                if x == y {
                    continue;
                }
                let check = luhn_mod32_value([x, y].into_iter());
                if luhn_mod32_value([y, x].into_iter()) == check {
                    missed.push((symbol(x), symbol(y)));
                }
                // And with the pair in the other factor positions.
                let check = luhn_mod32_value([x, y, 5].into_iter());
                if luhn_mod32_value([y, x, 5].into_iter()) == check {
                    missed.push((symbol(x), symbol(y)));
                }
            }
        }
        missed.sort();
        missed.dedup();
        assert_eq!(missed, [('7', 'A'), ('A', '7')]);
    }

    #[test]
    fn normalize_is_lenient_in_the_documented_ways() {
        assert_eq!(normalize(" ab-c d\t0 1\r\n").unwrap(), "ABCDOL");
        assert_eq!(normalize("\u{a0}A\u{2009}B\u{3000}").unwrap(), "AB");
        assert_eq!(normalize("").unwrap(), "");
        assert_eq!(
            normalize("AB8").unwrap_err(),
            InvalidCharacter {
                ch: '8',
                position: 3
            }
        );
        assert_eq!(normalize("A B!").unwrap_err().position, 4);
        assert_eq!(normalize("Aé").unwrap_err().position, 2);
        assert_eq!(normalize("_").unwrap_err().ch, '_');
    }
}
