//! Folder sync end to end: two devices as real `clearskies` processes on loopback, real
//! folders, real files. Each device runs the daemon with a one-second rescan.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Daemon, daemon, free_port, noise, ok, share, stop, tree, wait_equal, wait_equal_except,
    wait_until,
};

const T: Duration = Duration::from_secs(20);

struct Pair {
    _dir: tempfile::TempDir,
    b: PathBuf,
    fa: PathBuf,
    fb: PathBuf,
    port_a: u16,
    port_b: u16,
    rescan: String,
}

impl Pair {
    /// Two initialised devices; A shares `fa` (filled by `fill` first), B joins into `fb`.
    fn new(fill: impl FnOnce(&Path)) -> (Pair, Daemon) {
        Pair::with_rescan(fill, "1")
    }

    /// Like `new`, with the daemons rescanning every `rescan` seconds.
    fn with_rescan(fill: impl FnOnce(&Path), rescan: &str) -> (Pair, Daemon) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("home-a"), dir.path().join("home-b"));
        let (fa, fb) = (dir.path().join("laptop"), dir.path().join("phone"));
        fs::create_dir(&fa).unwrap();
        fill(&fa);
        ok(&a, &["init", "--name", "laptop"]);
        ok(&b, &["init", "--name", "phone"]);
        let code = share(&a, &fa);
        let port_a = free_port();
        let laptop = daemon(&a, port_a, &["--rescan", rescan]);
        let peer = format!("127.0.0.1:{port_a}");
        ok(&b, &["join", &code, fb.to_str().unwrap(), "--peer", &peer]);
        let pair = Pair {
            _dir: dir,
            b,
            fa,
            fb,
            port_a,
            port_b: free_port(),
            rescan: rescan.to_owned(),
        };
        (pair, laptop)
    }

    fn start_b(&self) -> Daemon {
        let peer = format!("127.0.0.1:{}", self.port_a);
        daemon(
            &self.b,
            self.port_b,
            &["--rescan", &self.rescan, "--peer", &peer],
        )
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_folder_syncs_both_ways_through_every_kind_of_change() {
    let (p, laptop) = Pair::new(|fa| {
        write(fa, "hello.txt", b"hello from the laptop\n");
        write(fa, "empty", b"");
        write(fa, "read-only.txt", b"do not touch\n");
        chmod(fa, "read-only.txt", 0o400);
        write(fa, "nested/deep/er/file.bin", &noise(300_000, 1));
        fs::create_dir_all(fa.join("empty-dir")).unwrap();
        symlink("../outside/target", fa.join("link")).unwrap();
        write(fa, ".clearskiesignore", b"*.tmp\n");
        write(fa, "secret.tmp", b"never leaves this device\n");
        write(fa, "music/album/track.flac", &noise(3_000_000, 2));
    });
    let phone = p.start_b();
    let settle = |what: &str| {
        wait_equal_except(&p.fa, &p.fb, &["secret.tmp"], T, what, &[&laptop, &phone]);
    };
    settle("initial sync");
    assert!(
        !p.fb.join("secret.tmp").exists(),
        "an ignored file left the device"
    );
    assert_eq!(
        fs::metadata(p.fb.join("read-only.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o400
    );
    assert_eq!(
        fs::read_link(p.fb.join("link")).unwrap(),
        PathBuf::from("../outside/target")
    );

    write(&p.fa, "hello.txt", b"hello again, changed on the laptop\n");
    settle("a content change");
    write(&p.fb, "from-phone.txt", b"made on the phone\n");
    settle("a file created on the second device");
    chmod(&p.fa, "read-only.txt", 0o640);
    settle("a mode-only change");
    fs::remove_file(p.fb.join("nested/deep/er/file.bin")).unwrap();
    settle("a delete");
    fs::remove_file(p.fa.join("hello.txt")).unwrap();
    settle("delete");
    write(&p.fa, "hello.txt", b"back again\n");
    settle("delete then re-create");
    fs::rename(p.fa.join("from-phone.txt"), p.fa.join("renamed.txt")).unwrap();
    settle("a rename");
    fs::rename(p.fa.join("renamed.txt"), p.fa.join("from-phone.txt")).unwrap();
    settle("a rename back");
    fs::rename(p.fb.join("music"), p.fb.join("records")).unwrap();
    settle("a directory rename");
    assert!(!p.fa.join("music").exists() && p.fa.join("records/album/track.flac").exists());
    fs::remove_dir_all(p.fa.join("nested")).unwrap();
    settle("a directory delete");
    assert!(!p.fb.join("nested").exists());
    assert!(!p.fb.join("secret.tmp").exists());
    stop(phone);
    stop(laptop);
}

#[test]
fn concurrent_edits_keep_both_versions_and_a_stopped_daemon_catches_up() {
    let (p, laptop) = Pair::new(|fa| write(fa, "doc.txt", b"the original\n"));
    let phone = p.start_b();
    wait_equal(&p.fa, &p.fb, T, "initial sync");
    // The phone's daemon is frozen; both devices edit the same file meanwhile.
    phone.signal("STOP");
    write(&p.fa, "doc.txt", b"the laptop's edit\n");
    write(
        &p.fa,
        "while-stopped.txt",
        b"made while the phone was frozen\n",
    );
    std::thread::sleep(Duration::from_millis(1500));
    write(&p.fb, "doc.txt", b"the phone's edit\n");
    phone.signal("CONT");
    wait_until(T, "a conflict copy on both sides", || {
        let (ta, tb) = (tree(&p.fa), tree(&p.fb));
        ta == tb && ta.keys().any(|k| k.starts_with("doc.sync-conflict-"))
    });
    // Both edits survive, one under the original name, the other in the conflict copy.
    let mut contents: Vec<String> = fs::read_dir(&p.fa)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("doc."))
        .map(|f| fs::read_to_string(f).unwrap())
        .collect();
    contents.sort();
    assert_eq!(contents, vec!["the laptop's edit\n", "the phone's edit\n"]);
    assert!(p.fb.join("while-stopped.txt").exists());
    stop(phone);
    stop(laptop);
}

#[test]
fn a_receiver_killed_mid_transfer_resumes_and_leaves_no_temp_files() {
    const BIG: usize = 200 * 1024 * 1024;
    let (p, laptop) = Pair::new(|fa| write(fa, "big.bin", &noise(BIG, 3)));
    let phone = p.start_b();
    let tmp = p.fb.join(".clearskies").join("tmp");
    // Kill the phone once part of the file has arrived.
    wait_until(T, "the transfer to start", || {
        fs::read_dir(&tmp)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false)
    });
    phone.kill9();
    assert!(
        !p.fb.join("big.bin").exists(),
        "the file appeared before the transfer was complete"
    );
    let phone = p.start_b();
    wait_equal(&p.fa, &p.fb, Duration::from_secs(180), "resumed transfer");
    let left: Vec<_> = fs::read_dir(&tmp)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "temp files left behind: {left:?}");
    stop(phone);
    stop(laptop);
}

