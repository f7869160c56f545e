//! The database vectors of `spec/vectors/` (`db_records.json`, `db_messages.json`), loaded as
//! the spec states them: if the code and the spec disagree, this fails. The vectors come from
//! `spec/vectors/generate_db.py` (cbor2 and OpenSSL's Ed25519), independent of this crate.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::msg::{CaughtUp, Forgotten, Members, Records, Refused, SyncRequest};
use clearskies_proto::db::record::{
    MAX_KEY_LEN, MAX_VALUE_LEN, MAX_VERSION_ENTRIES, RECORD_SIGNATURE_CONTEXT,
};
use clearskies_proto::db::replica::share_tag;
use clearskies_proto::db::{
    Access, DB_EXTENSION, DbMessage, Dot, Event, Member, Output, Record, RecordError, Replica,
    ReplicaState, ShareId, VersionVector,
};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::wire::{Message, codec};
use serde_json::Value;

mod common;
use common::{cases, load, s};

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("missing {key} in {v}"))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}

fn unhex32(s: &str) -> [u8; 32] {
    unhex(s).try_into().expect("32 bytes")
}

fn device(s: &str) -> DeviceId {
    DeviceId::from_bytes(unhex32(s))
}

fn result_code(result: Result<(), RecordError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(e) => e.code(),
    }
}

/// The keys of `db_records.json`, checked against [`DeviceKey`], by device ID.
fn keys(doc: &Value) -> BTreeMap<DeviceId, DeviceKey> {
    let mut out = BTreeMap::new();
    for k in doc["keys"].as_array().expect("keys") {
        let key = DeviceKey::from_secret(&unhex32(s(k, "secret")));
        let public = unhex32(s(k, "public_key"));
        let id = device(s(k, "device_id"));
        assert_eq!(key.public_key(), public, "{}", s(k, "name"));
        assert_eq!(key.device_id(), id, "{}", s(k, "name"));
        assert_eq!(DeviceId::from_public_key(&public), id, "{}", s(k, "name"));
        out.insert(id, key);
    }
    out
}

fn members(doc: &Value, keys: &BTreeMap<DeviceId, DeviceKey>) -> BTreeMap<DeviceId, Member> {
    doc["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let id = device(s(m, "device_id"));
            let access = match s(m, "access") {
                "read-write" => Access::ReadWrite,
                "read-only" => Access::ReadOnly,
                other => panic!("unknown access {other}"),
            };
            let public_key = keys[&id].public_key();
            (id, Member { public_key, access })
        })
        .collect()
}

/// Checks a decoded record against the `record` object of a case.
fn check_fields(name: &str, record: &Record, want: &Value) {
    assert_eq!(record.key, s(want, "key"), "{name}: key");
    let value = want["value"].as_str().map(unhex);
    assert_eq!(record.value.as_deref(), value.as_deref(), "{name}: value");
    let version: Vec<(DeviceId, u64)> = want["version"]
        .as_array()
        .expect("version")
        .iter()
        .map(|e| (device(e[0].as_str().unwrap()), e[1].as_u64().unwrap()))
        .collect();
    let got: Vec<(DeviceId, u64)> = record.version.iter().map(|(d, c)| (*d, c)).collect();
    assert_eq!(got, version, "{name}: version vector (in device order)");
    let dot = Dot {
        writer: device(s(&want["dot"], "writer")),
        counter: u(&want["dot"], "counter"),
    };
    assert_eq!(record.dot, dot, "{name}: dot");
    assert_eq!(record.hlc, u(want, "hlc"), "{name}: hlc");
}

/// What a replica of the share does with `record` received from a peer: `"ok"` if it applied
/// it, else the code it refused it with (and told the peer).
fn receive(share: &ShareId, members: &BTreeMap<DeviceId, Member>, record: &Record) -> String {
    let receiver = DeviceKey::from_secret(&[0x42; 32]);
    let peer = DeviceId::from_bytes([0x55; 32]);
    let mut replica = Replica::new(
        *share,
        receiver,
        members.clone(),
        ReplicaState::default(),
        1,
    );
    replica.peer_connected(peer);
    replica.handle_message(
        peer,
        DbMessage::Records(Records {
            share: share_tag(share),
            index: 7,
            records: vec![(1, record.clone())],
        }),
    );
    let mut outcome = Vec::new();
    while let Some(out) = replica.poll_output() {
        match out {
            Output::Event(Event::Changed { key }) => {
                assert_eq!(key, record.key);
                outcome.push("ok".to_owned());
            }
            Output::Event(Event::Refused {
                peer: from,
                key,
                error,
                by_peer: false,
            }) => {
                assert_eq!((from, key), (peer, record.key.clone()));
                outcome.push(error);
            }
            Output::Persist { id, .. } => replica.handle_persisted(id),
            _ => {}
        }
    }
    assert_eq!(outcome.len(), 1, "one outcome per record: {outcome:?}");
    let outcome = outcome.remove(0);
    // The cursor moves past the record whether it was applied or refused.
    assert_eq!(replica.cursor(&peer).seq, 1);
    if outcome == "ok" {
        assert_eq!(replica.entry(&record.key).map(|e| e.winner()), Some(record));
    } else {
        assert!(replica.entry(&record.key).is_none());
        let refusal = std::iter::from_fn(|| replica.poll_message(&peer))
            .find_map(|m| match m {
                DbMessage::Refused(r) => Some(r),
                _ => None,
            })
            .expect("the peer is told");
        assert_eq!(
            refusal,
            Refused {
                share: share_tag(share),
                // The echoed key is cut to MAX_REFUSED_KEY bytes (all vector keys are ASCII).
                key: record.key[..record
                    .key
                    .len()
                    .min(clearskies_proto::db::replica::MAX_REFUSED_KEY)]
                    .to_owned(),
                dot: record.dot,
                error: outcome.clone(),
            }
        );
    }
    outcome
}

