//! Which chunk to ask which peer for, and when: the fetch scheduler.
//!
//! The application says which chunks it [`want`](Fetcher::want)s; the scheduler hands out
//! requests to peers as each peer's window has room, so requests are pipelined and spread
//! across every connected peer that holds the share (a faster peer drains its window sooner
//! and so gets more). Wants are served in hash order, which is random with respect to files
//! and paths (the 2014 "random fetch order"). Every chunk is verified against its hash before
//! it is handed over; a peer that sends other bytes is reported so its connection can be
//! closed. A chunk no connected peer has is reported as stalled and retried after
//! [`RETRY_AFTER`], or at once when a new peer comes up.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::meta::Hash;
use super::msg::{MAX_OUTSTANDING_REQUESTS, MAX_PIECE};
use crate::db::ShareId;
use crate::identity::DeviceId;
use crate::time::Timestamp;

/// Bytes of requested content allowed in flight per peer: enough to keep a fast link busy
/// across a round trip (8 MiB at 80 ms is 100 MB/s), small enough for a phone.
pub const WINDOW_BYTES: u64 = 8 * 1024 * 1024;

/// A stalled chunk is asked for again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the scheduler tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// A wanted chunk arrived and matches its hash.
    Chunk {
        /// The share.
        share: ShareId,
        /// Its hash.
        hash: Hash,
        /// The bytes.
        data: Bytes,
    },
    /// No connected peer had the chunk; it is retried later.
    Stalled {
        /// The share.
        share: ShareId,
        /// Its hash.
        hash: Hash,
    },
}

/// A request to send: ask `peer` for `len` bytes at `offset` of chunk `hash` under `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The request id (unique per peer among outstanding requests).
    pub id: u32,
    /// The share.
    pub share: ShareId,
    /// The chunk.
    pub hash: Hash,
    /// Where in the chunk.
    pub offset: u32,
    /// How many bytes.
    pub len: u32,
}

/// A peer answered something it was not asked, or bytes that do not match the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnswer {
    /// What was wrong.
    pub detail: String,
}

#[derive(Debug)]
struct Want {
    len: u32,
    /// The peer the chunk is being fetched from.
    peer: Option<DeviceId>,
    /// Peers that said they do not have it.
    tried: BTreeSet<DeviceId>,
    /// Assembled pieces (allocated when the first piece arrives).
    buf: Vec<u8>,
    /// Pieces still outstanding.
    outstanding: u32,
    /// When a stalled want is retried.
    retry_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct PeerState {
    in_flight: u64,
    /// Requests sent and not answered (at most `MAX_OUTSTANDING_REQUESTS`, the peer's limit).
    requests: usize,
}

type WantKey = (ShareId, Hash);

/// The fetch scheduler. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Fetcher {
    wants: BTreeMap<WantKey, Want>,
    /// Wants not assigned to a peer and not stalled, in fetch order.
    queue: BTreeSet<WantKey>,
    peers: BTreeMap<DeviceId, PeerState>,
    /// Outstanding requests: (peer, id) → (want, offset, len).
    requests: BTreeMap<(DeviceId, u32), (WantKey, u32, u32)>,
    next_id: u32,
    /// Further pieces of chunks already assigned, waiting to be handed out.
    pending: VecDeque<(DeviceId, Request)>,
    events: VecDeque<FetchEvent>,
    /// Stalled wants by retry time (mirrors `Want::retry_at`), so the next deadline costs
    /// no walk over every want.
    retries: BTreeSet<(Timestamp, WantKey)>,
}

impl Fetcher {
    /// An empty scheduler.
    pub fn new() -> Fetcher {
        Fetcher::default()
    }

    /// Chunks wanted and not yet arrived.
    pub fn wanted(&self) -> usize {
        self.wants.len()
    }

    /// Reports every want of `share` as stalled (no member of it is connected any more); they
    /// stay wanted and are asked for when one connects.
    pub fn stall_share(&mut self, share: &ShareId) {
        for (key, want) in &self.wants {
            if key.0 == *share && want.peer.is_none() {
                self.events.push_back(FetchEvent::Stalled {
                    share: key.0,
                    hash: key.1,
                });
            }
        }
    }

    /// Whether `hash` of `share` is wanted.
    pub fn is_wanted(&self, share: &ShareId, hash: &Hash) -> bool {
        self.wants.contains_key(&(*share, *hash))
    }

