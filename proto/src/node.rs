//! A device: many connections, many shares, one state machine.
//!
//! [`Node`] owns a [`Session`] per connection and a [`Replica`] per share, routes database
//! messages between them, and feeds each session from the replicas only as fast as the
//! transport drains it. A driver runs exactly one `Node`:
//!
//! * inputs: [`handle_connected`](Node::handle_connected) once the transport has
//!   authenticated the peer's device key, [`handle_bytes`](Node::handle_bytes),
//!   [`handle_closed`](Node::handle_closed), [`handle_timeout`](Node::handle_timeout),
//!   [`handle_persisted`](Node::handle_persisted);
//! * commands: [`open_share`](Node::open_share), [`put`](Node::put), [`delete`](Node::delete);
//! * outputs: drain [`poll_output`](Node::poll_output); call
//!   [`poll_transmit`](Node::poll_transmit) for a connection whenever its transport can take
//!   bytes; re-arm from [`poll_timeout`](Node::poll_timeout).
//!
//! One session per peer is used at a time: a newer connection to the same device replaces an
//! older one (closed with [`CloseCode::DUPLICATE`]), which is how a peer that restarted while
//! its old connection still looked alive is picked up at once.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::crypto::DeviceKey;
use crate::db::{
    self, DB_EXTENSION, DbMessage, Dot, Member, PersistOp, Replica, ReplicaState, ShareId,
    VersionVector,
};
use crate::error::{Error, Misuse};
use crate::files::fetch::{FetchEvent, Fetcher};
use crate::files::msg::{self as files_msg, FilesMessage, MAX_OUTSTANDING_REQUESTS};
use crate::files::{FILES_EXTENSION, Hash};
use crate::identity::DeviceId;
use crate::session::{
    CloseReason, Event as SessionEvent, Priority, Session, SessionConfig, SessionState,
};
use crate::time::{Clock, Timestamp};
use crate::wire::{CloseCode, ExtensionMessage, Message, SEND_QUEUE_LIMIT};
use core::time::Duration;

/// A connection as the driver names it.
pub type ConnId = u64;

/// The close code for a device that is not (or no longer) a member of any share here
/// (`spec/transport.md`).
pub const NOT_A_MEMBER: CloseCode = CloseCode(0x1001);

/// Keep at most this many bytes queued in a session before asking replicas for more.
pub const SESSION_HIGH_WATER: usize = 256 * 1024;

/// The most bytes of chunk answers a connection holds, queued in its session or being read by
/// the driver. A peer may have a whole window of requests outstanding (`WINDOW_BYTES`, 8 MiB,
/// of the fetch scheduler), which with its framing is more than a session may queue
/// ([`SEND_QUEUE_LIMIT`]): further requests wait, unread, until answers drain. Half the send
/// queue, so that the other half stays for the database (at most [`SESSION_HIGH_WATER`] plus
/// one message) and control messages.
pub const SERVE_QUEUE_BYTES: usize = SEND_QUEUE_LIMIT / 2;

/// What a chunk answer adds to the piece it carries, encoded, at most (message header, request
/// id, byte-string length).
const ANSWER_OVERHEAD: usize = 64;

/// What the application hears.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session with `peer` is established and in use.
    PeerUp {
        /// The peer.
        peer: DeviceId,
        /// Its name, from its HELLO.
        name: String,
    },
    /// The session in use with `peer` ended.
    PeerDown {
        /// The peer.
        peer: DeviceId,
        /// Why.
        reason: CloseReason,
    },
    /// Something happened in a share's database.
    Db {
        /// The share.
        share: ShareId,
        /// What.
        event: db::Event,
    },
    /// A wanted chunk arrived and matches its hash.
    Chunk {
        /// The share.
        share: ShareId,
        /// The chunk's hash.
        hash: Hash,
        /// Its bytes.
        data: Bytes,
    },
    /// No connected peer has a wanted chunk; it is asked for again later.
    ChunkStalled {
        /// The share.
        share: ShareId,
        /// The chunk's hash.
        hash: Hash,
    },
}

