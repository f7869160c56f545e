//! The home directory: everything the tool stores for a device.
//!
//! ```text
//! HOME/device.key                   the Ed25519 secret (32 bytes, mode 0600)
//! HOME/device.json                  {"name": ...}
//! HOME/shares/<share-id-hex>/share.json        folder path, members
//! HOME/shares/<share-id-hex>/replica.redb      the replicated database (clearskies-store)
//! HOME/invitations.cbor                       access codes handed out (proto's registry)
//! HOME/config.json                  optional settings of `run` and `sync --once` ([`Config`])
//! HOME/peers.json                   addresses where peers were reached (`peers.rs`)
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member, ShareId};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::pair::Invitations;
use serde::{Deserialize, Serialize};

use crate::Failure;
use crate::peers::PeerBook;

/// `HOME/config.json`, written by the user; every field may be left out.
///
/// ```json
/// {"peers": ["192.0.2.7:27184", "nas.local:27184"], "listen": "[::]:27184",
///  "transport": "quic", "discovery": true, "discovery_port": 27183}
/// ```
///
/// `peers` are dialled like `--peer` (which adds to them); `listen` and `transport` apply when
/// `--listen` / `--transport` are not given; `discovery: false` turns LAN discovery off;
/// `discovery_port` is the UDP port of LAN discovery (27183, `spec/discovery.md` § 9).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub peers: Vec<String>,
    pub listen: Option<String>,
    pub transport: Option<String>,
    pub discovery: Option<bool>,
    pub discovery_port: Option<u16>,
}

const CONFIG_SHAPE: &str = r#"{"peers": ["HOST:PORT", ...], "listen": "HOST:PORT", "transport": "quic" or "tcp", "discovery": true or false, "discovery_port": PORT}, every field optional"#;

/// A device's home directory.
pub struct Home {
    pub root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct DeviceFile {
    name: String,
}

/// A share as recorded in the home.
#[derive(Serialize, Deserialize, Clone)]
pub struct ShareFile {
    /// The share ID, hex.
    pub id: String,
    /// The folder, absolute.
    pub path: PathBuf,
    /// Members: public key (hex) and access.
    pub members: Vec<MemberFile>,
    /// A shallow replica (joined with `--shallow`): every record, content on demand.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shallow: bool,
    /// A shallow replica's pinned paths, kept fully local.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<String>,
    /// A shallow replica's cache limit in bytes (default 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct MemberFile {
    pub public_key: String,
    pub access: String,
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::ReadWrite => "read-write",
        Access::ReadOnly => "read-only",
    }
}

impl ShareFile {
    pub fn share_id(&self) -> Result<ShareId, Failure> {
        let bytes =
            hex::decode(&self.id).map_err(|_| Failure::corrupt(&self.id, "share id is not hex"))?;
        bytes
            .try_into()
            .map_err(|_| Failure::corrupt(&self.id, "share id is not 32 bytes"))
    }

    pub fn members(&self) -> Result<std::collections::BTreeMap<DeviceId, Member>, Failure> {
        let mut out = std::collections::BTreeMap::new();
        for m in &self.members {
            let key: [u8; 32] = hex::decode(&m.public_key)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Failure::corrupt(&self.id, "a member key is malformed"))?;
            let access = if m.access == "read-only" {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            out.insert(
                DeviceId::from_public_key(&key),
                Member {
                    public_key: key,
                    access,
                },
            );
        }
        Ok(out)
    }
}

