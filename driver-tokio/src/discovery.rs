//! LAN discovery on tokio: proto's [`Discovery`] bound to UDP (`spec/discovery.md` § 9).
//!
//! One task owns two sockets bound to the discovery port ([`UDP_PORT`] unless configured),
//! with `SO_REUSEADDR` and `SO_REUSEPORT` so several devices on one host can listen:
//!
//! * IPv4: joined to [`IPV4_GROUP`] on every IPv4 interface; each announcement goes to the
//!   group through every interface, to every interface's subnet broadcast address and to
//!   `255.255.255.255` (some access points drop multicast, some hosts have no broadcast);
//! * IPv6: joined to the link-local group [`IPV6_GROUP`] on every interface that has IPv6 (a
//!   link-local address is enough: on an IPv6-only LAN it is all there is); each announcement
//!   goes to the group through every such interface, and a peer found there is dialled at its
//!   link-local address with the interface as scope. A host without IPv6 runs on IPv4 alone.
//!   An address still in duplicate address detection cannot send yet (`EADDRNOTAVAIL`); the
//!   hello burst's later announcements go out once it is done.
//!
//! Sending one announcement over several paths is harmless: the receiver accepts the first
//! copy and drops the rest as replays. Interfaces are listed again every
//! [`INTERFACE_REFRESH`]; when the list changes the task joins the groups on new interfaces and
//! starts a new hello burst, so a laptop that joins a network is found at once.
//!
//! The task reports each recognised announcement as a [`Found`] on a channel; **the caller
//! dials** (with TLS that pins members' keys) and decides whether a connection it already has
//! makes a dial unnecessary. A `Found` repeats with every announcement heard, so a failed dial
//! is retried naturally.
//!
//! ```no_run
//! # async fn example(share: clearskies_proto::db::ShareId, listen_port: u16) -> std::io::Result<()> {
//! use clearskies_tokio::discovery::{LanConfig, spawn_discovery};
//!
//! let mut seed = [0; 32];
//! getrandom::getrandom(&mut seed).expect("OS randomness");
//! let (discovery, mut found) = spawn_discovery(LanConfig::new(seed), vec![share], listen_port)?;
//! while let Some(found) = found.recv().await {
//!     // Dial found.addr with `tls::connect` unless already connected to a member there.
//!     println!("a member of {} share(s) at {}", found.shares.len(), found.addr);
//! }
//! discovery.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clearskies_proto::db::ShareId;
use clearskies_proto::discovery::{Discovery, DiscoveryConfig, IPV4_GROUP, IPV6_GROUP};
pub use clearskies_proto::discovery::{Found, Schedule, UDP_PORT};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::MonotonicClock;

/// How often the interfaces are listed again.
pub const INTERFACE_REFRESH: Duration = Duration::from_secs(30);
/// `Found` reports queued for the caller; beyond, reports are dropped (they repeat).
pub const FOUND_QUEUE: usize = 64;
/// The largest datagram read; anything longer is no announcement.
const RECV_BUFFER: usize = 2048;

/// How the discovery task is set up.
#[derive(Debug, Clone)]
pub struct LanConfig {
    /// The state machine's configuration (seed, schedule).
    pub discovery: DiscoveryConfig,
    /// The UDP port announcements use; [`UDP_PORT`] except in tests.
    pub udp_port: u16,
    /// Whether to use IPv4 (multicast and broadcast).
    pub ipv4: bool,
    /// Whether to use IPv6 (link-local multicast).
    pub ipv6: bool,
}

impl LanConfig {
    /// Both families on the standard port, the default schedule, `seed` from a CSPRNG.
    pub fn new(seed: [u8; 32]) -> LanConfig {
        LanConfig {
            discovery: DiscoveryConfig::new(seed),
            udp_port: UDP_PORT,
            ipv4: true,
            ipv6: true,
        }
    }

    /// The same with the battery-saving schedule, for phones.
    pub fn battery_saver(mut self) -> LanConfig {
        self.discovery.schedule = Schedule::BATTERY_SAVER;
        self
    }
}

/// Why a request to the discovery task failed.
#[derive(Debug)]
pub enum DiscoveryError {
    /// The task has stopped.
    Stopped,
    /// The request was refused (too many shares).
    Refused(clearskies_proto::error::Misuse),
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryError::Stopped => write!(f, "the discovery task has stopped"),
            DiscoveryError::Refused(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DiscoveryError {}

enum Command {
    SetShares(
        Vec<ShareId>,
        oneshot::Sender<Result<(), clearskies_proto::error::Misuse>>,
    ),
    SetPort(u16),
    Announce,
}

/// The application's side of a running discovery task. Dropping it stops the task.
#[derive(Debug)]
pub struct DiscoveryHandle {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    local: Vec<SocketAddr>,
}

impl DiscoveryHandle {
    /// Replaces the shares announced and recognised (a new hello burst if they changed).
    pub async fn set_shares(&self, shares: Vec<ShareId>) -> Result<(), DiscoveryError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SetShares(shares, reply))
            .await
            .map_err(|_| DiscoveryError::Stopped)?;
        answer
            .await
            .map_err(|_| DiscoveryError::Stopped)?
            .map_err(DiscoveryError::Refused)
    }

