//! A whole Session fed arbitrary bytes, in arbitrary pieces, with time advancing.
//! Invariants: no panic; after handle_timeout(now) no deadline is <= now; a finished session
//! stays silent; events stop after Closed.
#![no_main]

use clearskies_proto::Timestamp;
use clearskies_proto::session::{Event, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = SessionConfig {
        extensions: vec!["com.example.fuzz".into()],
        ..SessionConfig::default()
    };
    let mut now = Timestamp::ZERO;
    let Ok(mut session) = Session::new(config, now) else {
        return;
    };
    let mut closed = false;
    let mut rest = data;
    // Each step: one control byte (low 5 bits: piece length; high 3 bits: seconds to advance),
    // then that many bytes of input.
    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x1f).min(tail.len());
        let (piece, tail) = tail.split_at(len);
        rest = tail;
        now = now + core::time::Duration::from_secs(u64::from(control >> 5) * 7);
        session.handle_bytes(now, piece);
        if session.poll_timeout().is_some_and(|t| t <= now) {
            session.handle_timeout(now);
            assert!(
                session.poll_timeout().is_none_or(|t| t > now),
                "timer stuck in the past"
            );
        }
        while let Some(event) = session.poll_event() {
            assert!(!closed, "event after Closed: {event:?}");
            closed = matches!(event, Event::Closed(_));
        }
        while session.poll_transmit(now).is_some() {}
    }
});
