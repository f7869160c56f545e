//! Pairing, sans-IO: two state machines and a registry, messages moved by hand.

use bytes::Bytes;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ShareId};
use clearskies_proto::pair::{
    ADDRESS_MAX_FAILURES, ADDRESS_WINDOW_MICROS, Admitted, DEFAULT_LIFETIME_MICROS,
    InvitationOptions, InvitationStatus, Invitations, Inviter, Joined, Joiner,
    MULTI_USE_BURN_AFTER, Output, PairError, PairMessage, Refuse, RefuseReason,
    SINGLE_USE_BURN_AFTER, UnixMicros, Uses,
};
use proptest::prelude::*;

const SHARE: ShareId = [0x5a; 32];
const T0: UnixMicros = 1_700_000_000_000_000;
const HOUR: u64 = 3600 * 1_000_000;

fn inviter_key() -> [u8; 32] {
    DeviceKey::from_secret(&[1; 32]).public_key()
}

fn joiner_key() -> [u8; 32] {
    DeviceKey::from_secret(&[2; 32]).public_key()
}

fn other_member() -> Member {
    Member {
        public_key: DeviceKey::from_secret(&[3; 32]).public_key(),
        access: Access::ReadOnly,
    }
}

fn members() -> Vec<Member> {
    vec![
        Member {
            public_key: inviter_key(),
            access: Access::ReadWrite,
        },
        other_member(),
    ]
}

fn random16(n: u8) -> [u8; 16] {
    core::array::from_fn(|i| n.wrapping_mul(31).wrapping_add(i as u8))
}

/// A registry with one code made with `options`.
fn registry(options: InvitationOptions) -> (Invitations, AccessCode) {
    let mut invitations = Invitations::new();
    let code = invitations
        .create(T0, random16(1), SHARE, options)
        .expect("create");
    (invitations, code)
}

/// The same code with its secret half changed.
fn wrong_secret(code: &AccessCode) -> AccessCode {
    let mut bytes = code.to_bytes();
    bytes[15] ^= 1;
    AccessCode::from_bytes(bytes)
}

#[derive(Debug, Default)]
struct Outcome {
    joiner: Vec<Output>,
    inviter: Vec<Output>,
}

impl Outcome {
    fn joined(&self) -> Option<&Joined> {
        self.joiner.iter().find_map(|o| match o {
            Output::Joined(j) => Some(j),
            _ => None,
        })
    }
    fn admitted(&self) -> Option<&Admitted> {
        self.inviter.iter().find_map(|o| match o {
            Output::Admitted(a) => Some(a),
            _ => None,
        })
    }
    fn joiner_error(&self) -> Option<&PairError> {
        self.joiner.iter().find_map(|o| match o {
            Output::Failed(e) => Some(e),
            _ => None,
        })
    }
    fn inviter_error(&self) -> Option<&PairError> {
        self.inviter.iter().find_map(|o| match o {
            Output::Failed(e) => Some(e),
            _ => None,
        })
    }
    /// Both sides ended the attempt with the error `code`.
    #[track_caller]
    fn assert_both_failed(&self, code: &str) {
        assert_eq!(
            self.joiner_error().map(PairError::code),
            Some(code),
            "joiner"
        );
        assert_eq!(
            self.inviter_error().map(PairError::code),
            Some(code),
            "inviter"
        );
    }
    fn persists(&self) -> usize {
        self.inviter
            .iter()
            .filter(|o| matches!(o, Output::Persist))
            .count()
    }
}

/// Moves messages between the two until neither has anything to send; grants `members()` when
/// the inviter admits.
fn run(
    joiner: &mut Joiner,
    inviter: &mut Inviter,
    invitations: &mut Invitations,
    now: UnixMicros,
) -> Outcome {
    let mut outcome = Outcome::default();
    for _ in 0..16 {
        let mut moved = false;
        while let Some(out) = joiner.poll_output() {
            if let Output::Send(bytes) = &out {
                inviter.handle_payload(now, invitations, bytes);
                moved = true;
            }
            outcome.joiner.push(out);
        }
        while let Some(out) = inviter.poll_output() {
            match &out {
                Output::Send(bytes) => {
                    joiner.handle_payload(bytes);
                    moved = true;
                }
                Output::Admitted(_) => {
                    inviter.grant(members()).expect("grant");
                }
                _ => {}
            }
            outcome.inviter.push(out);
        }
        if !moved {
            return outcome;
        }
    }
    panic!("pairing did not settle: {outcome:?}");
}

