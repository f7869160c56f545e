//! Bulk bytes through each driver on loopback, against the raw transports they are built on, in
//! one run (the "Measure" item of the drivers issue; results in `bench/README.md`).
//!
//! ```text
//! cargo bench -p clearskies-quic --bench bulk                 # 1 GiB a case, 3 rounds, ~1 min
//! BULK_MIB=4096 BULK_ROUNDS=5 cargo bench -p clearskies-quic --bench bulk   # larger
//! BULK_CASE=QUIC cargo bench -p clearskies-quic --bench bulk  # the cases whose name has QUIC
//! ```
//!
//! Cases, each a fresh connection between two endpoints of this process on 127.0.0.1:
//!
//! * **raw**: the transport alone, with the drivers' own handshakes and configurations
//!   (`clearskies-net`'s TLS, this crate's QUIC transport parameters), then one side writes
//!   `BULK_MIB` MiB in 64 KiB writes and the other reads it to the end. TCP + rustls on tokio
//!   (`futures-rustls` over tokio's TCP, as the tokio driver), on async-std (`async-net`), and
//!   quinn with one bidirectional stream.
//! * **node**: two real nodes (`clearskies-runtime`'s owner loop, proto's session and fetch
//!   scheduler, redb stores) joined by one connection of the driver. Device A serves 1 MiB
//!   chunks from memory through a folder link (as a folder serves them from disk, minus the
//!   disk); device B wants them all and the clock stops when the last has arrived, been
//!   verified against its SHA-256 and handed to B's folder link. So this is what a file sync's
//!   content transfer costs end to end, framing, scheduling and hashing included.
//!
//! Reported: MB/s (10^6 bytes) of payload, process CPU seconds (user + system of both ends,
//! every thread, from `/proc/self/stat`) per GB of payload, and each node case's throughput as
//! a ratio of its raw transport's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clearskies_net::PeerKey;
use clearskies_net::PeerPolicy;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ShareId};
use clearskies_proto::files::Hash;
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{Event, Node};
use clearskies_proto::session::SessionConfig;
use clearskies_runtime::node::{FolderLink, FuturesIo, IntoStream, NodeHandle, spawn_node};
use clearskies_runtime::{MonotonicClock, Runtime, Task};
use clearskies_store::ReplicaStore;
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const SHARE: ShareId = [8; 32];

const RAW_TOKIO: &str = "raw TCP+rustls (tokio)";
const RAW_QUINN: &str = "raw quinn (one stream)";
const RAW_ASYNC_STD: &str = "raw TCP+rustls (async-std)";
const NODE_TOKIO: &str = "node, tokio TCP+TLS";
const NODE_QUIC: &str = "node, QUIC";
const NODE_ASYNC_STD: &str = "node, async-std TCP+TLS";
/// Each node case and the raw transport it is compared with.
const BASELINES: [(&str, &str); 3] = [
    (NODE_TOKIO, RAW_TOKIO),
    (NODE_QUIC, RAW_QUINN),
    (NODE_ASYNC_STD, RAW_ASYNC_STD),
];

/// What to run: bytes per case, how many rounds, which cases.
struct Plan {
    total: u64,
    rounds: usize,
    /// Only cases whose name contains this (`BULK_CASE`).
    only: Option<String>,
}

impl Plan {
    fn wants(&self, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| case.contains(only.as_str()))
    }
}
/// The length of every chunk served (a chunk of a file of a few GiB, `spec/files.md`).
const CHUNK: usize = 1024 * 1024;
/// Bytes per write on the raw transports.
const WRITE: usize = 64 * 1024;
/// The longest a case may take before the run is declared stuck.
const PATIENCE: Duration = Duration::from_secs(300);

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Process CPU time (user + system, all threads, dead ones included), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux only)");
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of proc(5) (utime, stime), the 12th and 13th after the name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on every Linux ABI that exposes it (proc(5)).
    ticks as f64 / 100.0
}

/// One measured case.
#[derive(Clone)]
struct Measured {
    name: &'static str,
    bytes: u64,
    wall: Duration,
    cpu: f64,
}

impl Measured {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }

    fn cpu_per_gb(&self) -> f64 {
        self.cpu / (self.bytes as f64 / 1e9)
    }
}

/// Runs `work` (which returns the payload bytes it moved, and includes only the transfer) and
/// measures its wall and CPU time.
async fn measure<F: Future<Output = u64>>(name: &'static str, work: F) -> Measured {
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let bytes = work.await;
    let measured = Measured {
        name,
        bytes,
        wall: started.elapsed(),
        cpu: cpu_seconds() - cpu,
    };
    eprintln!(
        "  {:<28} {:>8.1} MB/s {:>7.2} CPU s/GB",
        measured.name,
        measured.mb_per_s(),
        measured.cpu_per_gb()
    );
    measured
}

