//! The replica of one share: a sans-IO state machine.
//!
//! # Contract
//!
//! Like [`Session`](crate::session::Session): feed one input or command, then drain
//! [`poll_output`](Replica::poll_output). Per connected peer, call
//! [`poll_message`](Replica::poll_message) whenever that peer's session has room (its send queue
//! is short): the replica streams its changes to each peer as fast as the peer takes them,
//! never faster, so a catch-up of a million records needs no more memory than one batch.
//!
//! Durability: every change the replica makes is described by an [`Output::Persist`] batch the
//! driver must write atomically and in order, then confirm with
//! [`handle_persisted`](Replica::handle_persisted). Only then is a local write acknowledged
//! ([`Event::WriteAcked`]) and only then is any change sent to peers, so a device never tells
//! anyone about a write it could forget in a crash.
//!
//! Tombstones: [`collect_garbage`](Replica::collect_garbage), called by the driver with the wall
//! clock (daily is plenty), forgets tombstones older than the [horizon](Replica::set_horizon).
//! What was forgotten is summarized in [`Forgotten`]; a peer whose cursor predates it gets a
//! *reset* instead of an incremental catch-up, so a device that comes back after the horizon
//! drops what was deleted meanwhile instead of resurrecting it (`spec/database.md` § 9.7).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::members::{self, Standing};
use super::msg::{
    CaughtUp, DbMessage, Forgotten as ForgottenMessage, Members, Records, Refused, ShareTag,
    SyncRequest,
};
use super::record::{MAX_KEY_LEN, MAX_VALUE_LEN, Record, RecordError, ShareId};
use super::vv::{Dot, VersionVector};
use crate::crypto::DeviceKey;
use crate::error::Misuse;
use crate::identity::DeviceId;

/// Bytes of records (roughly) per `Records` message.
pub const RECORDS_BATCH_BYTES: usize = 64 * 1024;
/// Refusals queued per peer; more are reported to the app only.
pub const MAX_QUEUED_REFUSALS: usize = 64;
/// Bytes of a refused record's key echoed back in `Refused`.
pub const MAX_REFUSED_KEY: usize = 256;
/// How long a tombstone is kept by default before [`Replica::collect_garbage`] may forget it:
/// 455 days (about 15 months, Syncthing's default), in microseconds.
pub const DEFAULT_TOMBSTONE_HORIZON_MICROS: u64 = 455 * 24 * 3600 * 1_000_000;

/// What a member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// May read and relay, never write.
    ReadOnly,
    /// May write.
    ReadWrite,
}

/// A member of the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's Ed25519 public key.
    pub public_key: [u8; 32],
    /// What it may do.
    pub access: Access,
}

/// How far this replica has received a peer's changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The peer's index ID when the cursor was taken (0: never synced).
    pub index: u64,
    /// The last of the peer's sequence numbers received and persisted.
    pub seq: u64,
}

/// Replica metadata, persisted with every batch that changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    /// This replica's index ID: random, fixed for its lifetime. A peer that sees it change
    /// knows the replica was reset and re-fetches everything.
    pub index: u64,
    /// The last local sequence number assigned.
    pub seq: u64,
    /// The last write counter this device used.
    pub write_counter: u64,
    /// The hybrid logical clock.
    pub hlc: u64,
}

/// What a replica has forgotten (`spec/database.md` § 9.7), persisted with every batch that
/// changes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// The merge of the version vectors of every version this replica forgot: tombstones it
    /// collected, and those it learned of in resets. A received version it dominates is
    /// ignored.
    pub version: VersionVector,
    /// The reset floor: a peer asking for the changes after a sequence number below this one
    /// may hold versions this replica has forgotten, and gets a reset.
    pub floor: u64,
}

/// The durable state a replica starts from (what the store loaded).
#[derive(Debug, Clone, Default)]
pub struct ReplicaState {
    /// Metadata; `index == 0` means a new replica.
    pub meta: Meta,
    /// Current versions with the local sequence number each was applied under.
    pub records: Vec<(u64, Record)>,
    /// Per-peer cursors.
    pub cursors: BTreeMap<DeviceId, Cursor>,
    /// What the replica has forgotten.
    pub forgotten: Forgotten,
}

/// One write to durable storage. A batch is applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistOp {
    /// Store `record` under local sequence number `seq`.
    PutRecord {
        /// Local sequence number (the storage key).
        seq: u64,
        /// The record.
        record: Record,
    },
    /// Forget the record stored under `seq` (a later version superseded it).
    RemoveRecord {
        /// Its local sequence number.
        seq: u64,
    },
    /// Store a peer's cursor.
    SetCursor {
        /// The peer.
        peer: DeviceId,
        /// Its cursor.
        cursor: Cursor,
    },
    /// Store the metadata.
    SetMeta(Meta),
    /// Store what the replica has forgotten (replaces the previous value).
    SetForgotten(Forgotten),
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A local write is durable.
    WriteAcked {
        /// The write.
        dot: Dot,
    },
    /// A key's visible state changed (local or remote write).
    Changed {
        /// The key.
        key: String,
    },
    /// A key has concurrent versions. All are kept; [`Entry::winner`] is shown meanwhile.
    Conflict {
        /// The key.
        key: String,
        /// Every sibling, winner first.
        siblings: Vec<Record>,
    },
    /// A peer refused one of our records, or we refused one of its.
    Refused {
        /// The peer.
        peer: DeviceId,
        /// The key.
        key: String,
        /// The stable error code.
        error: String,
        /// Whether the peer refused ours (`true`) or we refused theirs (`false`).
        by_peer: bool,
    },
    /// A membership record changed `device`'s standing (added, access changed, removed).
    MembersChanged {
        /// The device.
        device: DeviceId,
    },
    /// We have received everything a peer had when we asked.
    CaughtUp {
        /// The peer.
        peer: DeviceId,
    },
}

