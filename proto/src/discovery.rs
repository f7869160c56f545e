//! LAN discovery: authenticated announcements that let the members of a share find each
//! other's addresses on the local network without revealing which share they are in
//! (`spec/discovery.md`).
//!
//! A device that holds shares and listens for members on a TCP port sends, over UDP multicast
//! and broadcast, a small [`Announcement`]: the port, the wall time, a random nonce and, per
//! share, a **rotating discovery ID** with a MAC. The ID is derived from the share ID (a secret
//! only members know) and the current hour, so an observer sees unlinkable random-looking IDs,
//! and only a member of the share can recognise them. No device ID travels in clear: a member
//! that recognises an ID dials the sender's address, and TLS, which pins keys, tells who it is.
//!
//! [`Discovery`] is the sans-IO state machine a driver binds to UDP sockets:
//!
//! * inputs: [`handle_packet`](Discovery::handle_packet) for each datagram received;
//! * commands: [`set_shares`](Discovery::set_shares), [`set_port`](Discovery::set_port),
//!   [`request_announce`](Discovery::request_announce) (after a network change);
//! * outputs: drain [`poll_announce`](Discovery::poll_announce) until `None` and send each
//!   packet on every path (multicast and broadcast, IPv4 and IPv6); then sleep until
//!   [`poll_timeout`](Discovery::poll_timeout) (or a packet) and poll again.
//!
//! Two clocks come in: `now`, the driver's monotonic [`Timestamp`], for the schedule and the
//! rate limits; and `wall`, microseconds since the Unix epoch, for the ID epoch and the
//! freshness of announcements (peers compare wall clocks, never monotonic ones).
//!
//! A stranger's packet costs one table lookup per entry and no MAC: the rotating IDs of our
//! shares for the previous, current and next epoch sit in a table rebuilt once an hour. MAC
//! work on packets whose IDs do match is bounded by a token bucket per source address and a
//! global one.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::Sha256;

use crate::db::ShareId;
use crate::error::Misuse;
use crate::time::{Clock, Timestamp};

/// Wall-clock time: microseconds since the Unix epoch, passed in by the caller.
pub type UnixMicros = u64;

/// The first four bytes of every announcement.
pub const MAGIC: [u8; 4] = *b"CSKD";
/// The announcement format this module speaks.
pub const VERSION: u8 = 1;
/// Flag bit: the sender started or its shares or port changed; members that hear it answer
/// with an announcement of their own (rate-limited), so a newcomer learns them at once.
pub const FLAG_HELLO: u8 = 0x01;
/// Bytes before the first entry: magic, version, flags, port, time, nonce, count.
pub const HEADER_LEN: usize = 25;
/// Bytes of the header covered by each entry's MAC: everything but the count.
pub const MAC_HEADER_LEN: usize = 24;
/// Bytes of a rotating discovery ID.
pub const DISCOVERY_ID_LEN: usize = 16;
/// Bytes of an entry's MAC (HMAC-SHA256 truncated).
pub const ENTRY_MAC_LEN: usize = 16;
/// Bytes of one entry: the ID and its MAC.
pub const ENTRY_LEN: usize = DISCOVERY_ID_LEN + ENTRY_MAC_LEN;
/// Entries in one announcement at most; a device with more shares sends several packets.
pub const MAX_ENTRIES: usize = 12;
/// The largest announcement: 409 bytes, well under any link's MTU.
pub const MAX_PACKET_LEN: usize = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN;
/// Bytes of the nonce.
pub const NONCE_LEN: usize = 8;

/// HKDF `info` of the discovery key.
pub const KEY_INFO: &[u8] = b"clearskies/discovery/v1";
/// Prefix of the rotating ID's HMAC input.
pub const ID_LABEL: &[u8] = b"id";
/// Prefix of an entry MAC's HMAC input.
pub const MAC_LABEL: &[u8] = b"mac";

const SECOND: u64 = 1_000_000;
/// Length of an ID epoch: one hour of wall time.
pub const EPOCH_MICROS: u64 = 3600 * SECOND;
/// An announcement whose time is further than this from the receiver's wall clock is stale.
pub const TIME_WINDOW_MICROS: u64 = 300 * SECOND;

/// The UDP port announcements are sent to and received on.
pub const UDP_PORT: u16 = 27183;
/// The IPv4 multicast group (organisation-local scope, RFC 2365).
pub const IPV4_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 67, 83);
/// The IPv6 multicast group: transient, link-local scope (`ff12::/16`), group ID "csky".
pub const IPV6_GROUP: Ipv6Addr = Ipv6Addr::new(0xff12, 0, 0, 0, 0, 0, 0x6373, 0x6b79);

