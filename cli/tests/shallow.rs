//! Shallow replicas end to end: every record, no content until asked; ranges read on demand
//! equal the source bytes; a bounded cache; pin and unpin; edits made in a shallow replica
//! reach the full one; a peer gone mid-read is a clear error.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{cmd, daemon, free_port, noise, ok, run, share, stop, wait_until};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const BIG: usize = 64 * 1024 * 1024;

/// Bytes of cached chunks (files named by their hash; the index is left out).
fn du(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().len() == 64)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn cat(home: &Path, path: &str, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut args = vec!["cat".to_owned(), path.to_owned()];
    if let Some((a, b)) = range {
        args.push("--range".into());
        args.push(format!("{a}-{b}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(home, &args);
    assert!(
        out.status.success(),
        "cat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ls(home: &Path) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(home, &["ls", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn state(rows: &[Value], path: &str) -> String {
    rows.iter()
        .find(|r| r["path"] == path)
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{path} not listed: {rows:?}"))
}

#[test]
fn a_shallow_replica_lists_everything_and_reads_ranges_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let (nas, phone) = (dir.path().join("home-nas"), dir.path().join("home-phone"));
    let (fa, fb) = (dir.path().join("music"), dir.path().join("phone-music"));
    let big = noise(BIG, 7);
    fs::create_dir_all(fa.join("album")).unwrap();
    fs::write(fa.join("album/big.flac"), &big).unwrap();
    fs::write(fa.join("album/small.txt"), b"liner notes\n").unwrap();
    fs::write(fa.join("other.bin"), noise(3_000_000, 8)).unwrap();
    ok(&nas, &["init", "--name", "nas"]);
    ok(&phone, &["init", "--name", "phone"]);
    let code = share(&nas, &fa);
    let port = free_port();
    let at_nas = format!("127.0.0.1:{port}");
    let nas_d = daemon(&nas, port, &["--rescan", "1"]);
    ok(
        &phone,
        &[
            "join",
            &code,
            fb.to_str().unwrap(),
            "--peer",
            &at_nas,
            "--shallow",
            "--cache-size",
            "8M",
        ],
    );
    let phone_d = daemon(&phone, free_port(), &["--rescan", "1", "--peer", &at_nas]);

    // Every record, no content.
    wait_until(T, "the phone to list the whole tree", || {
        run(&phone, &["ls", "--json"]).status.success() && ls(&phone).len() == 4
    });
    let rows = ls(&phone);
    assert_eq!(state(&rows, "album/big.flac"), "remote");
    let size = rows.iter().find(|r| r["path"] == "album/big.flac").unwrap()["size"].clone();
    assert_eq!(size, BIG as u64);
    assert!(!fb.join("album/big.flac").exists());

    // Ranges at the start, the middle, across chunk boundaries and the end equal the source.
    let n = BIG as u64;
    for (a, b) in [
        (0, 99),
        (65_530, 65_545),
        (n / 2 - 300_000, n / 2 + 700_000),
        (n - 100, n - 1),
        (n - 10, n + 100),
    ] {
        let got = cat(&phone, "album/big.flac", Some((a, b)));
        let want = &big[a as usize..=(b.min(n - 1)) as usize];
        assert!(got == want, "range {a}-{b}: {} bytes, differ", got.len());
    }
    assert_eq!(cat(&phone, "album/small.txt", None), b"liner notes\n");
    // A 1 MB range of a 64 MiB file stores far less than the file.
    let cache = phone.join("shares");
    let cached: u64 = fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| du(&e.path().join("cache")))
        .sum();
    assert!(cached < 4 * 1024 * 1024, "the cache holds {cached} bytes");
    assert_eq!(state(&ls(&phone), "album/big.flac"), "cached");

    // The cache limit holds under repeated reads of different parts.
    for i in 0..12u64 {
        let a = i * 5 * 1024 * 1024;
        let _ = cat(&phone, "album/big.flac", Some((a, a + 1_500_000)));
    }
    let cached: u64 = fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| du(&e.path().join("cache")))
        .sum();
    assert!(
        cached <= 8 * 1024 * 1024,
        "the cache grew to {cached} bytes"
    );

    // Pin a folder: it becomes local; unpin: it goes back to remote, still listed.
    ok(&phone, &["pin", "album"]);
    wait_until(T, "the pinned folder to be local", || {
        fs::read(fb.join("album/big.flac")).is_ok_and(|d| d == big)
    });
    assert_eq!(state(&ls(&phone), "album/small.txt"), "pinned");
    ok(&phone, &["unpin", "album"]);
    wait_until(T, "the unpinned files to leave the disk", || {
        !fb.join("album/big.flac").exists() && !fb.join("album/small.txt").exists()
    });
    assert_eq!(state(&ls(&phone), "album/small.txt"), "remote");

    // An edit in the shallow replica reaches the full one.
    fs::write(fb.join("from-phone.txt"), b"recorded on the phone\n").unwrap();
    wait_until(T, "the phone's file on the NAS", || {
        fs::read(fa.join("from-phone.txt")).is_ok_and(|d| d == b"recorded on the phone\n")
    });

    // The NAS goes away: a read of content nobody else has fails and says why.
    stop(nas_d);
    let out = cmd(&phone)
        .args(["cat", "other.bin", "--range", "0-1000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no connected device"), "{err}");
    stop(phone_d);
}
