//! The network side of the tool: `run` (the daemon), `sync --once` (a check-in) and `join`
//! (pairing), on the tokio driver, over QUIC and TCP (`transport.rs`), with LAN discovery and
//! remembered addresses (`peers.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use clearskies_net::{PeerKey, PeerPolicy};
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node, Origin as Dialled};
use clearskies_proto::pair::Invitations;
use clearskies_proto::session::{CloseReason, SessionConfig};
use clearskies_proto::wire::CloseCode;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::discovery::{DiscoveryHandle, LanConfig, UDP_PORT, spawn_discovery};
use clearskies_tokio::folder::{FolderConfig, FolderHandle, Shallow, spawn_folder};
use clearskies_tokio::node::{NodeHandle, spawn_node};
use clearskies_tokio::pairing;
use clearskies_tokio::tls::Purpose;

use crate::Failure;
use crate::home::{Config, Home, MemberFile, ShareFile};
use crate::peers::PeerBook;
use crate::transport::{self, Dialer, Link, Listener, Transport};

/// Resolves `HOST:PORT`.
pub fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Failure::usage(&format!("{addr:?} is not a HOST:PORT address")))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(&format!("cannot start the runtime: {e}")))
}

fn store_failure(e: impl std::fmt::Display) -> Failure {
    Failure::usage(&format!(
        "{e} (is another `clearskies` process using this home? stop it first)"
    ))
}

/// A peer's name (from its HELLO) and the address it was last seen at.
pub(crate) type PeerSeen = (String, Option<SocketAddr>);

/// Everything a running device shares between its tasks.
pub(crate) struct Device {
    pub(crate) home: Home,
    pub(crate) key: DeviceKey,
    pub(crate) node: NodeHandle,
    /// Devices allowed to connect as members (all shares, this device excluded).
    pub(crate) members: Arc<RwLock<BTreeSet<DeviceId>>>,
    /// Peers with an established session.
    pub(crate) connected: Arc<Mutex<BTreeSet<DeviceId>>>,
    /// Peers' names (from their HELLO) and the address last seen for each.
    pub(crate) peers: Arc<Mutex<BTreeMap<DeviceId, PeerSeen>>>,
    /// The last reason a peer gave for refusing this device, for `sync --once` to report.
    refusal: Arc<Mutex<Option<String>>>,
    pub(crate) invitations: Arc<Mutex<Invitations>>,
    /// The folder of every share, by share folder path.
    pub(crate) folders: Mutex<Vec<(std::path::PathBuf, FolderHandle)>>,
    rescan: Duration,
    /// Whether folders are watched for changes (`run`), or only scanned (`sync --once`).
    watch: bool,
    /// The network, once it runs: a `sync --once` of this home checks in through it.
    network: std::sync::OnceLock<Networked>,
}

/// What a check-in through the running daemon needs.
struct Networked {
    net: std::sync::Weak<Network>,
    statics: Vec<SocketAddr>,
    discovery: bool,
}

impl Device {
    fn policy(&self) -> PeerPolicy {
        let members = self.members.clone();
        PeerPolicy::members(move |d: &DeviceId| {
            if members.read().map(|m| m.contains(d)).unwrap_or(false) {
                Ok(())
            } else {
                Err("it is not a member of any share this device holds".to_owned())
            }
        })
    }
}