/// Shares a [`Discovery`] announces and recognises at most.
pub const MAX_SHARES: usize = 256;
/// Accepted announcements remembered to refuse replays.
pub const REPLAY_CACHE_LIMIT: usize = 1024;
/// Nonces of our own recent packets, remembered to ignore our multicast looping back.
pub const OWN_NONCES_LIMIT: usize = 64;
/// Source addresses whose token buckets are tracked; beyond, the least recently seen goes.
pub const MAX_TRACKED_SOURCES: usize = 256;
/// MAC verifications one source address may burst.
pub const SOURCE_BUCKET_CAPACITY: u32 = 16;
/// One MAC verification token per source address comes back this often (4 per second).
pub const SOURCE_REFILL_MICROS: u64 = 250_000;
/// MAC verifications all sources together may burst.
pub const GLOBAL_BUCKET_CAPACITY: u32 = 64;
/// One global token comes back this often (50 per second).
pub const GLOBAL_REFILL_MICROS: u64 = 20_000;

/// Offsets from a change (start, shares or port changed, network changed) of the hello
/// announcements sent for it: at once, after 2 s and after 6 s, so one lost datagram or a
/// peer whose socket was not yet open does not cost a whole interval.
pub const BURST_OFFSETS_MICROS: [u64; 3] = [0, 2 * SECOND, 6 * SECOND];
/// An answer to a hello is sent at most this often.
pub const ANSWER_MIN_INTERVAL_MICROS: u64 = 2 * SECOND;
/// An answer waits a random delay below this, so a LAN full of members does not answer at
/// once.
pub const ANSWER_MAX_JITTER_MICROS: u64 = 500_000;
/// The shortest interval a [`Schedule`] may have.
pub const MIN_INTERVAL_MICROS: u64 = 10 * SECOND;

// ---------------------------------------------------------------------------------------------
// Keys and IDs
// ---------------------------------------------------------------------------------------------

/// A share's discovery key: `HKDF-SHA256(salt = none, ikm = share ID, info = KEY_INFO, 32)`.
/// Only members know the share ID, so only members can compute it; the share ID itself never
/// appears in an announcement.
pub fn discovery_key(share: &ShareId) -> [u8; 32] {
    let mut key = [0; 32];
    Hkdf::<Sha256>::new(None, share)
        .expand(KEY_INFO, &mut key)
        // HKDF-SHA256 can expand up to 255 * 32 bytes; 32 always fits.
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// The ID epoch of a wall time: whole hours since the Unix epoch.
pub fn epoch(wall: UnixMicros) -> u64 {
    wall / EPOCH_MICROS
}

fn hmac_state(key: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// The rotating ID of a share in `epoch`: the first 16 bytes of
/// `HMAC-SHA256(discovery key, ID_LABEL ‖ epoch as u64 big-endian)`.
pub fn discovery_id(key: &[u8; 32], epoch: u64) -> [u8; DISCOVERY_ID_LEN] {
    let mut mac = hmac_state(key);
    mac.update(ID_LABEL);
    mac.update(&epoch.to_be_bytes());
    truncate(&mac.finalize().into_bytes())
}

/// The MAC of one entry: the first 16 bytes of
/// `HMAC-SHA256(discovery key, MAC_LABEL ‖ header[0..24] ‖ id)`.
pub fn entry_mac(
    key: &[u8; 32],
    header: &[u8; MAC_HEADER_LEN],
    id: &[u8; DISCOVERY_ID_LEN],
) -> [u8; ENTRY_MAC_LEN] {
    let mut mac = hmac_state(key);
    mac.update(MAC_LABEL);
    mac.update(header);
    mac.update(id);
    truncate(&mac.finalize().into_bytes())
}

/// Constant-time comparison of a received MAC with the expected one.
fn entry_mac_matches(
    key: &[u8; 32],
    header: &[u8; MAC_HEADER_LEN],
    id: &[u8; DISCOVERY_ID_LEN],
    received: &[u8; ENTRY_MAC_LEN],
) -> bool {
    let mut mac = hmac_state(key);
    mac.update(MAC_LABEL);
    mac.update(header);
    mac.update(id);
    mac.verify_truncated_left(received).is_ok()
}

fn truncate<const N: usize>(full: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&full[..N]);
    out
}

// ---------------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------------

/// One share's entry in an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The share's rotating ID for the epoch of the announcement's time.
    pub id: [u8; DISCOVERY_ID_LEN],
    /// [`entry_mac`] over the header and the ID.
    pub mac: [u8; ENTRY_MAC_LEN],
}

/// An announcement as it travels (`spec/discovery.md` § 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Flag bits ([`FLAG_HELLO`]; others reserved: sent as 0, ignored on receipt).
    pub flags: u8,
    /// The TCP port the sender accepts members on (never 0).
    pub port: u16,
    /// The sender's wall time when it sent the packet.
    pub time: UnixMicros,
    /// Random, fresh per packet.
    pub nonce: [u8; NONCE_LEN],
    /// One to [`MAX_ENTRIES`] entries.
    pub entries: Vec<Entry>,
}