    /// Sets the TCP port members are accepted on (0: stop announcing).
    pub async fn set_port(&self, port: u16) -> Result<(), DiscoveryError> {
        self.commands
            .send(Command::SetPort(port))
            .await
            .map_err(|_| DiscoveryError::Stopped)
    }

    /// Starts a new hello burst now (the app learnt that the network changed).
    pub async fn announce_now(&self) -> Result<(), DiscoveryError> {
        self.commands
            .send(Command::Announce)
            .await
            .map_err(|_| DiscoveryError::Stopped)
    }

    /// The UDP sockets' local addresses (one per family in use).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Stops the task and waits for it.
    pub async fn shutdown(self) {
        let DiscoveryHandle { commands, task, .. } = self;
        drop(commands);
        let _ = task.await;
    }
}

/// Binds the discovery sockets and starts the task on the current tokio runtime; it announces
/// `shares` with `listen_port` (the members' TLS port) and reports what it finds on the
/// returned receiver. Fails only if neither family could be bound.
///
/// The task stops when the handle is dropped or the receiver is.
pub fn spawn_discovery(
    config: LanConfig,
    shares: Vec<ShareId>,
    listen_port: u16,
) -> io::Result<(DiscoveryHandle, mpsc::Receiver<Found>)> {
    let clock = MonotonicClock::new();
    let now = clock.now();
    let invalid = |e: clearskies_proto::error::Misuse| {
        io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
    };
    let mut discovery = Discovery::new(config.discovery, now).map_err(invalid)?;
    discovery.set_shares(now, shares).map_err(invalid)?;
    discovery.set_port(now, listen_port);

    let mut errors = Vec::new();
    let v4 = if config.ipv4 {
        bind_v4(config.udp_port)
            .map_err(|e| errors.push(format!("IPv4: {e}")))
            .ok()
    } else {
        None
    };
    let v6 = if config.ipv6 {
        bind_v6(config.udp_port)
            .map_err(|e| errors.push(format!("IPv6: {e}")))
            .ok()
    } else {
        None
    };
    if v4.is_none() && v6.is_none() {
        return Err(io::Error::other(format!(
            "no discovery socket could be bound on UDP port {}: {}",
            config.udp_port,
            errors.join("; ")
        )));
    }
    let local = [&v4, &v6]
        .into_iter()
        .flatten()
        .filter_map(|s| s.local_addr().ok())
        .collect();
    let (commands, receiver) = mpsc::channel(16);
    let (found_tx, found) = mpsc::channel(FOUND_QUEUE);
    let lan = Lan {
        discovery,
        clock,
        v4,
        v6,
        port: config.udp_port,
        joined_v4: BTreeSet::new(),
        joined_v6: BTreeSet::new(),
        paths: Paths::default(),
        found: found_tx,
    };
    let task = tokio::spawn(lan.run(receiver));
    Ok((
        DiscoveryHandle {
            commands,
            task,
            local,
        },
        found,
    ))
}