/// Opens one share in the running node: its replica, then its folder (scanned before this
/// returns). Returns the folder's handle.
pub(crate) async fn open_share(
    home: &Home,
    node: &NodeHandle,
    key: &DeviceKey,
    share: &ShareFile,
    rescan: Duration,
    // Watch the folder for changes (not for a one-off check-in, which has scanned already).
    watch: bool,
) -> Result<FolderHandle, Failure> {
    let dir = home.share_dir(share);
    let store = ReplicaStore::open(&dir.join("replica.redb")).map_err(store_failure)?;
    node.open_share(share.share_id()?, share.members()?, store)
        .await
        .map_err(|e| Failure::usage(&e.to_string()))?;
    let config = FolderConfig {
        share: share.share_id()?,
        root: share.path.clone(),
        index: dir.join("folder.redb"),
        versions: dir.join("versions.redb"),
        rescan,
        watch,
        shallow: share.shallow.then(|| Shallow {
            cache: dir.join("cache"),
            cache_size: share
                .cache_size
                .unwrap_or(clearskies_store::cache::DEFAULT_CACHE_SIZE),
            pinned: share.pinned.clone(),
        }),
    };
    let folder = spawn_folder(node.clone(), key.device_id(), config)
        .await
        .map_err(|e| Failure::not_found(&format!("{}: {e}", share.path.display())))?;
    if let Some(e) = folder.status().error {
        tracing::error!("{}: {e}", share.path.display());
    }
    Ok(folder)
}

async fn start(
    home: Home,
    rescan: Duration,
    watch: bool,
) -> Result<(Arc<Device>, tokio::sync::mpsc::UnboundedReceiver<Event>), Failure> {
    let key = home.key()?;
    let shares = home.shares()?;
    let clock = MonotonicClock::new();
    let node = Node::new(
        key.clone(),
        SessionConfig {
            device_name: home.device_name(),
            ..SessionConfig::default()
        },
        clock.now(),
    );
    let (handle, mut node_events, _task) = spawn_node(node, clock);
    // The node waits for its events to be taken (a slow consumer slows it rather than losing
    // them): take them from the start, or scanning a folder of more files than the event queue
    // holds would wait forever for writes the node cannot acknowledge.
    let (forward, events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = node_events.recv().await {
            if forward.send(e).is_err() {
                return;
            }
        }
    });
    let mut members = BTreeSet::new();
    // Each folder is scanned before the device goes on the network, so no peer takes a
    // device that has not looked at its disk yet for one that agrees with it.
    let mut folders = Vec::new();
    for share in &shares {
        members.extend(share.members()?.keys().copied());
        let folder = open_share(&home, &handle, &key, share, rescan, watch).await?;
        folders.push((share.path.clone(), folder));
        // Members other devices added (replicated membership records) count too.
        if let Ok(m) = handle.members(share.share_id()?).await {
            members.extend(m.keys().copied());
        }
    }
    members.remove(&key.device_id());
    let invitations = home.load_invitations()?;
    let device = Device {
        home,
        key,
        node: handle,
        members: Arc::new(RwLock::new(members)),
        connected: Arc::new(Mutex::new(BTreeSet::new())),
        peers: Arc::new(Mutex::new(BTreeMap::new())),
        refusal: Arc::new(Mutex::new(None)),
        invitations: Arc::new(Mutex::new(invitations)),
        folders: Mutex::new(folders),
        rescan,
        watch,
        network: std::sync::OnceLock::new(),
    };
    Ok((Arc::new(device), events))
}

impl Device {
    /// `sync --once` of this home while its daemon runs: the daemon checks in with every
    /// peer it knows, `peers` added (and dialled from now on), and says when all agree. Its
    /// folders are watched, so nothing needs scanning first.
    pub(crate) async fn check_in(
        &self,
        peers: &[String],
        timeout: Duration,
    ) -> Result<(), Failure> {
        let Some(networked) = self.network.get() else {
            return Err(Failure::not_found(
                "the running daemon is still starting; try again in a moment",
            ));
        };
        let Some(net) = networked.net.upgrade() else {
            return Err(Failure::not_found("the running daemon is stopping"));
        };
        let mut statics = networked.statics.clone();
        for p in peers {
            let addr = resolve(p)?;
            if !statics.contains(&addr) {
                net.dial(addr, Origin::Static);
                statics.push(addr);
            }
        }
        check_in(&net, &statics, networked.discovery, timeout).await
    }

