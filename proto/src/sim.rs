//! A deterministic network simulator for proto's state machines (feature `sim`).
//!
//! Nodes are values implementing [`SimNode`], kept in a `BTreeMap`; everything that happens
//! is an event in a queue ordered by `(deliver time, sequence)`. Links have latency and
//! optional bandwidth; connections can be cut at any byte offset; links can be partitioned and
//! healed; nodes can crash (with or without their peers noticing) and restart from the state
//! they persisted; every node has its own clock offset and drift. One seed reproduces a run
//! exactly: [`seed_from_env`] reads `SIM_SEED`, and a [`Simulator`] prints its seed if the test
//! panics. [`Simulator::trace_hash`] digests every event and byte, so a test can run one seed
//! twice and prove the run is deterministic.
//!
//! The transport model is a reliable ordered byte stream per direction (TCP, a QUIC stream, a
//! TLS session): bytes are delivered in order, split at random points, or not at all after a
//! cut; a partition stalls delivery until healed, as TCP retransmission does.

use core::fmt;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::time::Timestamp;

/// A node's identity in the simulator.
pub type NodeId = u32;
/// A connection's identity in the simulator.
pub type ConnId = u64;

/// What a node asks of the simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to another node.
    Connect {
        /// The node to dial.
        to: NodeId,
    },
    /// Close a connection; the peer sees the end after the bytes already sent.
    Close {
        /// The connection.
        conn: ConnId,
    },
}

/// A state machine the simulator can drive. Times passed in are the node's local clock.
pub trait SimNode {
    /// What survives a crash: exactly what the node has made durable.
    type Persisted: Clone + fmt::Debug;

    /// A connection is open (`outbound`: this node dialled it).
    fn on_connected(&mut self, now: Timestamp, conn: ConnId, peer: NodeId, outbound: bool);
    /// A dial failed (peer down or unreachable).
    fn on_connect_failed(&mut self, now: Timestamp, peer: NodeId);
    /// Bytes arrived on a connection.
    fn on_bytes(&mut self, now: Timestamp, conn: ConnId, data: &[u8]);
    /// The connection ended (peer closed it, it was cut, the peer's host crashed).
    fn on_closed(&mut self, now: Timestamp, conn: ConnId);
    /// The deadline from `poll_timeout` has passed.
    fn on_timeout(&mut self, now: Timestamp);
    /// The next network action.
    fn poll_action(&mut self, now: Timestamp) -> Option<Action>;
    /// The next bytes to send on `conn`, if the node has any.
    fn poll_transmit(&mut self, now: Timestamp, conn: ConnId) -> Option<Bytes>;
    /// The node's next deadline.
    fn poll_timeout(&self) -> Option<Timestamp>;
    /// The node's durable state, as a restart would find it.
    fn persisted(&self) -> Self::Persisted;
}

/// How a pair of nodes is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// One-way latency.
    pub latency: Duration,
    /// Bytes per second in each direction; `None` for unlimited.
    pub bandwidth: Option<u64>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::from_millis(20),
            bandwidth: None,
        }
    }
}

/// A node's clock relative to the simulator's true time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockSkew {
    /// Offset in microseconds (local = true + offset + drift).
    pub offset_micros: i64,
    /// Drift in parts per million (100 means the clock runs 0.01 % fast).
    pub drift_ppm: i64,
}

impl ClockSkew {
    fn local(&self, t: Timestamp) -> Timestamp {
        let t = i128::from(t.as_micros());
        let local = t + i128::from(self.offset_micros) + t * i128::from(self.drift_ppm) / 1_000_000;
        Timestamp::from_micros(local.clamp(0, i128::from(u64::MAX)) as u64)
    }

    /// The earliest true time at which the local clock reads at least `local`.
    fn true_time_of(&self, local: Timestamp) -> Timestamp {
        let l = i128::from(local.as_micros()) - i128::from(self.offset_micros);
        let rate = 1_000_000 + i128::from(self.drift_ppm);
        let mut t =
            Timestamp::from_micros((l * 1_000_000 / rate).clamp(0, i128::from(u64::MAX)) as u64);
        // The estimate is off by rounding only; walk to the exact answer.
        while t > Timestamp::ZERO && self.local(Timestamp::from_micros(t.as_micros() - 1)) >= local
        {
            t = Timestamp::from_micros(t.as_micros() - 1);
        }
        while self.local(t) < local && t < Timestamp::MAX {
            t = Timestamp::from_micros(t.as_micros() + 1);
        }
        t
    }
}

