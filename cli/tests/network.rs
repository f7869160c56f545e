//! Two devices as real processes on loopback: one shares and runs the daemon, the other joins
//! with the access code, checks in with `sync --once`, and data flows both ways over TLS.

mod common;

use common::{daemon, free_port, ok, run, share, stop};

#[test]
fn join_with_the_code_then_check_in_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (fa, fb) = (dir.path().join("folder-a"), dir.path().join("folder-b"));
    std::fs::create_dir(&fa).unwrap();
    ok(&a, &["init", "--name", "laptop"]);
    ok(&b, &["init", "--name", "phone"]);
    let code = share(&a, &fa);
    ok(
        &a,
        &["db", "put", "notes/1", r#"{"title":"from the laptop"}"#],
    );
    let port = free_port();
    let peer = format!("127.0.0.1:{port}");
    let laptop = daemon(&a, port, &[]);

    // A wrong secret half is refused by the inviter and said so.
    let mut wrong = clearskies_proto::code::AccessCode::parse(&code)
        .unwrap()
        .to_bytes();
    wrong[15] ^= 1;
    let wrong = clearskies_proto::code::AccessCode::from_bytes(wrong).to_string();
    let out = run(&b, &["join", &wrong, fb.to_str().unwrap(), "--peer", &peer]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pairing failed"), "{err}");

    // The right code pairs.
    let joined = ok(&b, &["join", &code, fb.to_str().unwrap(), "--peer", &peer]);
    assert!(joined.starts_with("joined share"), "{joined}");
    // A single-use code cannot be used twice.
    let c = dir.path().join("c");
    ok(&c, &["init"]);
    let out = run(
        &c,
        &[
            "join",
            &code,
            dir.path().join("folder-c").to_str().unwrap(),
            "--peer",
            &peer,
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("used"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The phone checks in: it gets the laptop's document.
    ok(&b, &["sync", "--once", "--peer", &peer, "--timeout", "30"]);
    let got = ok(&b, &["db", "get", "notes/1"]);
    assert!(got.contains("from the laptop"), "{got}");
    // The phone writes and checks in again: the laptop gets it.
    ok(
        &b,
        &["db", "put", "notes/2", r#"{"title":"from the phone"}"#],
    );
    ok(&b, &["sync", "--once", "--peer", &peer, "--timeout", "30"]);
    stop(laptop);
    let got = ok(&a, &["db", "get", "notes/2"]);
    assert!(got.contains("from the phone"), "{got}");
    // Both list the phone as a member.
    let members = ok(&a, &["members", fa.to_str().unwrap()]);
    assert!(members.contains(ok(&b, &["id"]).trim()), "{members}");
    // Equal replicated state prints equal documents.
    assert_eq!(
        ok(&a, &["db", "get", "notes/2", "--json"]),
        ok(&b, &["db", "get", "notes/2", "--json"])
    );

    // The laptop removes the phone; from then on the phone is refused, and told why.
    let phone_id = ok(&b, &["id"]);
    ok(
        &a,
        &["remove-member", fa.to_str().unwrap(), phone_id.trim()],
    );
    assert!(!ok(&a, &["members", fa.to_str().unwrap()]).contains(phone_id.trim()));
    let laptop = daemon(&a, port, &[]);
    let out = run(&b, &["sync", "--once", "--peer", &peer, "--timeout", "20"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused this device"), "{err}");
    stop(laptop);
}

#[test]
fn sync_once_fails_with_a_timeout_when_no_peer_answers() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let f = dir.path().join("f");
    std::fs::create_dir(&f).unwrap();
    ok(&a, &["init"]);
    ok(&a, &["share", f.to_str().unwrap()]);
    let port = free_port();
    let out = run(
        &a,
        &[
            "sync",
            "--once",
            "--peer",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "2",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in sync"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