/// Writes `total` bytes in [`WRITE`]-byte writes, then closes the sending side.
async fn send_all<W: futures_util::io::AsyncWrite + Unpin>(mut writer: W, total: u64) -> W {
    let block = vec![0x5a; WRITE];
    let mut left = total;
    while left > 0 {
        let n = left.min(WRITE as u64) as usize;
        writer.write_all(&block[..n]).await.expect("write");
        left -= n as u64;
    }
    writer.close().await.expect("close");
    writer
}

/// Reads to the end; returns how many bytes came.
async fn receive_all<R: futures_util::io::AsyncRead + Unpin>(mut reader: R) -> u64 {
    let mut buf = vec![0; WRITE];
    let mut total = 0;
    loop {
        match reader.read(&mut buf).await.expect("read") {
            0 => return total,
            n => total += n as u64,
        }
    }
}

/// The chunks device A serves: distinct pseudo-random contents (xorshift), by hash.
fn make_chunks(total: u64) -> Arc<BTreeMap<Hash, Bytes>> {
    let count = total.div_ceil(CHUNK as u64);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let chunks = (0..count)
        .map(|_| {
            let mut data = Vec::with_capacity(CHUNK);
            while data.len() < CHUNK {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                data.extend_from_slice(&state.to_le_bytes());
            }
            let hash: Hash = Sha256::digest(&data).into();
            (hash, Bytes::from(data))
        })
        .collect();
    Arc::new(chunks)
}

/// A running device of the node cases.
struct Device {
    handle: NodeHandle,
    task: Task<()>,
    /// The share's chunk and database events (B's arrivals).
    folder_events: mpsc::UnboundedReceiver<Event>,
    _events: mpsc::Receiver<Event>,
}

/// Starts device `n` with its store in `dir`, its folder link answering chunk reads from
/// `chunks` on a thread of its own (as a folder answers them from disk on a blocking thread).
async fn start<R: Runtime>(
    runtime: &R,
    n: u8,
    dir: &std::path::Path,
    chunks: Arc<BTreeMap<Hash, Bytes>>,
) -> Device {
    let clock = MonotonicClock::new();
    let config = SessionConfig {
        device_name: format!("device-{n}"),
        ..SessionConfig::default()
    };
    let node = Node::new(key(n), config, clock.now());
    let (handle, events, task) = spawn_node(runtime.clone(), node, clock);
    let members: BTreeMap<DeviceId, Member> = [1u8, 2]
        .iter()
        .map(|&i| {
            let member = Member {
                public_key: key(i).public_key(),
                access: Access::ReadWrite,
            };
            (key(i).device_id(), member)
        })
        .collect();
    let store = ReplicaStore::open(&dir.join(format!("replica-{n}.redb"))).expect("open store");
    handle
        .open_share(SHARE, members, store)
        .await
        .expect("open share");
    let (reads, read_rx) = std::sync::mpsc::channel::<clearskies_runtime::node::ChunkRead>();
    let answers = handle.chunk_reads();
    std::thread::spawn(move || {
        for read in read_rx {
            let data = chunks.get(&read.hash).and_then(|chunk| {
                let start = read.offset as usize;
                chunk
                    .get(start..start + read.len as usize)
                    .map(<[u8]>::to_vec)
            });
            answers.answer(&read, data);
        }
    });
    let (events_tx, folder_events) = mpsc::unbounded_channel();
    handle
        .attach_folder(
            SHARE,
            FolderLink {
                reads,
                events: events_tx,
            },
        )
        .await
        .expect("attach folder");
    Device {
        handle,
        task,
        folder_events,
        _events: events,
    }
}

/// A and B up and connected (by `connect`), then B fetches every chunk of A's; returns the
/// measurement of the fetch alone.
async fn node_case<R, C>(
    name: &'static str,
    runtime: R,
    chunks: Arc<BTreeMap<Hash, Bytes>>,
    connect: C,
) -> Measured
where
    R: Runtime,
    C: AsyncFnOnce(&NodeHandle, &NodeHandle),
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let a = start(&runtime, 1, dir.path(), chunks.clone()).await;
    let mut b = start(&runtime, 2, dir.path(), Arc::new(BTreeMap::new())).await;
    connect(&a.handle, &b.handle).await;
    let up = Instant::now();
    while !b
        .handle
        .is_connected(key(1).device_id())
        .await
        .expect("B running")
    {
        assert!(up.elapsed() < PATIENCE, "{name}: never connected");
        clearskies_runtime::sleep(&runtime, Duration::from_millis(5)).await;
    }
    let wanted: Vec<(Hash, u32)> = chunks
        .iter()
        .map(|(hash, data)| (*hash, data.len() as u32))
        .collect();
    let fetch = async {
        b.handle
            .want_chunks(SHARE, wanted)
            .await
            .expect("B running");
        let mut missing: BTreeSet<Hash> = chunks.keys().copied().collect();
        let mut bytes = 0;
        while !missing.is_empty() {
            match b.folder_events.recv().await.expect("B running") {
                Event::Chunk { hash, data, .. } => {
                    assert!(missing.remove(&hash), "{name}: a chunk twice or unasked");
                    bytes += data.len() as u64;
                }
                Event::ChunkStalled { .. } => panic!("{name}: a chunk stalled"),
                _ => {}
            }
        }
        bytes
    };
    let fetch = clearskies_runtime::timeout(&runtime, PATIENCE, fetch);
    let measured = measure(name, async { fetch.await.expect("the fetch in time") }).await;
    for device in [a, b] {
        device.handle.shutdown().await;
        device.task.await.expect("node task");
    }
    measured
}