    /// Opens a share created or joined while the daemon runs (`share`, `join`).
    pub(crate) async fn open_new_share(&self, share: &ShareFile) -> Result<(), Failure> {
        let open = self
            .folders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(p, _)| *p == share.path);
        if open {
            return Ok(());
        }
        if let Ok(mut m) = self.members.write() {
            m.extend(share.members()?.keys().copied());
            m.remove(&self.key.device_id());
        }
        let folder = open_share(
            &self.home,
            &self.node,
            &self.key,
            share,
            self.rescan,
            self.watch,
        )
        .await?;
        self.folders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((share.path.clone(), folder));
        Ok(())
    }

    fn saw_address(&self, peer: DeviceId, addr: Option<SocketAddr>) {
        if let Some(addr) = addr {
            self.peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(peer)
                .or_insert((String::new(), None))
                .1 = Some(addr);
        }
    }

    /// The folders' handles.
    pub(crate) fn folder_handles(&self) -> Vec<(std::path::PathBuf, FolderHandle)> {
        self.folders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The network side of a running device: how it reaches peers, and whom it remembers.
struct Network {
    device: Arc<Device>,
    dialer: Dialer,
    /// Addresses with a dial loop running (one loop per address).
    dialing: Mutex<BTreeSet<SocketAddr>>,
    /// Addresses whose dial loop has not finished its first attempt yet, with where they came
    /// from and when the attempt started.
    first_attempts: Mutex<BTreeMap<SocketAddr, (Origin, Instant)>>,
    /// Addresses over which a member session was established since the start.
    reached: Mutex<BTreeSet<SocketAddr>>,
    /// Where peers were reached (`HOME/peers.json`).
    book: Mutex<PeerBook>,
    /// When each peer's last member connection arrived (it may still be setting up).
    incoming: Mutex<BTreeMap<DeviceId, Instant>>,
}

/// Where an address to dial came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// `--peer` or the config file: dialled for as long as the device runs.
    Static,
    /// `HOME/peers.json`: dialled for as long as the device runs (the peer may come back).
    Remembered,
    /// A LAN announcement: dialled until it fails twice in a row (announcements repeat).
    Discovered,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Network {
    fn is_connected(&self, peer: &DeviceId) -> bool {
        lock(&self.device.connected).contains(peer)
    }

    /// Whether `peer` is connected, or has just connected to this device: a connection this
    /// device dialled meanwhile would only replace that one.
    fn has_session(&self, peer: &DeviceId) -> bool {
        self.is_connected(peer)
            || lock(&self.incoming)
                .get(peer)
                .is_some_and(|t| t.elapsed() < SESSION_SETUP)
    }

    fn remember(&self, update: impl FnOnce(&mut PeerBook) -> bool) {
        let mut book = lock(&self.book);
        if update(&mut book)
            && let Err(e) = self.device.home.save_peers(&book)
        {
            tracing::warn!("cannot remember peers: {}", e.message);
        }
    }

    /// Starts a dial loop for `addr` unless one runs, or the device last reached there is
    /// connected already.
    fn dial(self: &Arc<Self>, addr: SocketAddr, origin: Origin) {
        if origin == Origin::Discovered
            && lock(&self.book)
                .device_at(addr)
                .is_some_and(|d| self.is_connected(&d))
        {
            return;
        }
        if !lock(&self.dialing).insert(addr) {
            return;
        }
        lock(&self.first_attempts).insert(addr, (origin, Instant::now()));
        tokio::spawn(dial(self.clone(), addr, origin));
    }
}

/// Serves one incoming connection, over TCP or QUIC: a member's session, or a pairing attempt.
async fn serve(
    net: Arc<Network>,
    accepted: std::io::Result<(Purpose, PeerKey, Link)>,
    from: IpAddr,
) {
    let device = &net.device;
    let address = from.to_string();
    let (purpose, peer, link) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::warn!("refused a connection from {address}: {e}");
            return;
        }
    };
    if purpose == Purpose::Member {
        lock(&net.incoming).insert(peer.device_id, Instant::now());
        device.saw_address(peer.device_id, Some(SocketAddr::new(from, 0)));
        let _ = device
            .node
            .add_connection_from(peer.device_id, Dialled::Accepted, link)
            .await;
        return;
    }
    let binding = match link.channel_binding() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("refused a pairing attempt from {address}: {e}");
            return;
        }
    };
    let d = device.clone();
    let result = pairing::admit_on(
        link,
        binding,
        peer.public_key,
        address.as_bytes(),
        &device.key,
        device.invitations.clone(),
        move |a| {
            d.home
                .add_member(&a.share_id, a.public_key, a.access)
                .unwrap_or_default()
        },
    )
    .await;
    // The registry changed either way (a use, or a failure counted): keep it.
    let snapshot = lock(&device.invitations).clone();
    let _ = device.home.save_invitations(&snapshot);
    if let Ok(a) = result {
        let member = Member {
            public_key: a.public_key,
            access: a.access,
        };
        let joiner = DeviceId::from_public_key(&a.public_key);
        let _ = device.node.add_member(a.share_id, member.clone()).await;
        // The membership record makes it a member on every device of the share.
        if let Err(e) = device
            .node
            .set_membership(a.share_id, joiner, Some(member))
            .await
        {
            tracing::warn!("cannot record {joiner} as a member: {e}");
        }
        if let Ok(mut m) = device.members.write() {
            m.insert(joiner);
        }
        tracing::info!(
            "paired {} into share {}",
            DeviceId::from_public_key(&a.public_key),
            hex::encode(a.share_id)
        );
    }
}