/// What the replica asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these operations atomically, in order after earlier batches, then call
    /// [`Replica::handle_persisted`] with `id`.
    Persist {
        /// The batch's id.
        id: u64,
        /// The operations.
        ops: Vec<PersistOp>,
    },
    /// Tell the application.
    Event(Event),
}

/// A key's current versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    siblings: Vec<Sibling>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sibling {
    seq: u64,
    record: Record,
    /// The peer it came from, so it is not echoed back (not persisted).
    origin: Option<DeviceId>,
}

impl Entry {
    /// The version every replica shows: the latest by hybrid time, ties broken by writer.
    pub fn winner(&self) -> &Record {
        // An entry always has at least one sibling.
        &self.siblings[0].record
    }

    /// All current versions, winner first. More than one means a conflict.
    pub fn siblings(&self) -> impl Iterator<Item = &Record> {
        self.siblings.iter().map(|s| &s.record)
    }

    /// Whether concurrent versions exist.
    pub fn is_conflict(&self) -> bool {
        self.siblings.len() > 1
    }

    /// The merge of all current versions: what a write now supersedes.
    pub fn version(&self) -> VersionVector {
        let mut v = VersionVector::new();
        for s in &self.siblings {
            v.merge(&s.record.version);
        }
        v
    }

    fn sort(&mut self) {
        self.siblings
            .sort_by_key(|s| core::cmp::Reverse(winner_order(&s.record)));
    }
}

fn winner_order(r: &Record) -> (u64, DeviceId, u64) {
    (r.hlc, r.dot.writer, r.dot.counter)
}

/// Per-peer state while connected.
#[derive(Debug, Default)]
struct Peer {
    /// Our request to send, if not yet sent.
    request_pending: bool,
    /// The peer asked for our changes: stream everything after this seq.
    streaming: Option<u64>,
    /// Membership records newer than this seq go first, in a `Members` message.
    members_after: Option<u64>,
    /// The highest sequence number the peer knows we covered (sent, or skipped as its own),
    /// `None` until the first CaughtUp after its request.
    announced: Option<u64>,
    /// Whether a CaughtUp was sent since the peer's request (one always follows the
    /// catch-up, even when the last `Records` already reached the end of the feed).
    caught_up_sent: bool,
    /// Whether records that came from this peer may be left out of the stream. Not on a full
    /// sync (`after == 0`): the peer may be a reset replica that lost them.
    skip_own: bool,
    /// Whether the peer's first CaughtUp of this connection was reported to the app.
    caught_up_reported: bool,
    /// Refusals to tell the peer.
    refusals: VecDeque<Refused>,
    /// A `Forgotten` message must precede the stream (a reset restarted it from 0).
    reset_pending: bool,
    /// The forgotten vector of the last reset sent to the peer on this connection.
    reset_sent: Option<VersionVector>,
    /// While a reset is streamed: the last sequence number assigned when it began. Its
    /// CaughtUp waits until the stream has covered it (durable or not when the reset began),
    /// since the peer drops what the reset did not contain.
    reset_until: Option<u64>,
    /// A reset the peer is sending us, until its `CaughtUp`.
    incoming_reset: Option<IncomingReset>,
}

/// A reset being received from a peer.
#[derive(Debug)]
struct IncomingReset {
    /// The peer's index ID.
    index: u64,
    /// The peer's forgotten vector.
    forgotten: VersionVector,
    /// Our current versions the peer's vector dominates and its stream has not (yet)
    /// contained: dropped when the reset completes.
    candidates: BTreeMap<Dot, String>,
    /// The last of the peer's sequence numbers received in this reset.
    position: u64,
}

impl Peer {
    /// Streams the whole feed again, announced by a `Forgotten` message (9.7).
    fn restart_as_reset(&mut self, until: u64) {
        self.members_after = Some(0);
        self.reset_until = Some(until);
        self.streaming = Some(0);
        self.announced = None;
        self.caught_up_sent = false;
        self.skip_own = false;
        self.reset_pending = true;
    }
}

/// What [`Replica::apply`] did with a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Added to the key's current versions.
    Added,
    /// A current version dominates it.
    Ignored,
    /// The forgotten vector dominates it.
    Forgotten,
}

/// The replica of one share. See the [module docs](self).
#[derive(Debug)]
pub struct Replica {
    share: ShareId,
    tag: ShareTag,
    key: DeviceKey,
    members: BTreeMap<DeviceId, Member>,
    /// Removed members: what they were, and their last write counter that stays valid.
    formers: BTreeMap<DeviceId, (Member, u64)>,
    meta: Meta,
    entries: BTreeMap<String, Entry>,
    /// Current versions by local sequence number: the change feed.
    by_seq: BTreeMap<u64, String>,
    cursors: BTreeMap<DeviceId, Cursor>,
    peers: BTreeMap<DeviceId, Peer>,
    /// Local sequence numbers up to this one are durable (batches complete in order).
    durable_seq: u64,
    /// Batches written but not confirmed: id -> (highest seq in it, local writes in it).
    in_flight: VecDeque<(u64, u64, Vec<Dot>)>,
    next_batch: u64,
    outputs: VecDeque<Output>,
    forgotten: Forgotten,
    horizon_micros: u64,
}

