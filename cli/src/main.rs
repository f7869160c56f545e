//! The `clearskies` command-line tool. `CLI.md` (in the project's shared docs) is its contract:
//! scripts and tests rely on the commands and their output.
//!
//! Implemented so far: `init`, `id`, `share`, `invite`, `shares`, `members`, and the `db`
//! commands, which work on the home directly (no daemon yet). The commands that need pairing
//! over the network or folder sync (`join`, `run`, `sync`, `status`, `remove-member`, `ls`,
//! `cat`, `pin`, `unpin`, `db watch`) say plainly that this build does not have them yet.

mod control;
mod daemon;
mod demo;
mod home;
mod peers;
mod progress;
mod shallow;
mod transport;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use clearskies_proto::code::AccessCode;
use clearskies_proto::db::{Output, Record, Replica};
use clearskies_store::ReplicaStore;
use serde_json::{Value, json};

use crate::home::{Home, ShareFile};

/// Peer-to-peer sync of a person's folders and data between their devices.
#[derive(Parser)]
#[command(name = "clearskies", version, about)]
struct Cli {
    /// Where this device keeps its identity, databases and caches.
    #[arg(long, global = true, env = "CLEARSKIES_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this device's identity (idempotent) and print its device ID.
    Init {
        /// A name other devices see.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print this device's ID.
    Id,
    /// Share a folder (or reuse its share) and print a new access code as the last line.
    Share {
        path: PathBuf,
        /// The code grants read-only membership.
        #[arg(long)]
        read_only: bool,
    },
    /// Print another access code for an existing share.
    Invite {
        path: PathBuf,
        #[arg(long)]
        read_only: bool,
        /// How many devices may join with this code.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long the code stays valid: `90s`, `30m`, `24h`, `7d`.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Pair with the device that made CODE and record the share (needs pairing: not yet).
    Join {
        code: String,
        path: PathBuf,
        /// A shallow replica: every record, content fetched on demand (`cat`, `pin`).
        #[arg(long)]
        shallow: bool,
        /// A shallow replica's cache limit: bytes, or with a unit (`512M`, `2G`).
        #[arg(long)]
        cache_size: Option<String>,
        #[arg(long)]
        peer: Vec<String>,
        /// `quic` or `tcp` only (default: both, QUIC preferred).
        #[arg(long)]
        transport: Option<String>,
    },
    /// List shares.
    Shares {
        #[arg(long)]
        json: bool,
    },
    /// List a share's members.
    Members {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove a member (not yet).
    RemoveMember { path: PathBuf, device_id: String },
    /// Run the daemon (not yet).
    Run {
        #[arg(long)]
        listen: Option<String>,
        /// `quic` or `tcp` only (default: both, QUIC preferred).
        #[arg(long)]
        transport: Option<String>,
        #[arg(long)]
        peer: Vec<String>,
        /// Seconds between rescans of each folder (at least; a costly scan stretches it).
        #[arg(long, default_value_t = 10)]
        rescan: u64,
    },
    /// Check in with peers once: exchange changes, fetch content, exit 0 when all agree.
    ///
    /// While this home's daemon runs, the daemon checks in (it is connected and watching
    /// already, so nothing is scanned again; its own transports are used).
    Sync {
        #[arg(long)]
        once: bool,
        #[arg(long)]
        peer: Vec<String>,
        /// `quic` or `tcp` only (default: both, QUIC preferred).
        #[arg(long)]
        transport: Option<String>,
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Two devices on this machine, in a temporary directory, keep a folder in sync while
    /// the demo edits it.
    Demo,
    /// The share's tree with each entry's state (local / pinned / cached / remote).
    Ls {
        /// A path relative to the share root (default: everything).
        path: Option<String>,
        #[arg(long)]
        share: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// A file's bytes on stdout, fetched on demand (`--range START-END`, inclusive).
    Cat {
        path: String,
        #[arg(long)]
        range: Option<String>,
        #[arg(long)]
        share: Option<PathBuf>,
    },
    /// Keep a file or folder of a shallow replica fully local.
    Pin {
        path: String,
        #[arg(long)]
        share: Option<PathBuf>,
    },
    /// Let a pinned file or folder go back to remote.
    Unpin {
        path: String,
        #[arg(long)]
        share: Option<PathBuf>,
    },
    /// Show shares, peers and progress (not yet).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The share's database.
    Db {
        /// The share (may be left out when the device has exactly one).
        #[arg(long)]
        share: Option<PathBuf>,
        #[command(subcommand)]
        op: DbOp,
    },
}

#[derive(Subcommand)]
enum DbOp {
    /// Write a JSON document under KEY.
    Put { key: String, json: String },
    /// Print KEY's document (the winner while in conflict); `--json` shows every sibling.
    Get {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete KEY.
    Del { key: String },
    /// List keys (with PREFIX) and their documents.
    List {
        prefix: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print one line per change (needs the daemon: not yet).
    Watch { prefix: Option<String> },
}

/// A failure with its message for stderr and its exit code.
#[derive(Debug)]
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    pub fn usage(message: &str) -> Failure {
        Failure {
            message: message.to_owned(),
            code: 2,
        }
    }
    pub fn not_found(message: &str) -> Failure {
        Failure {
            message: message.to_owned(),
            code: 1,
        }
    }
    pub fn io(path: &Path, e: std::io::Error) -> Failure {
        Failure {
            message: format!("{}: {e}", path.display()),
            code: 1,
        }
    }
    pub fn corrupt(what: &str, detail: &str) -> Failure {
        Failure {
            message: format!("{what} is unreadable: {detail}"),
            code: 1,
        }
    }
}

/// Logs go to stderr. By default a line is just the message, at `info` and above (what the
/// daemon has to say); with `RUST_LOG` set (`RUST_LOG=debug`, `RUST_LOG=clearskies_runtime=trace`,
/// ...) lines carry their time, level and origin, filtered as it says.
fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => builder.with_env_filter(EnvFilter::new(filter)).init(),
        _ => builder
            .with_env_filter(EnvFilter::new("info"))
            .without_time()
            .with_level(false)
            .with_target(false)
            .init(),
    }
}

fn main() -> ExitCode {
    init_logs();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("clearskies: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let home = Home::locate(cli.home)?;
    match cli.command {
        Command::Init { name } => {
            let key = home.init(name.as_deref())?;
            println!("{}", key.device_id());
        }
        Command::Id => println!("{}", home.key()?.device_id()),
        Command::Share { path, read_only } => {
            let key = home.key()?;
            let (share, created) = home.create_share(&path, &key)?;
            // Create the database so the share exists in full before the code is shown (a
            // running daemon that already has the share open holds it: leave it be).
            let daemon = control::Client::connect(&home).is_some();
            if created || !daemon {
                let mut db = open_replica(&home, &share, &key)?;
                if created {
                    // The creator's own membership record starts the share's replicated
                    // member list.
                    db.replica
                        .set_membership(
                            wall_micros(),
                            key.device_id(),
                            Some(clearskies_proto::db::Member {
                                public_key: key.public_key(),
                                access: clearskies_proto::db::Access::ReadWrite,
                            }),
                        )
                        .map_err(|e| Failure::usage(&e.to_string()))?;
                    db.settle()?;
                }
            }
            tell_daemon_to_open(&home, &share.path)?;
            println!(
                "{} share {} of {}",
                if created { "created" } else { "reusing" },
                share.id,
                share.path.display()
            );
            println!(
                "{}",
                invite(&home, &share, read_only, 1, Duration::from_secs(24 * 3600))?
            );
        }
        Command::Invite {
            path,
            read_only,
            uses,
            ttl,
        } => {
            home.key()?;
            let share = home.find_share(Some(&path))?;
            let ttl = parse_duration(&ttl)?;
            if uses == 0 {
                return Err(Failure::usage("--uses must be at least 1"));
            }
            println!("{}", invite(&home, &share, read_only, uses, ttl)?);
        }
        Command::Join {
            code,
            path,
            peer,
            shallow,
            cache_size,
            transport,
        } => {
            // A typo is caught locally, before any network use.
            let code = AccessCode::parse(&code).map_err(|e| Failure::usage(&e.to_string()))?;
            let cache_size = cache_size.as_deref().map(parse_size).transpose()?;
            if cache_size.is_some() && !shallow {
                return Err(Failure::usage("--cache-size goes with --shallow"));
            }
            let joined = daemon::join(
                &home,
                &code,
                &path,
                peer.into_iter().next(),
                transport,
                shallow.then_some(cache_size),
            )?;
            tell_daemon_to_open(&home, &joined)?;
        }
        Command::Shares { json } => {
            let shares = home.shares()?;
            if json {
                let list: Vec<Value> = shares
                    .iter()
                    .map(|s| json!({"id": s.id, "path": s.path, "members": s.members.len()}))
                    .collect();
                println!("{}", Value::Array(list));
            } else {
                for s in shares {
                    println!("{}\t{}", s.id, s.path.display());
                }
            }
        }
        Command::Members { path, json } => {
            let share = home.find_share(Some(&path))?;
            let members = share.members()?;
            if json {
                let list: Vec<Value> = members
                    .iter()
                    .map(|(id, m)| json!({"device_id": id.to_string(), "access": access_text(m.access)}))
                    .collect();
                println!("{}", Value::Array(list));
            } else {
                for (id, m) in members {
                    println!("{id}\t{}", access_text(m.access));
                }
            }
        }
        Command::RemoveMember { path, device_id } => {
            let device = clearskies_proto::identity::DeviceId::parse(&device_id)
                .map_err(|e| Failure::usage(&e.to_string()))?;
            if device == home.key()?.device_id() {
                return Err(Failure::usage(
                    "a device cannot remove itself; remove it from another member",
                ));
            }
            let share = home.find_share(Some(&path))?;
            if let Some(mut daemon) = control::Client::connect(&home) {
                home.remove_member(&share, &device)?;
                daemon.call(&control::Request::RemoveMember {
                    path: share.path.clone(),
                    device: device.to_string(),
                })?;
            } else {
                // The signed removal record reaches the other devices at the next sync.
                let mut db = open_replica(&home, &share, &home.key()?)?;
                db.replica
                    .set_membership(wall_micros(), device, None)
                    .map_err(|e| Failure::not_found(&format!("{device}: {e}")))?;
                db.settle()?;
                drop(db);
                if share.members()?.contains_key(&device) {
                    home.remove_member(&share, &device)?;
                }
            }
            println!("removed {device} from {}", share.path.display());
        }
        Command::Run {
            listen,
            transport,
            peer,
            rescan,
        } => {
            daemon::run(
                home,
                listen,
                transport,
                peer,
                None,
                Duration::from_secs(rescan),
            )?;
        }
        Command::Sync {
            once,
            peer,
            transport,
            timeout,
        } => {
            if !once {
                return Err(Failure::usage(
                    "use `clearskies run` to stay in sync, or `sync --once`",
                ));
            }
            let timeout = timeout.unwrap_or(60);
            // With this home's daemon running, it checks in: it is connected and watching
            // already, so nothing is scanned again (its own transports are used).
            if let Some(mut daemon) = control::Client::connect(&home) {
                daemon.call(&control::Request::CheckIn {
                    peers: peer.clone(),
                    timeout_secs: timeout,
                })?;
                return Ok(());
            }
            daemon::run(
                home,
                None,
                transport,
                peer,
                Some(Duration::from_secs(timeout)),
                Duration::from_secs(3600),
            )?;
        }
        Command::Status { json } => status(&home, json)?,
        Command::Demo => demo::demo()?,
        Command::Ls { path, share, json } => shallow::ls(&home, share.as_deref(), path, json)?,
        Command::Cat { path, range, share } => shallow::cat(&home, share.as_deref(), &path, range)?,
        Command::Pin { path, share } => shallow::pin(&home, share.as_deref(), &path, true)?,
        Command::Unpin { path, share } => shallow::pin(&home, share.as_deref(), &path, false)?,
        Command::Db { share, op } => db(&home, share.as_deref(), op)?,
    }
    Ok(())
}

pub(crate) fn access_text(a: clearskies_proto::db::Access) -> &'static str {
    match a {
        clearskies_proto::db::Access::ReadWrite => "read-write",
        clearskies_proto::db::Access::ReadOnly => "read-only",
    }
}

/// `1048576`, `512K`, `64M`, `2G`.
fn parse_size(text: &str) -> Result<u64, Failure> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| Failure::usage(&format!("{text:?} is not a size like 512M or 2G")))?;
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(Failure::usage(&format!(
                "{text:?}: the unit is one of K, M, G"
            )));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| Failure::usage(&format!("{text:?} is too large")))
}

fn parse_duration(text: &str) -> Result<Duration, Failure> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().map_err(|_| {
        Failure::usage(&format!(
            "--ttl {text:?}: expected a number and a unit, like 24h"
        ))
    })?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(Failure::usage(&format!(
                "--ttl {text:?}: the unit is one of s, m, h, d"
            )));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// A new access code for `share` in `invitations` (the caller saves the registry).
pub(crate) fn new_code(
    invitations: &mut clearskies_proto::pair::Invitations,
    share: &ShareFile,
    read_only: bool,
    uses: u32,
    ttl: Duration,
) -> Result<String, Failure> {
    use clearskies_proto::db::Access;
    use clearskies_proto::pair::{InvitationOptions, PairMisuse, Uses};
    let options = InvitationOptions {
        access: if read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        },
        uses: if uses == 1 {
            Uses::Single
        } else {
            Uses::Limited(uses)
        },
        lifetime_micros: u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX),
    };
    let code = loop {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| Failure::usage(&format!("no random source: {e}")))?;
        match invitations.create(wall_micros(), bytes, share.share_id()?, options) {
            Ok(code) => break code,
            Err(PairMisuse::DuplicateCode) => continue,
            Err(e) => return Err(Failure::usage(&format!("cannot make a code: {e:?}"))),
        }
    };
    Ok(code.to_string())
}