/// Accepts connections on both transports until the device stops.
fn accept_all(net: &Arc<Network>, listener: Listener) {
    if let Some(tcp) = listener.tcp {
        let net = net.clone();
        tokio::spawn(async move {
            while let Ok((stream, from)) = tcp.accept().await {
                let policy = net.device.policy();
                let key = net.device.key.clone();
                let net = net.clone();
                tokio::spawn(async move {
                    let accepted = transport::accept_tcp(stream, &key, policy).await;
                    serve(net, accepted, from.ip()).await;
                });
            }
        });
    }
    if let Some(endpoint) = listener.quic {
        let net = net.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let from = incoming.remote_address().ip();
                let (net, endpoint) = (net.clone(), endpoint.clone());
                tokio::spawn(async move {
                    let accepted = transport::accept_quic(&endpoint, incoming).await;
                    serve(net, accepted, from).await;
                });
            }
        });
    }
}

/// Keeps a connection to `addr` up: dials, and redials with backoff when it drops. A
/// discovered address is given up after two failures in a row.
async fn dial(net: Arc<Network>, addr: SocketAddr, origin: Origin) {
    let device = &net.device;
    let mut backoff = Duration::from_millis(200);
    let mut known: Option<DeviceId> = lock(&net.book).device_at(addr);
    let mut failures = 0;
    loop {
        if !known.is_some_and(|d| net.is_connected(&d)) {
            match net.dialer.connect(addr, device.policy()).await {
                Ok((peer, _)) if net.has_session(&peer.device_id) => {
                    // Already connected (it dialled this device, or another address of it
                    // was dialled): this address leads there too; keep the session there is.
                    known = Some(peer.device_id);
                    lock(&net.reached).insert(addr);
                    failures = 0;
                }
                Ok((peer, link)) => {
                    known = Some(peer.device_id);
                    device.saw_address(peer.device_id, Some(addr));
                    let over = link.kind();
                    let (link, first_error) = link.watched();
                    if device
                        .node
                        .add_connection_from(peer.device_id, Dialled::Dialed, link)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    // In TLS 1.3 a listener that refuses this device does so after the dialer's
                    // side of the handshake: the refusal is the first read's error, and the
                    // session never starts. Say so.
                    if session_starts(device, peer.device_id).await {
                        backoff = Duration::from_millis(200);
                        failures = 0;
                        lock(&net.reached).insert(addr);
                        tracing::info!("reached {} at {addr} over {over}", peer.device_id);
                        net.remember(|book| {
                            book.success(peer.device_id, addr, crate::wall_micros() / 1_000_000);
                            true
                        });
                    } else if let Some((error, refused)) = lock(&first_error).take() {
                        if refused {
                            let why = format!(
                                "{} at {addr} refused this device during setup (is it still a member of a share there?): {error}",
                                peer.device_id
                            );
                            tracing::warn!("{why}");
                            *lock(&device.refusal) = Some(why);
                        } else {
                            tracing::info!(
                                "the connection to {} at {addr} ended during setup: {error}",
                                peer.device_id
                            );
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        failures += 1;
                    }
                    // Otherwise the session gave way to another connection with the peer.
                }
                Err(e) => {
                    tracing::info!("cannot reach {addr}: {e}");
                    net.remember(|book| book.failure(addr));
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    failures += 1;
                }
            }
            lock(&net.first_attempts).remove(&addr);
            if origin == Origin::Discovered && failures >= 2 {
                break;
            }
        }
        // A little jitter, so that two devices that dial each other drift apart.
        let jitter = Duration::from_millis(u64::from(random_byte()) * 2);
        tokio::time::sleep(backoff.max(Duration::from_millis(500)) + jitter).await;
    }
    lock(&net.first_attempts).remove(&addr);
    lock(&net.dialing).remove(&addr);
}

fn random_byte() -> u8 {
    let mut b = [0u8; 1];
    let _ = getrandom::getrandom(&mut b);
    b[0]
}

/// How long a new connection may take to become a session.
const SESSION_SETUP: Duration = Duration::from_secs(5);

/// Whether a session with `peer` is established within [`SESSION_SETUP`].
async fn session_starts(device: &Device, peer: DeviceId) -> bool {
    let deadline = Instant::now() + SESSION_SETUP;
    while Instant::now() < deadline {
        if device
            .connected
            .lock()
            .map(|c| c.contains(&peer))
            .unwrap_or(false)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Runs LAN discovery for the device's shares, announcing `port`, and dials what it finds.
/// Returns the task's handle (dropping it stops discovery), or `None` when it is off.
fn discover(
    net: &Arc<Network>,
    config: &Config,
    port: u16,
) -> Result<Option<DiscoveryHandle>, Failure> {
    if config.discovery == Some(false) {
        return Ok(None);
    }
    let mut shares = Vec::new();
    for share in net.device.home.shares()? {
        shares.push(share.share_id()?);
    }
    if shares.is_empty() {
        return Ok(None);
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| Failure::usage(&format!("no random source: {e}")))?;
    let lan = LanConfig {
        udp_port: config.discovery_port.unwrap_or(UDP_PORT),
        ..LanConfig::new(seed)
    };
    let udp_port = lan.udp_port;
    let (handle, mut found) = match spawn_discovery(lan, shares, port) {
        Ok(started) => started,
        Err(e) => {
            // Not fatal: remembered and static addresses still work.
            tracing::warn!("LAN discovery is off: {e}");
            return Ok(None);
        }
    };
    tracing::info!("LAN discovery on UDP port {udp_port}");
    let net = net.clone();
    tokio::spawn(async move {
        while let Some(f) = found.recv().await {
            net.dial(f.addr, Origin::Discovered);
        }
    });
    Ok(Some(handle))
}

/// The addresses `run` and `sync --once` listen on when not told: every interface (IPv6 and
/// IPv4 where the host allows), a port the system picks.
fn any_port() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
    ]
}

/// `run` (no deadline) and `sync --once` (returns when every reachable peer agrees).
///
/// Peers are dialled at `--peer`, at the config file's `peers`, at the addresses where they
/// were reached before, and wherever LAN discovery finds them.
pub fn run(
    home: Home,
    listen: Option<String>,
    transport: Option<String>,
    peers: Vec<String>,
    once: Option<Duration>,
    rescan: Duration,
) -> Result<(), Failure> {
    let config = home.config()?;
    let transport = Transport::parse(transport.as_deref().or(config.transport.as_deref()))?;
    // `sync --once` listens too, on any port: LAN discovery announces it (a hello that
    // running peers answer at once), and peers that find it may dial it.
    let listen = match listen
        .or_else(|| config.listen.clone())
        .filter(|_| once.is_none())
    {
        Some(a) => vec![resolve(&a)?],
        None => any_port(),
    };
    let mut statics: Vec<SocketAddr> = Vec::new();
    for p in config.peers.iter().chain(&peers) {
        let addr = resolve(p)?;
        if !statics.contains(&addr) {
            statics.push(addr);
        }
    }
    runtime()?.block_on(async move {
        let (device, mut events) = start(home, rescan, once.is_none()).await?;
        crate::control::serve(device.clone()).await?;
        let dialer = Dialer::new(transport, &device.key)?;
        let mut bound = Err(Failure::usage("no address to listen on"));
        for addr in &listen {
            bound = transport::listen(*addr, transport, &device.key, &device.policy()).await;
            if bound.is_ok() {
                break;
            }
        }
        let listener = bound?;
        let port = listener.addr.port();
        tracing::info!("listening on {}", listener.addr);
        let book = device.home.load_peers();
        let remembered = book.addresses();
        let net = Arc::new(Network {
            device: device.clone(),
            dialer,
            dialing: Mutex::new(BTreeSet::new()),
            first_attempts: Mutex::new(BTreeMap::new()),
            reached: Mutex::new(BTreeSet::new()),
            book: Mutex::new(book),
            incoming: Mutex::new(BTreeMap::new()),
        });
        accept_all(&net, listener);
        for addr in &statics {
            net.dial(*addr, Origin::Static);
        }
        for addr in remembered {
            net.dial(addr, Origin::Remembered);
        }
        let discovery = discover(&net, &config, port)?;
        let _ = device.network.set(Networked {
            net: Arc::downgrade(&net),
            statics: statics.clone(),
            discovery: discovery.is_some(),
        });
        let connected = device.connected.clone();
        let refusal = device.refusal.clone();
        let peers_seen = device.peers.clone();
        let members_device = device.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Db {
                        share,
                        event: clearskies_proto::db::Event::MembersChanged { .. },
                    } => {
                        // Not here: this task must keep draining the node's events.
                        tokio::spawn(membership_changed(members_device.clone(), share));
                    }
                    Event::PeerUp { peer, name } => {
                        tracing::info!("connected to {name} ({peer})");
                        lock(&peers_seen)
                            .entry(peer)
                            .or_insert((String::new(), None))
                            .0 = name;
                        lock(&connected).insert(peer);
                    }
                    Event::PeerDown { peer, reason } => {
                        lock(&connected).remove(&peer);
                        if let CloseReason::Peer { code, reason } = reason
                            && code >= CloseCode::APPLICATION_MIN
                        {
                            tracing::warn!("{peer} refused this device: {reason}");
                            *lock(&refusal) = Some(reason);
                        }
                    }
                    _ => {}
                }
            }
        });
        let result = match once {
            None => wait_for_signal().await,
            Some(timeout) => check_in(&net, &statics, discovery.is_some(), timeout).await,
        };
        if let Some(discovery) = discovery {
            discovery.shutdown().await;
        }
        crate::control::remove(&device.home.root);
        for (_, folder) in device.folder_handles() {
            folder.stop();
        }
        // Returns once the sessions are closed and the stores released.
        device.node.shutdown().await;
        result
    })
}

