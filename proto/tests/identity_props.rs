//! Property tests of the access-code and device-ID text forms: every value round-trips, and
//! every single mistyped character is rejected (as a typo where it could be one).
//! `PROPTEST_CASES=10000 cargo test -p clearskies-proto --test identity_props` for a long run.

use clearskies_proto::code::{ACCESS_CODE_LEN, AccessCode, AccessCodeError};
use clearskies_proto::identity::{DEVICE_ID_CHARS, DEVICE_ID_TEXT_LEN, DeviceId, DeviceIdError};
use clearskies_proto::text::{BASE32_ALPHABET, is_separator};
use proptest::prelude::*;

/// The base32 symbol a typed character stands for under the leniency rules, if any.
fn canonical(c: char) -> Option<char> {
    let c = match c {
        '0' => 'O',
        '1' => 'L',
        _ => c.to_ascii_uppercase(),
    };
    c.is_ascii()
        .then_some(c)
        .filter(|c| BASE32_ALPHABET.contains(&(*c as u8)))
}

/// A character to type instead of another: mostly plausible typos, sometimes anything.
fn replacement() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abcdefghijklmnopqrstuvwxyz0189!._/ -".chars().collect::<Vec<_>>()
        ),
        1 => any::<char>(),
    ]
}

fn replace(text: &str, index: usize, c: char) -> String {
    text.chars()
        .enumerate()
        .map(|(i, old)| if i == index { c } else { old })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    /// Any 16 bytes make a 33-character code starting with SYNC that parses back to them, in
    /// upper or lower case.
    #[test]
    fn access_code_round_trips(bytes in any::<[u8; 16]>()) {
        let code = AccessCode::from_random(bytes);
        let text = code.to_string();
        prop_assert_eq!(text.len(), ACCESS_CODE_LEN);
        prop_assert!(text.starts_with("SYNC"));
        prop_assert_eq!(AccessCode::parse(&text), Ok(code.clone()));
        prop_assert_eq!(AccessCode::parse(&text.to_lowercase()), Ok(code.clone()));
        prop_assert_eq!(AccessCode::parse(&format!("clearskies:{text}")), Ok(code));
    }

    /// Typing one character wrong is always caught: a different symbol after the prefix is a
    /// typo (Luhn mod 32 detects every single substitution), a different symbol in the prefix
    /// makes it not an access code, and a character outside the alphabet is named with its
    /// position.
    #[test]
    fn any_single_substitution_is_rejected(
        bytes in any::<[u8; 16]>(),
        index in 0..ACCESS_CODE_LEN,
        typed in replacement(),
    ) {
        let text = AccessCode::from_bytes(bytes).to_string();
        let original = text.as_bytes()[index] as char;
        prop_assume!(canonical(typed) != Some(original));
        let result = AccessCode::parse(&replace(&text, index, typed));
        match canonical(typed) {
            Some(_) if index < 4 => prop_assert_eq!(result, Err(AccessCodeError::NotAccessCode)),
            Some(_) => prop_assert_eq!(result, Err(AccessCodeError::Typo)),
            None if is_separator(typed) => prop_assert!(result.is_err()),
            None => prop_assert_eq!(
                result,
                Err(AccessCodeError::InvalidCharacter { ch: typed, position: index + 1 })
            ),
        }
    }

    /// Swapping two adjacent different characters after the prefix is a typo, except for the
    /// pair A and 7, which Luhn mod 32 cannot see (spec/identity.md § Luhn mod 32).
    #[test]
    fn adjacent_transpositions_are_typos_except_a7(
        bytes in any::<[u8; 16]>(),
        index in 4..ACCESS_CODE_LEN - 1,
    ) {
        let text = AccessCode::from_bytes(bytes).to_string();
        let mut swapped: Vec<u8> = text.clone().into_bytes();
        let (x, y) = (swapped[index], swapped[index + 1]);
        prop_assume!(x != y);
        swapped.swap(index, index + 1);
        let swapped = String::from_utf8(swapped).expect("ASCII");
        let result = AccessCode::parse(&swapped);
        if matches!((x, y), (b'A', b'7') | (b'7', b'A')) {
            // Still a valid check character; only the magic bits can refuse it.
            prop_assert!(matches!(result, Ok(_) | Err(AccessCodeError::NotAccessCode)));
        } else {
            prop_assert_eq!(result, Err(AccessCodeError::Typo));
        }
    }

    /// Any 32 bytes make a 63-character device ID that parses back to them, with or without
    /// dashes and in any case.
    #[test]
    fn device_id_round_trips(bytes in any::<[u8; 32]>()) {
        let id = DeviceId::from_bytes(bytes);
        let text = id.to_string();
        prop_assert_eq!(text.len(), DEVICE_ID_TEXT_LEN);
        prop_assert_eq!(DeviceId::parse(&text), Ok(id));
        prop_assert_eq!(DeviceId::parse(&text.to_lowercase().replace('-', "")), Ok(id));
        prop_assert_eq!(DeviceId::parse(&text.replace('-', " ")), Ok(id));
    }

    /// One different symbol anywhere in a device ID is a typo in exactly the group it is in.
    #[test]
    fn device_id_substitution_names_its_group(
        bytes in any::<[u8; 32]>(),
        index in 0..DEVICE_ID_CHARS,
        typed in replacement(),
    ) {
        let symbols: String = DeviceId::from_bytes(bytes).to_string().replace('-', "");
        let original = symbols.as_bytes()[index] as char;
        prop_assume!(canonical(typed) != Some(original));
        let result = DeviceId::parse(&replace(&symbols, index, typed));
        match canonical(typed) {
            Some(_) => prop_assert_eq!(result, Err(DeviceIdError::Typo { group: index / 14 + 1 })),
            None if is_separator(typed) => prop_assert!(result.is_err()),
            None => prop_assert_eq!(
                result,
                Err(DeviceIdError::InvalidCharacter { ch: typed, position: index + 1 })
            ),
        }
    }

    /// Text that looks roughly like a code or an ID never panics the parsers, and whatever
    /// parses displays as text that parses to the same value.
    #[test]
    fn parsers_are_total_and_stable(
        prefix in proptest::sample::select(vec!["", "SYNC", "sync74", "clearskies:", " "]),
        body in "[A-Za-z0-9 :-]{0,70}",
    ) {
        let input = format!("{prefix}{body}");
        if let Ok(code) = AccessCode::parse(&input) {
            prop_assert_eq!(AccessCode::parse(&code.to_string()), Ok(code));
        }
        if let Ok(id) = DeviceId::parse(&input) {
            prop_assert_eq!(DeviceId::parse(&id.to_string()), Ok(id));
        }
    }
}
