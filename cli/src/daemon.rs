//! The network side of the tool: `run` (the daemon), `sync --once` (a check-in) and `join`
//! (pairing), on the tokio driver.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use clearskies_net::PeerPolicy;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node};
use clearskies_proto::pair::Invitations;
use clearskies_proto::session::{CloseReason, SessionConfig};
use clearskies_proto::wire::CloseCode;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::folder::{FolderConfig, FolderHandle, spawn_folder};
use clearskies_tokio::node::{NodeHandle, spawn_node};
use clearskies_tokio::{pairing, tls};
use tokio::net::TcpListener;

use crate::Failure;
use crate::home::{Home, MemberFile, ShareFile};

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
    /// Database changes (share, key), for `db watch`.
    pub(crate) changes: tokio::sync::broadcast::Sender<(ShareId, String)>,
    rescan: Duration,
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
    };
    let folder = spawn_folder(node.clone(), key.device_id(), config)
        .await
        .map_err(|e| Failure::not_found(&format!("{}: {e}", share.path.display())))?;
    if let Some(e) = folder.status().error {
        eprintln!("{}: {e}", share.path.display());
    }
    Ok(folder)
}

async fn start(
    home: Home,
    rescan: Duration,
) -> Result<(Arc<Device>, tokio::sync::mpsc::Receiver<Event>), Failure> {
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
    let (handle, events, _task) = spawn_node(node, clock);
    let mut members = BTreeSet::new();
    // Each folder is scanned before the device goes on the network, so no peer takes a
    // device that has not looked at its disk yet for one that agrees with it.
    let mut folders = Vec::new();
    for share in &shares {
        members.extend(share.members()?.keys().copied());
        let folder = open_share(&home, &handle, &key, share, rescan).await?;
        folders.push((share.path.clone(), folder));
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
        changes: tokio::sync::broadcast::channel(1024).0,
        rescan,
    };
    Ok((Arc::new(device), events))
}