impl Home {
    /// The home from `--home`, `CLEARSKIES_HOME` (both handled by the argument parser) or the
    /// platform data directory.
    pub fn locate(explicit: Option<PathBuf>) -> Result<Home, Failure> {
        let root = match explicit {
            Some(p) => p,
            None => {
                let base = std::env::var_os("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))
                    })
                    .ok_or_else(|| {
                        Failure::usage("no home directory: pass --home DIR or set CLEARSKIES_HOME")
                    })?;
                base.join("clearskies")
            }
        };
        Ok(Home { root })
    }

    fn key_path(&self) -> PathBuf {
        self.root.join("device.key")
    }

    /// Creates the device identity if there is none; returns the device's key.
    pub fn init(&self, name: Option<&str>) -> Result<DeviceKey, Failure> {
        if let Ok(key) = self.key() {
            if let Some(name) = name {
                self.write_json(
                    &self.root.join("device.json"),
                    &DeviceFile {
                        name: name.to_owned(),
                    },
                )?;
            }
            return Ok(key);
        }
        fs::create_dir_all(&self.root).map_err(|e| Failure::io(&self.root, e))?;
        restrict_dir(&self.root);
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| Failure::usage(&format!("no random source: {e}")))?;
        let path = self.key_path();
        let mut file = create_private(&path)?;
        file.write_all(&secret)
            .and_then(|()| file.sync_all())
            .map_err(|e| Failure::io(&path, e))?;
        let default_name = std::env::var("HOSTNAME").unwrap_or_else(|_| "device".to_owned());
        let name = name.map(str::to_owned).unwrap_or(default_name);
        self.write_json(&self.root.join("device.json"), &DeviceFile { name })?;
        Ok(DeviceKey::from_secret(&secret))
    }

    /// The device's key; an error that says to run `init` if there is none.
    pub fn key(&self) -> Result<DeviceKey, Failure> {
        let path = self.key_path();
        let bytes = fs::read(&path).map_err(|_| {
            Failure::usage(&format!(
                "this device has no identity in {} yet: run `clearskies --home {} init`",
                self.root.display(),
                self.root.display()
            ))
        })?;
        let secret: [u8; 32] = bytes.try_into().map_err(|_| {
            Failure::corrupt(&path.display().to_string(), "device.key is not 32 bytes")
        })?;
        Ok(DeviceKey::from_secret(&secret))
    }

    fn shares_dir(&self) -> PathBuf {
        self.root.join("shares")
    }

    pub fn share_dir(&self, share: &ShareFile) -> PathBuf {
        self.shares_dir().join(&share.id)
    }

    /// Every share, in ID order.
    pub fn shares(&self) -> Result<Vec<ShareFile>, Failure> {
        let dir = self.shares_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Failure::io(&dir, e))?;
            let path = entry.path().join("share.json");
            if let Ok(text) = fs::read_to_string(&path) {
                out.push(
                    serde_json::from_str(&text).map_err(|e| {
                        Failure::corrupt(&path.display().to_string(), &e.to_string())
                    })?,
                );
            }
        }
        out.sort_by(|a: &ShareFile, b: &ShareFile| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The share for `path`, or the only share when `path` is `None`.
    pub fn find_share(&self, path: Option<&Path>) -> Result<ShareFile, Failure> {
        let shares = self.shares()?;
        match path {
            Some(p) => {
                let p = fs::canonicalize(p).map_err(|e| Failure::io(p, e))?;
                shares.into_iter().find(|s| s.path == p).ok_or_else(|| {
                    Failure::usage(&format!(
                        "{} is not a share on this device: run `clearskies share {}` first",
                        p.display(),
                        p.display()
                    ))
                })
            }
            None => match shares.len() {
                1 => Ok(shares.into_iter().next().expect("one share")),
                0 => Err(Failure::usage(
                    "this device has no share yet: run `clearskies share PATH`",
                )),
                n => Err(Failure::usage(&format!(
                    "this device has {n} shares: say which with --share PATH"
                ))),
            },
        }
    }

    /// Creates a share of `path` (or returns the existing one).
    pub fn create_share(&self, path: &Path, key: &DeviceKey) -> Result<(ShareFile, bool), Failure> {
        let meta = fs::metadata(path).map_err(|e| Failure::io(path, e))?;
        if !meta.is_dir() {
            return Err(Failure::usage(&format!(
                "{} is not a folder",
                path.display()
            )));
        }
        let path = fs::canonicalize(path).map_err(|e| Failure::io(path, e))?;
        if let Some(existing) = self.shares()?.into_iter().find(|s| s.path == path) {
            return Ok((existing, false));
        }
        let mut id = [0u8; 32];
        getrandom::getrandom(&mut id)
            .map_err(|e| Failure::usage(&format!("no random source: {e}")))?;
        let share = ShareFile {
            id: hex::encode(id),
            path,
            members: vec![MemberFile {
                public_key: hex::encode(key.public_key()),
                access: access_name(Access::ReadWrite).into(),
            }],
            shallow: false,
            pinned: Vec::new(),
            cache_size: None,
        };
        let dir = self.share_dir(&share);
        fs::create_dir_all(&dir).map_err(|e| Failure::io(&dir, e))?;
        self.write_json(&dir.join("share.json"), &share)?;
        Ok((share, true))
    }

    /// The access codes this device handed out (all shares), as proto's registry.
    pub fn load_invitations(&self) -> Result<Invitations, Failure> {
        let path = self.root.join("invitations.cbor");
        match fs::read(&path) {
            Ok(bytes) => Invitations::decode(&bytes)
                .map_err(|e| Failure::corrupt(&path.display().to_string(), &e.to_string())),
            Err(_) => Ok(Invitations::new()),
        }
    }

    /// Saves the registry atomically.
    pub fn save_invitations(&self, invitations: &Invitations) -> Result<(), Failure> {
        self.write_bytes(&self.root.join("invitations.cbor"), &invitations.encode())
    }

    /// The user's settings: `HOME/config.json`, or the defaults when there is none.
    pub fn config(&self) -> Result<Config, Failure> {
        let path = self.root.join("config.json");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(Failure::io(&path, e)),
        };
        let config: Config = serde_json::from_str(&text).map_err(|e| {
            Failure::usage(&format!(
                "{} is not a valid configuration: {e}; expected {CONFIG_SHAPE}",
                path.display()
            ))
        })?;
        if let Some(t) = &config.transport
            && t != "quic"
            && t != "tcp"
        {
            return Err(Failure::usage(&format!(
                "{}: transport {t:?}: expected \"quic\" or \"tcp\" (leave it out to use both)",
                path.display()
            )));
        }
        if config.discovery_port == Some(0) {
            return Err(Failure::usage(&format!(
                "{}: discovery_port must not be 0",
                path.display()
            )));
        }
        Ok(config)
    }

    /// Where peers were reached (`HOME/peers.json`); an unreadable file is reported and
    /// treated as empty (the tool rebuilds it).
    pub fn load_peers(&self) -> PeerBook {
        let path = self.root.join("peers.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                eprintln!(
                    "{} is unreadable ({e}): starting with no remembered peers",
                    path.display()
                );
                PeerBook::default()
            }),
            Err(_) => PeerBook::default(),
        }
    }

    /// Saves the remembered peers atomically.
    pub fn save_peers(&self, book: &PeerBook) -> Result<(), Failure> {
        self.write_json(&self.root.join("peers.json"), book)
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        fs::read_to_string(self.root.join("device.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<DeviceFile>(&t).ok())
            .map_or_else(|| "device".to_owned(), |d| d.name)
    }

    /// Records a share (a joined one).
    pub fn save_share(&self, share: &ShareFile) -> Result<(), Failure> {
        let dir = self.share_dir(share);
        fs::create_dir_all(&dir).map_err(|e| Failure::io(&dir, e))?;
        self.write_json(&dir.join("share.json"), share)
    }

    /// Removes a member from a share; an error if it is not one.
    pub fn remove_member(&self, share: &ShareFile, device: &DeviceId) -> Result<(), Failure> {
        let mut share = share.clone();
        let before = share.members.len();
        share.members.retain(|m| {
            hex::decode(&m.public_key)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .is_none_or(|k| DeviceId::from_public_key(&k) != *device)
        });
        if share.members.len() == before {
            return Err(Failure::not_found(&format!(
                "{device} is not a member of this share"
            )));
        }
        self.save_share(&share)
    }

    /// Adds a member to a share; returns the share's member list afterwards.
    pub fn add_member(
        &self,
        share_id: &ShareId,
        public_key: [u8; 32],
        access: Access,
    ) -> Result<Vec<Member>, Failure> {
        let id = hex::encode(share_id);
        let mut share = self
            .shares()?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Failure::usage(&format!("no share {id} on this device")))?;
        let key = hex::encode(public_key);
        share.members.retain(|m| m.public_key != key);
        share.members.push(MemberFile {
            public_key: key,
            access: access_name(access).into(),
        });
        self.save_share(&share)?;
        Ok(share.members()?.into_values().collect())
    }

    /// Writes JSON atomically.
    fn write_json<T: Serialize + ?Sized>(&self, path: &Path, value: &T) -> Result<(), Failure> {
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| Failure::corrupt(&path.display().to_string(), &e.to_string()))?;
        self.write_bytes(path, &text)
    }

    /// Writes a file atomically: temp file, fsync, rename.
    fn write_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), Failure> {
        // A temp name of its own per write: two writers of one file (a daemon's tasks, a
        // command beside the daemon) never rename each other's temp file away.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let mut file = create_private(&tmp)?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Failure::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Failure::io(path, e))
    }
}

fn create_private(path: &Path) -> Result<fs::File, Failure> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| Failure::io(path, e))
}

fn restrict_dir(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Best effort: a home on a filesystem without modes still works.
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    }
}