/// The cases on tokio: raw TCP + rustls, raw quinn, and the nodes over each.
fn tokio_cases(plan: &Plan, chunks: &Arc<BTreeMap<Hash, Bytes>>) -> Vec<Measured> {
    use clearskies_tokio::Tokio;
    use clearskies_tokio::node::TokioIo;
    use clearskies_tokio::tls;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let members = |n: u8| PeerPolicy::pinned([key(n).device_id()]);
        let tls_pair = async || {
            let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let config = clearskies_net::server_config(&key(1), members(2));
            let accepting = async {
                let (tcp, _) = listener.accept().await?;
                tls::accept(tcp, config).await
            };
            let dialer = key(2);
            let (accepted, dialed) =
                tokio::join!(accepting, tls::connect(addr, &dialer, members(1)));
            (accepted.expect("accept"), dialed.expect("dial"))
        };
        let endpoints = || {
            (
                clearskies_quic::bind(loopback(), &key(1), members(2)).unwrap(),
                clearskies_quic::bind(loopback(), &key(2), members(1)).unwrap(),
            )
        };

        let total = plan.total;
        let mut results = Vec::new();

        if plan.wants(RAW_TOKIO) {
            let ((_, server), (_, client)) = tls_pair().await;
            results.push(
                measure(RAW_TOKIO, async {
                    let sending = tokio::spawn(send_all(client, total));
                    let received = receive_all(server).await;
                    sending.await.expect("sender");
                    received
                })
                .await,
            );
        }

        if plan.wants(RAW_QUINN) {
            let (a, b) = endpoints();
            let addr = a.local_addr().unwrap();
            // The listener's accept finishes the handshake, then waits for the stream, which
            // quinn announces with its first bytes: it runs while the sender starts.
            let accepting = tokio::spawn(async move {
                let incoming = a.accept().await.expect("an incoming connection");
                clearskies_quic::accept(&a, incoming)
                    .await
                    .expect("accept")
                    .1
            });
            let (_, client) = clearskies_quic::connect(&b, addr).await.expect("dial");
            results.push(
                measure(RAW_QUINN, async {
                    let sending =
                        tokio::spawn(send_all(IntoStream::<TokioIo>::into_stream(client), total));
                    let server = accepting.await.expect("accepting");
                    let received = receive_all(IntoStream::<TokioIo>::into_stream(server)).await;
                    // The sender's stream (and so its connection) lives until everything is read.
                    drop(sending.await.expect("sender"));
                    received
                })
                .await,
            );
        }

        if plan.wants(NODE_TOKIO) {
            results.push(
                node_case(
                    NODE_TOKIO,
                    Tokio,
                    chunks.clone(),
                    async |a: &NodeHandle, b: &NodeHandle| {
                        hand_over(a, b, tls_pair().await).await;
                    },
                )
                .await,
            );
        }

        if plan.wants(NODE_QUIC) {
            let (ea, eb) = endpoints();
            results.push(
                node_case(
                    NODE_QUIC,
                    Tokio,
                    chunks.clone(),
                    async |a: &NodeHandle, b: &NodeHandle| {
                        // The dialer's stream goes to its node (which writes the preface) while the
                        // listener still waits for it.
                        let addr = ea.local_addr().unwrap();
                        let accepting = async {
                            let incoming = ea.accept().await.expect("an incoming connection");
                            let (peer, stream) = clearskies_quic::accept(&ea, incoming)
                                .await
                                .expect("accept");
                            a.add_connection::<TokioIo>(peer.device_id, stream)
                                .await
                                .unwrap();
                        };
                        let dialing = async {
                            let (peer, stream) =
                                clearskies_quic::connect(&eb, addr).await.expect("dial");
                            b.add_connection::<TokioIo>(peer.device_id, stream)
                                .await
                                .unwrap();
                        };
                        tokio::join!(accepting, dialing);
                    },
                )
                .await,
            );
        }
        results
    })
}

