//! `clearskies demo`: two devices on this machine, each a real `clearskies` process with its
//! own home and folder in a temporary directory, pair with an access code and keep a folder
//! in sync while the demo edits it. Everything is removed at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Failure;

struct Device {
    name: &'static str,
    home: PathBuf,
    folder: PathBuf,
    daemon: Option<Child>,
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SIGTERM for a clean stop, as a user would.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

fn tool(home: &Path) -> Result<Command, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::usage(&e.to_string()))?;
    let mut c = Command::new(exe);
    c.arg("--home").arg(home).env_remove("CLEARSKIES_HOME");
    Ok(c)
}

fn call(home: &Path, args: &[&str]) -> Result<String, Failure> {
    let out = tool(home)?
        .args(args)
        .output()
        .map_err(|e| Failure::usage(&e.to_string()))?;
    if !out.status.success() {
        return Err(Failure::not_found(&format!(
            "`clearskies {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start(device: &mut Device, args: &[&str]) -> Result<(), Failure> {
    let mut child = tool(&device.home)?
        .arg("run")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::usage(&e.to_string()))?;
    let name = device.name;
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                println!("    [{name} daemon] {line}");
            }
        });
    }
    device.daemon = Some(child);
    Ok(())
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if rel == ".clearskies" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
                out.push(format!("{rel}/"));
            } else {
                let content = std::fs::read(&p).unwrap_or_default();
                out.push(format!("{rel} ({} bytes)", content.len()));
            }
        }
    }
    out.sort();
    out
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> Result<(), Failure> {
    let started = Instant::now();
    while !ok() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(Failure::not_found(&format!(
                "the demo timed out waiting for {what}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("  ✓ {what} ({} ms)", started.elapsed().as_millis());
    Ok(())
}

fn free_port() -> Result<u16, Failure> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Failure::usage(&e.to_string()))?;
    Ok(l.local_addr()
        .map_err(|e| Failure::usage(&e.to_string()))?
        .port())
}

/// Runs the demo in `dir` (a fresh temporary directory when `None`).
pub fn demo() -> Result<(), Failure> {
    let tmp = tempfile::tempdir().map_err(|e| Failure::usage(&e.to_string()))?;
    let dir = tmp.path();
    let mk = |name: &'static str| Device {
        name,
        home: dir.join(format!("{name}-home")),
        folder: dir.join(format!("{name}-folder")),
        daemon: None,
    };
    let (mut laptop, mut phone) = (mk("laptop"), mk("phone"));
    std::fs::create_dir_all(laptop.folder.join("photos"))
        .map_err(|e| Failure::io(&laptop.folder, e))?;
    let write = |root: &Path, rel: &str, text: &str| -> Result<(), Failure> {
        let p = root.join(rel);
        std::fs::write(&p, text).map_err(|e| Failure::io(&p, e))
    };
    write(&laptop.folder, "notes.txt", "shopping: milk, bread\n")?;
    write(&laptop.folder, "photos/beach.jpg", &"~".repeat(200_000))?;

    println!("Two devices in {}:", dir.display());
    println!("1. The laptop creates its identity and shares its folder:");
    call(&laptop.home, &["init", "--name", "laptop"])?;
    call(&phone.home, &["init", "--name", "phone"])?;
    let folder = laptop.folder.to_string_lossy().into_owned();
    let out = call(&laptop.home, &["share", &folder])?;
    let code = out.lines().last().unwrap_or_default().to_owned();
    println!("   access code: {code}");
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    start(&mut laptop, &["--listen", &addr, "--rescan", "1"])?;
    std::thread::sleep(Duration::from_millis(500));

    println!("2. The phone joins with the code (SPAKE2 over TLS 1.3, then keys are pinned):");
    let phone_folder = phone.folder.to_string_lossy().into_owned();
    print!(
        "   {}",
        call(
            &phone.home,
            &["join", &code, &phone_folder, "--peer", &addr]
        )?
    );
    let phone_port = free_port()?;
    start(
        &mut phone,
        &[
            "--listen",
            &format!("127.0.0.1:{phone_port}"),
            "--peer",
            &addr,
            "--rescan",
            "1",
        ],
    )?;
    wait_for("the phone holds the laptop's files", || {
        listing(&phone.folder) == listing(&laptop.folder)
    })?;
    for line in listing(&phone.folder) {
        println!("     phone: {line}");
    }

    println!("3. Edits flow both ways:");
    write(
        &phone.folder,
        "from-the-phone.txt",
        "written on the phone\n",
    )?;
    wait_for("the laptop has the phone's new file", || {
        laptop.folder.join("from-the-phone.txt").exists()
    })?;
    write(
        &laptop.folder,
        "notes.txt",
        "shopping: milk, bread, coffee\n",
    )?;
    wait_for("the phone sees the laptop's edit", || {
        std::fs::read_to_string(phone.folder.join("notes.txt")).is_ok_and(|t| t.contains("coffee"))
    })?;
    let photos = phone.folder.join("photos");
    std::fs::remove_dir_all(&photos).map_err(|e| Failure::io(&photos, e))?;
    wait_for(
        "a folder deleted on the phone is gone from the laptop",
        || !laptop.folder.join("photos").exists(),
    )?;

    println!("4. Both folders now hold:");
    for line in listing(&laptop.folder) {
        println!("     {line}");
    }
    drop(phone);
    drop(laptop);
    println!("Done; the temporary directory is removed.");
    Ok(())
}