    /// Asks for chunk `hash` (of `len` bytes) of `share`. Wanting a chunk twice is one want.
    pub fn want(&mut self, share: ShareId, hash: Hash, len: u32) {
        let key = (share, hash);
        if self.wants.contains_key(&key) || len == 0 {
            return;
        }
        self.wants.insert(
            key,
            Want {
                len,
                peer: None,
                tried: BTreeSet::new(),
                buf: Vec::new(),
                outstanding: 0,
                retry_at: None,
            },
        );
        self.queue.insert(key);
    }

    /// No longer wants the chunk (its file was superseded). Answers still on their way are
    /// dropped when they arrive.
    pub fn cancel(&mut self, share: &ShareId, hash: &Hash) {
        let key = (*share, *hash);
        if let Some(want) = self.wants.remove(&key) {
            if let Some(t) = want.retry_at {
                self.retries.remove(&(t, key));
            }
            self.queue.remove(&key);
            self.forget_requests(|_, k| *k == key);
        }
    }

    /// Drops every want of `share`.
    pub fn cancel_share(&mut self, share: &ShareId) {
        let keys: Vec<WantKey> = self
            .wants
            .keys()
            .filter(|(s, _)| s == share)
            .copied()
            .collect();
        for (s, h) in keys {
            self.cancel(&s, &h);
        }
    }

    /// A session with `peer` is established. Chunks it said it lacked are asked again (it
    /// may have them now).
    pub fn peer_up(&mut self, peer: DeviceId) {
        self.peers.entry(peer).or_default();
        for (key, want) in &mut self.wants {
            if want.tried.remove(&peer) && want.peer.is_none() {
                if let Some(t) = want.retry_at.take() {
                    self.retries.remove(&(t, *key));
                }
                self.queue.insert(*key);
            }
        }
    }

    /// The session with `peer` ended: its outstanding requests go to other peers.
    pub fn peer_down(&mut self, peer: &DeviceId) {
        self.peers.remove(peer);
        let lost: Vec<WantKey> = self
            .requests
            .iter()
            .filter(|((p, _), _)| p == peer)
            .map(|(_, (k, _, _))| *k)
            .collect();
        self.requests.retain(|(p, _), _| p != peer);
        for key in lost {
            if let Some(w) = self.wants.get_mut(&key) {
                w.peer = None;
                w.outstanding = 0;
                w.buf = Vec::new();
                self.queue.insert(key);
            }
        }
    }