impl Announcement {
    /// The header bytes each entry's MAC covers: magic, version, flags, port, time, nonce.
    pub fn mac_header(&self) -> [u8; MAC_HEADER_LEN] {
        let mut h = [0; MAC_HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = self.flags;
        h[6..8].copy_from_slice(&self.port.to_be_bytes());
        h[8..16].copy_from_slice(&self.time.to_be_bytes());
        h[16..24].copy_from_slice(&self.nonce);
        h
    }

    /// The packet bytes. Refuses what [`decode`](Self::decode) would refuse: no entries, more
    /// than [`MAX_ENTRIES`], port 0.
    pub fn encode(&self) -> Result<Vec<u8>, Rejected> {
        let count = self.entries.len();
        if count == 0 || count > MAX_ENTRIES {
            return Err(Rejected::BadCount {
                count: u8::try_from(count).unwrap_or(u8::MAX),
            });
        }
        if self.port == 0 {
            return Err(Rejected::ZeroPort);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + count * ENTRY_LEN);
        out.extend_from_slice(&self.mac_header());
        // count <= MAX_ENTRIES (12), checked above.
        out.push(count as u8);
        for e in &self.entries {
            out.extend_from_slice(&e.id);
            out.extend_from_slice(&e.mac);
        }
        Ok(out)
    }

    /// Parses a packet. Checks layout only; [`Discovery::handle_packet`] checks the rest.
    pub fn decode(bytes: &[u8]) -> Result<Announcement, Rejected> {
        if bytes.len() < HEADER_LEN {
            return Err(Rejected::TooShort { len: bytes.len() });
        }
        let (header, body) = bytes.split_at(HEADER_LEN);
        if header[0..4] != MAGIC {
            return Err(Rejected::BadMagic);
        }
        if header[4] != VERSION {
            return Err(Rejected::UnsupportedVersion { version: header[4] });
        }
        let flags = header[5];
        let port = u16::from_be_bytes([header[6], header[7]]);
        let mut time = [0; 8];
        time.copy_from_slice(&header[8..16]);
        let mut nonce = [0; NONCE_LEN];
        nonce.copy_from_slice(&header[16..24]);
        let count = header[24];
        if count == 0 || usize::from(count) > MAX_ENTRIES {
            return Err(Rejected::BadCount { count });
        }
        if body.len() != usize::from(count) * ENTRY_LEN {
            return Err(Rejected::BadLength { len: bytes.len() });
        }
        if port == 0 {
            return Err(Rejected::ZeroPort);
        }
        let entries = body
            .chunks_exact(ENTRY_LEN)
            .map(|chunk| {
                let (id, mac) = chunk.split_at(DISCOVERY_ID_LEN);
                Entry {
                    id: truncate(id),
                    mac: truncate(mac),
                }
            })
            .collect();
        Ok(Announcement {
            flags,
            port,
            time: u64::from_be_bytes(time),
            nonce,
            entries,
        })
    }
}

/// Builds the announcement of up to [`MAX_ENTRIES`] shares, with each share's ID for the
/// epoch of `time` and its MAC.
pub fn seal(
    shares: &[ShareId],
    flags: u8,
    port: u16,
    time: UnixMicros,
    nonce: [u8; NONCE_LEN],
) -> Result<Vec<u8>, Rejected> {
    let mut announcement = Announcement {
        flags,
        port,
        time,
        nonce,
        entries: Vec::new(),
    };
    let header = announcement.mac_header();
    let e = epoch(time);
    announcement.entries = shares
        .iter()
        .map(|share| {
            let key = discovery_key(share);
            let id = discovery_id(&key, e);
            Entry {
                id,
                mac: entry_mac(&key, &header, &id),
            }
        })
        .collect();
    announcement.encode()
}

/// Why a received packet was dropped. Every variant has a stable [`code`](Rejected::code).
/// None of them is an error to report: strangers and other protocols share the port.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// Shorter than the header.
    TooShort {
        /// The packet's length.
        len: usize,
    },
    /// Not a ClearSkies announcement.
    BadMagic,
    /// A version this implementation does not speak.
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// No entries, or more than [`MAX_ENTRIES`].
    BadCount {
        /// The count byte.
        count: u8,
    },
    /// The length does not match the count.
    BadLength {
        /// The packet's length.
        len: usize,
    },
    /// Port 0.
    ZeroPort,
    /// The time is further than [`TIME_WINDOW_MICROS`] from our wall clock.
    Stale,
    /// No entry carries an ID of ours (a stranger, or another share): no MAC was computed.
    UnknownId,
    /// The source or all sources together used up their MAC verifications.
    RateLimited,
    /// An ID matched but its MAC did not verify.
    BadMac,
    /// This announcement was accepted before.
    Replay,
    /// Our own announcement, looped back.
    Own,
}