/// Reads `SIM_SEED` (decimal or `0x` hex) or returns `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("SIM_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("SIM_SEED={s:?} is not a u64"))
        }
        Err(_) => default,
    }
}

/// Where a node stands.
struct NodeSlot<N: SimNode> {
    node: Option<N>,
    persisted: Option<N::Persisted>,
    skew: ClockSkew,
    /// The true time of the timer event currently scheduled, if any.
    timer: Option<Timestamp>,
    timer_generation: u64,
}

/// One direction of a connection.
#[derive(Default)]
struct Direction {
    /// Items in flight, in order: bytes or the end of stream, with their earliest delivery.
    in_flight: VecDeque<(Timestamp, Option<Bytes>)>,
    /// Whether a DeliverNext event is scheduled for this direction.
    scheduled: bool,
    /// Whether a Pump event is scheduled for this direction (its socket buffer was full).
    pump_scheduled: bool,
    /// The true time at which the sender's bytes so far have left the wire (bandwidth).
    wire_free_at: Timestamp,
    /// Bytes accepted from the sender.
    sent: u64,
    /// Deliver at most this many bytes, then end the connection.
    cut_at: Option<u64>,
    /// No more bytes are accepted from the sender.
    closed: bool,
}

struct Conn {
    /// `ends[0]` dialled `ends[1]`.
    ends: [NodeId; 2],
    /// `dirs[i]` carries bytes from `ends[i]`.
    dirs: [Direction; 2],
    /// Whether each end still has the connection open (has been told of it and not of its end).
    open: [bool; 2],
}

impl Conn {
    fn side(&self, node: NodeId) -> Option<usize> {
        self.ends.iter().position(|&n| n == node)
    }
}

#[derive(Debug, Clone)]
enum SimEvent {
    Connected { conn: ConnId },
    ConnectFailed { from: NodeId, to: NodeId },
    DeliverNext { conn: ConnId, dir: usize },
    Pump { conn: ConnId, dir: usize },
    Timer { node: NodeId, generation: u64 },
}

/// How long a dial to an unreachable node takes to fail.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes a sender may have queued on the wire before the simulator stops pulling from it.
pub const SOCKET_BUFFER: u64 = 256 * 1024;

/// Builds a node, fresh (`None`) or from what it persisted before a crash.
type Factory<N> = Box<dyn FnMut(NodeId, Option<&<N as SimNode>::Persisted>, Timestamp) -> N>;

/// The simulator. See the [module docs](self).
pub struct Simulator<N: SimNode> {
    seed: u64,
    rng: ChaCha8Rng,
    now: Timestamp,
    seq: u64,
    queue: BTreeMap<(Timestamp, u64), SimEvent>,
    nodes: BTreeMap<NodeId, NodeSlot<N>>,
    factory: Factory<N>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    links: BTreeMap<(NodeId, NodeId), LinkConfig>,
    default_link: LinkConfig,
    partitions: BTreeSet<(NodeId, NodeId)>,
    random_cuts: Option<(u32, u64)>,
    hasher: Sha256,
    events_processed: u64,
    recent: VecDeque<String>,
}