/// The cases on async-std: raw TCP + rustls on `async-net`, and the node over it.
fn async_std_cases(plan: &Plan, chunks: &Arc<BTreeMap<Hash, Bytes>>) -> Vec<Measured> {
    use clearskies_async_std::AsyncIo;
    use clearskies_async_std::tls;

    async_std::task::block_on(async {
        let runtime = AsyncIo::new(|task| {
            async_std::task::spawn(task);
        });
        let members = |n: u8| PeerPolicy::pinned([key(n).device_id()]);
        let tls_pair = async || {
            let listener = async_net::TcpListener::bind(loopback()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let config = clearskies_net::server_config(&key(1), members(2));
            let accepting = async {
                let (tcp, _) = listener.accept().await?;
                tls::accept(tcp, config).await
            };
            let dialer = key(2);
            let (accepted, dialed) =
                futures_util::future::join(accepting, tls::connect(addr, &dialer, members(1)))
                    .await;
            (accepted.expect("accept"), dialed.expect("dial"))
        };

        let total = plan.total;
        let mut results = Vec::new();
        if plan.wants(RAW_ASYNC_STD) {
            let ((_, server), (_, client)) = tls_pair().await;
            results.push(
                measure(RAW_ASYNC_STD, async {
                    let sending = async_std::task::spawn(send_all(client, total));
                    let received = receive_all(server).await;
                    sending.await;
                    received
                })
                .await,
            );
        }
        if plan.wants(NODE_ASYNC_STD) {
            results.push(
                node_case(
                    NODE_ASYNC_STD,
                    runtime,
                    chunks.clone(),
                    async |a: &NodeHandle, b: &NodeHandle| {
                        hand_over(a, b, tls_pair().await).await;
                    },
                )
                .await,
            );
        }
        results
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no such flag, as a
    // smoke test of a few MiB.
    let benching = std::env::args().any(|arg| arg == "--bench");
    let number = |name: &str, default: u64| match std::env::var(name) {
        Ok(value) => value
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| panic!("{name} must be a whole number above 0, not {value:?}")),
        Err(_) => default,
    };
    let mib = number("BULK_MIB", if benching { 1024 } else { 8 });
    let plan = Plan {
        total: mib * 1024 * 1024,
        rounds: number("BULK_ROUNDS", if benching { 3 } else { 1 }) as usize,
        only: std::env::var("BULK_CASE").ok(),
    };
    eprintln!(
        "bulk: {mib} MiB a case, {} round(s), loopback, {} CPUs",
        plan.rounds,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let chunks = make_chunks(plan.total);

    // Rounds interleave the cases, so a slow moment of the machine does not fall on one case.
    let mut runs: Vec<Measured> = Vec::new();
    for round in 1..=plan.rounds {
        eprintln!("round {round}");
        runs.extend(tokio_cases(&plan, &chunks));
        runs.extend(async_std_cases(&plan, &chunks));
    }
    let median = |name: &str| -> Option<Measured> {
        let mut of_case: Vec<Measured> = runs.iter().filter(|m| m.name == name).cloned().collect();
        of_case.sort_by(|x, y| x.mb_per_s().total_cmp(&y.mb_per_s()));
        of_case.get(of_case.len() / 2).cloned()
    };
    println!();
    println!("medians of {} round(s), {mib} MiB a case:", plan.rounds);
    println!("| case | MB/s | CPU s/GB | vs raw |");
    println!("|---|---:|---:|---:|");
    for name in [
        RAW_TOKIO,
        RAW_QUINN,
        RAW_ASYNC_STD,
        NODE_TOKIO,
        NODE_QUIC,
        NODE_ASYNC_STD,
    ] {
        let Some(m) = median(name) else { continue };
        let ratio = BASELINES
            .iter()
            .find(|(node, _)| *node == name)
            .and_then(|(_, raw)| median(raw))
            .map_or_else(
                || "—".into(),
                |raw| format!("{:.2}", m.mb_per_s() / raw.mb_per_s()),
            );
        println!(
            "| {} | {:.0} | {:.2} | {} |",
            m.name,
            m.mb_per_s(),
            m.cpu_per_gb(),
            ratio
        );
    }
}

/// Hands each node its end of one TLS connection: A accepted it (the server end, B's key),
/// B dialled it (the client end, A's key).
async fn hand_over<S, C>(
    a: &NodeHandle,
    b: &NodeHandle,
    ((peer_b, server), (peer_a, client)): ((PeerKey, S), (PeerKey, C)),
) where
    S: IntoStream<FuturesIo>,
    C: IntoStream<FuturesIo>,
{
    a.add_connection::<FuturesIo>(peer_b.device_id, server)
        .await
        .unwrap();
    b.add_connection::<FuturesIo>(peer_a.device_id, client)
        .await
        .unwrap();
}