impl Rejected {
    /// The stable, kebab-case name of this reason, as used in `spec/vectors/discovery.json`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejected::TooShort { .. } => "too-short",
            Rejected::BadMagic => "bad-magic",
            Rejected::UnsupportedVersion { .. } => "unsupported-version",
            Rejected::BadCount { .. } => "bad-count",
            Rejected::BadLength { .. } => "bad-length",
            Rejected::ZeroPort => "zero-port",
            Rejected::Stale => "stale",
            Rejected::UnknownId => "unknown-id",
            Rejected::RateLimited => "rate-limited",
            Rejected::BadMac => "bad-mac",
            Rejected::Replay => "replay",
            Rejected::Own => "own-announcement",
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::TooShort { len } => {
                write!(
                    f,
                    "{len} bytes is shorter than the {HEADER_LEN}-byte header"
                )
            }
            Rejected::BadMagic => write!(f, "not a ClearSkies announcement"),
            Rejected::UnsupportedVersion { version } => {
                write!(f, "announcement version {version}, we speak {VERSION}")
            }
            Rejected::BadCount { count } => {
                write!(f, "{count} entries; 1 to {MAX_ENTRIES} allowed")
            }
            Rejected::BadLength { len } => {
                write!(f, "{len} bytes does not match the entry count")
            }
            Rejected::ZeroPort => write!(f, "port 0"),
            Rejected::Stale => write!(
                f,
                "time further than {} s from our clock",
                TIME_WINDOW_MICROS / SECOND
            ),
            Rejected::UnknownId => write!(f, "no ID of a share of ours"),
            Rejected::RateLimited => write!(f, "too many announcements to verify from here"),
            Rejected::BadMac => write!(f, "a MAC did not verify"),
            Rejected::Replay => write!(f, "announcement seen before"),
            Rejected::Own => write!(f, "our own announcement"),
        }
    }
}

impl std::error::Error for Rejected {}

// ---------------------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------------------

/// When announcements are sent besides the hello burst after each change.
///
/// After a change the interval is `fast_interval` until `fast_period` has passed, then
/// `slow_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The interval during the fast period.
    pub fast_interval: Duration,
    /// How long after a change the fast interval applies.
    pub fast_period: Duration,
    /// The interval afterwards.
    pub slow_interval: Duration,
}

impl Schedule {
    /// For a desktop or a NAS: every minute for the first five minutes, then every five
    /// minutes.
    pub const DEFAULT: Schedule = Schedule {
        fast_interval: Duration::from_secs(60),
        fast_period: Duration::from_secs(300),
        slow_interval: Duration::from_secs(300),
    };

    /// For a phone on battery: after the hello burst, every fifteen minutes. Hellos from
    /// others are still answered, so a peer that arrives is found at once.
    pub const BATTERY_SAVER: Schedule = Schedule {
        fast_interval: Duration::from_secs(900),
        fast_period: Duration::ZERO,
        slow_interval: Duration::from_secs(900),
    };
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::DEFAULT
    }
}

/// How a [`Discovery`] is set up.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Fresh from a CSPRNG: the nonces and the answer jitter are drawn from it.
    pub seed: [u8; 32],
    /// The announcement schedule.
    pub schedule: Schedule,
}

impl DiscoveryConfig {
    /// The default schedule with `seed`.
    pub fn new(seed: [u8; 32]) -> DiscoveryConfig {
        DiscoveryConfig {
            seed,
            schedule: Schedule::DEFAULT,
        }
    }
}

/// A member's announcement was recognised: dial `addr`; TLS will say who answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The sender's address and announced port (an IPv6 link-local address keeps its scope).
    pub addr: SocketAddr,
    /// Every share of ours the announcement named, in order. One connection serves them all.
    pub shares: Vec<ShareId>,
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets passed to [`Discovery::handle_packet`].
    pub received: u64,
    /// Packets that produced a [`Found`].
    pub found: u64,
    /// MACs verified (the work strangers must not be able to cause).
    pub macs_verified: u64,
    /// Packets returned by [`Discovery::poll_announce`].
    pub sent: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    last: Timestamp,
}

