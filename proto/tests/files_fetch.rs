//! Chunk transfer between nodes: requests, answers, pieces, spreading, stalls, bad data.
//! Hosts here are in-memory stand-ins for a driver's store (proto's own tests may mock).

use std::collections::BTreeMap;

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ReplicaState, ShareId};
use clearskies_proto::files::Hash;
use clearskies_proto::node::{ConnId, Event, Node, Output};
use clearskies_proto::session::SessionConfig;
use clearskies_proto::{DeviceId, Timestamp};
use sha2::{Digest, Sha256};

const SHARE: ShareId = [7; 32];

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

struct Host {
    node: Node,
    /// Content this device holds, by hash.
    chunks: BTreeMap<Hash, Vec<u8>>,
    /// Answer every read with these bytes instead (a lying peer).
    lie: bool,
    served: usize,
    arrived: BTreeMap<Hash, Bytes>,
    stalled: Vec<Hash>,
    closed: Vec<ConnId>,
}

impl Host {
    fn new(n: u8, members: &[u8]) -> Host {
        let mut node = Node::new(key(n), SessionConfig::default(), Timestamp::ZERO);
        let members = members
            .iter()
            .map(|&m| {
                let k = key(m);
                (
                    k.device_id(),
                    Member {
                        public_key: k.public_key(),
                        access: Access::ReadWrite,
                    },
                )
            })
            .collect();
        node.open_share(SHARE, members, ReplicaState::default(), u64::from(n));
        Host {
            node,
            chunks: BTreeMap::new(),
            lie: false,
            served: 0,
            arrived: BTreeMap::new(),
            stalled: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Persist { share, id, .. } => self.node.handle_persisted(&share, id),
                Output::ReadChunk {
                    conn,
                    id,
                    hash,
                    offset,
                    len,
                    ..
                } => {
                    let data = self.chunks.get(&hash).map(|c| {
                        self.served += 1;
                        if self.lie {
                            vec![0xee; len as usize]
                        } else {
                            c[offset as usize..(offset + len) as usize].to_vec()
                        }
                    });
                    self.node.chunk_read(conn, id, data);
                }
                Output::Event(Event::Chunk { hash, data, .. }) => {
                    self.arrived.insert(hash, data);
                }
                Output::Event(Event::ChunkStalled { hash, .. }) => self.stalled.push(hash),
                Output::Close { conn } => self.closed.push(conn),
                Output::Event(_) => {}
            }
        }
    }
}

/// Connects every pair `(i, j)` in `links` with connection id `i * 16 + j` on i's side and
/// `j * 16 + i` on j's side, then pumps bytes (a frame per direction per round, so links
/// progress side by side) until nothing moves.
struct Net {
    hosts: Vec<Host>,
    links: Vec<(usize, usize)>,
    now: Timestamp,
}

fn conn(a: usize, b: usize) -> ConnId {
    (a * 16 + b) as ConnId
}

impl Net {
    fn new(hosts: Vec<Host>, links: Vec<(usize, usize)>) -> Net {
        let mut net = Net {
            hosts,
            links,
            now: Timestamp::ZERO,
        };
        for &(a, b) in &net.links.clone() {
            let (ka, kb) = (net.hosts[a].node.device(), net.hosts[b].node.device());
            net.hosts[a].node.handle_connected(net.now, conn(a, b), kb);
            net.hosts[b].node.handle_connected(net.now, conn(b, a), ka);
        }
        net.pump();
        net
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for &(a, b) in &self.links.clone() {
                for (from, to) in [(a, b), (b, a)] {
                    self.hosts[from].drain();
                    // One frame per direction per round: links progress side by side.
                    if let Some(bytes) = self.hosts[from]
                        .node
                        .poll_transmit(self.now, conn(from, to))
                    {
                        moved = true;
                        self.hosts[to]
                            .node
                            .handle_bytes(self.now, conn(to, from), &bytes);
                        self.hosts[to].drain();
                    }
                }
            }
            if !moved {
                for h in &mut self.hosts {
                    h.drain();
                }
                return;
            }
        }
    }
}

fn content(seed: u8, len: usize) -> (Hash, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    (Sha256::digest(&data).into(), data)
}

fn device(n: u8) -> DeviceId {
    key(n).device_id()
}

#[test]
fn chunks_arrive_verified_including_multi_piece_ones() {
    let mut a = Host::new(1, &[1, 2]);
    let small = content(1, 1000);
    let big = content(2, 600 * 1024); // three pieces
    a.chunks.insert(small.0, small.1.clone());
    a.chunks.insert(big.0, big.1.clone());
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    net.hosts[1].node.want_chunk(SHARE, small.0, 1000);
    net.hosts[1].node.want_chunk(SHARE, big.0, 600 * 1024);
    net.pump();
    let b = &net.hosts[1];
    assert_eq!(b.arrived.get(&small.0).map(|d| d.to_vec()), Some(small.1));
    assert_eq!(b.arrived.get(&big.0).map(|d| d.to_vec()), Some(big.1));
    assert_eq!(b.node.chunks_wanted(), 0);
    assert!(b.stalled.is_empty());
}

