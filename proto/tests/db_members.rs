//! Membership as replicated, signed records: added and removed devices, enforced on every
//! replica, relayed, and kept for devices that join later.

mod common;

use bytes::Bytes;
use clearskies_proto::db::members::MEMBERS_PREFIX;
use clearskies_proto::db::{Access, Member};
use common::net::{Host, Net, SHARE, conn, device, key};

fn member(n: u8, access: Access) -> Option<Member> {
    Some(Member {
        public_key: key(n).public_key(),
        access,
    })
}

/// Host `host` writes device `n`'s membership (`None`: removed), then the network settles.
fn set(net: &mut Net, host: usize, n: u8, standing: Option<Member>) {
    let now = net.now.as_micros();
    net.hosts[host]
        .node
        .set_membership(&SHARE, now, device(n), standing)
        .unwrap();
    net.hosts[host].drain();
    net.pump();
}

fn put(net: &mut Net, host: usize, k: &str, v: &[u8]) {
    let now = net.now.as_micros();
    net.hosts[host]
        .node
        .put(&SHARE, now, k, Bytes::copy_from_slice(v))
        .unwrap();
    net.hosts[host].drain();
    net.pump();
}

fn has(net: &Net, host: usize, k: &str) -> bool {
    net.hosts[host]
        .node
        .replica(&SHARE)
        .unwrap()
        .get(k)
        .is_some()
}

#[test]
fn added_and_removed_members_are_enforced_everywhere_and_history_survives() {
    // The creator (1) added each joiner when it paired; each joiner was told the creator and
    // itself. B and C learn of each other only from the creator's membership records.
    let a = Host::new(1, &[1, 2, 3]);
    let b = Host::new(2, &[1, 2]);
    let c = Host::new(3, &[1, 3]);
    let mut net = Net::new(vec![a, b, c], vec![(0, 1), (0, 2), (1, 2)]);
    for (n, who) in [(2u8, 2), (3u8, 3)] {
        let now = net.now.as_micros();
        net.hosts[0]
            .node
            .set_membership(&SHARE, now, device(n), member(who, Access::ReadWrite))
            .unwrap();
    }
    net.hosts[0].drain();
    net.pump();
    // C learned of B from the creator's record: B's write reaches C.
    put(&mut net, 1, "before", b"written while a member");
    assert!(has(&net, 2, "before"));
    assert!(
        net.hosts[2]
            .node
            .replica(&SHARE)
            .unwrap()
            .is_member(&device(2))
    );

    // The creator removes B. A closes B's session and says why.
    set(&mut net, 0, 2, None);
    assert!(net.hosts[0].node.connection_to(&device(2)).is_none());
    assert!(net.hosts[0].closed.contains(&conn(0, 1)));
    for h in [0, 2] {
        assert!(
            !net.hosts[h]
                .node
                .replica(&SHARE)
                .unwrap()
                .is_member(&device(2))
        );
    }
    // C also drops B (a member of nothing there any more).
    assert!(net.hosts[2].node.connection_to(&device(2)).is_none());
    assert!(
        net.hosts[1].closed.contains(&conn(1, 0)),
        "B was told and closed too"
    );

    // B was cut off before it heard of its removal: what it writes now stays with it.
    put(&mut net, 1, "after", b"written after the removal");
    assert!(!has(&net, 0, "after") && !has(&net, 2, "after"));
}

#[test]
fn a_device_joining_later_gets_a_removed_members_earlier_records() {
    let a = Host::new(1, &[1, 2, 4]);
    let b = Host::new(2, &[1, 2]);
    let mut net = Net::new(vec![a, b], vec![(0, 1)]);
    set(&mut net, 0, 2, member(2, Access::ReadWrite));
    put(&mut net, 1, "b-wrote", b"kept");
    assert!(has(&net, 0, "b-wrote"));
    set(&mut net, 0, 2, None);

    // D joins after the removal and catches up from A alone.
    let mut hosts = std::mem::take(&mut net.hosts);
    let now = net.now.as_micros();
    hosts[0]
        .node
        .set_membership(&SHARE, now, device(4), member(4, Access::ReadWrite))
        .unwrap();
    hosts[0].drain();
    let a = hosts.swap_remove(0);
    let d = Host::new(4, &[1, 4]);
    let net = Net::new(vec![a, d], vec![(0, 1)]);
    assert!(
        has(&net, 1, "b-wrote"),
        "a removed member's earlier record stays valid"
    );
    let r = net.hosts[1].node.replica(&SHARE).unwrap();
    assert!(!r.is_member(&device(2)) && r.is_member(&device(4)));
}

#[test]
fn only_read_write_members_change_membership_and_apps_cannot_write_the_reserved_keys() {
    let a = Host::new(1, &[1, 3]);
    let c = Host::new(3, &[1, 3]);
    let mut net = Net::new(vec![a, c], vec![(0, 1)]);
    set(&mut net, 0, 3, member(3, Access::ReadOnly));
    let now = net.now.as_micros();
    // C learns it is read-only: it can neither write documents nor membership records.
    assert!(
        net.hosts[1]
            .node
            .set_membership(&SHARE, now, device(5), member(5, Access::ReadWrite))
            .is_err()
    );
    assert!(
        net.hosts[1]
            .node
            .put(&SHARE, now, "doc", Bytes::from_static(b"x"))
            .is_err()
    );
    // Nobody writes membership records as plain documents.
    let reserved = format!("{MEMBERS_PREFIX}{}", "00".repeat(32));
    assert!(
        net.hosts[0]
            .node
            .put(&SHARE, now, &reserved, Bytes::from_static(b"x"))
            .is_err()
    );
}