impl Bucket {
    fn full(capacity: u32, now: Timestamp) -> Bucket {
        Bucket {
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Timestamp, capacity: u32, refill_micros: u64) {
        let elapsed = now.saturating_since(self.last).as_micros();
        let earned = elapsed / u128::from(refill_micros);
        let tokens = u128::from(self.tokens).saturating_add(earned);
        if tokens >= u128::from(capacity) {
            self.tokens = capacity;
            self.last = now;
        } else {
            // tokens < capacity, a u32.
            self.tokens = tokens as u32;
            // earned * refill_micros <= elapsed, which fits in u64.
            self.last = self
                .last
                .saturating_add(Duration::from_micros((earned as u64) * refill_micros));
        }
    }
}

/// LAN discovery for one device. See the [module docs](self) for the contract.
#[derive(Debug)]
pub struct Discovery {
    schedule: Schedule,
    rng: ChaCha20Rng,
    clock: Clock,
    /// Each share's discovery key.
    keys: BTreeMap<ShareId, [u8; 32]>,
    port: Option<u16>,
    /// Rotating ID -> (share, epoch), for the epochs around `table_epoch`.
    table: BTreeMap<[u8; DISCOVERY_ID_LEN], (ShareId, u64)>,
    table_epoch: Option<u64>,
    /// When the last change happened (the fast period and the burst count from it).
    changed_at: Timestamp,
    /// Hello announcements of the current burst already sent.
    burst_sent: usize,
    next_due: Timestamp,
    answer_due: Option<Timestamp>,
    last_answer: Option<Timestamp>,
    pending: VecDeque<Vec<u8>>,
    /// (time, nonce) of accepted announcements within the time window.
    replay: BTreeSet<(UnixMicros, [u8; NONCE_LEN])>,
    own_nonces: VecDeque<[u8; NONCE_LEN]>,
    sources: BTreeMap<IpAddr, Bucket>,
    global: Bucket,
    stats: Stats,
}

impl Discovery {
    /// A discovery with no shares and no port yet: it announces nothing until it has both.
    pub fn new(config: DiscoveryConfig, now: Timestamp) -> Result<Discovery, Misuse> {
        let s = config.schedule;
        let min = Duration::from_micros(MIN_INTERVAL_MICROS);
        if s.fast_interval < min || s.slow_interval < min {
            return Err(Misuse::BadConfig {
                detail: format!(
                    "discovery intervals must be at least {} s",
                    MIN_INTERVAL_MICROS / SECOND
                ),
            });
        }
        Ok(Discovery {
            schedule: s,
            rng: ChaCha20Rng::from_seed(config.seed),
            clock: Clock::new(now),
            keys: BTreeMap::new(),
            port: None,
            table: BTreeMap::new(),
            table_epoch: None,
            changed_at: now,
            burst_sent: 0,
            next_due: now,
            answer_due: None,
            last_answer: None,
            pending: VecDeque::new(),
            replay: BTreeSet::new(),
            own_nonces: VecDeque::new(),
            sources: BTreeMap::new(),
            global: Bucket::full(GLOBAL_BUCKET_CAPACITY, now),
            stats: Stats::default(),
        })
    }

    /// The shares announced and recognised, in order.
    pub fn shares(&self) -> impl Iterator<Item = &ShareId> {
        self.keys.keys()
    }

    /// The TCP port announced, if set.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Replaces the set of shares. A different set starts a new hello burst.
    pub fn set_shares(
        &mut self,
        now: Timestamp,
        shares: impl IntoIterator<Item = ShareId>,
    ) -> Result<(), Misuse> {
        let shares: BTreeSet<ShareId> = shares.into_iter().collect();
        if shares.len() > MAX_SHARES {
            return Err(Misuse::BadConfig {
                detail: format!("discovery takes at most {MAX_SHARES} shares"),
            });
        }
        if shares.iter().eq(self.keys.keys()) {
            return Ok(());
        }
        self.keys = shares.into_iter().map(|s| (s, discovery_key(&s))).collect();
        self.table_epoch = None;
        self.changed(now);
        Ok(())
    }

    /// Sets the TCP port members are accepted on; 0 means none (announcements stop). A
    /// different port starts a new hello burst.
    pub fn set_port(&mut self, now: Timestamp, port: u16) {
        let port = (port != 0).then_some(port);
        if port != self.port {
            self.port = port;
            self.changed(now);
        }
    }

    /// Starts a new hello burst, as after a change: call it when the network changed (an
    /// interface came up, the address changed).
    pub fn request_announce(&mut self, now: Timestamp) {
        self.changed(now);
    }

    fn changed(&mut self, now: Timestamp) {
        let now = self.clock.observe(now);
        self.changed_at = now;
        self.burst_sent = 0;
        self.next_due = now;
        // Packets built for the old state are obsolete.
        self.pending.clear();
    }

    fn active(&self) -> bool {
        self.port.is_some() && !self.keys.is_empty()
    }

