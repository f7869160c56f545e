//! The `clearskies` binary, run as a real process against real home directories.

use std::path::Path;
use std::process::{Command, Output};

fn cs(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clearskies"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("CLEARSKIES_HOME")
        .output()
        .expect("run clearskies")
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = cs(home, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(home: &Path, args: &[&str]) -> (i32, String) {
    let out = cs(home, args);
    assert!(
        !out.status.success(),
        "{args:?} should fail but printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn init_is_idempotent_and_id_needs_init() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (_, err) = fails(&home, &["id"]);
    assert!(err.contains("init"), "{err}");
    let first = ok(&home, &["init", "--name", "laptop"]);
    let again = ok(&home, &["init"]);
    assert_eq!(first, again);
    assert_eq!(ok(&home, &["id"]), first);
    // The printed ID parses with its check characters.
    clearskies_proto::identity::DeviceId::parse(first.trim()).unwrap();
}

#[test]
fn share_prints_an_access_code_last_and_reuses_the_share() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let folder = dir.path().join("music");
    std::fs::create_dir(&folder).unwrap();
    ok(&home, &["init"]);
    let out = ok(&home, &["share", folder.to_str().unwrap()]);
    let code = out.lines().last().unwrap();
    clearskies_proto::code::AccessCode::parse(code).expect("the last line is an access code");
    let again = ok(&home, &["share", folder.to_str().unwrap(), "--read-only"]);
    assert!(again.starts_with("reusing"), "{again}");
    assert_ne!(again.lines().last().unwrap(), code, "a new code each time");
    let listed = ok(&home, &["shares", "--json"]);
    let shares: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(shares.as_array().unwrap().len(), 1);
    let members = ok(&home, &["members", folder.to_str().unwrap()]);
    assert!(
        members.contains(ok(&home, &["id"]).trim()) && members.contains("read-write"),
        "{members}"
    );
    let (_, err) = fails(
        &home,
        &["share", dir.path().join("missing").to_str().unwrap()],
    );
    assert!(err.contains("missing"), "{err}");
    let (_, err) = fails(
        &home,
        &["invite", folder.to_str().unwrap(), "--ttl", "soon"],
    );
    assert!(err.contains("unit") || err.contains("number"), "{err}");
}

#[test]
fn db_commands_round_trip_documents_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let folder = dir.path().join("notes");
    std::fs::create_dir(&folder).unwrap();
    ok(&home, &["init"]);
    let (_, err) = fails(&home, &["db", "get", "k"]);
    assert!(err.contains("no share"), "{err}");
    ok(&home, &["share", folder.to_str().unwrap()]);
    ok(
        &home,
        &[
            "db",
            "put",
            "notes/1",
            r#"{"title":"buy milk","done":false}"#,
        ],
    );
    ok(&home, &["db", "put", "notes/2", r#"[1,2,3]"#]);
    ok(&home, &["db", "put", "other", r#""x""#]);
    // Each command is a new process: the documents came back from the store.
    let got: serde_json::Value =
        serde_json::from_str(&ok(&home, &["db", "get", "notes/1"])).unwrap();
    assert_eq!(got, serde_json::json!({"title": "buy milk", "done": false}));
    let listed = ok(&home, &["db", "list", "notes/"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let full: serde_json::Value =
        serde_json::from_str(&ok(&home, &["db", "get", "notes/1", "--json"])).unwrap();
    assert_eq!(full["conflict"], false);
    assert_eq!(full["siblings"].as_array().unwrap().len(), 1);
    assert_eq!(full["siblings"][0]["writer"], ok(&home, &["id"]).trim());
    // A put supersedes; a delete makes get fail.
    ok(
        &home,
        &["db", "put", "notes/1", r#"{"title":"buy oat milk"}"#],
    );
    assert!(ok(&home, &["db", "get", "notes/1"]).contains("oat"));
    ok(&home, &["db", "del", "notes/1"]);
    let (code, err) = fails(&home, &["db", "get", "notes/1"]);
    assert_eq!(code, 1, "{err}");
    let (code, _) = fails(&home, &["db", "del", "notes/1"]);
    assert_eq!(code, 1);
    let (code, err) = fails(&home, &["db", "put", "k", "{not json"]);
    assert_eq!(code, 2);
    assert!(err.contains("not JSON"), "{err}");
    assert_eq!(ok(&home, &["db", "list"]).lines().count(), 2);
}

#[test]
fn a_mistyped_access_code_is_caught_before_any_network_use() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    ok(&home, &["init"]);
    let folder = dir.path().join("f");
    std::fs::create_dir(&folder).unwrap();
    let code = ok(&home, &["share", folder.to_str().unwrap()])
        .lines()
        .last()
        .unwrap()
        .to_owned();
    // Change one character after the prefix.
    let mut typo: Vec<char> = code.chars().collect();
    typo[10] = if typo[10] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    let (_, err) = fails(
        &home,
        &["join", &typo, dir.path().join("g").to_str().unwrap()],
    );
    assert!(err.contains("typo"), "{err}");
    // A well-formed code gets past the check (and then needs the inviter's address).
    let (_, err) = fails(
        &home,
        &["join", &code, dir.path().join("g").to_str().unwrap()],
    );
    assert!(err.contains("--peer") && !err.contains("typo"), "{err}");
}
