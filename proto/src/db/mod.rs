//! The synchronized database (layer 5): a key → document store per share that replicates
//! itself between devices with no server.
//!
//! * [`vv`]: version vectors and dots: who wrote what, what supersedes what.
//! * [`record`]: one signed version of one key.
//! * [`msg`]: the catch-up and live-replication messages.
//! * [`replica`]: the state machine of one share's replica.
//!
//! `spec/database.md` is normative.

pub mod members;
pub mod msg;
pub mod record;
pub mod replica;
pub mod vv;

/// The session extension that carries database messages.
pub const DB_EXTENSION: &str = "org.clearskies.db";

pub use msg::DbMessage;
pub use record::{Record, RecordError, ShareId};
pub use replica::{
    Access, Cursor, DEFAULT_TOMBSTONE_HORIZON_MICROS, Entry, Event, Forgotten, Member, Meta,
    Output, PersistOp, Replica, ReplicaState,
};
pub use vv::{Causality, Dot, VersionVector};
