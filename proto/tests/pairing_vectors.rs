//! The pairing vectors of `spec/vectors/pairing.json`, loaded as the spec states them: with the
//! fixed seeds, the SPAKE2 messages, the SPAKE2 key, the transcript hash, the confirmation keys
//! and MACs and every message's bytes must come out as written there.
//!
//! The file is written by this test when `CLEARSKIES_WRITE_VECTORS=1` is set (after a reviewed
//! change of the spec); `spec/vectors/check_pairing.py` re-derives every value in it
//! independently (Python: its own Ed25519 arithmetic, ChaCha20, HKDF, HMAC and CBOR).

use std::path::PathBuf;

use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member};
use clearskies_proto::pair::{
    Confirm, Grant, InvitationOptions, Invitations, Inviter, Joiner, KeySchedule, Output,
    PairMessage, Refuse, RefuseReason, SPAKE_ID_INVITER, SPAKE_ID_JOINER, transcript_hash,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};
use spake2::{Ed25519Group, Identity, Password, Spake2};

const NOW: u64 = 1_700_000_000_000_000;

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors/pairing.json")
}

fn h(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn arr<const N: usize>(hex_text: &str) -> [u8; N] {
    hex::decode(hex_text)
        .expect("hex")
        .try_into()
        .expect("length")
}

/// The inputs of one exchange.
struct Inputs {
    name: &'static str,
    code: [u8; 16],
    joiner_code: [u8; 16],
    inviter_secret: [u8; 32],
    joiner_secret: [u8; 32],
    inviter_binding: [u8; 32],
    joiner_binding: [u8; 32],
    inviter_seed: [u8; 32],
    joiner_seed: [u8; 32],
    access: Access,
}

fn counting(start: u8) -> [u8; 32] {
    core::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn inputs() -> Vec<Inputs> {
    let code: [u8; 16] = core::array::from_fn(|i| 0xa0 + i as u8);
    let mut wrong = code;
    wrong[15] ^= 0x01;
    let base = Inputs {
        name: "pairs",
        code,
        joiner_code: code,
        inviter_secret: [0x01; 32],
        joiner_secret: [0x02; 32],
        inviter_binding: [0xcb; 32],
        joiner_binding: [0xcb; 32],
        inviter_seed: counting(0x10),
        joiner_seed: counting(0x40),
        access: Access::ReadWrite,
    };
    vec![
        Inputs {
            name: "read-only",
            access: Access::ReadOnly,
            inviter_seed: counting(0x70),
            joiner_seed: counting(0x90),
            ..base
        },
        Inputs {
            name: "wrong-secret",
            joiner_code: wrong,
            ..base
        },
        Inputs {
            name: "man-in-the-middle",
            joiner_binding: [0xdd; 32],
            ..base
        },
        base,
    ]
}

/// The SPAKE2 key of one side, computed with the spake2 crate directly from the seeds.
fn spake_key(
    inviter: bool,
    code: &AccessCode,
    seed: [u8; 32],
    peer_msg: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let pw = Password::new(code.secret());
    let (a, b) = (
        Identity::new(SPAKE_ID_INVITER),
        Identity::new(SPAKE_ID_JOINER),
    );
    let rng = ChaCha20Rng::from_seed(seed);
    let (state, msg) = if inviter {
        Spake2::<Ed25519Group>::start_a_with_rng(&pw, &a, &b, rng)
    } else {
        Spake2::<Ed25519Group>::start_b_with_rng(&pw, &a, &b, rng)
    };
    (msg, state.finish(peer_msg).expect("finish"))
}

fn members(inviter: [u8; 32]) -> Vec<Member> {
    vec![
        Member {
            public_key: inviter,
            access: Access::ReadWrite,
        },
        Member {
            public_key: DeviceKey::from_secret(&[0x03; 32]).public_key(),
            access: Access::ReadOnly,
        },
    ]
}

/// Runs the state machines on `inp` and records every value.
fn compute(inp: &Inputs) -> Value {
    let inviter_key = DeviceKey::from_secret(&inp.inviter_secret).public_key();
    let joiner_key = DeviceKey::from_secret(&inp.joiner_secret).public_key();
    let mut invitations = Invitations::new();
    let code = invitations
        .create(
            NOW,
            inp.code,
            [0x5a; 32],
            InvitationOptions {
                access: inp.access,
                ..InvitationOptions::default()
            },
        )
        .expect("create");
    let joiner_code = AccessCode::from_bytes(inp.joiner_code);
    let mut joiner = Joiner::new(
        &joiner_code,
        inp.joiner_binding,
        joiner_key,
        inviter_key,
        inp.joiner_seed,
    );
    let mut inviter = Inviter::new(
        inp.inviter_binding,
        inviter_key,
        joiner_key,
        b"vector",
        inp.inviter_seed,
    );
    // Move messages, recording each in order with its sender.
    let mut messages = Vec::new();
    let mut outcome = json!({});
    for _ in 0..8 {
        while let Some(out) = joiner.poll_output() {
            match out {
                Output::Send(b) => {
                    messages.push(json!({"from": "joiner", "hex": h(&b)}));
                    inviter.handle_payload(NOW, &mut invitations, &b);
                }
                Output::Joined(j) => {
                    outcome["joiner"] = json!({"joined": {
                        "access": format!("{:?}", j.access),
                        "members": j.members.len(),
                    }});
                }
                Output::Failed(e) => outcome["joiner"] = json!({"error": e.code()}),
                other => panic!("joiner output {other:?}"),
            }
        }
        while let Some(out) = inviter.poll_output() {
            match out {
                Output::Send(b) => {
                    messages.push(json!({"from": "inviter", "hex": h(&b)}));
                    joiner.handle_payload(&b);
                }
                Output::Admitted(a) => {
                    outcome["inviter"] = json!({"admitted": {
                        "public_key": h(&a.public_key),
                        "access": format!("{:?}", a.access),
                    }});
                    inviter.grant(members(inviter_key)).expect("grant");
                }
                Output::Failed(e) => outcome["inviter"] = json!({"error": e.code()}),
                Output::Persist => {}
                other => panic!("inviter output {other:?}"),
            }
        }
    }
    // The key schedule, from the spake2 crate directly (both sides' views).
    let hello = PairMessage::decode(&hex::decode(messages[0]["hex"].as_str().unwrap()).unwrap());
    let Ok(Some(PairMessage::Hello(hello))) = hello else {
        panic!("first message is a hello")
    };
    let reply = PairMessage::decode(&hex::decode(messages[1]["hex"].as_str().unwrap()).unwrap());
    let Ok(Some(PairMessage::Reply(reply))) = reply else {
        panic!("second message is a reply")
    };
    let (joiner_msg, joiner_k) = spake_key(false, &joiner_code, inp.joiner_seed, &reply.spake_msg);
    let (inviter_msg, inviter_k) = spake_key(true, &code, inp.inviter_seed, &hello.spake_msg);
    assert_eq!(joiner_msg, hello.spake_msg);
    assert_eq!(inviter_msg, reply.spake_msg);
    let view = |k: &[u8], binding: &[u8; 32]| {
        let t = transcript_hash(
            &code.locator_id(),
            binding,
            &inviter_key,
            &joiner_key,
            &reply.spake_msg,
            &hello.spake_msg,
        );
        let s = KeySchedule::derive(k, t);
        json!({
            "spake_key": h(k),
            "transcript": h(&s.transcript),
            "inviter_confirm_key": h(&s.inviter_key),
            "joiner_confirm_key": h(&s.joiner_key),
            "inviter_mac": h(&s.inviter_mac),
            "joiner_mac": h(&s.joiner_mac),
        })
    };
    json!({
        "name": inp.name,
        "inputs": {
            "code": h(&inp.code),
            "code_text": code.to_string(),
            "joiner_code": h(&inp.joiner_code),
            "locator_id": h(&code.locator_id()),
            "inviter_secret_key": h(&inp.inviter_secret),
            "joiner_secret_key": h(&inp.joiner_secret),
            "inviter_public_key": h(&inviter_key),
            "joiner_public_key": h(&joiner_key),
            "inviter_channel_binding": h(&inp.inviter_binding),
            "joiner_channel_binding": h(&inp.joiner_binding),
            "inviter_seed": h(&inp.inviter_seed),
            "joiner_seed": h(&inp.joiner_seed),
            "access": format!("{:?}", inp.access),
            "granted_members": members(inviter_key).iter().map(|m| json!({
                "public_key": h(&m.public_key),
                "access": format!("{:?}", m.access),
            })).collect::<Vec<_>>(),
        },
        "inviter_spake_msg": h(&reply.spake_msg),
        "joiner_spake_msg": h(&hello.spake_msg),
        "inviter_view": view(&inviter_k, &inp.inviter_binding),
        "joiner_view": view(&joiner_k, &inp.joiner_binding),
        "messages": messages,
        "outcome": outcome,
    })
}

fn message_cases() -> Vec<Value> {
    let mut out = Vec::new();
    let mut push = |name: &str, m: PairMessage| {
        out.push(json!({"name": name, "hex": h(&m.encode())}));
    };
    push(
        "confirm",
        PairMessage::Confirm(Confirm {
            mac: counting(0xc0),
        }),
    );
    push(
        "grant-read-only",
        PairMessage::Grant(Grant {
            share_id: [0x5a; 32],
            access: Access::ReadOnly,
            members: vec![
                Member {
                    public_key: [0x01; 32],
                    access: Access::ReadWrite,
                },
                Member {
                    public_key: [0x02; 32],
                    access: Access::ReadOnly,
                },
            ],
        }),
    );
    for reason in [
        RefuseReason::UnknownCode,
        RefuseReason::Expired,
        RefuseReason::Used,
        RefuseReason::Cancelled,
        RefuseReason::Burned,
        RefuseReason::RateLimited,
        RefuseReason::WrongSecret,
    ] {
        let name = format!("refuse-{}", reason.code());
        push(&name, PairMessage::Refuse(Refuse { reason }));
    }
    out
}

fn generate() -> Value {
    json!({
        "description": "spec/pairing.md § 10: pairing exchanges from fixed seeds, and message encodings. \
                        Written by proto/tests/pairing_vectors.rs (CLEARSKIES_WRITE_VECTORS=1), \
                        checked independently by spec/vectors/check_pairing.py.",
        "exchanges": inputs().iter().map(compute).collect::<Vec<_>>(),
        "messages": message_cases(),
    })
}

#[test]
fn pairing_vectors() {
    let computed = generate();
    if std::env::var_os("CLEARSKIES_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
        std::fs::write(path(), text).unwrap();
    }
    let text = std::fs::read_to_string(path()).expect("spec/vectors/pairing.json");
    let stored: Value = serde_json::from_str(&text).expect("json");
    let exchanges = stored["exchanges"].as_array().expect("exchanges");
    assert_eq!(exchanges.len(), 4);
    for (want, got) in exchanges
        .iter()
        .zip(computed["exchanges"].as_array().unwrap())
    {
        assert_eq!(want, got, "exchange {}", want["name"]);
    }
    assert_eq!(stored["messages"], computed["messages"]);
    // Every message in the file decodes and re-encodes to the same bytes.
    for case in stored["messages"].as_array().unwrap() {
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let m = PairMessage::decode(&bytes).unwrap().unwrap();
        assert_eq!(m.encode().to_vec(), bytes, "{}", case["name"]);
    }
}

#[test]
fn vectors_say_what_the_spec_says() {
    let text = std::fs::read_to_string(path()).expect("spec/vectors/pairing.json");
    let stored: Value = serde_json::from_str(&text).expect("json");
    for ex in stored["exchanges"].as_array().unwrap() {
        let name = ex["name"].as_str().unwrap();
        let (inv, joi) = (&ex["inviter_view"], &ex["joiner_view"]);
        match name {
            "pairs" | "read-only" => {
                assert_eq!(inv, joi, "{name}: both sides derive the same keys");
                assert!(ex["outcome"]["joiner"]["joined"].is_object());
                let access = ex["outcome"]["inviter"]["admitted"]["access"].as_str();
                assert_eq!(access, ex["inputs"]["access"].as_str());
                // Hello, reply, joiner confirm, inviter confirm, grant.
                assert_eq!(ex["messages"].as_array().unwrap().len(), 5);
            }
            "wrong-secret" => {
                assert_ne!(inv["spake_key"], joi["spake_key"]);
                assert_eq!(ex["outcome"]["inviter"]["error"], "wrong-secret");
                assert_eq!(ex["outcome"]["joiner"]["error"], "wrong-secret");
            }
            "man-in-the-middle" => {
                // Same SPAKE2 key (the relay knows nothing it needs), different transcripts.
                assert_eq!(inv["spake_key"], joi["spake_key"]);
                assert_ne!(inv["transcript"], joi["transcript"]);
                assert_eq!(ex["outcome"]["inviter"]["error"], "wrong-secret");
                assert_eq!(ex["outcome"]["joiner"]["error"], "wrong-secret");
            }
            other => panic!("unknown exchange {other}"),
        }
        // The joiner's confirm is the third message and carries the joiner's own MAC.
        let confirm = hex::decode(ex["messages"][2]["hex"].as_str().unwrap()).unwrap();
        let Ok(Some(PairMessage::Confirm(c))) = PairMessage::decode(&confirm) else {
            panic!("{name}: third message is the joiner's confirm")
        };
        assert_eq!(c.mac, arr::<32>(joi["joiner_mac"].as_str().unwrap()));
    }
}