/// One attempt over a fresh connection with channel binding `cb` from address `addr`.
fn attempt(
    code: &AccessCode,
    invitations: &mut Invitations,
    now: UnixMicros,
    addr: &[u8],
    seed: u8,
) -> Outcome {
    let cb = [seed ^ 0x77; 32];
    let mut joiner = Joiner::new(code, cb, joiner_key(), inviter_key(), [seed; 32]);
    let mut inviter = Inviter::new(cb, inviter_key(), joiner_key(), addr, [seed ^ 0xff; 32]);
    let outcome = run(&mut joiner, &mut inviter, invitations, now);
    assert!(joiner.is_finished() || outcome.joined().is_some());
    outcome
}

#[test]
fn right_code_pairs() {
    let (mut invitations, code) = registry(InvitationOptions::default());
    let outcome = attempt(&code, &mut invitations, T0 + HOUR, b"10.0.0.2", 9);

    let admitted = outcome.admitted().expect("admitted");
    assert_eq!(admitted.public_key, joiner_key());
    assert_eq!(admitted.access, Access::ReadWrite);
    assert_eq!(admitted.share_id, SHARE);
    assert_eq!(admitted.locator_id, code.locator_id());
    assert_eq!(outcome.inviter_error(), None);
    assert_eq!(outcome.persists(), 1);

    let joined = outcome.joined().expect("joined");
    assert_eq!(joined.share_id, SHARE);
    assert_eq!(joined.access, Access::ReadWrite);
    assert_eq!(joined.inviter_public_key, inviter_key());
    let mut expected = members();
    expected.push(Member {
        public_key: joiner_key(),
        access: Access::ReadWrite,
    });
    expected.sort_by_key(|m| m.public_key);
    assert_eq!(joined.members, expected);
    assert_eq!(outcome.joiner_error(), None);

    let invitation = invitations.get(&code.locator_id()).unwrap();
    assert_eq!(invitation.uses_left(), Some(0));
    assert_eq!(invitation.status(T0 + HOUR), InvitationStatus::Used);
}

#[test]
fn wrong_secret_fails_on_both_sides_and_counts() {
    let (mut invitations, code) = registry(InvitationOptions::default());
    let outcome = attempt(
        &wrong_secret(&code),
        &mut invitations,
        T0 + 1,
        b"10.0.0.2",
        1,
    );
    assert_eq!(
        outcome.inviter_error().map(PairError::code),
        Some("wrong-secret")
    );
    assert_eq!(
        outcome.joiner_error().map(PairError::code),
        Some("wrong-secret")
    );
    assert!(outcome.admitted().is_none() && outcome.joined().is_none());
    assert_eq!(outcome.persists(), 1);
    let invitation = invitations.get(&code.locator_id()).unwrap();
    assert_eq!(invitation.failures(), 1);
    assert_eq!(invitation.status(T0 + 1), InvitationStatus::Active);

    // The right code still works afterwards.
    let outcome = attempt(&code, &mut invitations, T0 + 2, b"10.0.0.2", 2);
    assert!(outcome.joined().is_some());
}

