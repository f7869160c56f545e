//! The `clearskies` command-line tool. `CLI.md` (in the project's shared docs) is its contract:
//! scripts and tests rely on the commands and their output.
//!
//! Implemented so far: `init`, `id`, `share`, `invite`, `shares`, `members`, and the `db`
//! commands, which work on the home directly (no daemon yet). The commands that need pairing
//! over the network or folder sync (`join`, `run`, `sync`, `status`, `remove-member`, `ls`,
//! `cat`, `pin`, `unpin`, `db watch`) say plainly that this build does not have them yet.

mod daemon;
mod demo;
mod home;
mod peers;
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
        #[arg(long)]
        shallow: bool,
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
    fn not_yet(what: &str) -> Failure {
        Failure {
            message: format!(
                "`{what}` is not available in this build yet (it needs pairing, the daemon or folder sync, which are still being built)"
            ),
            code: 2,
        }
    }
}

fn main() -> ExitCode {
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
            // Create the database so the share exists in full before the code is shown.
            open_replica(&home, &share, &key)?;
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
            transport,
        } => {
            // A typo is caught locally, before any network use.
            let code = AccessCode::parse(&code).map_err(|e| Failure::usage(&e.to_string()))?;
            if shallow {
                return Err(Failure::not_yet("join --shallow"));
            }
            daemon::join(home, &code, &path, peer.into_iter().next(), transport)?;
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
            home.remove_member(&share, &device)?;
            println!("removed {device} from {}", share.path.display());
            eprintln!("a running daemon refuses it once restarted (no control socket yet)");
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
            daemon::run(
                home,
                None,
                transport,
                peer,
                Some(Duration::from_secs(timeout.unwrap_or(60))),
                Duration::from_secs(3600),
            )?;
        }
        Command::Status { .. } => return Err(Failure::not_yet("status")),
        Command::Demo => demo::demo()?,
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

fn invite(
    home: &Home,
    share: &ShareFile,
    read_only: bool,
    uses: u32,
    ttl: Duration,
) -> Result<String, Failure> {
    use clearskies_proto::db::Access;
    use clearskies_proto::pair::{InvitationOptions, PairMisuse, Uses};
    let mut invitations = home.load_invitations()?;
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
    home.save_invitations(&invitations)?;
    Ok(code.to_string())
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

fn db(home: &Home, share: Option<&Path>, op: DbOp) -> Result<(), Failure> {
    if let DbOp::Watch { .. } = op {
        return Err(Failure::not_yet("db watch"));
    }
    let key = home.key()?;
    let share = home.find_share(share)?;
    let mut db = open_replica(home, &share, &key)?;
    match op {
        DbOp::Put { key: k, json: text } => {
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| Failure::usage(&format!("the document is not JSON: {e}")))?;
            let cbor = clearskies_proto::wire::codec::encode(&value);
            db.replica
                .put(wall_micros(), &k, Bytes::from(cbor))
                .map_err(|e| Failure::usage(&e.to_string()))?;
            db.settle()?;
        }
        DbOp::Get { key: k, json } => {
            let entry = db
                .replica
                .entry(&k)
                .filter(|e| json || !e.winner().is_tombstone());
            let Some(entry) = entry else {
                return Err(Failure::not_found(&format!("no document under {k:?}")));
            };
            if json {
                let siblings: Vec<Value> = entry.siblings().map(sibling_json).collect();
                println!(
                    "{}",
                    json!({"key": k, "conflict": entry.is_conflict(), "siblings": siblings})
                );
                if entry.winner().is_tombstone() && !entry.is_conflict() {
                    return Err(Failure::not_found(&format!("{k:?} was deleted")));
                }
            } else {
                let value = entry
                    .winner()
                    .value
                    .as_deref()
                    .map(to_json)
                    .unwrap_or(Value::Null);
                println!("{value}");
            }
        }
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
            let live: Vec<(String, Value, bool)> = db
                .replica
                .range(&prefix)
                .filter_map(|(k, e)| {
                    e.winner()
                        .value
                        .as_deref()
                        .map(|v| (k.clone(), to_json(v), e.is_conflict()))
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
        DbOp::Watch { .. } => unreachable!("handled above"),
    }
    Ok(())
}