    /// The next instant [`poll_announce`](Self::poll_announce) has something to send, or
    /// `None` while there is no share or no port.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if !self.active() {
            return None;
        }
        Some(match self.answer_due {
            Some(answer) => answer.min(self.next_due),
            None => self.next_due,
        })
    }

    /// The next packet to send on every path, if one is due. Call until `None`.
    pub fn poll_announce(&mut self, now: Timestamp, wall: UnixMicros) -> Option<Vec<u8>> {
        let now = self.clock.observe(now);
        if let Some(packet) = self.pending.pop_front() {
            self.stats.sent += 1;
            return Some(packet);
        }
        if !self.active() {
            return None;
        }
        let scheduled = self.next_due <= now;
        let answer = self.answer_due.is_some_and(|due| due <= now);
        if !scheduled && !answer {
            return None;
        }
        let mut flags = 0;
        if scheduled {
            if self.burst_sent < BURST_OFFSETS_MICROS.len() {
                flags |= FLAG_HELLO;
            }
            self.advance_schedule(now);
        }
        if answer {
            self.answer_due = None;
            self.last_answer = Some(now);
        }
        self.build(wall, flags);
        let packet = self.pending.pop_front()?;
        self.stats.sent += 1;
        Some(packet)
    }

    fn advance_schedule(&mut self, now: Timestamp) {
        let next = if self.burst_sent < BURST_OFFSETS_MICROS.len() {
            self.burst_sent += 1;
            match BURST_OFFSETS_MICROS.get(self.burst_sent) {
                Some(&offset) => self.changed_at + Duration::from_micros(offset),
                None => now + self.interval(now),
            }
        } else {
            now + self.interval(now)
        };
        // A driver that slept past several due instants sends once, not a salvo.
        self.next_due = next.max(now + Duration::from_secs(1));
    }

    fn interval(&self, now: Timestamp) -> Duration {
        if now.saturating_since(self.changed_at) < self.schedule.fast_period {
            self.schedule.fast_interval
        } else {
            self.schedule.slow_interval
        }
    }

    fn build(&mut self, wall: UnixMicros, flags: u8) {
        let Some(port) = self.port else { return };
        let shares: Vec<ShareId> = self.keys.keys().copied().collect();
        for chunk in shares.chunks(MAX_ENTRIES) {
            let mut nonce = [0; NONCE_LEN];
            self.rng.fill_bytes(&mut nonce);
            if self.own_nonces.len() >= OWN_NONCES_LIMIT {
                self.own_nonces.pop_front();
            }
            self.own_nonces.push_back(nonce);
            // Chunks hold 1..=MAX_ENTRIES shares and the port is non-zero: sealing succeeds.
            if let Ok(packet) = seal(chunk, flags, port, wall, nonce) {
                self.pending.push_back(packet);
            }
        }
    }

    fn ensure_table(&mut self, wall: UnixMicros) {
        let current = epoch(wall);
        if self.table_epoch == Some(current) {
            return;
        }
        self.table.clear();
        for (share, key) in &self.keys {
            for e in [
                current.checked_sub(1),
                Some(current),
                current.checked_add(1),
            ]
            .into_iter()
            .flatten()
            {
                self.table.insert(discovery_id(key, e), (*share, e));
            }
        }
        self.table_epoch = Some(current);
    }

    /// Whether one MAC may be verified for `source` now; takes the tokens if so.
    fn take_token(&mut self, now: Timestamp, source: IpAddr) -> bool {
        self.global
            .refill(now, GLOBAL_BUCKET_CAPACITY, GLOBAL_REFILL_MICROS);
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_TRACKED_SOURCES {
            let oldest = self
                .sources
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                self.sources.remove(&ip);
            }
        }
        let bucket = self
            .sources
            .entry(source)
            .or_insert_with(|| Bucket::full(SOURCE_BUCKET_CAPACITY, now));
        bucket.refill(now, SOURCE_BUCKET_CAPACITY, SOURCE_REFILL_MICROS);
        if bucket.tokens == 0 || self.global.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        self.global.tokens -= 1;
        true
    }

    fn prune_replay(&mut self, wall: UnixMicros) {
        let low = wall.saturating_sub(TIME_WINDOW_MICROS);
        let high = wall.saturating_add(TIME_WINDOW_MICROS);
        self.replay.retain(|(t, _)| *t >= low && *t <= high);
    }

    /// Handles one datagram received from `from`. Returns what was found, or why the packet
    /// was dropped (nothing to report: drop it and go on).
    pub fn handle_packet(
        &mut self,
        now: Timestamp,
        wall: UnixMicros,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<Found, Rejected> {
        let now = self.clock.observe(now);
        self.stats.received += 1;
        let announcement = Announcement::decode(bytes)?;
        if self.own_nonces.contains(&announcement.nonce) {
            return Err(Rejected::Own);
        }
        if announcement.time.abs_diff(wall) > TIME_WINDOW_MICROS {
            return Err(Rejected::Stale);
        }
        self.ensure_table(wall);
        let packet_epoch = epoch(announcement.time);
        // One table lookup per entry, no MAC: this is all a stranger costs.
        let matched: Vec<(ShareId, Entry)> = announcement
            .entries
            .iter()
            .filter_map(|entry| match self.table.get(&entry.id) {
                Some(&(share, e)) if e == packet_epoch => Some((share, *entry)),
                _ => None,
            })
            .collect();
        if matched.is_empty() {
            return Err(Rejected::UnknownId);
        }
        if self
            .replay
            .contains(&(announcement.time, announcement.nonce))
        {
            return Err(Rejected::Replay);
        }
        let header = announcement.mac_header();
        let source = from.ip().to_canonical();
        let mut shares = Vec::new();
        let mut limited = false;
        for (share, entry) in matched {
            if !self.take_token(now, source) {
                limited = true;
                break;
            }
            self.stats.macs_verified += 1;
            let Some(key) = self.keys.get(&share) else {
                continue;
            };
            if entry_mac_matches(key, &header, &entry.id, &entry.mac) {
                shares.push(share);
            }
        }
        if shares.is_empty() {
            return Err(if limited {
                Rejected::RateLimited
            } else {
                Rejected::BadMac
            });
        }
        shares.sort_unstable();
        shares.dedup();
        self.prune_replay(wall);
        if self.replay.len() >= REPLAY_CACHE_LIMIT {
            self.replay.pop_first();
        }
        self.replay.insert((announcement.time, announcement.nonce));
        if announcement.flags & FLAG_HELLO != 0 {
            self.schedule_answer(now);
        }
        self.stats.found += 1;
        Ok(Found {
            addr: dial_address(from, announcement.port),
            shares,
        })
    }

    fn schedule_answer(&mut self, now: Timestamp) {
        if !self.active() || self.answer_due.is_some() {
            return;
        }
        let min = Duration::from_micros(ANSWER_MIN_INTERVAL_MICROS);
        if self
            .last_answer
            .is_some_and(|last| now.saturating_since(last) < min)
        {
            return;
        }
        let jitter = self.rng.next_u64() % ANSWER_MAX_JITTER_MICROS;
        self.answer_due = Some(now + Duration::from_micros(jitter));
    }
}

