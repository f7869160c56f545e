//! Whole nodes wired to each other in memory: a stand-in for a driver (proto's own tests
//! may mock). Hosts answer chunk reads from a map and persist instantly.

use std::collections::BTreeMap;

use bytes::Bytes;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ReplicaState, ShareId};
use clearskies_proto::files::Hash;
use clearskies_proto::node::{ConnId, Event, Node, Output};
use clearskies_proto::session::SessionConfig;
use clearskies_proto::{DeviceId, Timestamp};

pub const SHARE: ShareId = [7; 32];

pub fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

pub struct Host {
    pub node: Node,
    /// Content this device holds, by hash.
    pub chunks: BTreeMap<Hash, Vec<u8>>,
    /// Answer every read with these bytes instead (a lying peer).
    pub lie: bool,
    pub served: usize,
    pub arrived: BTreeMap<Hash, Bytes>,
    pub stalled: Vec<Hash>,
    pub closed: Vec<ConnId>,
}

impl Host {
    /// Device `n` holding `SHARE` with devices `members` as read-write members.
    pub fn new(n: u8, members: &[u8]) -> Host {
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

    /// Handles every output; returns whether there was any.
    pub fn drain(&mut self) -> bool {
        let mut any = false;
        while let Some(out) = self.node.poll_output() {
            any = true;
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
        any
    }
}

/// Connects every pair `(i, j)` in `links` with connection id `i * 16 + j` on i's side and
/// `j * 16 + i` on j's side, then pumps bytes (a frame per direction per round, so links
/// progress side by side) until nothing moves.
pub struct Net {
    pub hosts: Vec<Host>,
    pub links: Vec<(usize, usize)>,
    pub now: Timestamp,
}

pub fn conn(a: usize, b: usize) -> ConnId {
    (a * 16 + b) as ConnId
}

impl Net {
    pub fn new(hosts: Vec<Host>, links: Vec<(usize, usize)>) -> Net {
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

    pub fn pump(&mut self) {
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
                // Outputs handled now (reads answered) may have queued more bytes.
                let mut any = false;
                for h in &mut self.hosts {
                    any |= h.drain();
                }
                if !any {
                    return;
                }
            }
        }
    }
}

pub fn device(n: u8) -> DeviceId {
    key(n).device_id()
}