/// What the node asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Apply `ops` to `share`'s store atomically and in order, then call
    /// [`Node::handle_persisted`].
    Persist {
        /// The share.
        share: ShareId,
        /// The batch id.
        id: u64,
        /// The operations.
        ops: Vec<PersistOp>,
    },
    /// The connection's session is over and its last bytes were handed out: close it.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Read bytes `offset .. offset + len` of chunk `hash` of `share` from local content,
    /// check the whole chunk still matches its hash, and answer with
    /// [`Node::chunk_read`] (`None` if the chunk is not, or no longer, here).
    ReadChunk {
        /// The connection that asked.
        conn: ConnId,
        /// The request id to answer.
        id: u32,
        /// The share.
        share: ShareId,
        /// The chunk.
        hash: Hash,
        /// Where in the chunk.
        offset: u32,
        /// How many bytes.
        len: u32,
    },
    /// Tell the application.
    Event(Event),
}

#[derive(Debug)]
struct Conn {
    peer: DeviceId,
    origin: Origin,
    /// When its session was established.
    since: Option<Timestamp>,
    session: Session,
    /// Chunk requests of the peer not yet answered (waiting, being read, or answered at once).
    serving: usize,
    /// Chunk requests waiting for room under [`SERVE_QUEUE_BYTES`] before they are read.
    waiting: VecDeque<Read>,
    /// Reads handed to the driver ([`Output::ReadChunk`]) and not answered: id → length.
    reading: BTreeMap<u32, u32>,
    /// The sum of `reading`'s lengths.
    reading_bytes: usize,
}

/// A chunk request of a peer, to be read.
#[derive(Debug)]
struct Read {
    id: u32,
    share: ShareId,
    hash: Hash,
    offset: u32,
    len: u32,
}

/// Which side opened a connection, as the driver knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This device dialled.
    Dialed,
    /// The peer dialled.
    Accepted,
    /// Not said: a duplicate session then simply replaces the older one.
    Unknown,
}

/// Two sessions with one peer established within this time of each other are a simultaneous
/// open (both sides dialled, or discovery and a configured address at once): both devices
/// keep the same one, the one dialled by the device with the smaller ID. Otherwise the newer
/// replaces the older (whose peer is likely gone without a word).
pub const SIMULTANEOUS_OPEN: Duration = Duration::from_secs(10);

/// A device's protocol state. See the [module docs](self).
#[derive(Debug)]
pub struct Node {
    key: DeviceKey,
    session_config: SessionConfig,
    clock: Clock,
    conns: BTreeMap<ConnId, Conn>,
    /// The connection in use per peer.
    current: BTreeMap<DeviceId, ConnId>,
    shares: BTreeMap<ShareId, Replica>,
    fetcher: Fetcher,
    /// Folder shares: paths this device's disk still lacks.
    folder_pending: BTreeMap<ShareId, u64>,
    /// Folder shares: the pending count peers were last told.
    folder_sent: BTreeMap<ShareId, u64>,
    /// What peers reported of their folders.
    peer_pending: BTreeMap<(DeviceId, ShareId), u64>,
    outputs: VecDeque<Output>,
    /// The tombstone horizon given to every replica, in microseconds.
    tombstone_horizon: u64,
}