/// A membership record changed `share`'s members: keep the home's record of them and the
/// set of devices allowed to connect in step with it.
async fn membership_changed(device: Arc<Device>, share: ShareId) {
    let Ok(members) = device.node.members(share).await else {
        return;
    };
    let id = hex::encode(share);
    if let Ok(shares) = device.home.shares()
        && let Some(mut file) = shares.into_iter().find(|s| s.id == id)
    {
        file.members = members
            .values()
            .map(|m| MemberFile {
                public_key: hex::encode(m.public_key),
                access: crate::access_text(m.access).to_owned(),
            })
            .collect();
        if let Err(e) = device.home.save_share(&file) {
            tracing::info!(
                "cannot record the members of {}: {}",
                file.path.display(),
                e.message
            );
        }
    }
    let mut allowed = BTreeSet::new();
    for share in device.home.shares().unwrap_or_default() {
        if let Ok(id) = share.share_id()
            && let Ok(m) = device.node.members(id).await
        {
            allowed.extend(m.keys().copied());
        }
    }
    allowed.remove(&device.key.device_id());
    if let Ok(mut m) = device.members.write() {
        *m = allowed;
    }
}

async fn wait_for_signal() -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::usage(&e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::usage(&e.to_string()))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
    Ok(())
}

/// How often a check-in looks at whether everything agrees.
const CHECK_IN_POLL: Duration = Duration::from_millis(25);