impl Replica {
    /// Opens the replica of `share` from its durable state. `random_index` (from the caller's
    /// CSPRNG) becomes the index ID of a new replica.
    pub fn new(
        share: ShareId,
        key: DeviceKey,
        members: BTreeMap<DeviceId, Member>,
        state: ReplicaState,
        random_index: u64,
    ) -> Replica {
        let mut meta = state.meta;
        let mut outputs = VecDeque::new();
        if meta.index == 0 {
            meta.index = random_index.max(1);
        }
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut by_seq = BTreeMap::new();
        for (seq, record) in state.records {
            by_seq.insert(seq, record.key.clone());
            entries
                .entry(record.key.clone())
                .or_insert_with(|| Entry {
                    siblings: Vec::with_capacity(1),
                })
                .siblings
                .push(Sibling {
                    seq,
                    record,
                    origin: None,
                });
        }
        for entry in entries.values_mut() {
            entry.sort();
        }
        let durable_seq = meta.seq;
        if state.meta.index == 0 {
            outputs.push_back(Output::Persist {
                id: 0,
                ops: vec![PersistOp::SetMeta(meta)],
            });
        }
        let tag = share_tag(&share);
        let mut replica = Replica {
            share,
            tag,
            key,
            members,
            formers: BTreeMap::new(),
            meta,
            entries,
            by_seq,
            cursors: state.cursors,
            peers: BTreeMap::new(),
            durable_seq,
            in_flight: if state.meta.index == 0 {
                VecDeque::from([(0, durable_seq, Vec::new())])
            } else {
                VecDeque::new()
            },
            next_batch: 1,
            outputs,
            forgotten: state.forgotten,
            horizon_micros: DEFAULT_TOMBSTONE_HORIZON_MICROS,
        };
        // The configured members, then what the replicated membership records say.
        let member_keys: Vec<String> = replica
            .entries
            .range(members::MEMBERS_PREFIX.to_owned()..)
            .map(|(k, _)| k)
            .take_while(|k| members::is_member_key(k))
            .cloned()
            .collect();
        for key in member_keys {
            replica.refresh_membership(&key);
        }
        replica
    }

    /// Applies the winner of the membership record under `key`; returns the device whose
    /// standing it names.
    fn refresh_membership(&mut self, key: &str) -> Option<DeviceId> {
        let winner = self.entries.get(key)?.winner();
        let Some(value) = &winner.value else {
            // A deleted membership record: the device is no longer a member.
            let device = self
                .members
                .keys()
                .find(|d| members::member_key(d) == key)
                .copied()?;
            self.members.remove(&device);
            return Some(device);
        };
        let (device, standing) = members::decode(key, value).ok()?;
        match standing {
            Standing::Member(m) => {
                self.members.insert(device, m);
                self.formers.remove(&device);
            }
            Standing::Removed { public_key, until } => {
                let was = self.members.remove(&device).unwrap_or(Member {
                    public_key,
                    access: Access::ReadWrite,
                });
                self.formers.insert(device, (was, until));
                // Stop serving it at once.
                self.peers.remove(&device);
            }
        }
        Some(device)
    }

    /// Writes `device`'s membership: a member with `member`'s access, or (`None`) removed. A
    /// removed device's records up to its last write counter this replica has seen stay
    /// valid; nothing it writes later is accepted by any replica that has this record.
    pub fn set_membership(
        &mut self,
        wall_micros: u64,
        device: DeviceId,
        member: Option<Member>,
    ) -> Result<Dot, Misuse> {
        let standing = match member {
            Some(m) => {
                if DeviceId::from_public_key(&m.public_key) != device {
                    return Err(Misuse::BadConfig {
                        detail: "the public key is not the device's".into(),
                    });
                }
                Standing::Member(m)
            }
            None => {
                let public_key = self
                    .members
                    .get(&device)
                    .map(|m| m.public_key)
                    .or_else(|| self.formers.get(&device).map(|f| f.0.public_key))
                    .ok_or(Misuse::BadConfig {
                        detail: "not a member of the share".into(),
                    })?;
                let until = self
                    .entries
                    .values()
                    .flat_map(|e| e.siblings())
                    .map(|r| r.version.get(&device))
                    .max()
                    .unwrap_or(0);
                Standing::Removed { public_key, until }
            }
        };
        let key = members::member_key(&device);
        self.write(
            wall_micros,
            &key,
            Some(Bytes::from(members::encode(&standing))),
            None,
        )
    }

    /// Every member, with its access (the configuration and the membership records applied).
    pub fn members(&self) -> &BTreeMap<DeviceId, Member> {
        &self.members
    }

    // ---- getters ------------------------------------------------------------------------

    /// The share's ID.
    pub fn share(&self) -> &ShareId {
        &self.share
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.key.device_id()
    }