impl Node {
    /// A node for the device `key`, announcing `session_config` (the database extension is
    /// added to it).
    pub fn new(key: DeviceKey, mut session_config: SessionConfig, now: Timestamp) -> Node {
        for ext in [DB_EXTENSION, FILES_EXTENSION] {
            if !session_config.extensions.iter().any(|e| e == ext) {
                session_config.extensions.push(ext.to_owned());
            }
        }
        Node {
            key,
            session_config,
            clock: Clock::new(now),
            conns: BTreeMap::new(),
            current: BTreeMap::new(),
            shares: BTreeMap::new(),
            fetcher: Fetcher::new(),
            folder_pending: BTreeMap::new(),
            folder_sent: BTreeMap::new(),
            peer_pending: BTreeMap::new(),
            outputs: VecDeque::new(),
            tombstone_horizon: db::replica::DEFAULT_TOMBSTONE_HORIZON_MICROS,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.key.device_id()
    }

    /// A share's replica.
    pub fn replica(&self, share: &ShareId) -> Option<&Replica> {
        self.shares.get(share)
    }

    /// The shares this node holds.
    pub fn shares(&self) -> impl Iterator<Item = &ShareId> {
        self.shares.keys()
    }

    /// The session of a connection.
    pub fn session(&self, conn: ConnId) -> Option<&Session> {
        self.conns.get(&conn).map(|c| &c.session)
    }

    /// Whether every share `peer` is a member of is in sync with it (see
    /// [`Replica::is_synced_with`]) and, for folder shares, whether the peer reported that
    /// its disk holds everything. False while no session with it is established.
    pub fn is_synced_with(&self, peer: &DeviceId) -> bool {
        self.current.contains_key(peer)
            && self
                .shares
                .iter()
                .filter(|(_, r)| r.is_member(peer))
                .all(|(id, r)| {
                    r.is_synced_with(peer)
                        && (!self.folder_pending.contains_key(id)
                            || self.peer_pending.get(&(*peer, *id)) == Some(&0))
                })
    }

    /// What `peer` last reported of its folder of `share`: paths its disk still lacks.
    pub fn peer_folder_pending(&self, peer: &DeviceId, share: &ShareId) -> Option<u64> {
        self.peer_pending.get(&(*peer, *share)).copied()
    }

    /// Marks `share` as a folder share and says how many paths this device's disk still
    /// lacks; peers hear of every change.
    pub fn set_folder_pending(&mut self, share: &ShareId, pending: u64) {
        self.folder_pending.insert(*share, pending);
        self.progress_changed(share);
    }

    /// What this device last said of its folder of `share` (`None`: not a folder share).
    /// A driver counts a change of a folder entry the folder has not processed yet as
    /// pending, so a record that just arrived is never taken for a disk that holds it.
    pub fn folder_pending(&self, share: &ShareId) -> Option<u64> {
        self.folder_pending.get(share).copied()
    }

    /// Tells every connected member what changed in this device's progress on `share`.
    fn progress_changed(&mut self, share: &ShareId) {
        let effective = self.folder_pending(share);
        if self.folder_sent.get(share) == effective.as_ref() {
            return;
        }
        if let Some(e) = effective {
            self.folder_sent.insert(*share, e);
        }
        let peers: Vec<(ConnId, DeviceId)> = self.current.iter().map(|(p, c)| (*c, *p)).collect();
        for (conn, peer) in peers {
            self.send_progress(conn, &peer, share);
        }
    }

    /// The connection in use with `peer`, if established.
    pub fn connection_to(&self, peer: &DeviceId) -> Option<ConnId> {
        self.current.get(peer).copied()
    }

    /// Connections the node knows of, with their peers.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, DeviceId)> + '_ {
        self.conns.iter().map(|(&c, conn)| (c, conn.peer))
    }

    // ---- commands -----------------------------------------------------------------------

    /// Opens a share from its durable state. Peers already connected that are members start
    /// syncing it at once.
    pub fn open_share(
        &mut self,
        share: ShareId,
        members: BTreeMap<DeviceId, Member>,
        state: ReplicaState,
        random_index: u64,
    ) {
        let mut replica = Replica::new(share, self.key.clone(), members, state, random_index);
        replica.set_horizon(self.tombstone_horizon);
        for peer in self.current.keys() {
            if replica.is_member(peer) {
                replica.peer_connected(*peer);
            }
        }
        self.shares.insert(share, replica);
        self.collect(share);
    }

    /// Adds or changes a member of `share` (a device that just paired). A connected peer that
    /// became a member starts syncing the share at once.
    pub fn add_member(&mut self, share: &ShareId, device: DeviceId, member: Member) {
        if let Some(r) = self.shares.get_mut(share) {
            let was = r.is_member(&device);
            r.set_member(device, member);
            // Already connected (it paired into a second share): start syncing it now.
            if !was && self.current.contains_key(&device) {
                r.peer_connected(device);
            }
        }
        if let Some(&conn) = self.current.get(&device) {
            self.send_progress(conn, &device, share);
        }
    }