    /// The next request for `peer`, if its window has room and it may be asked for
    /// something (`holds(share)`: the peer is a member of the share).
    pub fn poll_request(
        &mut self,
        peer: &DeviceId,
        holds: impl Fn(&ShareId) -> bool,
    ) -> Option<Request> {
        if let Some(i) = self.pending.iter().position(|(p, _)| p == peer) {
            return self.pending.remove(i).map(|(_, r)| r);
        }
        let state = self.peers.get(peer)?;
        if state.in_flight >= WINDOW_BYTES {
            return None;
        }
        // Every piece of a chunk is asked at once: all of them must fit under the peer's
        // limit of unanswered requests (a chunk of more pieces than the limit, over 64 MiB,
        // is asked alone).
        let room = MAX_OUTSTANDING_REQUESTS.saturating_sub(state.requests);
        let idle = state.requests == 0;
        if room == 0 && !idle {
            // Nothing fits; without this the search below would look at every want.
            return None;
        }
        let key = *self.queue.iter().find(|k| {
            holds(&k.0)
                && self.wants.get(k).is_some_and(|w| {
                    !w.tried.contains(peer) && (idle || w.len.div_ceil(MAX_PIECE) as usize <= room)
                })
        })?;
        self.queue.remove(&key);
        let want = self.wants.get_mut(&key)?;
        want.peer = Some(*peer);
        want.buf = Vec::new();
        // Every piece of the chunk goes out at once, to the same peer.
        let mut first = None;
        let mut offset = 0u32;
        while offset < want.len {
            let len = (want.len - offset).min(MAX_PIECE);
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            self.requests.insert((*peer, id), (key, offset, len));
            want.outstanding += 1;
            let request = Request {
                id,
                share: key.0,
                hash: key.1,
                offset,
                len,
            };
            if first.is_none() {
                first = Some(request);
            } else {
                self.pending.push_back((*peer, request));
            }
            offset += len;
        }
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_flight += u64::from(want.len);
            s.requests += want.len.div_ceil(MAX_PIECE) as usize;
        }
        first
    }

    /// `peer` answered request `id` with `data`.
    pub fn on_data(&mut self, peer: &DeviceId, id: u32, data: Vec<u8>) -> Result<(), BadAnswer> {
        let Some((key, offset, len)) = self.requests.remove(&(*peer, id)) else {
            // An answer to a cancelled want, or to a request of an earlier session.
            return Ok(());
        };
        if data.len() != len as usize {
            return Err(BadAnswer {
                detail: format!("asked for {len} bytes of a chunk, got {}", data.len()),
            });
        }
        let Some(want) = self.wants.get_mut(&key) else {
            return Ok(());
        };
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_flight = s.in_flight.saturating_sub(u64::from(len));
            s.requests = s.requests.saturating_sub(1);
        }
        want.outstanding = want.outstanding.saturating_sub(1);
        let complete = if offset == 0 && len == want.len {
            want.buf = data;
            true
        } else {
            if want.buf.is_empty() {
                want.buf = vec![0; want.len as usize];
            }
            let start = offset as usize;
            want.buf[start..start + data.len()].copy_from_slice(&data);
            want.outstanding == 0
        };
        if !complete {
            return Ok(());
        }
        let want = self.wants.remove(&key).ok_or_else(|| BadAnswer {
            detail: "internal: want vanished".into(),
        })?;
        if Sha256::digest(&want.buf).as_slice() != key.1 {
            // Ask someone else; the caller closes this peer.
            self.wants.insert(
                key,
                Want {
                    peer: None,
                    buf: Vec::new(),
                    outstanding: 0,
                    ..want
                },
            );
            if let Some(w) = self.wants.get_mut(&key) {
                w.tried.insert(*peer);
            }
            self.queue.insert(key);
            return Err(BadAnswer {
                detail: "chunk bytes do not match their hash".into(),
            });
        }
        self.events.push_back(FetchEvent::Chunk {
            share: key.0,
            hash: key.1,
            data: Bytes::from(want.buf),
        });
        Ok(())
    }

    /// `peer` does not have the chunk of request `id`. `others` says whether another
    /// connected peer of the share could still be asked.
    pub fn on_missing(
        &mut self,
        now: Timestamp,
        peer: &DeviceId,
        id: u32,
        others: impl Fn(&ShareId, &BTreeSet<DeviceId>) -> bool,
    ) {
        let Some((key, _, len)) = self.requests.remove(&(*peer, id)) else {
            return;
        };
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_flight = s.in_flight.saturating_sub(u64::from(len));
            s.requests = s.requests.saturating_sub(1);
        }
        let Some(want) = self.wants.get_mut(&key) else {
            return;
        };
        if want.peer != Some(*peer) {
            return;
        }
        // Drop the chunk's other pieces from this peer.
        want.peer = None;
        want.outstanding = 0;
        want.buf = Vec::new();
        want.tried.insert(*peer);
        let others = others(&key.0, &want.tried);
        self.forget_requests(|p, k| p == peer && *k == key);
        if others {
            self.queue.insert(key);
        } else if let Some(want) = self.wants.get_mut(&key) {
            if let Some(t) = want.retry_at.replace(now + RETRY_AFTER) {
                self.retries.remove(&(t, key));
            }
            self.retries.insert((now + RETRY_AFTER, key));
            self.events.push_back(FetchEvent::Stalled {
                share: key.0,
                hash: key.1,
            });
        }
    }

    /// Retries stalled wants whose time has come.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(t, key)) = self.retries.first() {
            if t > now {
                break;
            }
            self.retries.pop_first();
            if let Some(want) = self.wants.get_mut(&key)
                && want.retry_at == Some(t)
            {
                want.retry_at = None;
                want.tried.clear();
                self.queue.insert(key);
            }
        }
    }

    /// When [`handle_timeout`](Fetcher::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.retries.first().map(|(t, _)| *t)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<FetchEvent> {
        self.events.pop_front()
    }

    fn forget_requests(&mut self, matches: impl Fn(&DeviceId, &WantKey) -> bool) {
        let peers = &mut self.peers;
        self.requests.retain(|(p, _), (k, _, len)| {
            if matches(p, k) {
                if let Some(s) = peers.get_mut(p) {
                    s.in_flight = s.in_flight.saturating_sub(u64::from(*len));
                    s.requests = s.requests.saturating_sub(1);
                }
                false
            } else {
                true
            }
        });
        self.pending
            .retain(|(p, r)| !matches(p, &(r.share, r.hash)));
    }
}