#[test]
fn ended_codes_fail_with_distinct_codes() {
    // Unknown.
    let (mut invitations, _) = registry(InvitationOptions::default());
    let stranger = AccessCode::from_bytes([0xee; 16]);
    let outcome = attempt(&stranger, &mut invitations, T0, b"a", 1);
    outcome.assert_both_failed("unknown-code");

    // Expired: the default lifetime is 24 hours.
    let (mut invitations, code) = registry(InvitationOptions::default());
    let outcome = attempt(
        &code,
        &mut invitations,
        T0 + DEFAULT_LIFETIME_MICROS,
        b"b",
        2,
    );
    outcome.assert_both_failed("expired");
    let outcome = attempt(
        &code,
        &mut invitations,
        T0 + DEFAULT_LIFETIME_MICROS - 1,
        b"b",
        2,
    );
    assert!(
        outcome.joined().is_some(),
        "valid until the last microsecond"
    );

    // Cancelled.
    let (mut invitations, code) = registry(InvitationOptions::default());
    assert!(invitations.cancel(&code.locator_id(), T0 + 5));
    assert!(!invitations.cancel(&code.locator_id(), T0 + 6));
    let outcome = attempt(&code, &mut invitations, T0 + 10, b"c", 3);
    outcome.assert_both_failed("cancelled");

    // Used.
    let (mut invitations, code) = registry(InvitationOptions::default());
    assert!(
        attempt(&code, &mut invitations, T0 + 1, b"d", 4)
            .joined()
            .is_some()
    );
    let outcome = attempt(&code, &mut invitations, T0 + 2, b"d", 5);
    outcome.assert_both_failed("used");

    // The joiner's messages say what to do.
    assert!(PairError::Used.to_string().contains("new code"));
    assert!(PairError::Expired.to_string().contains("new code"));
    assert!(PairError::RateLimited.to_string().contains("wait"));
    assert!(
        PairError::WrongSecret
            .to_string()
            .contains("check the code")
    );
}

#[test]
fn man_in_the_middle_is_detected() {
    // Mallory knows the code and relays every message unchanged between her TLS session with
    // the joiner (binding 0x11..) and her TLS session with the inviter (binding 0x22..). Each
    // victim sees Mallory's key as the peer key, as TLS would report it.
    let mallory = DeviceKey::from_secret(&[9; 32]).public_key();
    let (mut invitations, code) = registry(InvitationOptions::default());
    let mut joiner = Joiner::new(&code, [0x11; 32], joiner_key(), mallory, [1; 32]);
    let mut inviter = Inviter::new([0x22; 32], inviter_key(), mallory, b"m", [2; 32]);
    let outcome = run(&mut joiner, &mut inviter, &mut invitations, T0 + 1);
    assert_eq!(
        outcome.inviter_error().map(PairError::code),
        Some("wrong-secret")
    );
    assert_eq!(
        outcome.joiner_error().map(PairError::code),
        Some("wrong-secret")
    );
    assert!(outcome.admitted().is_none() && outcome.joined().is_none());

    // Even if Mallory presented the victims' real keys (she cannot: TLS makes her prove the
    // private key), the differing bindings alone break the confirmation.
    let (mut invitations, code) = registry(InvitationOptions::default());
    let mut joiner = Joiner::new(&code, [0x11; 32], joiner_key(), inviter_key(), [1; 32]);
    let mut inviter = Inviter::new([0x22; 32], inviter_key(), joiner_key(), b"m", [2; 32]);
    let outcome = run(&mut joiner, &mut inviter, &mut invitations, T0 + 1);
    assert_eq!(
        outcome.inviter_error().map(PairError::code),
        Some("wrong-secret")
    );
    assert_eq!(
        outcome.joiner_error().map(PairError::code),
        Some("wrong-secret")
    );
}

#[test]
fn forged_inviter_confirmation_is_refused_by_the_joiner() {
    let (mut invitations, code) = registry(InvitationOptions::default());
    let cb = [3; 32];
    let mut joiner = Joiner::new(&code, cb, joiner_key(), inviter_key(), [1; 32]);
    let mut inviter = Inviter::new(cb, inviter_key(), joiner_key(), b"x", [2; 32]);
    let Some(Output::Send(hello)) = joiner.poll_output() else {
        panic!("hello")
    };
    inviter.handle_payload(T0, &mut invitations, &hello);
    let Some(Output::Send(reply)) = inviter.poll_output() else {
        panic!("reply")
    };
    joiner.handle_payload(&reply);
    assert!(matches!(joiner.poll_output(), Some(Output::Send(_))));
    // A confirmation MAC that is not the inviter's: the joiner refuses and fails.
    let forged = PairMessage::Confirm(clearskies_proto::pair::Confirm { mac: [0; 32] }).encode();
    joiner.handle_payload(&forged);
    let outputs: Vec<_> = std::iter::from_fn(|| joiner.poll_output()).collect();
    assert!(matches!(
        outputs.last(),
        Some(Output::Failed(PairError::WrongSecret))
    ));
    assert!(joiner.is_finished());
}