#[test]
fn a_chunk_nobody_has_stalls_then_is_retried() {
    let a = Host::new(1, &[1, 2]);
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    let later = content(3, 5000);
    net.hosts[1].node.want_chunk(SHARE, later.0, 5000);
    net.pump();
    assert_eq!(net.hosts[1].stalled, vec![later.0]);
    assert!(net.hosts[1].arrived.is_empty());
    // The peer gets the chunk meanwhile; after the retry delay it is asked again.
    net.hosts[0].chunks.insert(later.0, later.1.clone());
    let due = net.hosts[1]
        .node
        .poll_timeout()
        .expect("a retry is scheduled");
    net.now = due;
    net.hosts[1].node.handle_timeout(due);
    net.pump();
    assert_eq!(
        net.hosts[1].arrived.get(&later.0).map(|d| d.to_vec()),
        Some(later.1)
    );
}

#[test]
fn requests_spread_over_every_peer_that_has_the_chunks() {
    let mut a = Host::new(1, &[1, 2, 3]);
    let mut b = Host::new(2, &[1, 2, 3]);
    let wanted: Vec<(Hash, Vec<u8>)> = (0..60).map(|i| content(i, 200 * 1024)).collect();
    for (h, d) in &wanted {
        a.chunks.insert(*h, d.clone());
        b.chunks.insert(*h, d.clone());
    }
    let c = Host::new(3, &[1, 2, 3]);
    let mut net = Net::new(vec![a, b, c], vec![(0, 2), (1, 2)]);
    for (h, _) in &wanted {
        net.hosts[2].node.want_chunk(SHARE, *h, 200 * 1024);
    }
    net.pump();
    assert_eq!(net.hosts[2].arrived.len(), 60);
    // 60 × 200 KiB is more than one peer's window: both peers served.
    assert!(net.hosts[0].served > 0 && net.hosts[1].served > 0);
    assert_eq!(net.hosts[0].served + net.hosts[1].served, 60);
}

#[test]
fn a_peer_without_the_chunk_hands_over_to_one_that_has_it() {
    let a = Host::new(1, &[1, 2, 3]);
    let mut b = Host::new(2, &[1, 2, 3]);
    let wanted = content(9, 4096);
    b.chunks.insert(wanted.0, wanted.1.clone());
    let c = Host::new(3, &[1, 2, 3]);
    let mut net = Net::new(vec![a, b, c], vec![(0, 2), (1, 2)]);
    net.hosts[2].node.want_chunk(SHARE, wanted.0, 4096);
    net.pump();
    assert_eq!(
        net.hosts[2].arrived.get(&wanted.0).map(|d| d.to_vec()),
        Some(wanted.1)
    );
    assert!(net.hosts[2].stalled.is_empty());
}

#[test]
fn bytes_that_do_not_match_the_hash_close_the_liar_and_are_never_delivered() {
    let mut a = Host::new(1, &[1, 2]);
    let wanted = content(4, 2048);
    a.chunks.insert(wanted.0, wanted.1);
    a.lie = true;
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    net.hosts[1].node.want_chunk(SHARE, wanted.0, 2048);
    net.pump();
    assert!(net.hosts[1].arrived.is_empty());
    assert!(
        net.hosts[1].closed.contains(&conn(1, 0)),
        "the liar's connection is closed"
    );
    assert!(net.hosts[1].node.connection_to(&device(1)).is_none());
    assert_eq!(
        net.hosts[1].node.chunks_wanted(),
        1,
        "still wanted from someone honest"
    );
}

#[test]
fn a_stranger_to_the_share_is_never_served() {
    // Device 3 is connected to 1 but is not a member of the share: 1 answers "missing".
    let mut a = Host::new(1, &[1, 2]);
    let wanted = content(5, 100);
    a.chunks.insert(wanted.0, wanted.1);
    let c = Host::new(3, &[1, 2, 3]);
    let mut net = Net::new(vec![a, c], vec![(0, 1)]);
    net.hosts[1].node.want_chunk(SHARE, wanted.0, 100);
    net.pump();
    assert_eq!(net.hosts[0].served, 0);
    assert!(net.hosts[1].arrived.is_empty());
}

#[test]
fn a_folder_peer_counts_as_in_sync_only_once_its_disk_holds_everything() {
    let a = Host::new(1, &[1, 2]);
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    // A plain database share: in sync as soon as the databases agree.
    assert!(net.hosts[0].node.is_synced_with(&device(2)));
    // Both sides treat the share as a folder; B's disk still lacks two paths.
    net.hosts[0].node.set_folder_pending(&SHARE, 0);
    net.hosts[1].node.set_folder_pending(&SHARE, 2);
    net.pump();
    assert_eq!(
        net.hosts[0].node.peer_folder_pending(&device(2), &SHARE),
        Some(2)
    );
    assert!(!net.hosts[0].node.is_synced_with(&device(2)));
    assert!(net.hosts[1].node.is_synced_with(&device(1)));
    net.hosts[1].node.set_folder_pending(&SHARE, 0);
    net.pump();
    assert!(net.hosts[0].node.is_synced_with(&device(2)));
}
