//! `ls`, `cat`, `pin`, `unpin`: a shallow replica's commands (`CLI.md` § Shallow replicas).
//! Reading needs the running daemon (it fetches from peers and keeps the cache); pinning
//! without one records the change in the home for the next start.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::Failure;
use crate::control::{Client, Request, Response};
use crate::home::Home;

fn daemon(home: &Home, what: &str) -> Result<Client, Failure> {
    Client::connect(home).ok_or_else(|| {
        Failure::usage(&format!(
            "`{what}` reads through the running daemon (it fetches from peers): start `clearskies run` for this home first"
        ))
    })
}

fn share_path(home: &Home, share: Option<&Path>) -> Result<std::path::PathBuf, Failure> {
    Ok(home.find_share(share)?.path)
}

/// A path as given: relative to the share root, `/`-separated, no leading or trailing `/`.
fn normalize(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

/// `ls [PATH] [--json]`.
pub fn ls(
    home: &Home,
    share: Option<&Path>,
    path: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let share = share_path(home, share)?;
    let mut client = daemon(home, "ls")?;
    let prefix = normalize(&path.unwrap_or_default());
    let rows = match client.call(&Request::Ls {
        share,
        path: prefix,
    })? {
        Response::Listing(rows) => rows,
        other => return Err(crate::unexpected(&other)),
    };
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(path, kind, size, state, cached, chunks)| {
                json!({"path": path, "kind": kind, "size": size, "state": state,
                       "cached_chunks": cached, "chunks": chunks})
            })
            .collect();
        println!("{}", Value::Array(list));
    } else {
        for (path, kind, size, state, _, _) in rows {
            let path = if kind == "dir" {
                format!("{path}/")
            } else {
                path
            };
            println!("{state}\t{size}\t{path}");
        }
    }
    Ok(())
}

/// `--range START-END` (inclusive); the whole file when absent.
fn parse_range(range: Option<&str>) -> Result<(u64, u64), Failure> {
    let Some(r) = range else {
        return Ok((0, u64::MAX));
    };
    let bad = || Failure::usage(&format!("--range {r:?}: expected START-END, like 0-1023"));
    let (a, b) = r.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(Failure::usage(&format!(
            "--range {r:?}: END is before START"
        )));
    }
    Ok((start, end))
}

/// `cat PATH [--range START-END]`: the bytes on stdout as they arrive.
pub fn cat(
    home: &Home,
    share: Option<&Path>,
    path: &str,
    range: Option<String>,
) -> Result<(), Failure> {
    let (start, end) = parse_range(range.as_deref())?;
    let share = share_path(home, share)?;
    let mut client = daemon(home, "cat")?;
    let mut out = std::io::stdout().lock();
    let mut response = client.call(&Request::Cat {
        share,
        path: normalize(path),
        start,
        end,
    })?;
    loop {
        match response {
            Response::Data(bytes) => {
                if out.write_all(&bytes).is_err() {
                    // The reader went away (a pipe closed): nothing more to do.
                    return Ok(());
                }
            }
            Response::Done => break,
            other => return Err(crate::unexpected(&other)),
        }
        response = client.next()?;
    }
    out.flush().map_err(|e| Failure::usage(&e.to_string()))
}

/// `pin PATH` / `unpin PATH`.
pub fn pin(home: &Home, share: Option<&Path>, path: &str, pin: bool) -> Result<(), Failure> {
    let mut file = home.find_share(share)?;
    if !file.shallow {
        return Err(Failure::usage(&format!(
            "{} is a full replica: everything in it is local already (join with --shallow for a shallow one)",
            file.path.display()
        )));
    }
    let path = normalize(path);
    if let Some(mut client) = Client::connect(home) {
        client.call(&Request::Pin {
            share: file.path.clone(),
            path: path.clone(),
            pin,
        })?;
    } else {
        file.pinned.retain(|p| *p != path);
        if pin {
            file.pinned.push(path.clone());
        }
        home.save_share(&file)?;
        eprintln!("recorded; the daemon applies it when it starts");
    }
    println!("{} {path}", if pin { "pinned" } else { "unpinned" });
    Ok(())
}