fn bind_v4(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_broadcast(true)?;
    // Other devices on this host listen too; the state machine ignores our own packets.
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(1)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_v6(port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_multicast_loop_v6(true)?;
    socket.set_multicast_hops_v6(1)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// Where announcements go, from the last listing of the interfaces.
#[derive(Debug, Default, PartialEq, Eq)]
struct Paths {
    /// IPv4 interface addresses (multicast is sent through each).
    v4: BTreeSet<Ipv4Addr>,
    /// Subnet broadcast addresses.
    broadcast: BTreeSet<Ipv4Addr>,
    /// Indexes of interfaces with IPv6.
    v6: BTreeSet<u32>,
}

impl Paths {
    fn list() -> Paths {
        let mut paths = Paths::default();
        // No list (a sandbox without netlink): send through the default interface only.
        let Ok(interfaces) = if_addrs::get_if_addrs() else {
            return paths;
        };
        for interface in interfaces {
            match interface.addr {
                if_addrs::IfAddr::V4(v4) => {
                    paths.v4.insert(v4.ip);
                    if let Some(b) = v4.broadcast {
                        paths.broadcast.insert(b);
                    }
                }
                if_addrs::IfAddr::V6(_) => {
                    if let Some(index) = interface.index {
                        paths.v6.insert(index);
                    }
                }
            }
        }
        paths
    }
}

struct Lan {
    discovery: Discovery,
    clock: MonotonicClock,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    port: u16,
    joined_v4: BTreeSet<Ipv4Addr>,
    joined_v6: BTreeSet<u32>,
    paths: Paths,
    found: mpsc::Sender<Found>,
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

impl Lan {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf4 = vec![0u8; RECV_BUFFER];
        let mut buf6 = vec![0u8; RECV_BUFFER];
        let mut next_refresh = Instant::now();
        let mut first = true;
        loop {
            if Instant::now() >= next_refresh {
                if self.refresh() && !first {
                    self.discovery.request_announce(self.clock.now());
                }
                first = false;
                next_refresh = Instant::now() + INTERFACE_REFRESH;
            }
            let now = self.clock.now();
            let wall = wall_micros();
            while let Some(packet) = self.discovery.poll_announce(now, wall) {
                self.send_everywhere(&packet).await;
            }
            let wake = self
                .discovery
                .poll_timeout()
                .map_or(next_refresh, |t| self.clock.instant(t).min(next_refresh));
            tokio::select! {
                received = recv(self.v4.as_ref(), &mut buf4) => {
                    if let Ok((n, from)) = received {
                        self.handle(from, &buf4[..n]);
                    }
                }
                received = recv(self.v6.as_ref(), &mut buf6) => {
                    if let Ok((n, from)) = received {
                        self.handle(from, &buf6[..n]);
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::SetShares(shares, reply)) => {
                        let _ = reply.send(self.discovery.set_shares(self.clock.now(), shares));
                    }
                    Some(Command::SetPort(port)) => self.discovery.set_port(self.clock.now(), port),
                    Some(Command::Announce) => self.discovery.request_announce(self.clock.now()),
                    None => return,
                },
                () = self.found.closed() => return,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn handle(&mut self, from: SocketAddr, bytes: &[u8]) {
        // Dropped packets need no report: strangers and other protocols share the port.
        if let Ok(found) =
            self.discovery
                .handle_packet(self.clock.now(), wall_micros(), from, bytes)
        {
            // A full queue loses a report that the next announcement repeats.
            let _ = self.found.try_send(found);
        }
    }

    /// Lists the interfaces and joins the groups on new ones. Returns whether the list
    /// changed.
    fn refresh(&mut self) -> bool {
        let paths = Paths::list();
        if let Some(v4) = &self.v4 {
            for ip in &paths.v4 {
                if !self.joined_v4.contains(ip) && v4.join_multicast_v4(IPV4_GROUP, *ip).is_ok() {
                    self.joined_v4.insert(*ip);
                }
            }
            if paths.v4.is_empty() && self.joined_v4.is_empty() {
                // No list: join on the default interface.
                if v4
                    .join_multicast_v4(IPV4_GROUP, Ipv4Addr::UNSPECIFIED)
                    .is_ok()
                {
                    self.joined_v4.insert(Ipv4Addr::UNSPECIFIED);
                }
            }
        }
        if let Some(v6) = &self.v6 {
            for index in &paths.v6 {
                // Interfaces without IPv6 multicast (some tunnels) refuse; skip them.
                if !self.joined_v6.contains(index)
                    && v6.join_multicast_v6(&IPV6_GROUP, *index).is_ok()
                {
                    self.joined_v6.insert(*index);
                }
            }
        }
        let changed = paths != self.paths;
        self.paths = paths;
        changed
    }

    async fn send_everywhere(&self, packet: &[u8]) {
        // Each path may fail (no route, interface gone, no broadcast allowed); the others go on.
        if let Some(v4) = &self.v4 {
            let group = SocketAddr::V4(SocketAddrV4::new(IPV4_GROUP, self.port));
            if self.paths.v4.is_empty() {
                let _ = v4.send_to(packet, group).await;
            }
            for ip in &self.paths.v4 {
                if SockRef::from(v4).set_multicast_if_v4(ip).is_ok() {
                    let _ = v4.send_to(packet, group).await;
                }
            }
            for b in self
                .paths
                .broadcast
                .iter()
                .chain(std::iter::once(&Ipv4Addr::BROADCAST))
            {
                let _ = v4
                    .send_to(packet, SocketAddr::new(IpAddr::V4(*b), self.port))
                    .await;
            }
        }
        if let Some(v6) = &self.v6 {
            for index in &self.joined_v6 {
                if SockRef::from(v6).set_multicast_if_v6(*index).is_ok() {
                    let to = SocketAddrV6::new(IPV6_GROUP, self.port, 0, *index);
                    let _ = v6.send_to(packet, SocketAddr::V6(to)).await;
                }
            }
        }
    }
}
