//! Arbitrary bytes, as UTF-8 text, through the access-code and device-ID parsers.
//! Invariants: no panic; whatever parses displays as canonical text (33 characters starting
//! with SYNC, or 63 in dashed blocks) that parses back to the same value; a parse error's
//! position, if any, points inside the input.
#![no_main]

use clearskies_proto::code::{ACCESS_CODE_LEN, ACCESS_CODE_PREFIX, AccessCode, AccessCodeError};
use clearskies_proto::identity::{DEVICE_ID_TEXT_LEN, DeviceId, DeviceIdError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let chars = text.chars().count();
    match AccessCode::parse(text) {
        Ok(code) => {
            let shown = code.to_string();
            assert_eq!(shown.len(), ACCESS_CODE_LEN);
            assert!(shown.starts_with(ACCESS_CODE_PREFIX));
            assert_eq!(AccessCode::parse(&shown), Ok(code.clone()));
            assert_eq!(AccessCode::from_bytes(code.to_bytes()), code);
        }
        Err(AccessCodeError::InvalidCharacter { position, .. }) => {
            assert!((1..=chars).contains(&position));
        }
        Err(_) => {}
    }
    match DeviceId::parse(text) {
        Ok(id) => {
            let shown = id.to_string();
            assert_eq!(shown.len(), DEVICE_ID_TEXT_LEN);
            assert_eq!(DeviceId::parse(&shown), Ok(id));
        }
        Err(DeviceIdError::InvalidCharacter { position, .. }) => {
            assert!((1..=chars).contains(&position));
        }
        Err(_) => {}
    }
});