    /// Removes `device` from `share`. If it is a member of no other share here, its session
    /// is closed with `code` and `reason` (the peer is told why).
    pub fn remove_member(
        &mut self,
        now: Timestamp,
        share: &ShareId,
        device: &DeviceId,
        code: CloseCode,
        reason: &str,
    ) {
        let now = self.clock.observe(now);
        if let Some(r) = self.shares.get_mut(share) {
            r.remove_member(device);
        }
        self.peer_pending.remove(&(*device, *share));
        if !self.shares.values().any(|r| r.is_member(device))
            && let Some(conn) = self.current.get(device).copied()
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.session.close(now, code, reason);
            self.drain_session(now, conn);
        }
    }

    /// Writes a document (CBOR) to a share. See [`Replica::put`].
    pub fn put(
        &mut self,
        share: &ShareId,
        wall_micros: u64,
        key: &str,
        value: Bytes,
    ) -> Result<Dot, Error> {
        let replica = self.shares.get_mut(share).ok_or(Misuse::BadConfig {
            detail: "no such share".into(),
        })?;
        let dot = replica.put(wall_micros, key, value)?;
        self.collect(*share);
        Ok(dot)
    }

    /// Deletes a key in a share. See [`Replica::delete`].
    pub fn delete(&mut self, share: &ShareId, wall_micros: u64, key: &str) -> Result<Dot, Error> {
        let replica = self.shares.get_mut(share).ok_or(Misuse::BadConfig {
            detail: "no such share".into(),
        })?;
        let dot = replica.delete(wall_micros, key)?;
        self.collect(*share);
        Ok(dot)
    }

    /// Writes `value` (a tombstone for `None`) superseding exactly `context`. See
    /// [`Replica::write_after`].
    pub fn write_after(
        &mut self,
        share: &ShareId,
        wall_micros: u64,
        key: &str,
        value: Option<Bytes>,
        context: &VersionVector,
    ) -> Result<Dot, Error> {
        let replica = self.shares.get_mut(share).ok_or(Misuse::BadConfig {
            detail: "no such share".into(),
        })?;
        let dot = replica.write_after(wall_micros, key, value, context)?;
        self.collect(*share);
        Ok(dot)
    }

    /// Fetches chunk `hash` (`len` bytes) of `share` from whichever connected members have
    /// it; it arrives as [`Event::Chunk`]. See [`Fetcher`].
    pub fn want_chunk(&mut self, share: ShareId, hash: Hash, len: u32) {
        self.fetcher.want(share, hash, len);
        // With no member of the share connected, say so at once (the want stays: it is
        // fetched when one connects).
        let reachable = self
            .shares
            .get(&share)
            .is_some_and(|r| self.current.keys().any(|p| r.is_member(p)));
        if !reachable {
            self.outputs
                .push_back(Output::Event(Event::ChunkStalled { share, hash }));
        }
    }

    /// No longer wants a chunk.
    pub fn cancel_chunk(&mut self, share: &ShareId, hash: &Hash) {
        self.fetcher.cancel(share, hash);
    }

    /// Chunks wanted and not yet arrived.
    pub fn chunks_wanted(&self) -> usize {
        self.fetcher.wanted()
    }

    /// The answer to [`Output::ReadChunk`]: the bytes, or `None` if the chunk is not here.
    /// Unknown or stale ids (a connection closed meanwhile) are ignored.
    pub fn chunk_read(&mut self, conn: ConnId, id: u32, data: Option<Vec<u8>>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(len) = c.reading.remove(&id) else {
            return;
        };
        c.reading_bytes -= len as usize;
        self.answer(conn, id, data);
        self.issue_reads(conn);
    }

    /// Sends the answer to the peer's request `id` on `conn`.
    fn answer(&mut self, conn: ConnId, id: u32, data: Option<Vec<u8>>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.serving = c.serving.saturating_sub(1);
        let msg = match data {
            Some(data) => FilesMessage::Data(files_msg::Data { id, data }),
            None => FilesMessage::Missing(files_msg::Missing { id }),
        };
        let message = Message::Extension(ExtensionMessage {
            name: FILES_EXTENSION.to_owned(),
            payload: msg.encode(),
        });
        // A closed session drops the answer; the asker re-asks elsewhere. An open one has room:
        // reads are issued only under SERVE_QUEUE_BYTES.
        let _ = c.session.send(message, Priority::Bulk);
    }

    /// Hands the driver the peer's waiting chunk requests while their answers fit under
    /// [`SERVE_QUEUE_BYTES`].
    fn issue_reads(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        while let Some(read) = c.waiting.front() {
            let cost = read.len as usize + ANSWER_OVERHEAD;
            if c.session.send_queue_len() + c.reading_bytes + cost > SERVE_QUEUE_BYTES {
                return;
            }
            let Some(read) = c.waiting.pop_front() else {
                return;
            };
            // A peer that reuses an outstanding id gets one answer for both; the sum stays
            // that of the map.
            if let Some(reused) = c.reading.insert(read.id, read.len) {
                c.reading_bytes -= reused as usize;
            }
            c.reading_bytes += read.len as usize;
            self.outputs.push_back(Output::ReadChunk {
                conn,
                id: read.id,
                share: read.share,
                hash: read.hash,
                offset: read.offset,
                len: read.len,
            });
        }
    }

    /// Sets how long tombstones are kept, in microseconds, for every share, open or opened
    /// later (default [`DEFAULT_TOMBSTONE_HORIZON_MICROS`](db::replica::DEFAULT_TOMBSTONE_HORIZON_MICROS),
    /// 455 days). See [`Replica::set_horizon`].
    pub fn set_tombstone_horizon(&mut self, micros: u64) {
        self.tombstone_horizon = micros;
        for replica in self.shares.values_mut() {
            replica.set_horizon(micros);
        }
    }

    /// Forgets, in every share, the tombstones older than the horizon at the wall-clock time
    /// `wall_micros` (Unix epoch). See [`Replica::collect_garbage`]; call it rarely (daily).
    /// Returns how many tombstones were forgotten.
    pub fn collect_garbage(&mut self, wall_micros: u64) -> usize {
        let shares: Vec<ShareId> = self.shares.keys().copied().collect();
        let mut collected = 0;
        for share in shares {
            if let Some(r) = self.shares.get_mut(&share) {
                collected += r.collect_garbage(wall_micros);
            }
            self.collect(share);
        }
        collected
    }

    // ---- inputs -------------------------------------------------------------------------

    /// A transport to `peer` is open; the driver authenticated the peer's device key (TLS
    /// with pinned keys). Starts a session on it.
    pub fn handle_connected(&mut self, now: Timestamp, conn: ConnId, peer: DeviceId) {
        self.handle_connected_from(now, conn, peer, Origin::Unknown);
    }

    /// [`handle_connected`](Node::handle_connected), saying which side dialled: then two
    /// sessions opened with a peer at the same time are resolved to the same one on both
    /// sides (see [`SIMULTANEOUS_OPEN`]) instead of each side closing the other's choice.
    pub fn handle_connected_from(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        peer: DeviceId,
        origin: Origin,
    ) {
        let now = self.clock.observe(now);
        // The configuration was validated when the node was built from it.
        match Session::new(self.session_config.clone(), now) {
            Ok(session) => {
                self.conns.insert(
                    conn,
                    Conn {
                        peer,
                        origin,
                        since: None,
                        session,
                        serving: 0,
                        waiting: VecDeque::new(),
                        reading: BTreeMap::new(),
                        reading_bytes: 0,
                    },
                );
            }
            Err(_) => self.outputs.push_back(Output::Close { conn }),
        }
    }

    /// Whether the established session `old` stays and the newly established `new` (same
    /// peer) is closed. Both devices decide alike for a simultaneous open whose sides are
    /// known; otherwise the newer wins.
    fn keeps_older(&self, now: Timestamp, old: ConnId, new: ConnId) -> bool {
        let (Some(o), Some(n)) = (self.conns.get(&old), self.conns.get(&new)) else {
            return false;
        };
        let simultaneous = o
            .since
            .is_some_and(|t| now.saturating_since(t) < SIMULTANEOUS_OPEN);
        let me = self.key.device_id();
        let dialer = |c: &Conn| match c.origin {
            Origin::Dialed => Some(me),
            Origin::Accepted => Some(c.peer),
            Origin::Unknown => None,
        };
        match (simultaneous, dialer(o), dialer(n)) {
            // The one dialled by the smaller device ID stays (two dials by the same device:
            // the newer, which both sides see last).
            (true, Some(a), Some(b)) if a != b => a < b,
            _ => false,
        }
    }

    /// Ends every session with `GOING_AWAY` (this device is shutting down or going to sleep):
    /// each hands out its CLOSE from [`poll_transmit`](Node::poll_transmit), last.
    pub fn close_all(&mut self, now: Timestamp, reason: &str) {
        let now = self.clock.observe(now);
        for c in self.conns.values_mut() {
            c.session.close(now, CloseCode::GOING_AWAY, reason);
        }
    }

    /// Bytes arrived on `conn`.
    pub fn handle_bytes(&mut self, now: Timestamp, conn: ConnId, data: &[u8]) {
        let now = self.clock.observe(now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_bytes(now, data);
            self.drain_session(now, conn);
        }
    }

    /// The transport of `conn` ended.
    pub fn handle_closed(&mut self, now: Timestamp, conn: ConnId) {
        let now = self.clock.observe(now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session.handle_transport_closed(now);
            self.drain_session(now, conn);
        }
    }

    /// The deadline from [`poll_timeout`](Node::poll_timeout) has passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.clock.observe(now);
        self.fetcher.handle_timeout(now);
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.poll_timeout().is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for conn in due {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session.handle_timeout(now);
            }
            self.drain_session(now, conn);
        }
    }

    /// A `Persist` batch of `share` is durable.
    pub fn handle_persisted(&mut self, share: &ShareId, id: u64) {
        if let Some(r) = self.shares.get_mut(share) {
            r.handle_persisted(id);
            self.collect(*share);
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next output. Drain after every input or command.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next bytes for `conn`. Call whenever its transport can take more.
    pub fn poll_transmit(&mut self, now: Timestamp, conn: ConnId) -> Option<Bytes> {
        let now = self.clock.observe(now);
        self.issue_reads(conn);
        self.refill(conn);
        let c = self.conns.get_mut(&conn)?;
        let bytes = c.session.poll_transmit(now);
        if bytes.is_none() {
            self.drain_session(now, conn);
        }
        bytes
    }

    /// The earliest deadline of any session.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.conns
            .values()
            .filter_map(|c| c.session.poll_timeout())
            .chain(self.fetcher.poll_timeout())
            .min()
    }

    // ---- internals ----------------------------------------------------------------------

    /// Moves replica outputs to the node's outputs.
    fn collect(&mut self, share: ShareId) {
        let Some(r) = self.shares.get_mut(&share) else {
            return;
        };
        let mut changed = Vec::new();
        while let Some(out) = r.poll_output() {
            if let db::Output::Event(db::Event::MembersChanged { device }) = &out {
                changed.push(*device);
            }
            self.outputs.push_back(match out {
                db::Output::Persist { id, ops } => Output::Persist { share, id, ops },
                db::Output::Event(event) => Output::Event(Event::Db { share, event }),
            });
        }
        for device in changed {
            self.membership_changed(share, device);
        }
    }

    /// A membership record changed `device`'s standing in `share`: a connected device that
    /// became a member starts syncing; one that is a member of nothing here any more is
    /// disconnected and told why.
    fn membership_changed(&mut self, share: ShareId, device: DeviceId) {
        let Some(&conn) = self.current.get(&device) else {
            return;
        };
        if let Some(r) = self.shares.get_mut(&share)
            && r.is_member(&device)
            && !r.is_serving(&device)
        {
            r.peer_connected(device);
            return;
        }
        if !self.shares.values().any(|r| r.is_member(&device)) {
            let now = self.clock.latest();
            if let Some(c) = self.conns.get_mut(&conn) {
                c.session.close(
                    now,
                    NOT_A_MEMBER,
                    "this device was removed from every share it had here",
                );
            }
            self.drain_session(now, conn);
        }
    }

    /// Writes `device`'s membership of `share` as a signed, replicated record: a member with
    /// `member`'s access, or (`None`) removed. See [`Replica::set_membership`].
    pub fn set_membership(
        &mut self,
        share: &ShareId,
        wall_micros: u64,
        device: DeviceId,
        member: Option<Member>,
    ) -> Result<Dot, Error> {
        let replica = self.shares.get_mut(share).ok_or(Misuse::BadConfig {
            detail: "no such share".into(),
        })?;
        let dot = replica.set_membership(wall_micros, device, member)?;
        self.collect(*share);
        Ok(dot)
    }

    /// Queues database messages on `conn` while its session has room.
    fn refill(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.session.state() != SessionState::Established
            || self.current.get(&c.peer) != Some(&conn)
        {
            return;
        }
        let peer = c.peer;
        if c.session
            .negotiated()
            .is_some_and(|n| n.extensions.iter().any(|e| e == FILES_EXTENSION))
        {
            let shares = &self.shares;
            while let Some(req) = self
                .fetcher
                .poll_request(&peer, |s| shares.get(s).is_some_and(|r| r.is_member(&peer)))
            {
                let msg = FilesMessage::Get(files_msg::Get {
                    share: db::replica::share_tag(&req.share),
                    id: req.id,
                    hash: req.hash,
                    offset: req.offset,
                    len: req.len,
                });
                let message = Message::Extension(ExtensionMessage {
                    name: FILES_EXTENSION.to_owned(),
                    payload: msg.encode(),
                });
                if c.session.send(message, Priority::Control).is_err() {
                    return;
                }
            }
        }
        for replica in self.shares.values_mut() {
            while c.session.send_queue_len() < SESSION_HIGH_WATER {
                let Some(msg) = replica.poll_message(&peer) else {
                    break;
                };
                let message = Message::Extension(ExtensionMessage {
                    name: DB_EXTENSION.to_owned(),
                    payload: msg.encode(),
                });
                if c.session.send(message, Priority::Bulk).is_err() {
                    // Closed meanwhile: the peer re-syncs from its cursor next time.
                    return;
                }
            }
        }
    }

    fn drain_session(&mut self, now: Timestamp, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let peer = c.peer;
            let Some(event) = c.session.poll_event() else {
                break;
            };
            self.on_session_event(now, conn, peer, event);
        }
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.session.is_finished())
        {
            self.conns.remove(&conn);
            self.outputs.push_back(Output::Close { conn });
        }
    }

    fn on_session_event(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        peer: DeviceId,
        event: SessionEvent,
    ) {
        let in_use = self.current.get(&peer) == Some(&conn);
        match event {
            SessionEvent::Established(n) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.since = Some(now);
                }
                if let Some(&old) = self.current.get(&peer)
                    && old != conn
                    && self.keeps_older(now, old, conn)
                {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.session.close(
                            now,
                            CloseCode::DUPLICATE,
                            "opened at the same time as another connection, which is kept",
                        );
                    }
                    return;
                }
                if let Some(old) = self.current.insert(peer, conn)
                    && old != conn
                {
                    if let Some(o) = self.conns.get_mut(&old) {
                        o.session.close(
                            now,
                            CloseCode::DUPLICATE,
                            "replaced by a newer connection",
                        );
                    }
                    // Answers to what was asked on the old connection will not be read: ask
                    // again on the new one.
                    self.fetcher.peer_down(&peer);
                }
                for replica in self.shares.values_mut() {
                    if replica.is_member(&peer) {
                        replica.peer_connected(peer);
                    }
                }
                self.fetcher.peer_up(peer);
                let folders: Vec<ShareId> = self.folder_pending.keys().copied().collect();
                for share in folders {
                    self.send_progress(conn, &peer, &share);
                }
                self.outputs.push_back(Output::Event(Event::PeerUp {
                    peer,
                    name: n.peer_name,
                }));
            }
            SessionEvent::Message(Message::Extension(m)) if m.name == DB_EXTENSION && in_use => {
                match DbMessage::decode(&m.payload) {
                    Ok(Some(msg)) => {
                        let tag = msg.share();
                        let share = self
                            .shares
                            .keys()
                            .find(|id| db::replica::share_tag(id) == tag)
                            .copied();
                        if let Some(share) = share
                            && let Some(r) = self.shares.get_mut(&share)
                        {
                            r.handle_message(peer, msg);
                            self.collect(share);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.session.close(
                                now,
                                CloseCode::PROTOCOL_ERROR,
                                &format!("database message: {e}"),
                            );
                        }
                    }
                }
            }
            SessionEvent::Message(Message::Extension(m)) if m.name == FILES_EXTENSION && in_use => {
                if let Err(detail) = self.on_files_message(now, conn, peer, &m.payload)
                    && let Some(c) = self.conns.get_mut(&conn)
                {
                    c.session.close(
                        now,
                        CloseCode::PROTOCOL_ERROR,
                        &format!("chunk transfer: {detail}"),
                    );
                }
            }
            SessionEvent::Closed(reason) if in_use => {
                self.current.remove(&peer);
                for replica in self.shares.values_mut() {
                    replica.peer_disconnected(&peer);
                }
                self.fetcher.peer_down(&peer);
                self.peer_pending.retain(|(p, _), _| *p != peer);
                // A share with no member left connected: its wants cannot be served now; say
                // so at once (readers fail with a reason instead of waiting).
                let orphaned: Vec<ShareId> = self
                    .shares
                    .iter()
                    .filter(|(_, r)| {
                        r.is_member(&peer) && !self.current.keys().any(|p| r.is_member(p))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for share in orphaned {
                    self.fetcher.stall_share(&share);
                }
                self.collect_fetches();
                self.outputs
                    .push_back(Output::Event(Event::PeerDown { peer, reason }));
            }
            // Messages of a replaced session, other extensions, closes of replaced sessions.
            _ => {}
        }
    }

    /// Handles a chunk-transfer message; `Err` closes the connection.
    fn on_files_message(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        peer: DeviceId,
        payload: &[u8],
    ) -> Result<(), String> {
        match FilesMessage::decode(payload).map_err(|e| e.to_string())? {
            Some(FilesMessage::Get(get)) => {
                let share = self
                    .shares
                    .iter()
                    .find(|(id, r)| db::replica::share_tag(id) == get.share && r.is_member(&peer))
                    .map(|(id, _)| *id);
                let c = self.conns.get_mut(&conn).ok_or("no connection")?;
                if c.serving >= MAX_OUTSTANDING_REQUESTS {
                    return Err(format!(
                        "more than {MAX_OUTSTANDING_REQUESTS} chunk requests outstanding"
                    ));
                }
                c.serving += 1;
                match share {
                    Some(share) => {
                        c.waiting.push_back(Read {
                            id: get.id,
                            share,
                            hash: get.hash,
                            offset: get.offset,
                            len: get.len,
                        });
                        self.issue_reads(conn);
                    }
                    // Not a share we hold with this peer: we have nothing for it.
                    None => self.answer(conn, get.id, None),
                }
            }
            Some(FilesMessage::Data(data)) => {
                self.fetcher
                    .on_data(&peer, data.id, data.data)
                    .map_err(|e| e.detail)?;
                self.collect_fetches();
            }
            Some(FilesMessage::Progress(m)) => {
                let share = self
                    .shares
                    .iter()
                    .find(|(id, r)| db::replica::share_tag(id) == m.share && r.is_member(&peer))
                    .map(|(id, _)| *id);
                if let Some(share) = share {
                    self.peer_pending.insert((peer, share), m.pending);
                }
            }
            Some(FilesMessage::Missing(m)) => {
                let current = &self.current;
                let shares = &self.shares;
                self.fetcher.on_missing(now, &peer, m.id, |share, tried| {
                    current.keys().any(|p| {
                        !tried.contains(p) && shares.get(share).is_some_and(|r| r.is_member(p))
                    })
                });
                self.collect_fetches();
            }
            None => {}
        }
        Ok(())
    }

    /// Tells `peer` (on `conn`) how far this device's folder of `share` is.
    fn send_progress(&mut self, conn: ConnId, peer: &DeviceId, share: &ShareId) {
        let Some(pending) = self.folder_pending(share) else {
            return;
        };
        if !self.shares.get(share).is_some_and(|r| r.is_member(peer)) {
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c
            .session
            .negotiated()
            .is_some_and(|n| n.extensions.iter().any(|e| e == FILES_EXTENSION))
        {
            return;
        }
        let msg = FilesMessage::Progress(files_msg::Progress {
            share: db::replica::share_tag(share),
            pending,
        });
        let _ = c.session.send(
            Message::Extension(ExtensionMessage {
                name: FILES_EXTENSION.to_owned(),
                payload: msg.encode(),
            }),
            Priority::Control,
        );
    }

    /// Moves fetch events to the node's outputs.
    fn collect_fetches(&mut self) {
        while let Some(e) = self.fetcher.poll_event() {
            self.outputs.push_back(Output::Event(match e {
                FetchEvent::Chunk { share, hash, data } => Event::Chunk { share, hash, data },
                FetchEvent::Stalled { share, hash } => Event::ChunkStalled { share, hash },
            }));
        }
    }
}