#[test]
fn record_vectors() {
    let doc = load("db_records.json");
    let share: ShareId = unhex32(s(&doc, "share_id"));
    assert_eq!(
        unhex(s(&doc, "signature_context")),
        RECORD_SIGNATURE_CONTEXT,
        "the spec's domain-separation string"
    );
    let keys = keys(&doc);
    let members = members(&doc, &keys);
    let shape_codes = ["bad-key", "value-too-large", "bad-version"];
    let (mut accepted, mut refused) = (0, 0);
    let mut codes = BTreeSet::new();
    for case in cases(&doc) {
        let name = s(case, "name");
        let cbor = unhex(s(case, "cbor"));
        let record: Record = codec::decode(&cbor).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_fields(name, &record, &case["record"]);
        assert_eq!(codec::encode(&record), cbor, "{name}: canonical encoding");
        assert_eq!(
            record.signed_bytes(&share),
            unhex(s(case, "signed_bytes")),
            "{name}: signed bytes"
        );
        assert_eq!(
            record.signature.0.to_vec(),
            unhex(s(case, "signature")),
            "{name}: signature"
        );

        let verify = s(&case["expect"], "verify");
        let accept = s(&case["expect"], "accept");
        let shape = result_code(record.check_shape());
        if shape_codes.contains(&verify) {
            assert_eq!(shape, verify, "{name}: shape check");
        } else {
            assert_eq!(shape, "ok", "{name}: shape check");
        }
        let writer = keys
            .get(&record.dot.writer)
            .unwrap_or_else(|| panic!("{name}: writer without a key"));
        assert_eq!(
            result_code(record.verify(&share, &writer.public_key())),
            verify,
            "{name}: verify"
        );
        assert_eq!(receive(&share, &members, &record), accept, "{name}: accept");

        if verify == "ok" {
            // Ed25519 is deterministic: signing the same inputs gives the same record.
            let again = Record::sign(
                &share,
                record.key.clone(),
                record.value.clone(),
                record.version.clone(),
                record.dot,
                record.hlc,
                writer,
            );
            assert_eq!(again, record, "{name}: re-signing");
        }
        if let Some(other) = case["signed_over_share"].as_str() {
            assert_eq!(
                record.verify(&unhex32(other), &writer.public_key()),
                Ok(()),
                "{name}: valid for the share it was signed over"
            );
        }
        if accept == "ok" {
            accepted += 1;
        } else {
            refused += 1;
        }
        codes.insert(accept.to_owned());
        codes.insert(verify.to_owned());
    }
    assert!(
        accepted >= 10 && refused >= 15,
        "only {accepted} accepted and {refused} refused record vectors"
    );
    // Every code but value-too-large (a vector would be half a megabyte: see below).
    for code in [
        "ok",
        "bad-key",
        "bad-version",
        "unknown-writer",
        "read-only-writer",
        "bad-signature",
    ] {
        assert!(codes.contains(code), "no vector for {code}");
    }
}

#[test]
fn limits_match_the_spec_and_value_too_large_is_a_shape_error() {
    assert_eq!(MAX_KEY_LEN, 1024);
    assert_eq!(MAX_VALUE_LEN, 512 * 1024);
    assert_eq!(MAX_VERSION_ENTRIES, 256);
    assert_eq!(DB_EXTENSION, "org.clearskies.db");
    let key = DeviceKey::from_secret(&[1; 32]);
    let dot = Dot {
        writer: key.device_id(),
        counter: 1,
    };
    let version: VersionVector = [(dot.writer, 1)].into_iter().collect();
    let sign = |len: usize| {
        Record::sign(
            &[9; 32],
            "big".into(),
            Some(Bytes::from(vec![0xa0; len])),
            version.clone(),
            dot,
            0,
            &key,
        )
    };
    assert_eq!(sign(MAX_VALUE_LEN).check_shape(), Ok(()));
    assert_eq!(
        sign(MAX_VALUE_LEN + 1).check_shape(),
        Err(RecordError::ValueTooLarge)
    );
    assert_eq!(
        sign(MAX_VALUE_LEN + 1)
            .verify(&[9; 32], &key.public_key())
            .map_err(|e| e.code()),
        Err("value-too-large")
    );
}

