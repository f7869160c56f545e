//! The identity vectors of `spec/vectors/` (`access_codes.json`, `device_ids.json`), loaded as
//! the spec states them: if the code and the spec disagree, this fails. The vectors come from
//! `spec/vectors/generate_codes.py`, an implementation independent of this crate.

use clearskies_proto::code::{AccessCode, AccessCodeError, LOCATOR_ID_CONTEXT};
use clearskies_proto::identity::{DeviceId, DeviceIdError};
use serde_json::Value;

mod common;
use common::{cases, load, s};

fn unhex<const N: usize>(v: &Value, key: &str) -> [u8; N] {
    let bytes = hex::decode(s(v, key)).expect("vector hex");
    bytes
        .try_into()
        .unwrap_or_else(|b: Vec<u8>| panic!("{key}: {} bytes, expected {N}", b.len()))
}

/// Checks the optional `found`, `position`, `ch` and `group` details of an error case against
/// the fields of the Rust error, given as (name, value) pairs.
fn check_details(name: &str, expect: &Value, actual: &[(&str, Value)]) {
    for key in ["found", "position", "ch", "group"] {
        if let Some(want) = expect.get(key) {
            let got = actual
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("{name}: the error has no {key}"));
            assert_eq!(got, want, "{name}: {key}");
        }
    }
}

#[test]
fn access_code_vectors() {
    let doc = load("access_codes.json");
    assert_eq!(
        s(&doc, "locator_id_context").as_bytes(),
        LOCATOR_ID_CONTEXT,
        "the spec's domain-separation string"
    );
    let (mut valid, mut invalid) = (0, 0);
    let mut codes = std::collections::BTreeSet::new();
    for case in cases(&doc) {
        let name = s(case, "name");
        let input = s(case, "input");
        let expect = &case["expect"];
        let result = AccessCode::parse(input);
        if let Some(code) = expect["error"].as_str() {
            let err = result.expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err}");
            let details = match err {
                AccessCodeError::WrongLength { found } => vec![("found", found.into())],
                AccessCodeError::InvalidCharacter { ch, position } => {
                    vec![("ch", ch.to_string().into()), ("position", position.into())]
                }
                _ => vec![],
            };
            check_details(name, expect, &details);
            invalid += 1;
        } else {
            let code = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            let bytes: [u8; 16] = unhex(expect, "bytes");
            assert_eq!(code.to_bytes(), bytes, "{name}");
            assert_eq!(code, AccessCode::from_bytes(bytes), "{name}");
            assert_eq!(code.locator(), &unhex::<8>(expect, "locator"), "{name}");
            assert_eq!(code.secret(), &unhex::<8>(expect, "secret"), "{name}");
            assert_eq!(
                code.locator_id(),
                unhex::<32>(expect, "locator_id"),
                "{name}"
            );
            assert_eq!(code.to_string(), s(expect, "text"), "{name}");
            assert_eq!(AccessCode::parse(&code.to_string()), Ok(code), "{name}");
            codes.insert(bytes);
            valid += 1;
        }
    }
    assert!(
        valid >= 10 && invalid >= 20,
        "only {valid} valid and {invalid} invalid access-code vectors"
    );
    assert!(codes.len() >= 8, "only {} distinct codes", codes.len());
}

#[test]
fn device_id_vectors() {
    let doc = load("device_ids.json");
    let (mut valid, mut invalid, mut from_keys) = (0, 0, 0);
    for case in cases(&doc) {
        let name = s(case, "name");
        let input = s(case, "input");
        let expect = &case["expect"];
        let result = DeviceId::parse(input);
        if let Some(code) = expect["error"].as_str() {
            let err = result.expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err}");
            let details = match err {
                DeviceIdError::WrongLength { found } => vec![("found", found.into())],
                DeviceIdError::InvalidCharacter { ch, position } => {
                    vec![("ch", ch.to_string().into()), ("position", position.into())]
                }
                DeviceIdError::Typo { group } => vec![("group", group.into())],
                _ => vec![],
            };
            check_details(name, expect, &details);
            invalid += 1;
        } else {
            let id = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(id, DeviceId::from_bytes(unhex(expect, "id")), "{name}");
            assert_eq!(id.to_string(), s(expect, "text"), "{name}");
            assert_eq!(DeviceId::parse(&id.to_string()), Ok(id), "{name}");
            if case.get("public_key").is_some() {
                let key: [u8; 32] = unhex(case, "public_key");
                assert_eq!(DeviceId::from_public_key(&key), id, "{name}");
                from_keys += 1;
            }
            valid += 1;
        }
    }
    assert!(
        valid >= 10 && invalid >= 10 && from_keys >= 2,
        "only {valid} valid ({from_keys} from keys) and {invalid} invalid device-ID vectors"
    );
}
