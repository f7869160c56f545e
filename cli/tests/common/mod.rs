//! Running the `clearskies` binary as real processes: commands, daemons, and folder trees.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub fn cmd(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_clearskies"));
    c.arg("--home").arg(home).env_remove("CLEARSKIES_HOME");
    c
}

pub fn run(home: &Path, args: &[&str]) -> Output {
    cmd(home).args(args).output().expect("run clearskies")
}

pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `share PATH` on `home`: the access code (its last line).
pub fn share(home: &Path, folder: &Path) -> String {
    ok(home, &["share", folder.to_str().unwrap()])
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// Deterministic pseudo-random bytes (xorshift), for file contents.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon that is killed if the test fails before stopping it. Its stderr is kept.
pub struct Daemon {
    child: Option<Child>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Kills it with SIGKILL (no clean shutdown).
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Starts `run --listen 127.0.0.1:PORT EXTRA...` and waits until it listens.
pub fn daemon(home: &Path, port: u16, extra: &[&str]) -> Daemon {
    daemon_at(home, &format!("127.0.0.1:{port}"), extra)
}

/// Starts `run --listen LISTEN EXTRA...` and waits until it listens.
pub fn daemon_at(home: &Path, listen: &str, extra: &[&str]) -> Daemon {
    let mut child = cmd(home)
        .args(["run", "--listen", listen])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = log.clone();
    // Keep draining so the daemon never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("listening on")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            keep.lock().unwrap().push(line);
        }
    });
    let d = Daemon {
        child: Some(child),
        log,
    };
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!("the daemon did not start listening: {}", d.log());
    }
    d
}

/// Writes `HOME/config.json`.
pub fn write_config(home: &Path, json: &str) {
    std::fs::write(home.join("config.json"), json).unwrap();
}

/// Waits until the daemon's log has a line containing `text`.
pub fn wait_log(daemon: &Daemon, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log after {timeout:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM; it must exit cleanly within 5 s.
pub fn stop(mut daemon: Daemon) {
    let mut child = daemon.child.take().expect("running");
    let start = Instant::now();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "daemon exited with {status}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "daemon did not stop within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a tree holds, path by path: kind, permission bits, content digest or link target,
/// and mtime (ns) for files. `.clearskies` at the root is left out.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // The daemons change the trees while they are read: what vanishes meanwhile is left out
    // (the next look sees the settled state).
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == ".clearskies" {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let desc = if meta.file_type().is_symlink() {
            let Ok(target) = std::fs::read_link(&path) else {
                continue;
            };
            format!("link -> {}", target.to_string_lossy())
        } else if meta.is_dir() {
            walk(root, &path, out);
            format!("dir {mode:o}")
        } else {
            let Some(digest) = sha_of(&path) else {
                continue;
            };
            format!(
                "file {mode:o} {} {} mtime {}.{:09}",
                meta.len(),
                digest,
                meta.mtime(),
                meta.mtime_nsec()
            )
        };
        out.insert(rel, desc);
    }
}

fn sha_of(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(hex::encode(h.finalize()))
}

/// Waits until the trees under `a` and `b` are equal; panics with the difference on timeout.
pub fn wait_equal(a: &Path, b: &Path, timeout: Duration, what: &str) {
    wait_equal_except(a, b, &[], timeout, what, &[]);
}

/// Like [`wait_equal`], leaving `except` (paths relative to the root) of `a` out, and
/// printing the logs of `daemons` on timeout.
pub fn wait_equal_except(
    a: &Path,
    b: &Path,
    except: &[&str],
    timeout: Duration,
    what: &str,
    daemons: &[&Daemon],
) {
    let deadline = Instant::now() + timeout;
    loop {
        let (mut ta, tb) = (tree(a), tree(b));
        for e in except {
            ta.remove(*e);
        }
        if ta == tb {
            return;
        }
        if Instant::now() > deadline {
            let diff: Vec<String> = ta
                .iter()
                .filter(|(k, v)| tb.get(*k) != Some(v))
                .map(|(k, v)| format!("  {k}: {v} | {:?}", tb.get(k)))
                .chain(
                    tb.iter()
                        .filter(|(k, _)| !ta.contains_key(*k))
                        .map(|(k, v)| format!("  {k}: (absent) | {v}")),
                )
                .collect();
            let logs: Vec<String> = daemons.iter().map(|d| d.log()).collect();
            panic!(
                "{what}: trees differ after {timeout:?}:\n{}\nlogs:\n{}",
                diff.join("\n"),
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `f` holds.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
