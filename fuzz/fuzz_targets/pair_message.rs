//! Pairing messages and state machines fed arbitrary bytes.
//!
//! Input: one mode byte, then the rest.
//! * even mode: the rest is one `org.clearskies.pair` payload. Invariants: no panic; whatever
//!   decodes re-encodes to something that decodes to the same message.
//! * odd mode: the rest is a sequence of payloads, each a 2-byte big-endian length then that
//!   many bytes (a short tail is one last payload). They are fed to a joiner, to an inviter
//!   whose registry holds the code, and to an inviter that first received a genuine hello.
//!   Invariants: no panic; each machine ends at most once (one `Joined`, `Admitted` or
//!   `Failed`), and a finished machine stays silent.
#![no_main]

use clearskies_proto::code::AccessCode;
use clearskies_proto::db::{Access, Member};
use clearskies_proto::pair::{
    InvitationOptions, Invitations, Inviter, Joiner, Output, PairMessage, Uses,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000_000_000;
const INVITER: [u8; 32] = [1; 32];
const JOINER: [u8; 32] = [2; 32];

fn payloads(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !rest.is_empty() && out.len() < 16 {
        let len = match rest {
            [hi, lo, tail @ ..] => {
                rest = tail;
                usize::from(u16::from_be_bytes([*hi, *lo]))
            }
            _ => core::mem::take(&mut rest).len(),
        };
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Drains outputs; counts terminal ones; grants when admitted.
fn drain_inviter(inviter: &mut Inviter, ends: &mut usize) {
    while let Some(out) = inviter.poll_output() {
        match out {
            Output::Admitted(_) => {
                *ends += 1;
                let _ = inviter.grant(vec![Member {
                    public_key: INVITER,
                    access: Access::ReadWrite,
                }]);
            }
            Output::Failed(e) => {
                *ends += 1;
                assert!(!e.code().is_empty());
            }
            Output::Joined(_) => panic!("an inviter never joins"),
            Output::Send(_) | Output::Persist => {}
        }
    }
    assert!(*ends <= 1);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(Some(message)) = PairMessage::decode(rest) {
            let again = message.encode();
            assert_eq!(PairMessage::decode(&again), Ok(Some(message)));
        }
        return;
    }
    let pieces = payloads(rest);
    let mut invitations = Invitations::new();
    let options = InvitationOptions {
        uses: if mode & 2 == 0 {
            Uses::Single
        } else {
            Uses::Unlimited
        },
        ..InvitationOptions::default()
    };
    let Ok(code) = invitations.create(NOW, [7; 16], [9; 32], options) else {
        return;
    };
    let wrong = AccessCode::from_bytes([8; 16]);
    let joiner_code = if mode & 4 == 0 { &code } else { &wrong };

    let mut joiner = Joiner::new(joiner_code, [3; 32], JOINER, INVITER, [4; 32]);
    let hello = match joiner.poll_output() {
        Some(Output::Send(hello)) => hello,
        other => panic!("a joiner starts with its hello, not {other:?}"),
    };
    let mut ends = 0;
    for piece in &pieces {
        let finished = joiner.is_finished();
        joiner.handle_payload(piece);
        while let Some(out) = joiner.poll_output() {
            assert!(!finished, "a finished joiner stays silent");
            match out {
                Output::Joined(_) | Output::Failed(_) => ends += 1,
                Output::Admitted(_) | Output::Persist => panic!("a joiner never admits"),
                Output::Send(_) => {}
            }
        }
        assert!(ends <= 1);
    }

    for first in [None, Some(&hello[..])] {
        let mut inviter = Inviter::new([3; 32], INVITER, JOINER, b"fuzz", [5; 32]);
        let mut ends = 0;
        for piece in first.into_iter().chain(pieces.iter().copied()) {
            let finished = inviter.is_finished();
            inviter.handle_payload(NOW + 1, &mut invitations, piece);
            if finished {
                assert!(
                    inviter.poll_output().is_none(),
                    "a finished inviter stays silent"
                );
            }
            drain_inviter(&mut inviter, &mut ends);
        }
    }
});