/// A new access code, made by the running daemon if there is one (it holds the registry).
fn invite(
    home: &Home,
    share: &ShareFile,
    read_only: bool,
    uses: u32,
    ttl: Duration,
) -> Result<String, Failure> {
    if let Some(mut daemon) = control::Client::connect(home) {
        return match daemon.call(&control::Request::Invite {
            path: share.path.clone(),
            read_only,
            uses,
            ttl_secs: ttl.as_secs(),
        })? {
            control::Response::Code(code) => Ok(code),
            other => Err(unexpected(&other)),
        };
    }
    let mut invitations = home.load_invitations()?;
    let code = new_code(&mut invitations, share, read_only, uses, ttl)?;
    home.save_invitations(&invitations)?;
    Ok(code)
}

pub(crate) fn unexpected(r: &control::Response) -> Failure {
    Failure::not_found(&format!("the daemon answered something unexpected: {r:?}"))
}

/// `status [--json]`: from the running daemon, or from the home when none runs.
fn status(home: &Home, json: bool) -> Result<(), Failure> {
    let doc: Value = match control::Client::connect(home) {
        Some(mut daemon) => match daemon.call(&control::Request::Status)? {
            control::Response::Status(text) => serde_json::from_str(&text)
                .map_err(|e| Failure::corrupt("the daemon's status", &e.to_string()))?,
            other => return Err(unexpected(&other)),
        },
        None => {
            let key = home.key()?;
            let shares: Vec<Value> = home
                .shares()?
                .iter()
                .map(|s| {
                    let peers: Vec<Value> = s
                        .members()
                        .unwrap_or_default()
                        .keys()
                        .filter(|d| **d != key.device_id())
                        .map(|d| json!({"device": d.to_string(), "name": "", "connected": false, "address": null}))
                        .collect();
                    json!({"path": s.path, "id": s.id, "state": "stopped", "error": null,
                           "files_needed": null, "bytes_needed": null, "stalled_chunks": null,
                           "peers": peers})
                })
                .collect();
            json!({"device": key.device_id().to_string(), "name": home.device_name(),
                   "daemon": false, "shares": shares})
        }
    };
    if json {
        println!("{doc}");
        return Ok(());
    }
    let running = doc["daemon"].as_bool() == Some(true);
    println!(
        "{} ({}): daemon {}",
        doc["name"].as_str().unwrap_or_default(),
        doc["device"].as_str().unwrap_or_default(),
        if running { "running" } else { "not running" }
    );
    for share in doc["shares"].as_array().into_iter().flatten() {
        let mut line = format!(
            "share {}: {}",
            share["path"].as_str().unwrap_or_default(),
            share["state"].as_str().unwrap_or_default()
        );
        if let Some(n) = share["files_needed"].as_u64().filter(|n| *n > 0) {
            line.push_str(&format!(
                ", {n} files and {} bytes still needed",
                share["bytes_needed"].as_u64().unwrap_or(0)
            ));
        }
        if let Some(e) = share["error"].as_str() {
            line.push_str(&format!(": {e}"));
        }
        println!("{line}");
        for peer in share["peers"].as_array().into_iter().flatten() {
            let name = peer["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or("peer");
            let state = if peer["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "not connected"
            };
            let addr = peer["address"]
                .as_str()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default();
            println!(
                "  {name} ({}): {state}{addr}",
                peer["device"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Tells a running daemon to open a share created or joined in its home.
fn tell_daemon_to_open(home: &Home, path: &Path) -> Result<(), Failure> {
    if let Some(mut daemon) = control::Client::connect(home) {
        daemon.call(&control::Request::OpenShare {
            path: path.to_owned(),
        })?;
    }
    Ok(())
}

/// The share's replica, opened from its store, with every batch applied synchronously.
struct Db {
    replica: Replica,
    store: ReplicaStore,
}

impl Db {
    fn settle(&mut self) -> Result<(), Failure> {
        while let Some(out) = self.replica.poll_output() {
            if let Output::Persist { id, ops } = out {
                self.store.apply(&ops).map_err(|e| Failure {
                    message: e.to_string(),
                    code: 1,
                })?;
                self.replica.handle_persisted(id);
            }
        }
        Ok(())
    }
}

fn open_replica(
    home: &Home,
    share: &ShareFile,
    key: &clearskies_proto::crypto::DeviceKey,
) -> Result<Db, Failure> {
    let path = home.share_dir(share).join("replica.redb");
    let (store, state) = ReplicaStore::open(&path).map_err(|e| Failure {
        message: e.to_string(),
        code: 1,
    })?;
    let mut index = [0u8; 8];
    getrandom::getrandom(&mut index)
        .map_err(|e| Failure::usage(&format!("no random source: {e}")))?;
    let replica = Replica::new(
        share.share_id()?,
        key.clone(),
        share.members()?,
        state,
        u64::from_le_bytes(index),
    );
    let mut db = Db { replica, store };
    db.settle()?;
    Ok(db)
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn to_json(cbor: &[u8]) -> Value {
    clearskies_proto::wire::codec::decode::<Value>(cbor).unwrap_or(Value::Null)
}

fn sibling_json(r: &Record) -> Value {
    let version: serde_json::Map<String, Value> = r
        .version
        .iter()
        .map(|(d, c)| (d.to_string(), json!(c)))
        .collect();
    json!({
        "value": r.value.as_deref().map(to_json),
        "deleted": r.is_tombstone(),
        "writer": r.dot.writer.to_string(),
        "counter": r.dot.counter,
        "version": version,
        "time": r.hlc,
    })
}

fn print_get(k: &str, siblings: Option<Vec<Record>>, json: bool) -> Result<(), Failure> {
    let siblings = siblings
        .filter(|s| !s.is_empty())
        .filter(|s| json || !s[0].is_tombstone());
    let Some(siblings) = siblings else {
        return Err(Failure::not_found(&format!("no document under {k:?}")));
    };
    if json {
        let list: Vec<Value> = siblings.iter().map(sibling_json).collect();
        println!(
            "{}",
            json!({"key": k, "conflict": siblings.len() > 1, "siblings": list})
        );
        if siblings[0].is_tombstone() && siblings.len() == 1 {
            return Err(Failure::not_found(&format!("{k:?} was deleted")));
        }
    } else {
        let value = siblings[0]
            .value
            .as_deref()
            .map(to_json)
            .unwrap_or(Value::Null);
        println!("{value}");
    }
    Ok(())
}

/// Whether `db list` shows `key` for `prefix`: the layers' own records (folder entries under
/// `/`, membership under `!members/`) only when the prefix asks for them.
fn listed(key: &str, prefix: &str) -> bool {
    !prefix.is_empty()
        || !(key.starts_with(clearskies_proto::files::FILES_PREFIX)
            || clearskies_proto::db::members::is_member_key(key))
}

fn print_list(prefix: &str, list: Vec<(String, Vec<Record>)>, json: bool) {
    let live: Vec<(String, Value, bool)> = list
        .into_iter()
        .filter(|(k, _)| listed(k, prefix))
        .filter_map(|(k, s)| {
            let conflict = s.len() > 1;
            s.first()
                .and_then(|w| w.value.as_deref())
                .map(|v| (k, to_json(v), conflict))
        })
        .collect();
    if json {
        let list: Vec<Value> = live
            .iter()
            .map(|(k, v, c)| json!({"key": k, "value": v, "conflict": c}))
            .collect();
        println!("{}", Value::Array(list));
    } else {
        for (k, v, _) in live {
            println!("{k}\t{v}");
        }
    }
}

fn document(text: &str) -> Result<Vec<u8>, Failure> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Failure::usage(&format!("the document is not JSON: {e}")))?;
    Ok(clearskies_proto::wire::codec::encode(&value))
}

fn db(home: &Home, share: Option<&Path>, op: DbOp) -> Result<(), Failure> {
    if let Some(daemon) = control::Client::connect(home) {
        return db_through_daemon(daemon, share, op);
    }
    if let DbOp::Watch { .. } = op {
        return Err(Failure::usage(
            "`db watch` follows a running daemon: start `clearskies run` for this home first",
        ));
    }
    let key = home.key()?;
    let share = home.find_share(share)?;
    let mut db = open_replica(home, &share, &key)?;
    let siblings = |db: &Db, k: &str| -> Option<Vec<Record>> {
        db.replica.entry(k).map(|e| e.siblings().cloned().collect())
    };
    match op {
        DbOp::Put { key: k, json: text } => {
            db.replica
                .put(wall_micros(), &k, Bytes::from(document(&text)?))
                .map_err(|e| Failure::usage(&e.to_string()))?;
            db.settle()?;
        }
        DbOp::Get { key: k, json } => print_get(&k, siblings(&db, &k), json)?,
        DbOp::Del { key: k } => {
            if db.replica.get(&k).is_none() {
                return Err(Failure::not_found(&format!("no document under {k:?}")));
            }
            db.replica
                .delete(wall_micros(), &k)
                .map_err(|e| Failure::usage(&e.to_string()))?;
            db.settle()?;
        }
        DbOp::List { prefix, json } => {
            let prefix = prefix.unwrap_or_default();
            let list = db
                .replica
                .range(&prefix)
                .map(|(k, e)| (k.clone(), e.siblings().cloned().collect()))
                .collect();
            print_list(&prefix, list, json);
        }
        DbOp::Watch { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn db_through_daemon(
    mut daemon: control::Client,
    share: Option<&Path>,
    op: DbOp,
) -> Result<(), Failure> {
    use control::{Request, Response};
    let share = share.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned()));
    match op {
        DbOp::Put { key, json } => {
            let value = Some(document(&json)?);
            daemon.call(&Request::Put { share, key, value })?;
        }
        DbOp::Del { key } => {
            match daemon.call(&Request::Get {
                share: share.clone(),
                key: key.clone(),
            })? {
                Response::Entry(Some(s)) if s.first().is_some_and(|w| !w.is_tombstone()) => {}
                _ => return Err(Failure::not_found(&format!("no document under {key:?}"))),
            }
            daemon.call(&Request::Put {
                share,
                key,
                value: None,
            })?;
        }
        DbOp::Get { key, json } => match daemon.call(&Request::Get {
            share,
            key: key.clone(),
        })? {
            Response::Entry(siblings) => print_get(&key, siblings, json)?,
            other => return Err(unexpected(&other)),
        },
        DbOp::List { prefix, json } => match daemon.call(&Request::List {
            share,
            prefix: prefix.clone().unwrap_or_default(),
        })? {
            Response::Entries(list) => print_list(&prefix.unwrap_or_default(), list, json),
            other => return Err(unexpected(&other)),
        },
        DbOp::Watch { prefix } => {
            daemon.call(&Request::Watch {
                share,
                prefix: prefix.unwrap_or_default(),
            })?;
            use std::io::Write;
            let mut out = std::io::stdout();
            loop {
                match daemon.next()? {
                    Response::Change { key, siblings } => {
                        let value = siblings
                            .first()
                            .and_then(|w| w.value.as_deref())
                            .map_or_else(|| "(deleted)".to_owned(), |v| to_json(v).to_string());
                        let conflict = if siblings.len() > 1 {
                            "\t(conflict)"
                        } else {
                            ""
                        };
                        if writeln!(out, "{key}\t{value}{conflict}")
                            .and_then(|()| out.flush())
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    other => return Err(unexpected(&other)),
                }
            }
        }
    }
    Ok(())
}
