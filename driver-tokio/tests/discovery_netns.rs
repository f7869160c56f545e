//! Two devices in two network namespaces joined by a veth pair find each other by LAN
//! discovery alone (no address configured anywhere) and sync: each runs the `lan_node` example
//! as its own process, and each must exit 0 holding the other's record.
//!
//! Needs root and iproute2 (`ip netns`). Where a namespace cannot be made the test prints why
//! on stderr and returns; it never passes without saying so.
//!
//! The example binary is built by `cargo test -p clearskies-tokio` (cargo builds a package's
//! examples for its tests) but not by `cargo test --test discovery_netns` alone: then run
//! `cargo build -p clearskies-tokio --example lan_node` first. A missing binary fails the
//! test with that advice.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);
const SHARE_HEX: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn ip(args: &[&str]) -> Result<(), String> {
    let out: Output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip {}` could not run: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the namespaces it was given (and with them the veth pair) when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            if let Err(e) = ip(&["netns", "delete", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Kills the child on drop unless it was reaped.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn example_binary() -> PathBuf {
    // target/debug/deps/discovery_netns-HASH -> target/debug/examples/lan_node
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("lan_node{}", std::env::consts::EXE_SUFFIX))
}

/// The addresses the veth pair gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addressing {
    /// An IPv4 address on each end (and the IPv6 link-local ones the kernel adds).
    DualStack,
    /// No IPv4 address anywhere: only the IPv6 link-local addresses the kernel adds when the
    /// link comes up, still tentative (duplicate address detection running) when the nodes
    /// start, as on a laptop that just joined a network.
    Ipv6Only,
}

#[test]
fn two_nodes_in_two_namespaces_find_each_other_and_sync() {
    find_each_other_and_sync(
        "two_nodes_in_two_namespaces_find_each_other_and_sync",
        Addressing::DualStack,
    );
}

#[test]
fn two_nodes_on_an_ipv6_only_link_find_each_other_over_link_local_multicast_and_sync() {
    find_each_other_and_sync(
        "two_nodes_on_an_ipv6_only_link_find_each_other_over_link_local_multicast_and_sync",
        Addressing::Ipv6Only,
    );
}

fn find_each_other_and_sync(test: &str, addressing: Addressing) {
    let pid = std::process::id();
    // Both tests run at once in one process: names differ by addressing.
    let tag = match addressing {
        Addressing::DualStack => "4",
        Addressing::Ipv6Only => "6",
    };
    let (ns_a, ns_b) = (format!("csky-a{tag}-{pid}"), format!("csky-b{tag}-{pid}"));
    // Interface names have at most 15 bytes.
    let (veth_a, veth_b) = (format!("csa{tag}{pid}"), format!("csb{tag}{pid}"));

    if let Err(why) = ip(&["netns", "add", &ns_a]) {
        eprintln!(
            "SKIPPED {test}: cannot create a network namespace (needs root and iproute2): {why}"
        );
        return;
    }
    let mut namespaces = Namespaces(vec![ns_a.clone()]);
    ip(&["netns", "add", &ns_b]).expect("second namespace");
    namespaces.0.push(ns_b.clone());

    let mut setup = vec![
        vec![
            "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
        ],
        vec!["link", "set", &veth_a, "netns", &ns_a],
        vec!["link", "set", &veth_b, "netns", &ns_b],
    ];
    if addressing == Addressing::DualStack {
        setup.push(vec![
            "-n",
            &ns_a,
            "addr",
            "add",
            "10.231.0.1/24",
            "brd",
            "+",
            "dev",
            &veth_a,
        ]);
        setup.push(vec![
            "-n",
            &ns_b,
            "addr",
            "add",
            "10.231.0.2/24",
            "brd",
            "+",
            "dev",
            &veth_b,
        ]);
    }
    setup.extend([
        vec!["-n", &ns_a, "link", "set", "lo", "up"],
        vec!["-n", &ns_b, "link", "set", "lo", "up"],
        vec!["-n", &ns_a, "link", "set", &veth_a, "up"],
        vec!["-n", &ns_b, "link", "set", &veth_b, "up"],
    ]);
    for args in &setup {
        ip(args).unwrap_or_else(|e| panic!("namespace setup: {e}"));
    }
    if addressing == Addressing::Ipv6Only {
        // The only addresses are the link-local ones: a find must have come over IPv6.
        for (ns, veth) in [(&ns_a, &veth_a), (&ns_b, &veth_b)] {
            let out = Command::new("ip")
                .args(["-n", ns, "-o", "addr", "show", "dev", veth])
                .output()
                .expect("ip addr show");
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(
                !listing.contains("inet ") && listing.contains("inet6 fe80"),
                "{veth} should have only an IPv6 link-local address: {listing}"
            );
        }
    }

    let binary = example_binary();
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test -p clearskies-tokio` (which builds the examples) or \
         `cargo build -p clearskies-tokio --example lan_node` first",
        binary.display()
    );
    let start = |ns: &str, seed: &str, peer: &str, put: &str, expect: &str| {
        Running(Some(
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(&binary)
                .args([seed, peer, SHARE_HEX, put, expect])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start lan_node"),
        ))
    };
    let mut a = start(&ns_a, "1", "2", "from/a", "from/b");
    let mut b = start(&ns_b, "2", "1", "from/b", "from/a");

    let began = Instant::now();
    let mut results: [Option<Output>; 2] = [None, None];
    while results.iter().any(Option::is_none) && began.elapsed() < LIMIT {
        for (slot, running) in results.iter_mut().zip([&mut a, &mut b]) {
            let exited = running
                .0
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if slot.is_none() && exited {
                let child = running.0.take().expect("not yet reaped");
                *slot = Some(child.wait_with_output().expect("lan_node output"));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, running) in [("a", &mut a), ("b", &mut b)] {
        if let Some(mut child) = running.0.take() {
            let _ = child.kill();
            let out = child.wait_with_output().expect("lan_node output");
            panic!(
                "node {name} did not finish within {LIMIT:?}; its stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for (name, out) in ["a", "b"].iter().zip(results.iter().flatten()) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("node {name}:\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "node {name} failed ({}); stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let expect = if *name == "a" { "from/b" } else { "from/a" };
        assert!(
            stdout.contains(&format!("holds {expect:?}")),
            "node {name} says: {stdout}"
        );
    }
    if addressing == Addressing::Ipv6Only {
        let found_over_link_local = results
            .iter()
            .flatten()
            .any(|out| String::from_utf8_lossy(&out.stderr).contains("found a member at [fe80::"));
        assert!(
            found_over_link_local,
            "no node reports finding its peer at an IPv6 link-local address"
        );
    }
    drop(namespaces);
}
