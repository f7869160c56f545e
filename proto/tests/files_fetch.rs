//! Chunk transfer between nodes: requests, answers, pieces, spreading, stalls, bad data.
//! Hosts here are in-memory stand-ins for a driver's store (proto's own tests may mock).

mod common;

use clearskies_proto::files::Hash;
use clearskies_proto::node::ConnId;
use clearskies_proto::node::Origin;
use common::net::{Host, Net, SHARE, conn, device};
use sha2::{Digest, Sha256};

fn content(seed: u8, len: usize) -> (Hash, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    (Sha256::digest(&data).into(), data)
}

/// Device 1 of a two-member share, holding one chunk of `content(seed, len)`.
fn a_holding(seed: u8, len: usize) -> (Host, (Hash, Vec<u8>)) {
    let mut a = Host::new(1, &[1, 2]);
    let wanted = content(seed, len);
    a.chunks.insert(wanted.0, wanted.1.clone());
    (a, wanted)
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
    let (mut a, wanted) = a_holding(4, 2048);
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
    let (a, wanted) = a_holding(5, 100);
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

#[test]
fn thousands_of_small_chunks_stay_under_the_peers_request_limit() {
    // 1,000 chunks of 1 KiB fit the byte window many times over: the count of unanswered
    // requests is what must stay under the serving peer's limit, or it closes the session.
    let mut a = Host::new(1, &[1, 2]);
    let wanted: Vec<(Hash, Vec<u8>)> = (0..1000u32)
        .map(|i| content((i % 251) as u8 ^ (i / 251) as u8, 1024 + i as usize))
        .collect();
    for (h, d) in &wanted {
        a.chunks.insert(*h, d.clone());
    }
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    for (h, d) in &wanted {
        net.hosts[1].node.want_chunk(SHARE, *h, d.len() as u32);
    }
    net.pump();
    assert!(net.hosts[1].closed.is_empty() && net.hosts[0].closed.is_empty());
    assert_eq!(net.hosts[1].arrived.len(), 1000);
}

#[test]
fn wants_stall_at_once_when_the_last_member_goes_away() {
    let a = Host::new(1, &[1, 2]);
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    // A does not answer yet: the want is in flight when the connection ends.
    let wanted = content(6, 3000);
    net.hosts[1].node.want_chunk(SHARE, wanted.0, 3000);
    net.hosts[1].node.handle_closed(net.now, conn(1, 0));
    net.hosts[1].drain();
    assert_eq!(net.hosts[1].stalled, vec![wanted.0]);
    assert_eq!(
        net.hosts[1].node.chunks_wanted(),
        1,
        "still wanted for later"
    );
}

#[test]
fn a_connection_replaced_mid_fetch_asks_again_on_the_new_one() {
    let (a, wanted) = a_holding(7, 3000);
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    net.hosts[1].node.want_chunk(SHARE, wanted.0, 3000);
    // The request leaves on the first connection and is lost with it: a second connection
    // to the same peer (found again by discovery, say) replaces it before the answer.
    let mut sent = 0;
    while net.hosts[1]
        .node
        .poll_transmit(net.now, conn(1, 0))
        .is_some()
    {
        sent += 1;
    }
    assert!(sent > 0, "the request went out");
    let (old_a, old_b) = (200, 201);
    let (ka, kb) = (net.hosts[0].node.device(), net.hosts[1].node.device());
    net.hosts[0].node.handle_connected(net.now, old_a, kb);
    net.hosts[1].node.handle_connected(net.now, old_b, ka);
    pump_pairs(&mut net, &[(0, old_a, 1, old_b)]);
    assert!(
        net.hosts[1]
            .arrived
            .get(&wanted.0)
            .is_some_and(|d| d[..] == wanted.1[..]),
        "asked again on the new connection"
    );
    assert_eq!(net.hosts[1].node.chunks_wanted(), 0);
}

/// Moves frames over the given connections (host, its conn id, other host, its conn id) until
/// nothing moves.
fn pump_pairs(net: &mut Net, pairs: &[(usize, ConnId, usize, ConnId)]) {
    loop {
        let mut moved = false;
        for &(a, ca, b, cb) in pairs {
            for (from, fc, to, tc) in [(a, ca, b, cb), (b, cb, a, ca)] {
                net.hosts[from].drain();
                if let Some(bytes) = net.hosts[from].node.poll_transmit(net.now, fc) {
                    net.hosts[to].node.handle_bytes(net.now, tc, &bytes);
                    net.hosts[to].drain();
                    moved = true;
                }
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_simultaneous_open_keeps_the_same_connection_on_both_sides() {
    // A dials B (x) while B dials A (y), and each side sees the other's session come up
    // second. Each closing its older one would close both.
    let (a, wanted) = a_holding(9, 4000);
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![]);
    let (ka, kb) = (net.hosts[0].node.device(), net.hosts[1].node.device());
    let (xa, xb, ya, yb): (ConnId, ConnId, ConnId, ConnId) = (1, 2, 3, 4);
    for (host, c, peer, origin) in [
        (0, xa, kb, Origin::Dialed),
        (1, xb, ka, Origin::Accepted),
        (0, ya, kb, Origin::Accepted),
        (1, yb, ka, Origin::Dialed),
    ] {
        net.hosts[host]
            .node
            .handle_connected_from(net.now, c, peer, origin);
    }
    let hello = |net: &mut Net, host: usize, c: ConnId| {
        let mut frames = Vec::new();
        while let Some(f) = net.hosts[host].node.poll_transmit(net.now, c) {
            frames.push(f);
        }
        frames
    };
    let (on_xa, on_xb, on_ya, on_yb) = (
        hello(&mut net, 0, xa),
        hello(&mut net, 1, xb),
        hello(&mut net, 0, ya),
        hello(&mut net, 1, yb),
    );
    // A completes x first, then y; B completes y first, then x.
    for f in &on_xb {
        net.hosts[0].node.handle_bytes(net.now, xa, f);
    }
    for f in &on_yb {
        net.hosts[0].node.handle_bytes(net.now, ya, f);
    }
    for f in &on_ya {
        net.hosts[1].node.handle_bytes(net.now, yb, f);
    }
    for f in &on_xa {
        net.hosts[1].node.handle_bytes(net.now, xb, f);
    }
    net.hosts[0].drain();
    net.hosts[1].drain();
    pump_pairs(&mut net, &[(0, xa, 1, xb), (0, ya, 1, yb)]);
    // The connection dialled by the smaller device ID is the one both keep.
    let (keep_a, keep_b) = if ka < kb { (xa, xb) } else { (ya, yb) };
    let (drop_a, drop_b) = if ka < kb { (ya, yb) } else { (xa, xb) };
    assert!(net.hosts[0].closed.contains(&drop_a), "A drops the other");
    assert!(net.hosts[1].closed.contains(&drop_b), "B drops the other");
    assert!(
        !net.hosts[0].closed.contains(&keep_a),
        "A keeps the chosen one"
    );
    assert!(
        !net.hosts[1].closed.contains(&keep_b),
        "B keeps the chosen one"
    );
    // And it carries the share.
    net.hosts[1].node.want_chunk(SHARE, wanted.0, 4000);
    pump_pairs(&mut net, &[(0, keep_a, 1, keep_b)]);
    assert!(
        net.hosts[1]
            .arrived
            .get(&wanted.0)
            .is_some_and(|d| d[..] == wanted.1[..])
    );
}

/// Regression: a peer's whole window of answers (`WINDOW_BYTES` of pieces, plus their framing)
/// is more than one session may queue (`SEND_QUEUE_LIMIT`). The server answered every read at
/// once; an answer that did not fit was dropped, and the asker waited for it forever. Found by
/// the bulk benchmark (`driver-quic/benches/bulk.rs`) with chunks served from memory.
#[test]
fn a_window_of_answers_larger_than_the_send_queue_all_arrive() {
    let mut a = Host::new(1, &[1, 2]);
    let wanted: Vec<(Hash, Vec<u8>)> = (0..48).map(|i| content(i, 256 * 1024)).collect();
    for (h, d) in &wanted {
        a.chunks.insert(*h, d.clone());
    }
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    for (h, _) in &wanted {
        net.hosts[1].node.want_chunk(SHARE, *h, 256 * 1024);
    }
    net.pump();
    let b = &net.hosts[1];
    assert_eq!(b.arrived.len(), wanted.len(), "every chunk arrives");
    for (h, d) in &wanted {
        assert_eq!(b.arrived.get(h).map(|x| x.to_vec()).as_ref(), Some(d));
    }
    assert_eq!(b.node.chunks_wanted(), 0);
    assert!(net.hosts[0].closed.is_empty() && b.closed.is_empty());
}