impl Device {
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
        let folder = open_share(&self.home, &self.node, &self.key, share, self.rescan).await?;
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

/// Serves one incoming connection: a member's session, or a pairing attempt.
async fn serve(device: Arc<Device>, tcp: tokio::net::TcpStream) {
    let remote = tcp.peer_addr().ok();
    let address = remote.map(|a| a.ip().to_string()).unwrap_or_default();
    // The ClientHello says what the peer came for: members are judged (and strangers refused)
    // during the handshake; a pairing attempt may present any key, the PAKE decides.
    let members = clearskies_net::server_config(&device.key, device.policy());
    let pairing = clearskies_net::server_config(&device.key, PeerPolicy::Pairing);
    let (purpose, peer, stream) = match tls::accept_either(tcp, members, pairing).await {
        Ok(accepted) => accepted,
        Err(e) => {
            eprintln!("refused a connection from {address}: {e}");
            return;
        }
    };
    if purpose == tls::Purpose::Member {
        device.saw_address(peer.device_id, remote);
        let _ = device.node.add_connection(peer.device_id, stream).await;
        return;
    }
    let d = device.clone();
    let admitted = Arc::new(Mutex::new(None));
    let slot = admitted.clone();
    let result = pairing::admit_stream(
        stream,
        peer.public_key,
        address.as_bytes(),
        &device.key,
        device.invitations.clone(),
        move |a| {
            let members = d
                .home
                .add_member(&a.share_id, a.public_key, a.access)
                .unwrap_or_default();
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(a.clone());
            members
        },
    )
    .await;
    // The registry changed either way (a use, or a failure counted): keep it.
    let snapshot = device
        .invitations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _ = device.home.save_invitations(&snapshot);
    if let Ok(a) = result {
        let member = Member {
            public_key: a.public_key,
            access: a.access,
        };
        let _ = device.node.add_member(a.share_id, member).await;
        if let Ok(mut m) = device.members.write() {
            m.insert(DeviceId::from_public_key(&a.public_key));
        }
        eprintln!(
            "paired {} into share {}",
            DeviceId::from_public_key(&a.public_key),
            hex::encode(a.share_id)
        );
    }
}

/// Keeps a connection to `addr` up: dials, and redials with backoff when it drops.
async fn dial(device: Arc<Device>, addr: SocketAddr) {
    let mut backoff = Duration::from_millis(200);
    let mut known: Option<DeviceId> = None;
    loop {
        let up = known.is_some_and(|d| {
            device
                .connected
                .lock()
                .map(|c| c.contains(&d))
                .unwrap_or(false)
        });
        if !up {
            match tls::connect(addr, &device.key, device.policy()).await {
                Ok((peer, stream)) => {
                    known = Some(peer.device_id);
                    device.saw_address(peer.device_id, Some(addr));
                    if device
                        .node
                        .add_connection(peer.device_id, stream)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    // In TLS 1.3 a listener that refuses this device does so after the dialer's
                    // side of the handshake: the session then never starts. Say so.
                    if !session_starts(&device, peer.device_id).await {
                        let why = format!(
                            "{} at {addr} refused this device during setup (is it still a member of a share there?)",
                            peer.device_id
                        );
                        eprintln!("{why}");
                        *device.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    } else {
                        backoff = Duration::from_millis(200);
                    }
                }
                Err(e) => {
                    eprintln!("cannot reach {addr}: {e}");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        tokio::time::sleep(backoff.max(Duration::from_millis(500))).await;
    }
}

/// Whether a session with `peer` is established within a few seconds.
async fn session_starts(device: &Device, peer: DeviceId) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
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

/// `run` (no deadline) and `sync --once` (returns when every reachable peer agrees).
pub fn run(
    home: Home,
    listen: Option<String>,
    peers: Vec<String>,
    once: Option<Duration>,
    rescan: Duration,
) -> Result<(), Failure> {
    let listen = listen.map(|a| resolve(&a)).transpose()?;
    let peers: Vec<SocketAddr> = peers.iter().map(|p| resolve(p)).collect::<Result<_, _>>()?;
    if once.is_some() && peers.is_empty() {
        return Err(Failure::usage(
            "sync --once needs at least one --peer HOST:PORT (discovery is not in this build yet)",
        ));
    }
    runtime()?.block_on(async move {
        let (device, mut events) = start(home, rescan).await?;
        crate::control::serve(device.clone()).await?;
        if let Some(addr) = listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::usage(&format!("cannot listen on {addr}: {e}")))?;
            eprintln!(
                "listening on {}",
                listener
                    .local_addr()
                    .map_err(|e| Failure::usage(&e.to_string()))?
            );
            let d = device.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    tokio::spawn(serve(d.clone(), tcp));
                }
            });
        }
        for addr in &peers {
            tokio::spawn(dial(device.clone(), *addr));
        }
        let connected = device.connected.clone();
        let refusal = device.refusal.clone();
        let peers_seen = device.peers.clone();
        let changes = device.changes.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Db {
                        share,
                        event: clearskies_proto::db::Event::Changed { key },
                    } => {
                        let _ = changes.send((share, key));
                    }
                    Event::PeerUp { peer, name } => {
                        eprintln!("connected to {name} ({peer})");
                        peers_seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(peer)
                            .or_insert((String::new(), None))
                            .0 = name;
                        connected
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(peer);
                    }
                    Event::PeerDown { peer, reason } => {
                        connected
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&peer);
                        if let CloseReason::Peer { code, reason } = reason
                            && code >= CloseCode::APPLICATION_MIN
                        {
                            eprintln!("{peer} refused this device: {reason}");
                            *refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                        }
                    }
                    _ => {}
                }
            }
        });
        let result = match once {
            None => wait_for_signal().await,
            Some(timeout) => check_in(&device, peers.len(), timeout).await,
        };
        crate::control::remove(&device.home.root);
        for (_, folder) in device.folder_handles() {
            folder.stop();
        }
        device.node.shutdown().await;
        // Let the node's task release the stores.
        tokio::time::sleep(Duration::from_millis(100)).await;
        result
    })
}

async fn wait_for_signal() -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Failure::usage(&e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure::usage(&e.to_string()))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("stopping");
    Ok(())
}

/// Waits until every peer dialled is connected and in sync.
async fn check_in(device: &Device, peers: usize, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let mut settled = false;
    loop {
        let connected: Vec<DeviceId> = device
            .connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        if connected.len() >= peers {
            let mut all = true;
            for peer in &connected {
                all &= device.node.synced_with(*peer).await.unwrap_or(false);
            }
            all &= device
                .folder_handles()
                .iter()
                .all(|(_, f)| f.status().is_complete());
            // Records that just arrived reach the folders a moment later: agreeing twice in
            // a row, a little apart, means nothing was on its way.
            if all && settled {
                // Let the last frames leave before the sessions close.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            settled = all;
        }
        for (path, f) in device.folder_handles() {
            if let Some(e) = f.status().error {
                return Err(Failure::not_found(&format!("{}: {e}", path.display())));
            }
        }
        let refused = device
            .refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(reason) = refused {
            return Err(Failure::not_found(&format!(
                "a peer refused this device: {reason}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(Failure::not_found(&format!(
                "not in sync after {} s ({} of {peers} peers connected)",
                timeout.as_secs(),
                connected.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// `join CODE PATH --peer HOST:PORT`.
/// Returns the share's folder, as recorded.
pub fn join(
    home: &Home,
    code: &AccessCode,
    path: &Path,
    peer: Option<String>,
) -> Result<std::path::PathBuf, Failure> {
    let key = home.key()?;
    let addr = resolve(&peer.ok_or_else(|| {
        Failure::usage("pass the inviting device's address with --peer HOST:PORT (discovery is not in this build yet)")
    })?)?;
    let joined = runtime()?
        .block_on(pairing::join(addr, &key, code))
        .map_err(|e| Failure {
            message: format!("pairing failed: {e}"),
            code: 1,
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
