//! The control socket: while a daemon holds a home, `status`, `db`, `share`, `invite` and
//! `remove-member` go through it, and take effect at once.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{cmd, daemon, free_port, ok, run, share, stop, wait_equal, wait_until};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

/// Two initialised homes ("laptop" and "phone") and their folders (the laptop's made).
fn laptop_and_phone() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("home-a"), dir.path().join("home-b"));
    let (fa, fb) = (dir.path().join("laptop"), dir.path().join("phone"));
    std::fs::create_dir(&fa).unwrap();
    ok(&a, &["init", "--name", "laptop"]);
    ok(&b, &["init", "--name", "phone"]);
    (dir, a, b, fa, fb)
}

fn status(home: &std::path::Path) -> Value {
    serde_json::from_str(&ok(home, &["status", "--json"])).unwrap()
}

#[test]
fn a_running_daemon_serves_status_db_share_invite_and_removal() {
    let (dir, a, b, fa, fb) = laptop_and_phone();

    // Without a daemon, status says so and lists the shares from the home.
    ok(&a, &["share", fa.to_str().unwrap()]);
    let s = status(&a);
    assert_eq!(s["daemon"], false);
    assert_eq!(s["shares"][0]["state"], "stopped");

    let port_a = free_port();
    let laptop = daemon(&a, port_a, &["--rescan", "1"]);
    let peer = format!("127.0.0.1:{port_a}");
    // A second daemon on the same home is refused with a clear message.
    let out = run(
        &a,
        &["run", "--listen", &format!("127.0.0.1:{}", free_port())],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another"), "{err}");

    // `invite` through the daemon: the code it makes pairs at once.
    let code = ok(&a, &["invite", fa.to_str().unwrap()]).trim().to_owned();
    ok(&b, &["join", &code, fb.to_str().unwrap(), "--peer", &peer]);
    let phone = daemon(&b, free_port(), &["--rescan", "1", "--peer", &peer]);

    // The database through the daemon, and a watcher on the other device.
    let mut watch = cmd(&b)
        .args(["db", "watch", "notes/"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(500));
    ok(
        &a,
        &["db", "put", "notes/1", r#"{"title":"through the socket"}"#],
    );
    assert!(ok(&a, &["db", "get", "notes/1"]).contains("through the socket"));
    let line = lines.next().unwrap().unwrap();
    assert!(
        line.starts_with("notes/1\t") && line.contains("through the socket"),
        "{line}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
    wait_until(T, "the phone to get the document", || {
        run(&b, &["db", "get", "notes/1"]).status.success()
    });
    ok(&b, &["db", "del", "notes/1"]);
    wait_until(T, "the deletion to reach the laptop", || {
        !run(&a, &["db", "get", "notes/1"]).status.success()
    });

    // Status from the running daemon: the share is idle, the phone connected.
    wait_until(
        T,
        "status to show the phone connected and the folder idle",
        || {
            let s = status(&a);
            s["daemon"] == true
                && s["shares"][0]["state"] == "idle"
                && s["shares"][0]["peers"][0]["connected"] == true
                && s["shares"][0]["peers"][0]["name"] == "phone"
        },
    );
    let human = ok(&a, &["status"]);
    assert!(
        human.contains("daemon running") && human.contains("phone"),
        "{human}"
    );

    // A second folder shared while the daemon runs is served without a restart.
    let (fa2, fb2) = (dir.path().join("laptop-2"), dir.path().join("phone-2"));
    std::fs::create_dir(&fa2).unwrap();
    std::fs::write(fa2.join("second.txt"), b"a second share\n").unwrap();
    let code2 = share(&a, &fa2);
    ok(
        &b,
        &["join", &code2, fb2.to_str().unwrap(), "--peer", &peer],
    );
    wait_equal(&fa2, &fb2, T, "the second share");

    // Removal takes effect at once: the phone is disconnected and refused.
    let phone_id = ok(&b, &["id"]).trim().to_owned();
    ok(&a, &["remove-member", fa.to_str().unwrap(), &phone_id]);
    ok(&a, &["remove-member", fa2.to_str().unwrap(), &phone_id]);
    wait_until(T, "the phone to be disconnected", || {
        status(&a)["shares"][0]["peers"]
            .as_array()
            .is_none_or(|p| p.iter().all(|p| p["connected"] == false))
    });
    std::fs::write(fa.join("after-removal.txt"), b"not for the phone\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!fb.join("after-removal.txt").exists());
    assert!(phone.log().contains("refused"), "{}", phone.log());
    stop(phone);
    stop(laptop);
}

#[test]
fn sync_once_while_the_daemon_runs_checks_in_through_it() {
    let (_dir, a, b, fa, fb) = laptop_and_phone();
    let code = share(&a, &fa);
    let port_a = free_port();
    let laptop = daemon(&a, port_a, &["--rescan", "3600"]);
    let peer = format!("127.0.0.1:{port_a}");
    ok(&b, &["join", &code, fb.to_str().unwrap(), "--peer", &peer]);
    // The phone's daemon knows no address: the check-in brings the laptop's.
    let phone = daemon(&b, free_port(), &["--rescan", "3600"]);
    std::fs::write(fa.join("note.txt"), b"written on the laptop\n").unwrap();
    wait_until(T, "the laptop's watcher to record the file", || {
        ok(&a, &["db", "list", "/"]).contains("note.txt")
    });
    // The phone's check-in goes through its daemon (a second process on the home would be
    // refused) and returns once it holds the file.
    let out = run(&b, &["sync", "--once", "--peer", &peer, "--timeout", "20"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(fb.join("note.txt")).ok().as_deref(),
        Some(&b"written on the laptop\n"[..]),
        "the check-in returned before the phone held the file"
    );
    // A second check-in with nothing new is quick and agrees at once.
    let started = std::time::Instant::now();
    ok(&b, &["sync", "--once", "--timeout", "20"]);
    assert!(started.elapsed() < T);
    stop(phone);
    stop(laptop);
}