/// Where to dial the sender of a packet from `from` that announced `port`.
fn dial_address(from: SocketAddr, port: u16) -> SocketAddr {
    match from {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => {
            SocketAddr::V6(SocketAddrV6::new(*v6.ip(), port, 0, v6.scope_id()))
        }
        other => SocketAddr::new(other.ip().to_canonical(), port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WALL: UnixMicros = 1_700_000_000_000_000;
    const A: ShareId = [1; 32];
    const B: ShareId = [2; 32];

    fn from() -> SocketAddr {
        "192.168.1.20:27183".parse().unwrap()
    }

    fn disc(seed: u8, shares: &[ShareId], port: u16) -> Discovery {
        let mut d = Discovery::new(DiscoveryConfig::new([seed; 32]), Timestamp::ZERO).unwrap();
        d.set_shares(Timestamp::ZERO, shares.iter().copied())
            .unwrap();
        d.set_port(Timestamp::ZERO, port);
        d
    }

    fn drain(d: &mut Discovery, now: Timestamp, wall: UnixMicros) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| d.poll_announce(now, wall)).collect()
    }

    #[test]
    fn two_members_find_each_other_and_strangers_cost_no_mac() {
        let mut a = disc(1, &[A], 4000);
        let mut b = disc(2, &[A, B], 5000);
        let mut stranger = disc(3, &[B], 6000);
        let packets = drain(&mut a, Timestamp::ZERO, WALL);
        assert_eq!(packets.len(), 1);
        let found = b
            .handle_packet(Timestamp::ZERO, WALL + 10, from(), &packets[0])
            .unwrap();
        assert_eq!(found.shares, vec![A]);
        assert_eq!(found.addr, "192.168.1.20:4000".parse().unwrap());
        assert_eq!(
            stranger.handle_packet(Timestamp::ZERO, WALL, from(), &packets[0]),
            Err(Rejected::UnknownId)
        );
        assert_eq!(stranger.stats().macs_verified, 0);
        // The same packet again is a replay; our own looped back is ignored.
        assert_eq!(
            b.handle_packet(Timestamp::ZERO, WALL, from(), &packets[0]),
            Err(Rejected::Replay)
        );
        assert_eq!(
            a.handle_packet(Timestamp::ZERO, WALL, from(), &packets[0]),
            Err(Rejected::Own)
        );
    }

    #[test]
    fn ids_rotate_every_hour_and_neighbouring_epochs_are_accepted() {
        let key = discovery_key(&A);
        assert_ne!(discovery_id(&key, 1), discovery_id(&key, 2));
        let mut b = disc(2, &[A], 5000);
        // Sender an epoch ahead of the receiver (within the time window, across the boundary).
        let boundary = (epoch(WALL) + 1) * EPOCH_MICROS;
        let packet = seal(&[A], 0, 4000, boundary + 5, [7; 8]).unwrap();
        assert!(
            b.handle_packet(Timestamp::ZERO, boundary - 5, from(), &packet)
                .is_ok()
        );
        let stale = seal(&[A], 0, 4000, WALL - TIME_WINDOW_MICROS - 1, [8; 8]).unwrap();
        assert_eq!(
            b.handle_packet(Timestamp::ZERO, WALL, from(), &stale),
            Err(Rejected::Stale)
        );
    }

    #[test]
    fn a_tampered_packet_fails_its_mac() {
        let mut b = disc(2, &[A], 5000);
        let mut packet = seal(&[A], 0, 4000, WALL, [7; 8]).unwrap();
        packet[7] ^= 1; // the port
        assert_eq!(
            b.handle_packet(Timestamp::ZERO, WALL, from(), &packet),
            Err(Rejected::BadMac)
        );
        assert_eq!(b.stats().macs_verified, 1);
    }

    #[test]
    fn mac_work_per_source_is_bounded() {
        let mut b = disc(2, &[A], 5000);
        let mut limited = 0;
        for i in 0..100u64 {
            let mut packet = seal(&[A], 0, 4000, WALL, i.to_be_bytes()).unwrap();
            let last = packet.len() - 1;
            packet[last] ^= 1;
            if b.handle_packet(Timestamp::ZERO, WALL, from(), &packet) == Err(Rejected::RateLimited)
            {
                limited += 1;
            }
        }
        assert_eq!(b.stats().macs_verified, u64::from(SOURCE_BUCKET_CAPACITY));
        assert_eq!(limited, 100 - SOURCE_BUCKET_CAPACITY);
        // Another source still gets through; tokens come back with time.
        let other: SocketAddr = "192.168.1.21:1".parse().unwrap();
        let good = seal(&[A], 0, 4000, WALL, [0xee; 8]).unwrap();
        assert!(b.handle_packet(Timestamp::ZERO, WALL, other, &good).is_ok());
        let later = Timestamp::from_micros(SOURCE_REFILL_MICROS);
        let good = seal(&[A], 0, 4000, WALL, [0xef; 8]).unwrap();
        assert!(b.handle_packet(later, WALL, from(), &good).is_ok());
    }

    #[test]
    fn schedule_burst_then_fast_then_slow() {
        let mut d = disc(1, &[A], 4000);
        let mut sent = Vec::new();
        let mut now = Timestamp::ZERO;
        while now < Timestamp::from_secs(1000) {
            for p in drain(&mut d, now, WALL) {
                let a = Announcement::decode(&p).unwrap();
                sent.push((now.as_micros() / SECOND, a.flags & FLAG_HELLO != 0));
            }
            let next = d.poll_timeout().unwrap();
            assert!(next > now, "no timer left in the past");
            now = next;
        }
        assert_eq!(
            sent,
            vec![
                (0, true),
                (2, true),
                (6, true),
                (66, false),
                (126, false),
                (186, false),
                (246, false),
                (306, false),
                (606, false),
                (906, false),
            ]
        );
    }

    #[test]
    fn a_hello_is_answered_once_and_an_answer_is_not() {
        let mut a = disc(1, &[A], 4000);
        let mut b = disc(2, &[A], 5000);
        let now = Timestamp::from_secs(100);
        // b is past its burst; a's hello makes it answer within the jitter.
        for t in [0, 2, 6] {
            drain(&mut b, Timestamp::from_secs(t), WALL);
        }
        let hello = drain(&mut a, Timestamp::ZERO, WALL).remove(0);
        b.handle_packet(now, WALL, from(), &hello).unwrap();
        let due = b.poll_timeout().unwrap();
        assert!(due < now + Duration::from_micros(ANSWER_MAX_JITTER_MICROS));
        let answer = drain(&mut b, due, WALL).remove(0);
        assert_eq!(Announcement::decode(&answer).unwrap().flags, 0);
        a.handle_packet(now, WALL, from(), &answer).unwrap();
        assert!(a.poll_timeout().unwrap() >= Timestamp::from_secs(2));
    }

    #[test]
    fn many_shares_split_into_packets_under_the_limit() {
        let shares: Vec<ShareId> = (0..30u8).map(|i| [i; 32]).collect();
        let mut d = disc(1, &shares, 4000);
        let packets = drain(&mut d, Timestamp::ZERO, WALL);
        assert_eq!(packets.len(), 3);
        assert!(packets.iter().all(|p| p.len() <= MAX_PACKET_LEN));
        assert_eq!(MAX_PACKET_LEN, 409);
        let mut b = disc(2, &shares[25..], 5000);
        assert_eq!(
            b.handle_packet(Timestamp::ZERO, WALL, from(), &packets[2])
                .unwrap()
                .shares,
            shares[25..].to_vec()
        );
    }

    #[test]
    fn nothing_is_announced_without_a_port_or_shares() {
        let mut d = Discovery::new(DiscoveryConfig::new([1; 32]), Timestamp::ZERO).unwrap();
        assert_eq!(d.poll_timeout(), None);
        d.set_shares(Timestamp::ZERO, [A]).unwrap();
        assert_eq!(d.poll_announce(Timestamp::ZERO, WALL), None);
        d.set_port(Timestamp::ZERO, 4000);
        assert!(d.poll_announce(Timestamp::ZERO, WALL).is_some());
        let bad = DiscoveryConfig {
            seed: [0; 32],
            schedule: Schedule {
                fast_interval: Duration::from_secs(1),
                ..Schedule::DEFAULT
            },
        };
        assert_eq!(
            Discovery::new(bad, Timestamp::ZERO).unwrap_err().code(),
            "bad-config"
        );
    }

    #[test]
    fn ipv6_sources_keep_their_scope_and_mapped_ones_become_ipv4() {
        let v6: SocketAddr = "[fe80::1%3]:9".parse().unwrap();
        assert_eq!(dial_address(v6, 4000), "[fe80::1%3]:4000".parse().unwrap());
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:9".parse().unwrap();
        assert_eq!(dial_address(mapped, 4000), "10.0.0.1:4000".parse().unwrap());
    }
}
