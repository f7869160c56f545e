//! # clearskies-proto
//!
//! The sans-IO core of ClearSkies, a peer-to-peer sync library. This crate decides everything
//! and does nothing: it consumes bytes, timer expiries and commands, and produces bytes to send,
//! deadlines and events. It never touches a socket, a file, a thread or the clock, so the same
//! code runs under tokio, async-std, smol, a phone's event loop, a fuzzer and the deterministic
//! simulator in the `sim` module (feature `sim`).
//!
//! ## Layers
//!
//! * [`time`]: [`Timestamp`], the only notion of time: microseconds, passed in.
//! * [`wire`]: frames, segmentation and the message catalogue (`spec/wire.md`).
//! * [`session`]: one connection: handshake, negotiation, keep-alive, close.
//! * [`identity`] and [`code`]: device IDs and access codes in their checked text forms
//!   (`spec/identity.md`), built on the base32 and Luhn mod 32 helpers of [`text`].
//! * [`pair`]: pairing a new device with an access code: SPAKE2 bound to the TLS session,
//!   key confirmation, the membership grant and the inviter's code registry (`spec/pairing.md`).
//! * [`discovery`]: LAN announcements with rotating, authenticated share IDs
//!   (`spec/discovery.md`).
//!
//! Pairing, replication and folder sync are built on these in later modules.
//!
//! ## The contract
//!
//! Every state machine here is driven the same way (quinn-proto's shape):
//!
//! 1. **mutate**: feed one input (`handle_bytes`, `handle_timeout`, ...) or issue one command
//!    (`send`, `close`), always with `now`;
//! 2. **drain**: call `poll_event` until it returns `None`, and `poll_transmit` while the
//!    transport can take bytes;
//! 3. **re-arm**: read `poll_timeout` and wake at that instant (checking the clock yourself
//!    rather than trusting that the timer fired), then call `handle_timeout`.
//!
//! ```
//! use clearskies_proto::session::{Event, Session, SessionConfig};
//! use clearskies_proto::Timestamp;
//!
//! let now = Timestamp::ZERO;
//! let mut a = Session::new(SessionConfig::default(), now).unwrap();
//! let mut b = Session::new(SessionConfig::default(), now).unwrap();
//! // A driver would write these bytes to a socket; here they go straight across.
//! while let Some(bytes) = a.poll_transmit(now) { b.handle_bytes(now, &bytes); }
//! while let Some(bytes) = b.poll_transmit(now) { a.handle_bytes(now, &bytes); }
//! assert!(matches!(a.poll_event(), Some(Event::Established(_))));
//! assert!(matches!(b.poll_event(), Some(Event::Established(_))));
//! assert!(a.poll_timeout().is_some()); // the keep-alive timer
//! ```
//!
//! Untrusted bytes never panic and never make this crate allocate beyond the limits named in
//! [`wire`]; a violation closes the offending session with an [`Error`] that says what was
//! wrong.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod code;
pub mod crypto;
pub mod db;
pub mod discovery;
pub mod error;
pub mod files;
pub mod identity;
pub mod node;
pub mod pair;
pub mod session;
pub mod text;
pub mod time;
pub mod wire;

#[cfg(feature = "sim")]
pub mod sim;

pub use code::AccessCode;
pub use error::{Error, Incompatibility, Misuse, ProtocolViolation};
pub use identity::DeviceId;
pub use time::Timestamp;