/// How long a check-in with LAN discovery and no address to go by waits for answers to its
/// hello before it may finish: answers come within half a second (`spec/discovery.md` § 7).
const DISCOVERY_GRACE: Duration = Duration::from_millis(1500);

/// How long a check-in waits for a dial of a discovered address to connect.
const DISCOVERED_ANSWER: Duration = Duration::from_secs(1);

/// Waits until at least one peer is connected, every static address was reached, no dial is
/// still on its first attempt, and every connected peer is in sync.
async fn check_in(
    net: &Network,
    statics: &[SocketAddr],
    discovery: bool,
    timeout: Duration,
) -> Result<(), Failure> {
    let device = &net.device;
    let started = Instant::now();
    let deadline = started + timeout;
    let mut settled = false;
    let mut progress = crate::progress::Progress::new();
    let result = loop {
        let (files, bytes) = device
            .folder_handles()
            .iter()
            .map(|(_, f)| f.status())
            .fold((0, 0), |(n, b), s| {
                (n + s.pending_files, b + s.pending_bytes)
            });
        progress.update(files, bytes);
        let connected: Vec<DeviceId> = lock(&device.connected).iter().copied().collect();
        let reached = lock(&net.reached).clone();
        // A static address also counts as reached when the device last seen there is connected
        // (its session may have come another way: it dialled us, or discovery found it).
        let statics_reached = {
            let book = lock(&net.book);
            statics
                .iter()
                .filter(|a| {
                    reached.contains(a)
                        || book.device_at(**a).is_some_and(|d| connected.contains(&d))
                })
                .count()
        };
        // A discovered member answers at once; an address announced that does not (a peer
        // listening on loopback only, say) is not waited for.
        let dialling = lock(&net.first_attempts).values().any(|(origin, since)| {
            *origin != Origin::Discovered || since.elapsed() < DISCOVERED_ANSWER
        });
        // Without addresses to go by, give the LAN a moment to answer; with them, every peer
        // found by then counts, and the check-in does not wait for more.
        let waiting_for_answers =
            discovery && statics.is_empty() && started.elapsed() < DISCOVERY_GRACE;
        if !connected.is_empty()
            && statics_reached == statics.len()
            && !dialling
            && !waiting_for_answers
        {
            let mut all = true;
            for peer in &connected {
                all &= device.node.synced_with(*peer).await.unwrap_or(false);
            }
            // Counting changes the node handed to a folder that it has not processed yet. A
            // home that cannot be read now (out of file descriptors, say) proves nothing.
            match device.home.shares() {
                Ok(shares) => {
                    for share in shares {
                        all &= match share.share_id() {
                            Ok(id) => device.node.folder_complete(id).await.unwrap_or(false),
                            Err(_) => false,
                        };
                    }
                }
                Err(_) => all = false,
            }
            // Agreeing twice in a row, a poll apart, means nothing was on its way. The last
            // frames leave with the node's shutdown, which closes each session cleanly.
            if all && settled {
                break Ok(());
            }
            settled = all;
        }
        let broken = device
            .folder_handles()
            .into_iter()
            .find_map(|(path, f)| f.status().error.map(|e| format!("{}: {e}", path.display())));
        if let Some(e) = broken {
            break Err(Failure::not_found(&e));
        }
        let refused = lock(&device.refusal).take();
        if let Some(reason) = refused {
            break Err(Failure::not_found(&format!(
                "a peer refused this device: {reason}"
            )));
        }
        if Instant::now() >= deadline {
            let secs = timeout.as_secs();
            break Err(Failure::not_found(&if !statics.is_empty() {
                format!(
                    "not in sync after {secs} s ({statics_reached} of {} peers reached, {} connected)",
                    statics.len(),
                    connected.len()
                )
            } else if connected.is_empty() {
                format!(
                    "not in sync after {secs} s: no peer found (none announced itself on the LAN{}, and no remembered address answered); start `clearskies run` on another device of the share, or pass --peer HOST:PORT",
                    if discovery { "" } else { ", discovery is off" }
                )
            } else {
                format!(
                    "not in sync after {secs} s ({} peers connected, still exchanging)",
                    connected.len()
                )
            }));
        }
        tokio::time::sleep(CHECK_IN_POLL).await;
    };
    progress.finish();
    result
}