#[test]
fn a_removed_share_root_is_an_error_never_a_mass_delete() {
    let (p, laptop) = Pair::new(|fa| {
        write(fa, "keep/me.txt", b"precious\n");
        write(fa, "and-me.txt", b"also precious\n");
    });
    let phone = p.start_b();
    wait_equal(&p.fa, &p.fb, T, "initial sync");
    let before = tree(&p.fb);
    // The laptop's folder disappears (an unmounted disk, a mistaken rm).
    fs::remove_dir_all(&p.fa).unwrap();
    wait_until(T, "the laptop to report the missing folder", || {
        laptop.log().contains(p.fa.to_str().unwrap())
    });
    // Several rescans later the phone still has everything.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        tree(&p.fb),
        before,
        "files were deleted on the other device"
    );
    stop(phone);
    stop(laptop);
}

#[test]
fn the_file_watcher_picks_up_changes_between_rescans() {
    // Rescans an hour apart: only the watcher can notice these edits in time.
    let (p, laptop) = Pair::with_rescan(|fa| write(fa, "a.txt", b"first\n"), "3600");
    let phone = p.start_b();
    wait_equal(&p.fa, &p.fb, T, "initial sync");
    write(&p.fa, "watched/new.txt", b"seen by the watcher\n");
    wait_equal(&p.fa, &p.fb, T, "a new file on the laptop");
    write(&p.fb, "a.txt", b"edited on the phone\n");
    wait_equal(&p.fa, &p.fb, T, "an edit on the phone");
    stop(phone);
    stop(laptop);
}

#[test]
fn thousands_of_files_sync_under_a_low_open_file_limit() {
    // Each file being assembled holds its temp file open: a share of more files than the
    // process may open must still sync (they are assembled a bounded number at a time).
    let (p, laptop) = Pair::new(|fa| {
        for i in 0..3000 {
            write(
                fa,
                &format!("d{:02}/f{i:04}.txt", i % 30),
                &noise(200 + i % 500, i as u64),
            );
        }
    });
    let Ok(limit) = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
    else {
        eprintln!(
            "SKIPPED thousands_of_files_sync_under_a_low_open_file_limit: no prlimit (util-linux)"
        );
        stop(laptop);
        return;
    };
    assert!(limit.status.success());
    let out = std::process::Command::new("prlimit")
        .args(["--nofile=256", "--"])
        .arg(env!("CARGO_BIN_EXE_clearskies"))
        .arg("--home")
        .arg(&p.b)
        .args(["sync", "--once", "--timeout", "120", "--peer"])
        .arg(format!("127.0.0.1:{}", p.port_a))
        .env_remove("CLEARSKIES_HOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sync --once under 256 open files failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (want, got) = (tree(&p.fa), tree(&p.fb));
    let missing = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} entries missing or different on the phone",
        want.len()
    );
    stop(laptop);
}