    /// Current metadata.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// A key's current versions (tombstones included).
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// The document shown for `key`: the winner's value, `None` if absent or deleted.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries
            .get(key)
            .and_then(|e| e.winner().value.as_ref())
    }

    /// Keys starting with `prefix`, in order, with their entries (tombstones included).
    pub fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.entries
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Number of keys (tombstones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the replica holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether this replica and `peer` agree as far as it can tell: the peer said it sent
    /// everything it had (its CaughtUp arrived), and this replica has sent the peer everything
    /// durable (its own CaughtUp covers the whole feed).
    pub fn is_synced_with(&self, peer: &DeviceId) -> bool {
        self.peers.get(peer).is_some_and(|p| {
            p.caught_up_reported
                && p.streaming.is_some()
                && p.announced.is_some_and(|a| a >= self.durable_seq)
        })
    }

    /// What this replica has forgotten.
    pub fn forgotten(&self) -> &Forgotten {
        &self.forgotten
    }

    /// How long a tombstone is kept before [`collect_garbage`](Replica::collect_garbage) may
    /// forget it, in microseconds.
    pub fn horizon(&self) -> u64 {
        self.horizon_micros
    }

    /// A peer's cursor.
    pub fn cursor(&self, peer: &DeviceId) -> Cursor {
        self.cursors.get(peer).copied().unwrap_or_default()
    }

    /// Every current record with its local sequence number, in sequence order.
    pub fn records(&self) -> impl Iterator<Item = (u64, &Record)> {
        self.by_seq.iter().filter_map(|(seq, key)| {
            self.entries
                .get(key)?
                .siblings
                .iter()
                .find(|s| s.seq == *seq)
                .map(|s| (*seq, &s.record))
        })
    }

    // ---- commands -----------------------------------------------------------------------

    /// Writes `value` (a CBOR document) under `key`, superseding every version of it this
    /// replica has. `wall_micros` is the wall clock (Unix epoch), used only to break ties.
    pub fn put(&mut self, wall_micros: u64, key: &str, value: Bytes) -> Result<Dot, Misuse> {
        reserved(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(Misuse::BadConfig {
                detail: format!("document larger than {MAX_VALUE_LEN} bytes"),
            });
        }
        self.write(wall_micros, key, Some(value), None)
    }

    /// Deletes `key` (writes a tombstone superseding every version this replica has).
    pub fn delete(&mut self, wall_micros: u64, key: &str) -> Result<Dot, Misuse> {
        reserved(key)?;
        self.write(wall_micros, key, None, None)
    }

    /// Writes `value` (or a tombstone for `None`) under `key`, superseding exactly the
    /// versions `context` covers rather than everything this replica has. A writer whose
    /// local state derives from an older version (a file edited on disk while a remote change
    /// was on its way) passes that version: the write is then concurrent with the newer one,
    /// and both are kept as siblings instead of the newer one being silently overwritten.
    pub fn write_after(
        &mut self,
        wall_micros: u64,
        key: &str,
        value: Option<Bytes>,
        context: &VersionVector,
    ) -> Result<Dot, Misuse> {
        if value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_LEN) {
            return Err(Misuse::BadConfig {
                detail: format!("document larger than {MAX_VALUE_LEN} bytes"),
            });
        }
        self.write(wall_micros, key, value, Some(context))
    }

    fn write(
        &mut self,
        wall_micros: u64,
        key: &str,
        value: Option<Bytes>,
        context: Option<&VersionVector>,
    ) -> Result<Dot, Misuse> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Misuse::BadConfig {
                detail: format!("keys are 1 to {MAX_KEY_LEN} bytes"),
            });
        }
        let me = self.key.device_id();
        match self.members.get(&me) {
            Some(m) if m.access == Access::ReadWrite => {}
            _ => {
                return Err(Misuse::BadConfig {
                    detail: "this device may not write to the share".into(),
                });
            }
        }
        let mut version = match context {
            Some(c) => c.clone(),
            None => self
                .entries
                .get(key)
                .map(Entry::version)
                .unwrap_or_default(),
        };
        self.meta.write_counter += 1;
        let dot = Dot {
            writer: me,
            counter: self.meta.write_counter,
        };
        version.set(dot);
        self.meta.hlc = wall_micros.max(self.meta.hlc.saturating_add(1));
        let record = Record::sign(
            &self.share,
            key.to_owned(),
            value,
            version,
            dot,
            self.meta.hlc,
            &self.key,
        );
        let mut ops = Vec::new();
        let applied = self.apply(record, None, &mut ops);
        debug_assert!(
            applied == Applied::Added,
            "a local write supersedes everything it has seen"
        );
        self.persist(ops, vec![dot]);
        Ok(dot)
    }

    /// Sets the retention horizon of tombstones, in microseconds (default
    /// [`DEFAULT_TOMBSTONE_HORIZON_MICROS`]). It should be longer than any device of the share
    /// stays away or takes to finish a catch-up it started (`spec/database.md` § 9.7).
    pub fn set_horizon(&mut self, micros: u64) {
        self.horizon_micros = micros;
    }

    /// Forgets every tombstone whose hybrid time is at least the horizon before `wall_micros`
    /// (the wall clock, Unix epoch), and that is durable. Returns how many were forgotten.
    ///
    /// Their vectors are merged into [`Forgotten::version`] and the reset floor rises past
    /// them, all in one [`Output::Persist`] batch; a connected peer whose stream has not yet
    /// covered them gets a reset. A live sibling of a forgotten tombstone is kept. The scan
    /// visits every key: call it rarely (daily), not on every wake-up.
    pub fn collect_garbage(&mut self, wall_micros: u64) -> usize {
        let horizon = self.horizon_micros;
        let durable = self.durable_seq;
        let mut ops = Vec::new();
        let mut floor = self.forgotten.floor;
        let mut emptied = Vec::new();
        for (key, entry) in &mut self.entries {
            let before = entry.siblings.len();
            entry.siblings.retain(|s| {
                let old = s.record.is_tombstone()
                    && s.seq <= durable
                    && s.record.hlc.saturating_add(horizon) <= wall_micros;
                if old {
                    self.forgotten.version.merge(&s.record.version);
                    floor = floor.max(s.seq);
                    ops.push(PersistOp::RemoveRecord { seq: s.seq });
                }
                !old
            });
            if entry.siblings.is_empty() {
                emptied.push(key.clone());
            } else if entry.siblings.len() != before {
                // A live sibling survives its forgotten concurrent deletion: what the key shows
                // may change.
                self.outputs
                    .push_back(Output::Event(Event::Changed { key: key.clone() }));
            }
        }
        for key in emptied {
            self.entries.remove(&key);
        }
        let collected = ops.len();
        for op in &ops {
            if let PersistOp::RemoveRecord { seq } = op {
                self.by_seq.remove(seq);
            }
        }
        if collected > 0 {
            self.forgotten.floor = floor;
            self.restart_streams_below_floor(None);
            ops.push(PersistOp::SetForgotten(self.forgotten.clone()));
            self.persist(ops, Vec::new());
        }
        collected
    }

    /// Whether `device` is a member (of any access level).
    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.members.contains_key(device)
    }

    /// Adds or changes a member (membership is configuration until it becomes replicated
    /// state).
    pub fn set_member(&mut self, device: DeviceId, member: Member) {
        self.members.insert(device, member);
    }

    /// Removes a member: from now on its records are refused and it is not served.
    pub fn remove_member(&mut self, device: &DeviceId) {
        self.members.remove(device);
        self.peer_disconnected(device);
    }

    // ---- peers --------------------------------------------------------------------------

    /// A session with `peer` (whose identity the transport authenticated) is established and
    /// both sides speak the database extension: ask for its changes.
    pub fn peer_connected(&mut self, peer: DeviceId) {
        self.peers.insert(
            peer,
            Peer {
                request_pending: true,
                ..Peer::default()
            },
        );
    }

    /// Whether a session with `peer` is being served.
    pub fn is_serving(&self, peer: &DeviceId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The session with `peer` ended.
    pub fn peer_disconnected(&mut self, peer: &DeviceId) {
        self.peers.remove(peer);
    }

    /// A database message from `peer`.
    pub fn handle_message(&mut self, peer: DeviceId, message: DbMessage) {
        if message.share() != self.tag || !self.peers.contains_key(&peer) {
            return;
        }
        match message {
            DbMessage::SyncRequest(req) => {
                let after = if req.index == self.meta.index {
                    req.after
                } else {
                    0
                };
                let reset = after < self.forgotten.floor;
                if let Some(p) = self.peers.get_mut(&peer) {
                    if reset {
                        p.restart_as_reset(self.meta.seq);
                    } else {
                        p.streaming = Some(after);
                        p.members_after = Some(after);
                        p.announced = None;
                        p.caught_up_sent = false;
                        p.skip_own = after > 0;
                    }
                }
            }
            DbMessage::Records(batch) => self.receive_records(peer, batch),
            DbMessage::Members(batch) => self.receive_members(peer, batch.records),
            DbMessage::Forgotten(m) => self.start_incoming_reset(peer, m),
            DbMessage::CaughtUp(done) => {
                if self.finish_incoming_reset(peer, &done) {
                    return;
                }
                // Everything up to `done.seq` was sent or was ours: the cursor may skip ahead,
                // so an idle reconnect asks for nothing already seen.
                let mut cursor = self.cursor(&peer);
                if done.index != cursor.index {
                    cursor = Cursor {
                        index: done.index,
                        seq: 0,
                    };
                }
                if done.seq > cursor.seq || self.cursor(&peer) != cursor {
                    cursor.seq = cursor.seq.max(done.seq);
                    self.cursors.insert(peer, cursor);
                    self.persist(vec![PersistOp::SetCursor { peer, cursor }], Vec::new());
                }
                if let Some(p) = self.peers.get_mut(&peer)
                    && !p.caught_up_reported
                {
                    p.caught_up_reported = true;
                    self.outputs
                        .push_back(Output::Event(Event::CaughtUp { peer }));
                }
            }
            DbMessage::Refused(r) => {
                self.outputs.push_back(Output::Event(Event::Refused {
                    peer,
                    key: r.key,
                    error: r.error,
                    by_peer: true,
                }));
            }
        }
    }

    /// The next message for `peer`, if any. Call while the peer's session has room.
    pub fn poll_message(&mut self, peer: &DeviceId) -> Option<DbMessage> {
        let p = self.peers.get_mut(peer)?;
        if p.request_pending {
            p.request_pending = false;
            let cursor = self.cursors.get(peer).copied().unwrap_or_default();
            return Some(DbMessage::SyncRequest(SyncRequest {
                share: self.tag,
                index: cursor.index,
                after: cursor.seq,
            }));
        }
        if p.reset_pending && p.streaming.is_some() {
            p.reset_pending = false;
            p.reset_sent = Some(self.forgotten.version.clone());
            return Some(DbMessage::Forgotten(ForgottenMessage {
                share: self.tag,
                index: self.meta.index,
                forgotten: self.forgotten.version.clone(),
            }));
        }
        if let Some(r) = p.refusals.pop_front() {
            return Some(DbMessage::Refused(r));
        }
        if let Some(after) = p.members_after.take() {
            let records: Vec<Record> = self
                .entries
                .range(members::MEMBERS_PREFIX.to_owned()..)
                .take_while(|(k, _)| members::is_member_key(k))
                .flat_map(|(_, e)| e.siblings.iter())
                .filter(|s| s.seq > after && s.seq <= self.durable_seq)
                .map(|s| s.record.clone())
                .collect();
            if !records.is_empty() {
                return Some(DbMessage::Members(Members {
                    share: self.tag,
                    records,
                }));
            }
        }
        let p = self.peers.get_mut(peer)?;
        let after = p.streaming?;
        let p_skip_own = p.skip_own;
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut last = after;
        let mut full = false;
        let pending = if after < self.durable_seq {
            self.by_seq.range(after + 1..=self.durable_seq)
        } else {
            self.by_seq.range(0..0)
        };
        for (&seq, key) in pending {
            last = seq;
            let Some(sibling) = self
                .entries
                .get(key)
                .and_then(|e| e.siblings.iter().find(|s| s.seq == seq))
            else {
                continue;
            };
            if p_skip_own && sibling.origin.as_ref() == Some(peer) {
                continue;
            }
            bytes += approximate_size(&sibling.record);
            records.push((seq, sibling.record.clone()));
            if bytes >= RECORDS_BATCH_BYTES {
                full = true;
                break;
            }
        }
        if !full {
            // The walk covered the whole durable feed, including superseded numbers after
            // the last current record.
            last = last.max(self.durable_seq);
        }
        let p = self.peers.get_mut(peer)?;
        p.streaming = Some(last);
        if let Some((seq, _)) = records.last() {
            p.announced = Some(*seq);
            return Some(DbMessage::Records(Records {
                share: self.tag,
                index: self.meta.index,
                records,
            }));
        }
        // Nothing left to send: say how far the feed is covered, once after the request and
        // then whenever records the peer sent us moved it on (so its cursor skips them).
        if last >= self.durable_seq
            && p.reset_until.is_none_or(|until| last >= until)
            && (!p.caught_up_sent || p.announced.is_none_or(|a| a < last))
        {
            p.reset_until = None;
            p.announced = Some(last);
            p.caught_up_sent = true;
            return Some(DbMessage::CaughtUp(CaughtUp {
                share: self.tag,
                index: self.meta.index,
                seq: last,
            }));
        }
        None
    }

    // ---- storage ------------------------------------------------------------------------

    /// The batch `id` is durable.
    pub fn handle_persisted(&mut self, id: u64) {
        // Batches complete in order; an unknown or repeated id is ignored.
        while let Some(&(batch, seq, _)) = self.in_flight.front() {
            if batch > id {
                break;
            }
            let Some((_, _, dots)) = self.in_flight.pop_front() else {
                break;
            };
            self.durable_seq = self.durable_seq.max(seq);
            for dot in dots {
                self.outputs
                    .push_back(Output::Event(Event::WriteAcked { dot }));
            }
        }
    }

    /// The next output, if any. Drain after every input or command.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- internals ----------------------------------------------------------------------

    /// Applies a peer's membership records ahead of its feed: repeatedly, since one may
    /// admit the writer of another. What cannot be verified yet is left for the feed to judge.
    fn receive_members(&mut self, peer: DeviceId, mut records: Vec<Record>) {
        records.retain(|r| members::is_member_key(&r.key));
        let mut ops = Vec::new();
        loop {
            let before = records.len();
            let mut waiting = Vec::new();
            for record in records {
                if self.check(&record).is_ok() {
                    self.meta.hlc = self.meta.hlc.max(record.hlc);
                    self.apply(record, Some(peer), &mut ops);
                } else {
                    waiting.push(record);
                }
            }
            records = waiting;
            if records.is_empty() || records.len() == before {
                break;
            }
        }
        if !ops.is_empty() {
            self.persist(ops, Vec::new());
        }
    }

    fn receive_records(&mut self, peer: DeviceId, batch: Records) {
        let resetting = self.peers.get_mut(&peer).and_then(|p| {
            if p.incoming_reset
                .as_ref()
                .is_some_and(|r| r.index != batch.index)
            {
                // Not the feed the reset announced: the reset is void.
                p.incoming_reset = None;
            }
            p.incoming_reset.as_ref().map(|r| r.position)
        });
        let mut cursor = match resetting {
            Some(position) => Cursor {
                index: batch.index,
                seq: position,
            },
            None => self.cursor(&peer),
        };
        if batch.index != cursor.index {
            // A new or reset peer replica: its sequence numbers start over.
            cursor = Cursor {
                index: batch.index,
                seq: 0,
            };
        }
        let mut ops = Vec::new();
        let mut stale = false;
        for (seq, record) in batch.records {
            if seq <= cursor.seq {
                continue;
            }
            cursor.seq = seq;
            match self.check(&record) {
                Ok(()) => {
                    self.meta.hlc = self.meta.hlc.max(record.hlc);
                    if record.dot.writer == self.key.device_id() {
                        // Our own write, from before a reset of this replica: never reuse its
                        // counter.
                        self.meta.write_counter = self.meta.write_counter.max(record.dot.counter);
                    }
                    if let Some(reset) = self
                        .peers
                        .get_mut(&peer)
                        .and_then(|p| p.incoming_reset.as_mut())
                    {
                        reset.candidates.remove(&record.dot);
                    }
                    // What the outcome may need once `apply` has taken the record (only when
                    // something was forgotten or a reset is in progress: no copy otherwise).
                    let kept = (!self.forgotten.version.is_empty()
                        || self.peers.values().any(|p| p.incoming_reset.is_some()))
                    .then(|| (record.dot, record.key.clone(), record.version.clone()));
                    let applied = self.apply(record, Some(peer), &mut ops);
                    match (applied, kept) {
                        (Applied::Forgotten, Some((_, _, version))) => {
                            // The peer holds a version we forgot. Unless a reset we sent it
                            // already makes it drop the version, every peer must be reset.
                            let covered = self
                                .peers
                                .get(&peer)
                                .and_then(|p| p.reset_sent.as_ref())
                                .is_some_and(|f| f.dominates(&version));
                            stale |= !covered;
                        }
                        (Applied::Added, Some((dot, key, version))) => {
                            // A version another peer's reset in progress may declare forgotten:
                            // it is judged with the versions held when that reset began.
                            for (id, p) in &mut self.peers {
                                if let Some(reset) = p.incoming_reset.as_mut()
                                    && *id != peer
                                    && reset.forgotten.dominates(&version)
                                {
                                    reset.candidates.insert(dot, key.clone());
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    let refusal = Refused {
                        share: self.tag,
                        key: truncated(&record.key, MAX_REFUSED_KEY).to_owned(),
                        dot: record.dot,
                        error: e.code().to_owned(),
                    };
                    if let Some(p) = self.peers.get_mut(&peer)
                        && p.refusals.len() < MAX_QUEUED_REFUSALS
                    {
                        p.refusals.push_back(refusal);
                    }
                    self.outputs.push_back(Output::Event(Event::Refused {
                        peer,
                        key: record.key,
                        error: e.code().to_owned(),
                        by_peer: false,
                    }));
                }
            }
        }
        if let Some(reset) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.incoming_reset.as_mut())
        {
            // The stored cursor stays at the reset's start until the reset completes, so an
            // interrupted reset is asked for again from the start.
            reset.position = cursor.seq;
        } else {
            self.cursors.insert(peer, cursor);
            ops.push(PersistOp::SetCursor { peer, cursor });
        }
        if stale {
            self.raise_floor(None, &mut ops);
        }
        self.persist(ops, Vec::new());
    }

    /// A `Forgotten` from `peer`: a reset of its stream starts.
    fn start_incoming_reset(&mut self, peer: DeviceId, m: ForgottenMessage) {
        // Only a member that may delete may make us forget (spec 16).
        if self
            .members
            .get(&peer)
            .is_none_or(|m| m.access != Access::ReadWrite)
        {
            return;
        }
        let forgotten: VersionVector = m.forgotten.iter().map(|(d, c)| (*d, c)).collect();
        // Like our own dots received (9.5): never reuse a counter someone saw us use.
        let me = self.key.device_id();
        self.meta.write_counter = self.meta.write_counter.max(forgotten.get(&me));
        let candidates = self
            .entries
            .iter()
            .flat_map(|(key, e)| {
                e.siblings
                    .iter()
                    .filter(|s| forgotten.dominates(&s.record.version))
                    .map(move |s| (s.record.dot, key.clone()))
            })
            .collect();
        if let Some(p) = self.peers.get_mut(&peer) {
            p.incoming_reset = Some(IncomingReset {
                index: m.index,
                forgotten,
                candidates,
                position: 0,
            });
        }
        let cursor = Cursor {
            index: m.index,
            seq: 0,
        };
        self.cursors.insert(peer, cursor);
        self.persist(vec![PersistOp::SetCursor { peer, cursor }], Vec::new());
    }

    /// Completes a reset from `peer` at its `CaughtUp`; false if none is in progress.
    fn finish_incoming_reset(&mut self, peer: DeviceId, done: &CaughtUp) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if p.incoming_reset
            .as_ref()
            .is_none_or(|r| r.index != done.index)
        {
            return false;
        }
        let Some(reset) = p.incoming_reset.take() else {
            return false;
        };
        let report = !p.caught_up_reported;
        p.caught_up_reported = true;
        self.forgotten.version.merge(&reset.forgotten);
        let mut ops = Vec::new();
        let mut dropped = false;
        for (dot, key) in reset.candidates {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            let Some(i) = entry.siblings.iter().position(|s| s.record.dot == dot) else {
                continue;
            };
            let gone = entry.siblings.remove(i);
            if entry.siblings.is_empty() {
                self.entries.remove(&key);
            }
            self.by_seq.remove(&gone.seq);
            ops.push(PersistOp::RemoveRecord { seq: gone.seq });
            self.outputs
                .push_back(Output::Event(Event::Changed { key }));
            dropped = true;
        }
        if dropped {
            // Peers may hold what we just dropped; the peer that reset us does not.
            self.raise_floor(Some(peer), &mut ops);
        }
        let cursor = Cursor {
            index: done.index,
            seq: reset.position.max(done.seq),
        };
        self.cursors.insert(peer, cursor);
        ops.push(PersistOp::SetCursor { peer, cursor });
        ops.push(PersistOp::SetForgotten(self.forgotten.clone()));
        self.persist(ops, Vec::new());
        if report {
            self.outputs
                .push_back(Output::Event(Event::CaughtUp { peer }));
        }
        true
    }

    /// Raises the reset floor above every sequence number used so far (it uses one), so that
    /// every peer is reset when it next asks, and resets the streams of the connected ones
    /// except `exempt`.
    fn raise_floor(&mut self, exempt: Option<DeviceId>, ops: &mut Vec<PersistOp>) {
        self.meta.seq += 1;
        self.forgotten.floor = self.meta.seq;
        self.restart_streams_below_floor(exempt);
        ops.push(PersistOp::SetForgotten(self.forgotten.clone()));
    }

    /// Restarts as a reset every stream that has not covered the reset floor.
    fn restart_streams_below_floor(&mut self, exempt: Option<DeviceId>) {
        let floor = self.forgotten.floor;
        for (id, p) in &mut self.peers {
            if Some(*id) != exempt && p.streaming.is_some_and(|at| at < floor) {
                p.restart_as_reset(self.meta.seq);
            }
        }
    }

    fn check(&self, record: &Record) -> Result<(), RecordError> {
        record.check_shape()?;
        // A removed member's records written while it was one stay valid.
        let member = match self.members.get(&record.dot.writer) {
            Some(m) => m,
            None => match self.formers.get(&record.dot.writer) {
                Some((m, until)) if record.dot.counter <= *until => m,
                _ => return Err(RecordError::UnknownWriter),
            },
        };
        if member.access != Access::ReadWrite {
            return Err(RecordError::ReadOnlyWriter);
        }
        if members::is_member_key(&record.key)
            && let Some(value) = &record.value
            && members::decode(&record.key, value).is_err()
        {
            return Err(RecordError::BadMembership);
        }
        record.verify(&self.share, &member.public_key)
    }

    /// Applies a verified record.
    fn apply(
        &mut self,
        record: Record,
        origin: Option<DeviceId>,
        ops: &mut Vec<PersistOp>,
    ) -> Applied {
        let key = record.key.clone();
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            siblings: Vec::with_capacity(1),
        });
        // Already have it, or something newer.
        if entry
            .siblings
            .iter()
            .any(|s| s.record.version.dominates(&record.version))
        {
            if entry.siblings.is_empty() {
                self.entries.remove(&key);
            }
            return Applied::Ignored;
        }
        // Superseded by something this replica forgot (collected, or learned in a reset).
        if origin.is_some() && self.forgotten.version.dominates(&record.version) {
            if entry.siblings.is_empty() {
                self.entries.remove(&key);
            }
            return Applied::Forgotten;
        }
        let was_conflict = entry.is_conflict();
        let mut removed = Vec::new();
        entry.siblings.retain(|s| {
            let superseded = record.version.dominates(&s.record.version);
            if superseded {
                removed.push(s.seq);
            }
            !superseded
        });
        self.meta.seq += 1;
        let seq = self.meta.seq;
        ops.push(PersistOp::PutRecord {
            seq,
            record: record.clone(),
        });
        entry.siblings.push(Sibling {
            seq,
            record,
            origin,
        });
        entry.sort();
        let conflict = entry
            .is_conflict()
            .then(|| entry.siblings().cloned().collect::<Vec<_>>());
        for old in removed {
            self.by_seq.remove(&old);
            ops.push(PersistOp::RemoveRecord { seq: old });
        }
        self.by_seq.insert(seq, key.clone());
        if members::is_member_key(&key)
            && let Some(device) = self.refresh_membership(&key)
        {
            self.outputs
                .push_back(Output::Event(Event::MembersChanged { device }));
        }
        self.outputs
            .push_back(Output::Event(Event::Changed { key: key.clone() }));
        if let Some(siblings) = conflict {
            self.outputs
                .push_back(Output::Event(Event::Conflict { key, siblings }));
        } else if was_conflict {
            // Resolved: Changed already tells the app.
        }
        Applied::Added
    }

    fn persist(&mut self, mut ops: Vec<PersistOp>, writes: Vec<Dot>) {
        ops.push(PersistOp::SetMeta(self.meta));
        let id = self.next_batch;
        self.next_batch += 1;
        self.in_flight.push_back((id, self.meta.seq, writes));
        self.outputs.push_back(Output::Persist { id, ops });
    }
}

/// Refuses application writes under the membership prefix (use `set_membership`).
fn reserved(key: &str) -> Result<(), Misuse> {
    if members::is_member_key(key) {
        return Err(Misuse::BadConfig {
            detail: format!(
                "keys starting with {:?} are membership records: use set_membership",
                members::MEMBERS_PREFIX
            ),
        });
    }
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes ending on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The wire tag of a share: its ID's first 8 bytes.
pub fn share_tag(share: &ShareId) -> ShareTag {
    let mut b = [0u8; 8];
    b.copy_from_slice(&share[..8]);
    u64::from_be_bytes(b)
}

fn approximate_size(r: &Record) -> usize {
    r.key.len() + r.value.as_ref().map_or(0, Bytes::len) + r.version.len() * 45 + 120
}

/// Writers' ids in a set of records (for tests and reports).
pub fn writers<'a>(records: impl Iterator<Item = &'a Record>) -> BTreeSet<DeviceId> {
    records.map(|r| r.dot.writer).collect()
}