#[test]
fn read_only_grant_yields_read_only_membership() {
    let (mut invitations, code) = registry(InvitationOptions {
        access: Access::ReadOnly,
        ..InvitationOptions::default()
    });
    let outcome = attempt(&code, &mut invitations, T0 + 1, b"r", 7);
    assert_eq!(outcome.admitted().unwrap().access, Access::ReadOnly);
    let joined = outcome.joined().unwrap();
    assert_eq!(joined.access, Access::ReadOnly);
    let me = joined
        .members
        .iter()
        .find(|m| m.public_key == joiner_key())
        .unwrap();
    assert_eq!(me.access, Access::ReadOnly);
}

#[test]
fn multi_use_codes_admit_several_devices() {
    let (mut invitations, code) = registry(InvitationOptions {
        uses: Uses::Limited(2),
        ..InvitationOptions::default()
    });
    assert!(
        attempt(&code, &mut invitations, T0 + 1, b"a", 1)
            .joined()
            .is_some()
    );
    assert_eq!(
        invitations.get(&code.locator_id()).unwrap().uses_left(),
        Some(1)
    );
    assert!(
        attempt(&code, &mut invitations, T0 + 2, b"a", 2)
            .joined()
            .is_some()
    );
    let outcome = attempt(&code, &mut invitations, T0 + 3, b"a", 3);
    assert_eq!(outcome.joiner_error().map(PairError::code), Some("used"));

    let (mut invitations, code) = registry(InvitationOptions {
        uses: Uses::Unlimited,
        lifetime_micros: HOUR,
        ..InvitationOptions::default()
    });
    for i in 0..5 {
        assert!(
            attempt(&code, &mut invitations, T0 + 1 + i as u64, b"a", i)
                .joined()
                .is_some()
        );
    }
    let outcome = attempt(&code, &mut invitations, T0 + HOUR, b"a", 9);
    assert_eq!(outcome.joiner_error().map(PairError::code), Some("expired"));
}

#[test]
fn repeated_failures_burn_a_single_use_code() {
    let (mut invitations, code) = registry(InvitationOptions::default());
    let wrong = wrong_secret(&code);
    for i in 0..SINGLE_USE_BURN_AFTER {
        // A different address each time, so only the per-code limit applies.
        let addr = [i as u8];
        let outcome = attempt(&wrong, &mut invitations, T0 + 1, &addr, i as u8);
        assert_eq!(
            outcome.inviter_error().map(PairError::code),
            Some("wrong-secret")
        );
    }
    let invitation = invitations.get(&code.locator_id()).unwrap();
    assert_eq!(invitation.status(T0 + 1), InvitationStatus::Burned);
    let outcome = attempt(&code, &mut invitations, T0 + 2, b"fresh", 99);
    assert_eq!(outcome.joiner_error().map(PairError::code), Some("burned"));
    assert!(outcome.joined().is_none());

    // A multi-use code takes more.
    let (mut invitations, code) = registry(InvitationOptions {
        uses: Uses::Unlimited,
        ..InvitationOptions::default()
    });
    let wrong = wrong_secret(&code);
    for i in 0..MULTI_USE_BURN_AFTER - 1 {
        let addr = i.to_be_bytes();
        attempt(&wrong, &mut invitations, T0 + 1, &addr, i as u8);
    }
    assert!(
        attempt(&code, &mut invitations, T0 + 2, b"fresh", 1)
            .joined()
            .is_some()
    );
    attempt(&wrong, &mut invitations, T0 + 3, b"last", 2);
    let outcome = attempt(&code, &mut invitations, T0 + 4, b"fresh2", 3);
    assert_eq!(outcome.joiner_error().map(PairError::code), Some("burned"));
}

