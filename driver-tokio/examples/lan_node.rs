//! A whole device that finds its peer on the LAN with no address configured, and syncs.
//!
//! ```text
//! cargo run -p clearskies-tokio --example lan_node -- SEED PEER_SEED SHARE_HEX PUT_KEY EXPECT_KEY
//! ```
//!
//! `SEED` and `PEER_SEED` (0..=255) make this device's key and its peer's (both members of the
//! share `SHARE_HEX`, 64 hex digits; in real use they come from pairing). The device writes
//! `PUT_KEY`, listens for members with TLS on a free port, announces itself with LAN
//! discovery, dials whatever it finds, and exits 0 once it holds `EXPECT_KEY` from its peer
//! (exit 1 after 60 s). `driver-tokio/tests/discovery_netns.rs` runs two of these in two
//! network namespaces. With `CSKY_LAN_FAMILY=ipv4` or `ipv6` discovery uses that family only.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clearskies_net::PeerPolicy;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ShareId};
use clearskies_proto::node::{Event, Node};
use clearskies_proto::session::SessionConfig;
use clearskies_store::ReplicaStore;
use clearskies_tokio::MonotonicClock;
use clearskies_tokio::discovery::{LanConfig, spawn_discovery};
use clearskies_tokio::node::{NodeHandle, spawn_node};
use clearskies_tokio::tls;
use tokio::net::TcpListener;

const PATIENCE: Duration = Duration::from_secs(60);

struct Args {
    seed: u8,
    peer_seed: u8,
    share: ShareId,
    put: String,
    expect: String,
}

fn parse() -> Result<Args, String> {
    let usage = "usage: lan_node SEED PEER_SEED SHARE_HEX PUT_KEY EXPECT_KEY";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [seed, peer_seed, share, put, expect] = args.as_slice() else {
        return Err(usage.into());
    };
    let byte = |s: &str| s.parse::<u8>().map_err(|e| format!("{s:?}: {e}; {usage}"));
    let share_bytes: Vec<u8> = (0..share.len())
        .step_by(2)
        .map(|i| {
            share
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("SHARE_HEX is not hex; {usage}"))?;
    Ok(Args {
        seed: byte(seed)?,
        peer_seed: byte(peer_seed)?,
        share: share_bytes
            .try_into()
            .map_err(|_| format!("SHARE_HEX must be 64 hex digits; {usage}"))?,
        put: put.clone(),
        expect: expect.clone(),
    })
}

/// A CBOR text string (short): the document stored under the key.
fn cbor_text(s: &str) -> Bytes {
    let mut out = vec![0x78, s.len().min(255) as u8];
    out.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
    Bytes::from(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lan_node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args = parse()?;
    let key = DeviceKey::from_secret(&[args.seed; 32]);
    let peer = DeviceKey::from_secret(&[args.peer_seed; 32]);
    let name = format!("lan-node-{}", args.seed);
    let members: BTreeMap<_, _> = [&key, &peer]
        .iter()
        .map(|k| {
            (
                k.device_id(),
                Member {
                    public_key: k.public_key(),
                    access: Access::ReadWrite,
                },
            )
        })
        .collect();

    let dir = tempfile::tempdir()?;
    let clock = MonotonicClock::new();
    let config = SessionConfig {
        device_name: name.clone(),
        ..SessionConfig::default()
    };
    let (node, mut events, _task) = spawn_node(Node::new(key.clone(), config, clock.now()), clock);
    let store = ReplicaStore::open(&dir.path().join("replica.redb"))?;
    node.open_share(args.share, members, store).await?;
    node.put(args.share, &args.put, cbor_text(&name)).await?;

    // Dual-stack where the host has IPv6, so link-local announcements can be dialled too.
    let listener = match TcpListener::bind("[::]:0").await {
        Ok(l) => l,
        Err(_) => TcpListener::bind("0.0.0.0:0").await?,
    };
    let port = listener.local_addr()?.port();
    let policy = PeerPolicy::pinned([peer.device_id()]);
    let server = clearskies_net::server_config(&key, policy.clone());
    let acceptor = node.clone();
    tokio::spawn(async move {
        while let Ok((tcp, from)) = listener.accept().await {
            let (node, server) = (acceptor.clone(), server.clone());
            tokio::spawn(async move {
                match tls::accept(tcp, server).await {
                    Ok((peer, stream)) => {
                        let _ = node.add_connection(peer.device_id, stream).await;
                    }
                    Err(e) => eprintln!("lan_node: refused {from}: {e}"),
                }
            });
        }
    });

    let mut seed = [0; 32];
    getrandom::getrandom(&mut seed).map_err(|e| format!("OS randomness: {e}"))?;
    let mut lan = LanConfig::new(seed);
    match std::env::var("CSKY_LAN_FAMILY").as_deref() {
        Ok("ipv4") => lan.ipv6 = false,
        Ok("ipv6") => lan.ipv4 = false,
        _ => {}
    }
    let (discovery, mut found) = spawn_discovery(lan, vec![args.share], port)?;
    eprintln!(
        "{name}: listening on port {port}, discovery on {:?}",
        discovery.local_addrs()
    );

    // Both sides dial what they find; when both do at once, each node keeps its newer
    // connection and may close the one the other kept. The device with the larger ID gives
    // the other a head start, so usually one connection is made.
    let head_start = if key.device_id() > peer.device_id() {
        Duration::from_millis(1500)
    } else {
        Duration::ZERO
    };
    let mut connected = false;
    let mut dialing: Option<tokio::task::JoinHandle<()>> = None;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if holds(&node, args.share, &args.expect).await {
            break;
        }
        tokio::select! {
            Some(f) = found.recv() => {
                let busy = dialing.as_ref().is_some_and(|d| !d.is_finished());
                if !connected && !busy {
                    eprintln!("{name}: found a member at {}", f.addr);
                    dialing = Some(tokio::spawn(dial(node.clone(), key.clone(), policy.clone(), f.addr, head_start)));
                }
            }
            Some(event) = events.recv() => match event {
                Event::PeerUp { name: peer_name, .. } => {
                    eprintln!("{name}: connected to {peer_name}");
                    connected = true;
                }
                Event::PeerDown { .. } => connected = false,
                _ => {}
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = tokio::time::sleep_until(deadline) => {
                return Err(format!("{name}: no record {:?} after {PATIENCE:?}", args.expect).into());
            }
        }
    }
    // Let the peer finish too before this end of the connection goes away.
    let settle = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < settle && !node.synced_with(peer.device_id()).await? {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("{name}: holds {:?}", args.expect);
    discovery.shutdown().await;
    node.shutdown().await;
    Ok(())
}

async fn holds(node: &NodeHandle, share: ShareId, key: &str) -> bool {
    matches!(node.get(share, key).await, Ok(Some(entry)) if entry.winner().value.is_some())
}

async fn dial(
    node: NodeHandle,
    key: DeviceKey,
    policy: PeerPolicy,
    addr: SocketAddr,
    head_start: Duration,
) {
    tokio::time::sleep(head_start).await;
    match tls::connect(addr, &key, policy).await {
        Ok((peer, stream)) => {
            let _ = node.add_connection(peer.device_id, stream).await;
        }
        Err(e) => eprintln!("lan_node: dialling {addr}: {e}"),
    }
}
