//! Two discovery tasks on one host find each other through the real network stack (multicast
//! looped back to local listeners, broadcast) on a private UDP port, and a device of another
//! share finds neither. The netns test (`discovery_netns.rs`) proves the same across a link.

use std::time::Duration;

use clearskies_proto::db::ShareId;
use clearskies_tokio::discovery::{Found, LanConfig, spawn_discovery};
use tokio::sync::mpsc;

const SHARE: ShareId = [0x5a; 32];
const OTHER: ShareId = [0x77; 32];

fn config(seed: u8, udp_port: u16) -> LanConfig {
    LanConfig {
        udp_port,
        ..LanConfig::new([seed; 32])
    }
}

/// Waits for a report of `port`, skipping reports of others.
async fn found_port(found: &mut mpsc::Receiver<Found>, port: u16) -> Found {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let f = found.recv().await.expect("discovery running");
            if f.addr.port() == port {
                return f;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no announcement of port {port} heard"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_discovery_tasks_on_one_host_find_each_other() {
    // A port of its own per run, so parallel runs and real devices do not interfere.
    let udp_port = 40_000 + (std::process::id() % 20_000) as u16;
    let (a, mut found_a) = spawn_discovery(config(1, udp_port), vec![SHARE], 1111).unwrap();
    let (b, mut found_b) = spawn_discovery(config(2, udp_port), vec![SHARE], 2222).unwrap();
    let (c, mut found_c) = spawn_discovery(config(3, udp_port), vec![OTHER], 3333).unwrap();

    let at_a = found_port(&mut found_a, 2222).await;
    assert_eq!(at_a.shares, vec![SHARE]);
    let at_b = found_port(&mut found_b, 1111).await;
    assert_eq!(at_b.shares, vec![SHARE]);
    // The stranger heard both (same port) yet recognised nothing; nobody reported it.
    assert!(found_c.try_recv().is_err());
    while let Ok(f) = found_a.try_recv() {
        assert_ne!(
            f.addr.port(),
            3333,
            "a stranger's announcement was reported"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}
