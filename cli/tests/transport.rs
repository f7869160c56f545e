//! Transports, discovery and remembered addresses, with real processes on this host: QUIC and
//! TCP on one port, QUIC preferred with a fallback to TCP, pairing over QUIC, a stranger
//! refused over QUIC, two daemons that find each other by LAN discovery alone, and a check-in
//! that uses the address remembered from the last one.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    Daemon, daemon, daemon_at, free_port, ok, run, share, stop, wait_equal_except, wait_log,
    write_config,
};

const T: Duration = Duration::from_secs(20);

/// A UDP port for LAN discovery of this test alone (`slot` tells the tests of one run apart),
/// so parallel runs and real devices on the network do not answer.
fn discovery_port(slot: u16) -> u16 {
    20_000 + (std::process::id() % 2_000) as u16 * 8 + slot
}

/// Discovery on a port of the test's own, or off.
fn config(home: &Path, slot: Option<u16>) {
    fs::create_dir_all(home).unwrap();
    match slot {
        Some(slot) => write_config(
            home,
            &format!(r#"{{"discovery_port": {}}}"#, discovery_port(slot)),
        ),
        None => write_config(home, r#"{"discovery": false}"#),
    }
}

struct Devices {
    dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    fa: PathBuf,
    fb: PathBuf,
}

impl Devices {
    /// Laptop A shares `fa` with a file in it; phone B is initialised. Both use `slot` for
    /// discovery (or none).
    fn new(slot: Option<u16>) -> (Devices, String) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("home-a"), dir.path().join("home-b"));
        let (fa, fb) = (dir.path().join("laptop"), dir.path().join("phone"));
        fs::create_dir(&fa).unwrap();
        fs::write(fa.join("hello.txt"), b"hello from the laptop").unwrap();
        config(&a, slot);
        config(&b, slot);
        ok(&a, &["init", "--name", "laptop"]);
        ok(&b, &["init", "--name", "phone"]);
        let code = share(&a, &fa);
        (Devices { dir, a, b, fa, fb }, code)
    }

    fn join(&self, code: &str, peer: &str, extra: &[&str]) -> String {
        let mut args = vec!["join", code, self.fb.to_str().unwrap(), "--peer", peer];
        args.extend_from_slice(extra);
        ok(&self.b, &args)
    }

    fn equal(&self, what: &str, daemons: &[&Daemon]) {
        wait_equal_except(&self.fa, &self.fb, &[], T, what, daemons);
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_daemons_sync_a_folder_over_quic_only() {
    let (d, code) = Devices::new(None);
    let port_a = free_port();
    let peer = format!("127.0.0.1:{port_a}");
    let laptop = daemon(&d.a, port_a, &["--transport", "quic", "--rescan", "1"]);
    // Pairing over QUIC.
    let joined = d.join(&code, &peer, &["--transport", "quic"]);
    assert!(joined.starts_with("joined share"), "{joined}");
    let phone = daemon(
        &d.b,
        free_port(),
        &["--transport", "quic", "--rescan", "1", "--peer", &peer],
    );
    d.equal("over QUIC", &[&laptop, &phone]);
    fs::write(d.fb.join("reply.txt"), b"from the phone").unwrap();
    d.equal("back over QUIC", &[&laptop, &phone]);
    assert!(phone.log().contains("over QUIC"), "{}", phone.log());
    assert!(!phone.log().contains("over TCP"), "{}", phone.log());
    stop(phone);
    stop(laptop);
}

#[test]
fn the_default_dialer_prefers_quic_and_falls_back_to_tcp() {
    let (d, code) = Devices::new(None);
    let port_a = free_port();
    let peer = format!("127.0.0.1:{port_a}");
    // Both transports by default: pairing and sync go over QUIC.
    let laptop = daemon(&d.a, port_a, &["--rescan", "1"]);
    d.join(&code, &peer, &[]);
    let phone = daemon(&d.b, free_port(), &["--rescan", "1", "--peer", &peer]);
    d.equal("default transport", &[&laptop, &phone]);
    wait_log(&phone, "over QUIC", T);
    stop(phone);
    stop(laptop);

    // A laptop that serves TCP only is still reached by a default dialer, over TCP.
    let laptop = daemon(&d.a, port_a, &["--transport", "tcp", "--rescan", "1"]);
    fs::write(d.fa.join("second.txt"), b"over tcp").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = run(
        &d.b,
        &["sync", "--once", "--peer", &peer, "--timeout", "15"],
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), laptop.log());
    assert!(stderr(&out).contains("over TCP"), "{}", stderr(&out));
    assert_eq!(
        fs::read(d.fb.join("second.txt")).unwrap(),
        b"over tcp".to_vec()
    );
    // A dialer restricted to QUIC cannot reach it, and says so.
    let out = run(
        &d.b,
        &[
            "sync",
            "--once",
            "--transport",
            "quic",
            "--peer",
            &peer,
            "--timeout",
            "4",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    stop(laptop);
}

#[test]
fn a_removed_member_is_refused_over_quic_and_told_so() {
    let (d, code) = Devices::new(None);
    let port_a = free_port();
    let peer = format!("127.0.0.1:{port_a}");
    let laptop = daemon(&d.a, port_a, &[]);
    d.join(&code, &peer, &[]);
    stop(laptop);
    // The laptop no longer knows the phone; the phone still takes the laptop for a member.
    let phone_id = ok(&d.b, &["id"]);
    ok(
        &d.a,
        &["remove-member", d.fa.to_str().unwrap(), phone_id.trim()],
    );
    let laptop = daemon(&d.a, port_a, &[]);
    // Over QUIC as over TCP.
    for transport in ["quic", "tcp"] {
        let out = run(
            &d.b,
            &[
                "sync",
                "--once",
                "--transport",
                transport,
                "--peer",
                &peer,
                "--timeout",
                "15",
            ],
        );
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("refused this device"), "{transport}: {err}");
        assert!(err.contains("not a member"), "{transport}: {err}");
    }
    wait_log(&laptop, "refused a connection", T);
    stop(laptop);
}

#[test]
fn two_daemons_find_each_other_by_lan_discovery_and_sync() {
    let (d, code) = Devices::new(Some(0));
    let port_a = free_port();
    // Discovery reports the address the announcement came from (a LAN or link-local address
    // of this host), so both listen on every interface.
    let laptop = daemon_at(&d.a, &format!("[::]:{port_a}"), &["--rescan", "1"]);
    d.join(&code, &format!("127.0.0.1:{port_a}"), &[]);
    // No --peer, nothing remembered: only discovery can bring them together.
    let phone = daemon_at(&d.b, &format!("[::]:{}", free_port()), &["--rescan", "1"]);
    d.equal("found by discovery", &[&laptop, &phone]);
    assert!(
        phone.log().contains("LAN discovery on UDP port"),
        "{}",
        phone.log()
    );
    fs::write(d.fb.join("reply.txt"), b"found you").unwrap();
    d.equal("back", &[&laptop, &phone]);
    stop(phone);

    // A check-in with no --peer and no remembered address (the phone's daemon remembered
    // where it reached the laptop: forget it) still works on the LAN: its hello is answered
    // at once.
    let _ = fs::remove_file(d.b.join("peers.json"));
    fs::write(d.fa.join("later.txt"), b"later").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let out = run(&d.b, &["sync", "--once", "--timeout", "15"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), laptop.log());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(fs::read(d.fb.join("later.txt")).unwrap(), b"later".to_vec());
    stop(laptop);
}

#[test]
fn sync_once_without_peer_uses_the_remembered_address() {
    let (d, code) = Devices::new(None);
    let port_a = free_port();
    let peer = format!("127.0.0.1:{port_a}");
    let laptop = daemon(&d.a, port_a, &["--rescan", "1"]);
    d.join(&code, &peer, &[]);
    // Discovery is off: without --peer and before any check-in, nobody is found.
    let out = run(&d.b, &["sync", "--once", "--timeout", "2"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no peer found"), "{err}");
    assert!(err.contains("discovery is off"), "{err}");
    // One check-in with --peer remembers the address...
    let out = run(
        &d.b,
        &["sync", "--once", "--peer", &peer, "--timeout", "15"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let remembered = fs::read_to_string(d.b.join("peers.json"))
        .unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert!(remembered.contains(&peer), "{remembered}");
    // ...so the next one needs none.
    fs::write(d.fa.join("next.txt"), b"next").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    ok(&d.b, &["sync", "--once", "--timeout", "15"]);
    assert_eq!(fs::read(d.fb.join("next.txt")).unwrap(), b"next".to_vec());
    stop(laptop);
    // Peers from the config file are dialled like --peer.
    let laptop = daemon(&d.a, port_a, &[]);
    let _ = fs::remove_file(d.b.join("peers.json"));
    write_config(
        &d.b,
        &format!(r#"{{"discovery": false, "peers": ["{peer}"], "transport": "tcp"}}"#),
    );
    let out = run(&d.b, &["sync", "--once", "--timeout", "15"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("over TCP"), "{}", stderr(&out));
    stop(laptop);
    drop(d.dir);
}

#[test]
fn bad_transport_config_port_and_peer_are_reported() {
    let (d, code) = Devices::new(None);
    // An unknown transport.
    let out = run(&d.a, &["run", "--transport", "udp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("expected quic or tcp"),
        "{}",
        stderr(&out)
    );
    // A port in use (over TCP, or over UDP when only QUIC is asked for).
    let port = free_port();
    let laptop = daemon(&d.a, port, &[]);
    for transport in ["tcp", "quic"] {
        let out = run(
            &d.b,
            &[
                "run",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--transport",
                transport,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot listen on"),
            "{}",
            stderr(&out)
        );
    }
    stop(laptop);
    // An unreachable inviter.
    let closed = format!("127.0.0.1:{}", free_port());
    let out = run(
        &d.b,
        &["join", &code, d.fb.to_str().unwrap(), "--peer", &closed],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("pairing failed: cannot reach") && err.contains("over TCP"),
        "{err}"
    );
    // A malformed config file, an unknown field, a bad value.
    for (bad, says) in [
        ("{not json", "is not a valid configuration"),
        (r#"{"peer": ["x:1"]}"#, "unknown field `peer`"),
        (
            r#"{"transport": "carrier pigeon"}"#,
            "expected \"quic\" or \"tcp\"",
        ),
        (
            r#"{"peers": ["no port here"]}"#,
            "is not a HOST:PORT address",
        ),
    ] {
        write_config(&d.b, bad);
        let out = run(&d.b, &["sync", "--once", "--timeout", "2"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{bad}: {}", stderr(&out));
    }
}