#[test]
fn an_address_with_too_many_failures_is_refused_for_a_while() {
    let (mut invitations, code) = registry(InvitationOptions {
        uses: Uses::Unlimited,
        ..InvitationOptions::default()
    });
    fail_from_evil(&mut invitations);
    // Even the right code is refused from that address now, before any SPAKE2 work...
    let outcome = attempt(&code, &mut invitations, T0 + 10, b"evil", 50);
    outcome.assert_both_failed("rate-limited");
    assert!(invitations.address_limited(b"evil", T0 + 10));
    // ...but not from another one, and not after the window.
    assert!(
        attempt(&code, &mut invitations, T0 + 11, b"good", 51)
            .joined()
            .is_some()
    );
    let later = T0 + ADDRESS_MAX_FAILURES as u64 + ADDRESS_WINDOW_MICROS;
    assert!(
        attempt(&code, &mut invitations, later, b"evil", 52)
            .joined()
            .is_some()
    );
    // Rate-limit refusals do not count as code failures.
    assert_eq!(invitations.get(&code.locator_id()).unwrap().failures(), 0);
}

#[test]
fn an_address_keeps_its_failures_across_a_restart() {
    let (mut invitations, code) = registry(InvitationOptions {
        uses: Uses::Unlimited,
        ..InvitationOptions::default()
    });
    fail_from_evil(&mut invitations);

    // The inviter restarts from what it saved.
    let mut restored = Invitations::decode(&invitations.encode()).expect("decode");
    assert_eq!(restored, invitations);
    let outcome = attempt(&code, &mut restored, T0 + 10, b"evil", 50);
    outcome.assert_both_failed("rate-limited");
    assert!(
        attempt(&code, &mut restored, T0 + 11, b"good", 51)
            .joined()
            .is_some()
    );
    // The window still ends: pruning forgets the address, and it may try again.
    let later = T0 + ADDRESS_MAX_FAILURES as u64 + ADDRESS_WINDOW_MICROS;
    restored.prune(later);
    let mut restored = Invitations::decode(&restored.encode()).expect("decode");
    assert!(!restored.address_limited(b"evil", later));
    assert!(
        attempt(&code, &mut restored, later, b"evil", 52)
            .joined()
            .is_some()
    );
}

#[test]
fn a_registry_saved_before_address_failures_were_persisted_still_loads() {
    let mut invitations = Invitations::new();
    let code = invitations
        .create(T0, random16(1), SHARE, InvitationOptions::default())
        .unwrap();
    // The earlier form: a bare sequence of invitations.
    let list: Vec<&clearskies_proto::pair::Invitation> = invitations.list().collect();
    let bytes = serde_cbor::to_vec(&list).unwrap();
    let restored = Invitations::decode(&bytes).expect("the earlier form decodes");
    assert_eq!(restored, invitations);
    assert_eq!(restored.get(&code.locator_id()).unwrap().code(), code);
}

#[test]
fn a_registry_with_bad_address_failures_is_refused_with_a_reason() {
    let too_many = serde_json::json!({"i": [], "a": [[vec![0u8; 32], [1, 2, 3, 4, 5, 6]]]});
    let err = serde_json::from_value::<Invitations>(too_many)
        .unwrap_err()
        .to_string();
    assert!(err.contains("6 failure times"), "{err}");
    let short_key = serde_json::json!({"i": [], "a": [[vec![0u8; 31], [1]]]});
    let err = serde_json::from_value::<Invitations>(short_key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("32 bytes"), "{err}");
    let twice = serde_json::json!({"i": [], "a": [[vec![0u8; 32], [1]], [vec![0u8; 32], [2]]]});
    let err = serde_json::from_value::<Invitations>(twice)
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    let no_invitations = serde_json::json!({"a": []});
    let err = serde_json::from_value::<Invitations>(no_invitations)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`i`"), "{err}");
}