/// `join CODE PATH --peer HOST:PORT`.
/// Returns the share's folder, as recorded.
pub fn join(
    home: &Home,
    code: &AccessCode,
    path: &Path,
    peer: Option<String>,
    transport: Option<String>,
    // `Some(cache size)` for a shallow replica.
    shallow: Option<Option<u64>>,
) -> Result<std::path::PathBuf, Failure> {
    let key = home.key()?;
    let config = home.config()?;
    let transport = Transport::parse(transport.as_deref().or(config.transport.as_deref()))?;
    let addr = resolve(&peer.ok_or_else(|| {
        Failure::usage("pass the inviting device's address with --peer HOST:PORT (an access code cannot be looked up on the network yet)")
    })?)?;
    let joined = runtime()?.block_on(async {
        let dialer = Dialer::new(transport, &key)?;
        let failed = |e: String| Failure {
            message: format!("pairing failed: {e}"),
            code: 1,
        };
        let (peer, link) = dialer
            .connect(addr, PeerPolicy::Pairing)
            .await
            .map_err(|e| failed(format!("cannot reach {addr}: {e}")))?;
        let binding = link.channel_binding().map_err(|e| failed(e.to_string()))?;
        pairing::join_on(link, binding, peer.public_key, &key, code)
            .await
            .map_err(|e| failed(e.to_string()))
    })?;
    std::fs::create_dir_all(path).map_err(|e| Failure::io(path, e))?;
    let share = ShareFile {
        id: hex::encode(joined.share_id),
        path: std::fs::canonicalize(path).map_err(|e| Failure::io(path, e))?,
        members: joined
            .members
            .iter()
            .map(|m| MemberFile {
                public_key: hex::encode(m.public_key),
                access: crate::access_text(m.access).to_owned(),
            })
            .collect(),
        shallow: shallow.is_some(),
        pinned: Vec::new(),
        cache_size: shallow.flatten(),
    };
    home.save_share(&share)?;
    ReplicaStore::open(&home.share_dir(&share).join("replica.redb")).map_err(store_failure)?;
    println!(
        "joined share {} as {}",
        share.id,
        crate::access_text(joined.access)
    );
    Ok(share.path)
}