impl<N: SimNode> fmt::Debug for Simulator<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("conns", &self.conns.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

/// How many recent events are kept for the failure report.
const RECENT_EVENTS: usize = 40;

impl<N: SimNode> Simulator<N> {
    /// A simulator whose randomness comes from `seed`. `factory` builds a node, fresh
    /// (`None`) or from what it persisted before a crash.
    pub fn new(
        seed: u64,
        factory: impl FnMut(NodeId, Option<&N::Persisted>, Timestamp) -> N + 'static,
    ) -> Simulator<N> {
        Simulator {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Timestamp::ZERO,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: BTreeMap::new(),
            factory: Box::new(factory),
            conns: BTreeMap::new(),
            next_conn: 1,
            links: BTreeMap::new(),
            default_link: LinkConfig::default(),
            partitions: BTreeSet::new(),
            random_cuts: None,
            hasher: Sha256::new(),
            events_processed: 0,
            recent: VecDeque::new(),
        }
    }

    // ---- setup ---------------------------------------------------------------------------

    /// The seed this run uses.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The simulator's deterministic random number generator, for tests' own choices.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// A uniformly random number in `0..n` (`n > 0`).
    pub fn random_below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    /// Adds a node with the given clock skew and starts it.
    pub fn add_node(&mut self, skew: ClockSkew) -> NodeId {
        let id = self.nodes.keys().next_back().map_or(0, |&n| n + 1);
        let local = skew.local(self.now);
        let node = (self.factory)(id, None, local);
        self.nodes.insert(
            id,
            NodeSlot {
                node: Some(node),
                persisted: None,
                skew,
                timer: None,
                timer_generation: 0,
            },
        );
        self.record(format!("add node {id} skew {skew:?}"));
        self.settle(id);
        id
    }

    /// Sets the link between `a` and `b` (both directions).
    pub fn set_link(&mut self, a: NodeId, b: NodeId, link: LinkConfig) {
        self.links.insert(pair(a, b), link);
    }

    /// Sets the link used between nodes without a specific one.
    pub fn set_default_link(&mut self, link: LinkConfig) {
        self.default_link = link;
    }

    /// From now on, each direction of each new connection is cut, with probability
    /// `percent`/100, after a uniformly random number of bytes below `max_offset`.
    pub fn set_random_cuts(&mut self, percent: u32, max_offset: u64) {
        self.random_cuts = Some((percent.min(100), max_offset.max(1)));
    }

    /// Stops cutting new connections at random.
    pub fn clear_random_cuts(&mut self) {
        self.random_cuts = None;
    }

    // ---- faults --------------------------------------------------------------------------

    /// Cuts the connection after `from` has sent `offset` bytes in total on it: the peer
    /// receives exactly those bytes, then both ends see the connection end.
    pub fn cut_after(&mut self, conn: ConnId, from: NodeId, offset: u64) {
        if let Some(c) = self.conns.get_mut(&conn)
            && let Some(side) = c.side(from)
        {
            c.dirs[side].cut_at = Some(offset);
            self.record(format!("cut conn {conn} from {from} at {offset}"));
            // Bytes beyond the cut may already be in flight: trim them now.
            self.apply_cut(conn, side);
        }
    }

    /// Stops all delivery between `a` and `b` until [`heal`](Simulator::heal); dials fail.
    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.partitions.insert(pair(a, b));
        self.record(format!("partition {a} {b}"));
    }

    /// Partitions every node of `left` from every node of `right`.
    pub fn partition_groups(&mut self, left: &[NodeId], right: &[NodeId]) {
        for &a in left {
            for &b in right {
                self.partition(a, b);
            }
        }
    }

    /// Ends the partition between `a` and `b`; stalled bytes flow again after one latency.
    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        if !self.partitions.remove(&pair(a, b)) {
            return;
        }
        self.record(format!("heal {a} {b}"));
        let latency = self.link(a, b).latency;
        let now = self.now;
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| pair(c.ends[0], c.ends[1]) == pair(a, b))
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            for dir in 0..2 {
                if let Some(c) = self.conns.get_mut(&id) {
                    for item in c.dirs[dir].in_flight.iter_mut() {
                        item.0 = item.0.max(now + latency);
                    }
                    c.dirs[dir].scheduled = false;
                }
                self.schedule_delivery(id, dir);
            }
        }
    }

    /// Heals every partition.
    pub fn heal_all(&mut self) {
        let all: Vec<_> = self.partitions.iter().copied().collect();
        for (a, b) in all {
            self.heal(a, b);
        }
    }

    /// Crashes `node`: its in-memory state is gone, only [`SimNode::persisted`] survives.
    /// With `silent`, peers are not told (a power cut); otherwise their connections end after
    /// one latency (the host's kernel resets them).
    pub fn crash(&mut self, node: NodeId, silent: bool) {
        let Some(slot) = self.nodes.get_mut(&node) else {
            return;
        };
        let Some(state) = slot.node.take() else {
            return;
        };
        slot.persisted = Some(state.persisted());
        slot.timer = None;
        slot.timer_generation += 1;
        self.record(format!("crash {node} silent {silent}"));
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.side(node).is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let Some(side) = c.side(node) else { continue };
            c.open[side] = false;
            // Nothing more leaves the crashed side; what it sent is dropped with its buffers.
            c.dirs[side].in_flight.clear();
            c.dirs[side].closed = true;
            // Nothing arrives at it any more; the survivor may still write into the void
            // until it notices.
            c.dirs[1 - side].in_flight.clear();
            let ends = c.ends;
            if !silent {
                let t = self.now + self.link(ends[0], ends[1]).latency;
                if let Some(c) = self.conns.get_mut(&id) {
                    c.dirs[side].in_flight.push_back((t, None));
                }
                self.schedule_delivery(id, side);
            }
        }
    }

    /// Restarts a crashed node from what it persisted.
    pub fn restart(&mut self, node: NodeId) {
        let local = match self.nodes.get(&node) {
            Some(slot) if slot.node.is_none() => slot.skew.local(self.now),
            _ => return,
        };
        let persisted = self.nodes.get_mut(&node).and_then(|s| s.persisted.take());
        let state = (self.factory)(node, persisted.as_ref(), local);
        if let Some(slot) = self.nodes.get_mut(&node) {
            slot.node = Some(state);
        }
        self.record(format!("restart {node}"));
        self.settle(node);
    }

    // ---- running -------------------------------------------------------------------------

    /// True time now.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// `node`'s local clock now.
    pub fn local_now(&self, node: NodeId) -> Timestamp {
        self.nodes
            .get(&node)
            .map_or(self.now, |s| s.skew.local(self.now))
    }

    /// A running node.
    pub fn node(&self, id: NodeId) -> Option<&N> {
        self.nodes.get(&id).and_then(|s| s.node.as_ref())
    }

    /// Runs `f` on a running node (to issue commands), then lets the simulator act on what
    /// the node now wants. Returns `None` if the node is down.
    pub fn with_node<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut N, Timestamp) -> R,
    ) -> Option<R> {
        let local = self.local_now(id);
        let result = f(self.nodes.get_mut(&id)?.node.as_mut()?, local);
        self.settle(id);
        Some(result)
    }

    /// The ids of all nodes, running or crashed.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Events processed so far.
    pub fn events_processed(&self) -> u64 {
        self.events_processed
    }

    /// Connections currently known to the simulator.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// A digest of everything that happened so far.
    pub fn trace_hash(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Processes the next event. Returns `false` when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(((at, _), event)) = self.queue.pop_first() else {
            return false;
        };
        self.now = self.now.max(at);
        self.events_processed += 1;
        self.process(event);
        true
    }

    /// Processes events until true time `until` (events at exactly `until` included).
    pub fn run_until(&mut self, until: Timestamp) {
        while let Some((&(at, _), _)) = self.queue.first_key_value() {
            if at > until {
                break;
            }
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Processes events for `d` of true time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until `done(self)` holds, checked after every event, or until `limit` of true time
    /// has passed. Returns whether `done` held.
    pub fn run_until_true(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            match self.queue.first_key_value() {
                Some((&(at, _), _)) if at <= end => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(end);
                    return done(self);
                }
            }
        }
    }

    // ---- internals -----------------------------------------------------------------------

    fn link(&self, a: NodeId, b: NodeId) -> LinkConfig {
        self.links
            .get(&pair(a, b))
            .copied()
            .unwrap_or(self.default_link)
    }

    fn push(&mut self, at: Timestamp, event: SimEvent) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), event);
    }

    fn record(&mut self, line: String) {
        self.hasher.update(self.now.as_micros().to_be_bytes());
        self.hasher.update(line.as_bytes());
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(format!("{:?} {line}", self.now));
    }

    fn running(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|s| s.node.is_some())
    }

    fn process(&mut self, event: SimEvent) {
        match event {
            SimEvent::Timer { node, generation } => {
                let Some(slot) = self.nodes.get_mut(&node) else {
                    return;
                };
                if slot.timer_generation != generation || slot.node.is_none() {
                    return;
                }
                slot.timer = None;
                let local = slot.skew.local(self.now);
                self.record(format!("timer {node}"));
                let Some(n) = self.nodes.get_mut(&node).and_then(|s| s.node.as_mut()) else {
                    return;
                };
                n.on_timeout(local);
                if let Some(next) = n.poll_timeout() {
                    assert!(
                        next > local,
                        "node {node}: timer at {next:?} still due after on_timeout({local:?})"
                    );
                }
                self.settle(node);
            }
            SimEvent::ConnectFailed { from, to } => {
                self.record(format!("connect failed {from} -> {to}"));
                let local = self.local_now(from);
                if let Some(n) = self.nodes.get_mut(&from).and_then(|s| s.node.as_mut()) {
                    n.on_connect_failed(local, to);
                    self.settle(from);
                }
            }
            SimEvent::Connected { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let [from, to] = c.ends;
                if !self.running(from) || !self.running(to) || self.partitioned(from, to) {
                    self.conns.remove(&conn);
                    self.record(format!("connect refused {from} -> {to}"));
                    let local = self.local_now(from);
                    if let Some(n) = self.nodes.get_mut(&from).and_then(|s| s.node.as_mut()) {
                        n.on_connect_failed(local, to);
                        self.settle(from);
                    }
                    return;
                }
                self.record(format!("connected {conn}: {from} -> {to}"));
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.open = [true, true];
                }
                for (node, peer, outbound) in [(from, to, true), (to, from, false)] {
                    let local = self.local_now(node);
                    if let Some(n) = self.nodes.get_mut(&node).and_then(|s| s.node.as_mut()) {
                        n.on_connected(local, conn, peer, outbound);
                    }
                }
                self.settle(from);
                self.settle(to);
            }
            SimEvent::Pump { conn, dir } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.dirs[dir].pump_scheduled = false;
                    let node = c.ends[dir];
                    self.pump(node, conn, dir);
                    self.settle(node);
                }
            }
            SimEvent::DeliverNext { conn, dir } => self.deliver_next(conn, dir),
        }
    }

    fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.partitions.contains(&pair(a, b))
    }

    fn deliver_next(&mut self, conn: ConnId, dir: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.dirs[dir].scheduled = false;
        let [a, b] = c.ends;
        if self.partitions.contains(&pair(a, b)) {
            // Stalled until heal, which reschedules.
            return;
        }
        let Some(&(at, _)) = c.dirs[dir].in_flight.front() else {
            return;
        };
        if at > self.now {
            self.schedule_delivery(conn, dir);
            return;
        }
        let Some((_, item)) = c.dirs[dir].in_flight.pop_front() else {
            return;
        };
        let to = c.ends[1 - dir];
        let receiver_open = c.open[1 - dir];
        match item {
            Some(data) => {
                self.hasher.update(&data);
                self.record(format!("deliver {conn} -> {to}: {} bytes", data.len()));
                if receiver_open {
                    // Split into random pieces: receivers must cope with any boundary.
                    let local = self.local_now(to);
                    let mut rest = data;
                    while !rest.is_empty() {
                        let piece = if self.rng.next_u32().is_multiple_of(4) {
                            1 + self.random_below(rest.len() as u64) as usize
                        } else {
                            rest.len()
                        };
                        let head = rest.split_to(piece);
                        if let Some(n) = self.nodes.get_mut(&to).and_then(|s| s.node.as_mut()) {
                            n.on_bytes(local, conn, &head);
                        }
                    }
                    self.settle(to);
                }
            }
            None => {
                self.record(format!("end of stream {conn} -> {to}"));
                if let Some(c) = self.conns.get_mut(&conn) {
                    let was_open = c.open[1 - dir];
                    c.open[1 - dir] = false;
                    // The receiver can send no more either: the connection is gone. Its own
                    // end of stream (after a cut) still reaches the other side.
                    c.dirs[1 - dir].closed = true;
                    c.dirs[1 - dir].in_flight.retain(|(_, item)| item.is_none());
                    if was_open {
                        let local = self.local_now(to);
                        if let Some(n) = self.nodes.get_mut(&to).and_then(|s| s.node.as_mut()) {
                            n.on_closed(local, conn);
                        }
                        self.settle(to);
                    }
                }
            }
        }
        self.gc_conn(conn);
        self.schedule_delivery(conn, dir);
    }

    /// Forgets a connection once nothing can happen on it any more.
    fn gc_conn(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn)
            && !c.open[0]
            && !c.open[1]
            && c.dirs.iter().all(|d| d.in_flight.is_empty())
        {
            self.conns.remove(&conn);
        }
    }

    fn schedule_delivery(&mut self, conn: ConnId, dir: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.dirs[dir].scheduled {
            return;
        }
        let Some(&(at, _)) = c.dirs[dir].in_flight.front() else {
            return;
        };
        c.dirs[dir].scheduled = true;
        self.push(at, SimEvent::DeliverNext { conn, dir });
    }

    /// Lets `node` act: its network actions, its pending bytes on every connection, its timer.
    /// Repeats until pulling bytes produces no new action (a session that sent its last
    /// frame asks for its connection to be closed).
    fn settle(&mut self, node: NodeId) {
        let local = self.local_now(node);
        let mut first = true;
        loop {
            let mut acted = false;
            loop {
                let Some(n) = self.nodes.get_mut(&node).and_then(|s| s.node.as_mut()) else {
                    return;
                };
                let Some(action) = n.poll_action(local) else {
                    break;
                };
                acted = true;
                match action {
                    Action::Connect { to } => self.dial(node, to),
                    Action::Close { conn } => self.close_from(node, conn),
                }
            }
            if !acted && !first {
                break;
            }
            first = false;
            let ids: Vec<(ConnId, usize)> = self
                .conns
                .iter()
                .filter_map(|(&id, c)| c.side(node).filter(|&s| c.open[s]).map(|s| (id, s)))
                .collect();
            for (id, side) in ids {
                self.pump(node, id, side);
            }
        }
        self.rearm(node);
    }

    fn dial(&mut self, from: NodeId, to: NodeId) {
        let link = self.link(from, to);
        if !self.nodes.contains_key(&to) || self.partitioned(from, to) {
            self.record(format!("dial {from} -> {to} (unreachable)"));
            self.push(
                self.now + CONNECT_TIMEOUT,
                SimEvent::ConnectFailed { from, to },
            );
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let mut conn = Conn {
            ends: [from, to],
            dirs: Default::default(),
            open: [false, false],
        };
        if let Some((percent, max_offset)) = self.random_cuts {
            for dir in &mut conn.dirs {
                if self.rng.next_u32() % 100 < percent {
                    dir.cut_at = Some(self.rng.next_u64() % max_offset);
                }
            }
        }
        let cuts = [conn.dirs[0].cut_at, conn.dirs[1].cut_at];
        self.conns.insert(id, conn);
        self.record(format!("dial {from} -> {to} conn {id} cuts {cuts:?}"));
        // One round trip to set up (refused after it if the peer is down by then).
        self.push(
            self.now + link.latency * 2,
            SimEvent::Connected { conn: id },
        );
    }

    fn close_from(&mut self, node: NodeId, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(side) = c.side(node) else { return };
        if !c.open[side] {
            return;
        }
        c.open[side] = false;
        self.record(format!("close {conn} by {node}"));
        self.end_direction(conn, side);
        // Whatever the peer still sends is discarded by the closed socket.
        if let Some(c) = self.conns.get_mut(&conn) {
            c.dirs[1 - side]
                .in_flight
                .retain(|(_, item)| item.is_none());
        }
    }

    /// Queues the end of stream from `side` after everything it already sent.
    fn end_direction(&mut self, conn: ConnId, side: usize) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.dirs[side].closed {
            return;
        }
        let latency = self.link(c.ends[0], c.ends[1]).latency;
        let now = self.now;
        if let Some(c) = self.conns.get_mut(&conn) {
            let d = &mut c.dirs[side];
            d.closed = true;
            let at = d
                .in_flight
                .back()
                .map_or(now + latency, |&(t, _)| t.max(now + latency));
            d.in_flight.push_back((at, None));
        }
        self.schedule_delivery(conn, side);
    }

    /// Pulls bytes from `node` for `conn` while its socket buffer has room.
    fn pump(&mut self, node: NodeId, conn: ConnId, side: usize) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let link = self.link(c.ends[0], c.ends[1]);
        let local = self.local_now(node);
        loop {
            let Some(c) = self.conns.get(&conn) else {
                return;
            };
            let d = &c.dirs[side];
            if d.closed || !c.open[side] {
                return;
            }
            if let Some(bw) = link.bandwidth {
                let buffered = self.now.max(d.wire_free_at) - self.now;
                let budget = Duration::from_micros(SOCKET_BUFFER * 1_000_000 / bw.max(1));
                if buffered >= budget {
                    if !d.pump_scheduled {
                        let at = d.wire_free_at - budget / 2;
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.dirs[side].pump_scheduled = true;
                        }
                        self.push(at, SimEvent::Pump { conn, dir: side });
                    }
                    return;
                }
            }
            let Some(n) = self.nodes.get_mut(&node).and_then(|s| s.node.as_mut()) else {
                return;
            };
            let Some(bytes) = n.poll_transmit(local, conn) else {
                return;
            };
            let now = self.now;
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let d = &mut c.dirs[side];
            let start = now.max(d.wire_free_at);
            let on_wire = link.bandwidth.map_or(Duration::ZERO, |bw| {
                Duration::from_micros(bytes.len() as u64 * 1_000_000 / bw.max(1))
            });
            d.wire_free_at = start + on_wire;
            let at = d.wire_free_at + link.latency;
            // Keep order even if the link changed.
            let at = d.in_flight.back().map_or(at, |&(t, _)| t.max(at));
            d.sent += bytes.len() as u64;
            d.in_flight.push_back((at, Some(bytes)));
            self.apply_cut(conn, side);
            self.schedule_delivery(conn, side);
        }
    }

    /// Trims what `side` has in flight to its cut offset and ends the connection there.
    fn apply_cut(&mut self, conn: ConnId, side: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let d = &mut c.dirs[side];
        let Some(cut) = d.cut_at else { return };
        if d.sent < cut || d.closed {
            return;
        }
        // Keep exactly `cut` bytes of everything ever sent in this direction.
        let mut excess = d.sent - cut;
        while excess > 0 {
            let Some((_, Some(last))) = d.in_flight.back_mut() else {
                break;
            };
            if last.len() as u64 <= excess {
                excess -= last.len() as u64;
                d.in_flight.pop_back();
            } else {
                last.truncate(last.len() - excess as usize);
                excess = 0;
            }
        }
        d.sent = cut;
        self.record(format!("cut takes effect on {conn} side {side}"));
        self.end_direction(conn, side);
        // The other direction dies with it.
        if let Some(c) = self.conns.get(&conn)
            && !c.dirs[1 - side].closed
        {
            self.end_direction(conn, 1 - side);
        }
    }

    fn rearm(&mut self, node: NodeId) {
        let Some(slot) = self.nodes.get_mut(&node) else {
            return;
        };
        let Some(n) = slot.node.as_ref() else { return };
        let deadline = n.poll_timeout().map(|local| slot.skew.true_time_of(local));
        if deadline == slot.timer {
            return;
        }
        slot.timer_generation += 1;
        slot.timer = deadline;
        let generation = slot.timer_generation;
        if let Some(at) = deadline {
            self.push(at, SimEvent::Timer { node, generation });
        }
    }
}

impl<N: SimNode> Drop for Simulator<N> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed at {:?} after {} events; reproduce with SIM_SEED={}\nlast events:",
                self.now, self.events_processed, self.seed
            );
            for line in &self.recent {
                eprintln!("  {line}");
            }
        }
    }
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skewed_clocks_invert() {
        for skew in [
            ClockSkew {
                offset_micros: 0,
                drift_ppm: 0,
            },
            ClockSkew {
                offset_micros: 5_000_000,
                drift_ppm: 250,
            },
            ClockSkew {
                offset_micros: -3_000_000,
                drift_ppm: -400,
            },
        ] {
            for t in [0u64, 1, 999_999, 3_600_000_000, 1_814_400_000_000] {
                let local = Timestamp::from_micros(t);
                let tt = skew.true_time_of(local);
                assert!(skew.local(tt) >= local || tt == Timestamp::ZERO);
                if tt > Timestamp::ZERO {
                    assert!(skew.local(Timestamp::from_micros(tt.as_micros() - 1)) < local);
                }
            }
        }
    }
}