#[test]
fn registry_survives_a_restart() {
    let mut invitations = Invitations::new();
    let single = invitations
        .create(T0, random16(1), SHARE, InvitationOptions::default())
        .unwrap();
    let multi = invitations
        .create(
            T0,
            random16(2),
            [7; 32],
            InvitationOptions {
                access: Access::ReadOnly,
                uses: Uses::Limited(3),
                lifetime_micros: 2 * HOUR,
            },
        )
        .unwrap();
    let cancelled = invitations
        .create(T0, random16(3), SHARE, InvitationOptions::default())
        .unwrap();
    invitations.cancel(&cancelled.locator_id(), T0 + 1);
    attempt(&wrong_secret(&multi), &mut invitations, T0 + 2, b"x", 1);
    assert!(
        attempt(&multi, &mut invitations, T0 + 3, b"y", 2)
            .joined()
            .is_some()
    );

    let bytes = invitations.encode();
    let mut restored = Invitations::decode(&bytes).expect("decode");
    assert_eq!(restored, invitations);
    assert_eq!(restored.len(), 3);
    let m = restored.get(&multi.locator_id()).unwrap();
    assert_eq!((m.failures(), m.admitted(), m.uses_left()), (1, 1, Some(2)));
    assert_eq!(m.access(), Access::ReadOnly);
    assert_eq!(m.expires_at(), T0 + 2 * HOUR);
    assert_eq!(m.code(), multi);
    // JSON too (any serde format).
    let json = serde_json::to_string(&invitations).unwrap();
    assert_eq!(
        serde_json::from_str::<Invitations>(&json).unwrap(),
        invitations
    );

    // The restored registry keeps working: the codes pair and refuse as before.
    assert!(
        attempt(&single, &mut restored, T0 + 4, b"z", 3)
            .joined()
            .is_some()
    );
    let outcome = attempt(&cancelled, &mut restored, T0 + 5, b"z", 4);
    assert_eq!(
        outcome.joiner_error().map(PairError::code),
        Some("cancelled")
    );

    assert!(Invitations::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn registry_limits_and_pruning() {
    let mut invitations = Invitations::new();
    let bad = |lifetime_micros| InvitationOptions {
        lifetime_micros,
        ..InvitationOptions::default()
    };
    assert_eq!(
        invitations
            .create(T0, random16(1), SHARE, bad(0))
            .unwrap_err()
            .code(),
        "bad-lifetime"
    );
    let zero = InvitationOptions {
        uses: Uses::Limited(0),
        ..InvitationOptions::default()
    };
    assert_eq!(
        invitations
            .create(T0, random16(1), SHARE, zero)
            .unwrap_err()
            .code(),
        "zero-uses"
    );
    let code = invitations
        .create(T0, random16(1), SHARE, InvitationOptions::default())
        .unwrap();
    assert_eq!(
        invitations
            .create(T0, random16(1), SHARE, InvitationOptions::default())
            .unwrap_err()
            .code(),
        "duplicate-code"
    );
    // Kept for a week after it expires, so its code is refused as expired, then forgotten.
    let week = 7 * 24 * HOUR;
    assert_eq!(
        invitations.prune(T0 + DEFAULT_LIFETIME_MICROS + week - 1),
        0
    );
    assert_eq!(invitations.prune(T0 + DEFAULT_LIFETIME_MICROS + week), 1);
    assert!(invitations.get(&code.locator_id()).is_none());
}

#[test]
fn grant_misuse() {
    let (mut invitations, code) = registry(InvitationOptions::default());
    let cb = [3; 32];
    let mut joiner = Joiner::new(&code, cb, joiner_key(), inviter_key(), [1; 32]);
    let mut inviter = Inviter::new(cb, inviter_key(), joiner_key(), b"x", [2; 32]);
    assert_eq!(inviter.grant(members()).unwrap_err().code(), "not-admitted");
    let mut admitted = false;
    for _ in 0..4 {
        while let Some(Output::Send(b)) = joiner.poll_output() {
            inviter.handle_payload(T0, &mut invitations, &b);
        }
        while let Some(out) = inviter.poll_output() {
            match out {
                Output::Send(b) => joiner.handle_payload(&b),
                Output::Admitted(_) => admitted = true,
                _ => {}
            }
        }
    }
    assert!(admitted);
    assert_eq!(
        inviter.grant(vec![other_member()]).unwrap_err().code(),
        "inviter-not-read-write"
    );
    inviter.grant(members()).unwrap();
    assert!(inviter.is_finished());
    assert_eq!(inviter.grant(members()).unwrap_err().code(), "not-admitted");
}

#[test]
fn message_round_trips_and_refusals() {
    for reason in [
        RefuseReason::UnknownCode,
        RefuseReason::Expired,
        RefuseReason::Used,
        RefuseReason::Cancelled,
        RefuseReason::Burned,
        RefuseReason::RateLimited,
        RefuseReason::WrongSecret,
        RefuseReason::Other("from-the-future".into()),
    ] {
        let m = PairMessage::Refuse(Refuse { reason });
        assert_eq!(PairMessage::decode(&m.encode()), Ok(Some(m)));
    }
    // Unknown types are ignored; wrong lengths are malformed.
    let unknown = Bytes::from_static(&[0x82, 0x18, 0x63, 0xa0]);
    assert_eq!(PairMessage::decode(&unknown), Ok(None));
    let short_mac = [0x82, 0x02, 0xa1, 0x61, b'c', 0x41, 0x00];
    assert_eq!(
        PairMessage::decode(&short_mac).unwrap_err().code(),
        "malformed-message"
    );
    let long_reason = PairMessage::Refuse(Refuse {
        reason: RefuseReason::Other("x".repeat(65)),
    });
    assert_eq!(
        PairMessage::decode(&long_reason.encode())
            .unwrap_err()
            .code(),
        "field-too-long"
    );
}

fn feed_inviter(inviter: &mut Inviter, invitations: &mut Invitations, msgs: &[Vec<u8>]) {
    for m in msgs {
        inviter.handle_payload(T0, invitations, m);
        while inviter.poll_output().is_some() {}
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 0..6)) {
        for m in &msgs {
            if let Ok(Some(decoded)) = PairMessage::decode(m) {
                prop_assert_eq!(PairMessage::decode(&decoded.encode()), Ok(Some(decoded.clone())));
            }
        }
        let (mut invitations, code) = registry(InvitationOptions::default());
        let mut joiner = Joiner::new(&code, [1; 32], joiner_key(), inviter_key(), [1; 32]);
        for m in &msgs {
            joiner.handle_payload(m);
            while joiner.poll_output().is_some() {}
        }
        let mut inviter = Inviter::new([1; 32], inviter_key(), joiner_key(), b"p", [2; 32]);
        feed_inviter(&mut inviter, &mut invitations, &msgs);
        // Past the first message too: a real hello, then the arbitrary bytes.
        let mut inviter = Inviter::new([1; 32], inviter_key(), joiner_key(), b"p", [2; 32]);
        let mut joiner = Joiner::new(&code, [1; 32], joiner_key(), inviter_key(), [1; 32]);
        let Some(Output::Send(hello)) = joiner.poll_output() else { panic!("hello") };
        let mut all = vec![hello.to_vec()];
        all.extend(msgs.iter().cloned());
        feed_inviter(&mut inviter, &mut invitations, &all);
    }

    #[test]
    fn grants_round_trip(
        share in any::<[u8; 32]>(),
        access in 0u8..3,
        keys in prop::collection::vec((any::<[u8; 32]>(), 0u8..3), 0..5),
    ) {
        // Encode a Grant by hand (any access numbers) and check decode agrees with the rules.
        let members: Vec<Member> = keys.iter().filter(|(_, a)| *a < 2).map(|(k, a)| Member {
            public_key: *k,
            access: if *a == 0 { Access::ReadOnly } else { Access::ReadWrite },
        }).collect();
        let valid = access < 2 && members.len() == keys.len();
        if valid {
            let m = PairMessage::Grant(clearskies_proto::pair::Grant {
                share_id: share,
                access: if access == 0 { Access::ReadOnly } else { Access::ReadWrite },
                members,
            });
            prop_assert_eq!(PairMessage::decode(&m.encode()), Ok(Some(m.clone())));
        }
    }
}

/// The address `evil` tries unknown codes until it reaches the limit; each failure asks for
/// the registry to be saved.
fn fail_from_evil(invitations: &mut Invitations) {
    let stranger = AccessCode::from_bytes([0xee; 16]);
    for i in 0..ADDRESS_MAX_FAILURES {
        let outcome = attempt(&stranger, invitations, T0 + i as u64, b"evil", i as u8);
        assert_eq!(
            outcome.inviter_error().map(PairError::code),
            Some("unknown-code")
        );
        // An unknown code counts against the address: the registry must be saved.
        assert_eq!(outcome.persists(), 1);
    }
}