fn message_from_json(m: &Value) -> DbMessage {
    let share = u(m, "share");
    match s(m, "type") {
        "SyncRequest" => DbMessage::SyncRequest(SyncRequest {
            share,
            index: u(m, "index"),
            after: u(m, "after"),
        }),
        "Records" => DbMessage::Records(Records {
            share,
            index: u(m, "index"),
            records: m["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| {
                    let record: Record = codec::decode(&unhex(s(r, "record"))).expect("record hex");
                    (u(r, "seq"), record)
                })
                .collect(),
        }),
        "CaughtUp" => DbMessage::CaughtUp(CaughtUp {
            share,
            index: u(m, "index"),
            seq: u(m, "seq"),
        }),
        "Refused" => DbMessage::Refused(Refused {
            share,
            key: s(m, "key").to_owned(),
            dot: Dot {
                writer: device(s(&m["dot"], "writer")),
                counter: u(&m["dot"], "counter"),
            },
            error: s(m, "error").to_owned(),
        }),
        "Forgotten" => DbMessage::Forgotten(Forgotten {
            share,
            index: u(m, "index"),
            forgotten: m["forgotten"]
                .as_array()
                .expect("forgotten")
                .iter()
                .map(|e| (device(e[0].as_str().unwrap()), e[1].as_u64().unwrap()))
                .collect(),
        }),
        "Members" => DbMessage::Members(Members {
            share,
            records: m["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| codec::decode(&unhex(r.as_str().unwrap())).expect("record hex"))
                .collect(),
        }),
        other => panic!("unknown message type {other}"),
    }
}

#[test]
fn message_vectors() {
    let doc = load("db_messages.json");
    let tag = share_tag(&unhex32(s(&doc, "share_id")));
    let (mut decoded, mut ignored, mut malformed, mut canonical, mut with_tag) = (0, 0, 0, 0, 0);
    let mut types = BTreeSet::new();
    for case in cases(&doc) {
        let name = s(case, "name");
        let bytes = unhex(s(case, "hex"));
        let expect = &case["expect"];
        let result = DbMessage::decode(&bytes);
        if let Some(code) = expect["error"].as_str() {
            let err = result.expect_err(name);
            assert_eq!(err.code(), code, "{name}: {err}");
            malformed += 1;
        } else if expect["ignored"].as_bool() == Some(true) {
            assert_eq!(result, Ok(None), "{name}");
            ignored += 1;
        } else {
            let message = result
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|| panic!("{name}: ignored"));
            let want = message_from_json(&expect["message"]);
            assert_eq!(message, want, "{name}");
            let again = message.encode();
            assert_eq!(
                DbMessage::decode(&again),
                Ok(Some(want.clone())),
                "{name}: re-encoding"
            );
            if case["canonical"].as_bool().expect("canonical") {
                assert_eq!(again.to_vec(), bytes, "{name}: canonical encoding");
                canonical += 1;
            } else {
                assert_ne!(again.to_vec(), bytes, "{name}: marked non-canonical");
            }
            if message.share() == tag {
                with_tag += 1;
            }
            types.insert(s(&expect["message"], "type").to_owned());
            decoded += 1;
        }
    }
    assert_eq!(types.len(), 6, "every message type has a vector: {types:?}");
    assert!(
        decoded >= 10 && canonical >= 8 && ignored >= 3 && malformed >= 15 && with_tag >= 8,
        "only {decoded} decoded ({canonical} canonical, {with_tag} of the share), {ignored} \
         ignored and {malformed} malformed message vectors"
    );

    // The payload travels in a session extension message named DB_EXTENSION.
    let envelope = &doc["extension_envelope"];
    let inner = cases(&doc)
        .iter()
        .find(|c| c["name"] == envelope["payload_case"])
        .expect("payload case");
    let body = Bytes::from(unhex(s(envelope, "hex")));
    match Message::decode(&body) {
        Ok(Some(Message::Extension(e))) => {
            assert_eq!(e.name, DB_EXTENSION);
            assert_eq!(e.payload.to_vec(), unhex(s(inner, "hex")));
            assert_eq!(
                Message::Extension(e).encode().to_vec(),
                body.to_vec(),
                "canonical envelope"
            );
        }
        other => panic!("envelope decodes to {other:?}"),
    }
}
