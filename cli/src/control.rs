//! The control socket: while `run` holds a home, the other commands (`status`, `db`, `share`,
//! `invite`, `join`, `remove-member`) talk to it through `HOME/control.sock` instead of
//! opening the home's databases themselves.
//!
//! The protocol is local and private to this tool: frames of a 4-byte big-endian length and a
//! CBOR body, one [`Request`] from the client, then one [`Response`] (a stream of
//! [`Response::Change`] for `Watch`, until the client hangs up). The socket is created with
//! mode 0600 inside the home (itself 0700): only the home's owner can use it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clearskies_proto::db::{Record, ShareId};
use clearskies_proto::files::{FileKind, FileMeta};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::wire::codec;
use clearskies_tokio::folder::FolderHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Failure;
use crate::daemon::Device;
use crate::home::Home;

/// The socket's name inside the home.
pub const SOCKET: &str = "control.sock";
/// The largest frame either side accepts.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What a command asks of the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Shares, peers, progress.
    Status,
    /// A key's versions.
    Get { share: Option<PathBuf>, key: String },
    /// Keys with a prefix and their versions.
    List {
        share: Option<PathBuf>,
        prefix: String,
    },
    /// A write (`None`: delete).
    Put {
        share: Option<PathBuf>,
        key: String,
        value: Option<Vec<u8>>,
    },
    /// Every change under a prefix, until the client hangs up.
    Watch {
        share: Option<PathBuf>,
        prefix: String,
    },
    /// A share was created or joined in this home: open it.
    OpenShare { path: PathBuf },
    /// A new access code for a share.
    Invite {
        path: PathBuf,
        read_only: bool,
        uses: u32,
        ttl_secs: u64,
    },
    /// A member was removed from a share's configuration: apply it now.
    RemoveMember { path: PathBuf, device: String },
    /// A share's paths under a prefix with their state here.
    Ls { share: PathBuf, path: String },
    /// Bytes `start ..= end` of a file: `Data` frames, then `Done`.
    Cat {
        share: PathBuf,
        path: String,
        start: u64,
        end: u64,
    },
    /// Pin (or unpin) a path of a shallow replica.
    Pin {
        share: PathBuf,
        path: String,
        pin: bool,
    },
    /// `sync --once` while the daemon runs: check in with every peer (and `peers`), answer
    /// `Done` once all agree.
    CheckIn {
        peers: Vec<String>,
        timeout_secs: u64,
    },
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// Done.
    Done,
    /// It failed; the message says what to do, `code` is the exit code.
    Failed { message: String, code: u8 },
    /// Every version of a key, winner first (`None`: never written).
    Entry(Option<Vec<Record>>),
    /// Keys and their versions.
    Entries(Vec<(String, Vec<Record>)>),
    /// The status document (JSON text).
    Status(String),
    /// A key changed; its versions now.
    Change { key: String, siblings: Vec<Record> },
    /// An access code.
    Code(String),
    /// `ls` rows: path, kind, size, state, cached chunks, chunks.
    Listing(Vec<(String, String, u64, String, u64, u64)>),
    /// Some bytes of a `cat`.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
}

fn write_frame(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let body = codec::encode(value);
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<T, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(format!("a control frame of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    codec::decode(&body).map_err(|e| e.to_string())
}

/// A connection to the daemon that holds a home.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the daemon of `home`, if one is running.
    pub fn connect(home: &Home) -> Option<Client> {
        UnixStream::connect(home.root.join(SOCKET))
            .ok()
            .map(|stream| Client { stream })
    }

    /// Sends `request` and reads the first answer.
    pub fn call(&mut self, request: &Request) -> Result<Response, Failure> {
        write_frame(&mut self.stream, request).map_err(|e| lost(&e.to_string()))?;
        self.next()
    }

    /// The next answer (for `Watch`).
    pub fn next(&mut self) -> Result<Response, Failure> {
        match read_frame(&mut self.stream).map_err(|e| lost(&e))? {
            Response::Failed { message, code } => Err(Failure { message, code }),
            other => Ok(other),
        }
    }
}

fn lost(detail: &str) -> Failure {
    Failure::not_found(&format!(
        "lost the connection to the running daemon ({detail}); is it still running?"
    ))
}

fn failed(f: Failure) -> Response {
    Response::Failed {
        message: f.message,
        code: f.code,
    }
}

/// Serves the control socket of `device` until the process ends.
pub async fn serve(device: Arc<Device>) -> Result<(), Failure> {
    let path = device.home.root.join(SOCKET);
    if UnixStream::connect(&path).is_ok() {
        return Err(Failure::usage(&format!(
            "another daemon is running with the home {}: stop it first",
            device.home.root.display()
        )));
    }
    // A socket left by a daemon that was killed.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| Failure::io(&path, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(device.clone(), stream));
        }
    });
    Ok(())
}

/// Removes the socket (the daemon is stopping).
pub fn remove(home: &Path) {
    let _ = std::fs::remove_file(home.join(SOCKET));
}

async fn read_request(stream: &mut tokio::net::UnixStream) -> Option<Request> {
    let len = stream.read_u32().await.ok()? as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.ok()?;
    codec::decode(&body).ok()
}

async fn send(stream: &mut tokio::net::UnixStream, response: &Response) -> bool {
    let body = codec::encode(response);
    stream.write_u32(body.len() as u32).await.is_ok() && stream.write_all(&body).await.is_ok()
}

async fn connection(device: Arc<Device>, mut stream: tokio::net::UnixStream) {
    // Requests one after the other until the client hangs up (or turns it into a watch).
    while let Some(request) = read_request(&mut stream).await {
        if let Request::Watch { share, prefix } = request {
            return watch(&device, stream, share, prefix).await;
        }
        if let Request::Cat {
            share,
            path,
            start,
            end,
        } = request
        {
            if let Err(f) = cat(&device, &mut stream, &share, &path, start, end).await {
                send(&mut stream, &failed(f)).await;
            }
            continue;
        }
        let response = answer(&device, request).await.unwrap_or_else(failed);
        if !send(&mut stream, &response).await {
            return;
        }
    }
}

async fn watch(
    device: &Device,
    mut stream: tokio::net::UnixStream,
    share: Option<PathBuf>,
    prefix: String,
) {
    {
        let share = match share_id(device, share.as_deref()) {
            Ok(s) => s,
            Err(f) => {
                send(&mut stream, &failed(f)).await;
                return;
            }
        };
        let mut keys = match device.node.watch(share, &prefix).await {
            Ok(w) => w,
            Err(e) => {
                send(&mut stream, &failed(Failure::not_found(&e.to_string()))).await;
                return;
            }
        };
        send(&mut stream, &Response::Done).await;
        while let Some(key) = keys.next().await {
            let siblings = versions(device, share, &key).await.unwrap_or_default();
            if !send(&mut stream, &Response::Change { key, siblings }).await {
                return;
            }
        }
    }
}

fn share_id(device: &Device, path: Option<&Path>) -> Result<ShareId, Failure> {
    device.home.find_share(path)?.share_id()
}

async fn versions(device: &Device, share: ShareId, key: &str) -> Option<Vec<Record>> {
    let entry = device.node.get(share, key).await.ok()??;
    Some(entry.siblings().cloned().collect())
}

async fn answer(device: &Device, request: Request) -> Result<Response, Failure> {
    let stopped = |e: clearskies_tokio::node::NodeError| Failure::not_found(&e.to_string());
    Ok(match request {
        Request::Status => Response::Status(status(device).to_string()),
        Request::CheckIn {
            peers,
            timeout_secs,
        } => {
            device
                .check_in(&peers, std::time::Duration::from_secs(timeout_secs))
                .await?;
            Response::Done
        }
        Request::Get { share, key } => {
            let share = share_id(device, share.as_deref())?;
            Response::Entry(versions(device, share, &key).await)
        }
        Request::List { share, prefix } => {
            let share = share_id(device, share.as_deref())?;
            let list = device.node.list(share, &prefix).await.map_err(stopped)?;
            Response::Entries(
                list.into_iter()
                    .map(|(k, e)| (k, e.siblings().cloned().collect()))
                    .collect(),
            )
        }
        Request::Put { share, key, value } => {
            let share = share_id(device, share.as_deref())?;
            let result = match value {
                Some(v) => device.node.put(share, &key, v.into()).await,
                None => device.node.delete(share, &key).await,
            };
            result.map_err(|e| Failure::usage(&e.to_string()))?;
            Response::Done
        }
        Request::Watch { .. } | Request::Cat { .. } => Response::Done,
        Request::Ls { share, path } => {
            let folder = folder_of(device, &share)?;
            let rows = folder
                .list(&path)
                .await
                .into_iter()
                .map(|l| {
                    let kind = match l.kind {
                        FileKind::File => "file",
                        FileKind::Dir => "dir",
                        FileKind::Symlink => "symlink",
                    };
                    (
                        l.path,
                        kind.to_owned(),
                        l.size,
                        l.state.to_owned(),
                        l.cached.0 as u64,
                        l.cached.1 as u64,
                    )
                })
                .collect();
            Response::Listing(rows)
        }
        Request::Pin { share, path, pin } => {
            let mut file = device.home.find_share(Some(&share))?;
            file.pinned.retain(|p| *p != path);
            if pin {
                file.pinned.push(path.clone());
            }
            device.home.save_share(&file)?;
            folder_of(device, &share)?.pin(&path, pin).await;
            Response::Done
        }
        Request::OpenShare { path } => {
            let share = device.home.find_share(Some(&path))?;
            device.open_new_share(&share).await?;
            Response::Done
        }
        Request::Invite {
            path,
            read_only,
            uses,
            ttl_secs,
        } => {
            let share = device.home.find_share(Some(&path))?;
            let mut invitations = device.invitations.lock().unwrap_or_else(|p| p.into_inner());
            let code = crate::new_code(
                &mut invitations,
                &share,
                read_only,
                uses,
                std::time::Duration::from_secs(ttl_secs),
            )?;
            device.home.save_invitations(&invitations)?;
            Response::Code(code)
        }
        Request::RemoveMember { path, device: id } => {
            let share = device.home.find_share(Some(&path))?;
            let removed = DeviceId::parse(&id).map_err(|e| Failure::usage(&e.to_string()))?;
            let still = device
                .home
                .shares()?
                .iter()
                .any(|s| s.members().is_ok_and(|m| m.contains_key(&removed)));
            if !still && let Ok(mut m) = device.members.write() {
                m.remove(&removed);
            }
            // A signed membership record: every device of the share refuses it from now on.
            device
                .node
                .set_membership(share.share_id()?, removed, None)
                .await
                .map_err(|e| Failure::usage(&e.to_string()))?;
            Response::Done
        }
    })
}

fn folder_of(device: &Device, share: &Path) -> Result<FolderHandle, Failure> {
    let share = device.home.find_share(Some(share))?;
    device
        .folder_handles()
        .into_iter()
        .find(|(p, _)| *p == share.path)
        .map(|(_, f)| f)
        .ok_or_else(|| Failure::not_found("the share is not open in the daemon"))
}

/// Streams bytes `start ..= end` of `path` as `Data` frames, then `Done`.
async fn cat(
    device: &Device,
    stream: &mut tokio::net::UnixStream,
    share: &Path,
    path: &str,
    start: u64,
    end: u64,
) -> Result<(), Failure> {
    let folder = folder_of(device, share)?;
    let id = device.home.find_share(Some(share))?.share_id()?;
    let entry = device
        .node
        .get(id, &clearskies_proto::files::key_of(path))
        .await
        .map_err(|e| Failure::not_found(&e.to_string()))?;
    let meta = entry
        .and_then(|e| e.winner().value.clone())
        .ok_or_else(|| Failure::not_found(&format!("no file {path:?} in the share")))?;
    let meta = FileMeta::decode(&meta).map_err(|e| Failure::corrupt(path, &e.to_string()))?;
    if meta.kind != FileKind::File {
        return Err(Failure::usage(&format!("{path:?} is not a file")));
    }
    let mut reader = folder.read_range(&meta, start, end);
    while let Some(bytes) = reader.next().await {
        let bytes = bytes.map_err(|e| Failure::not_found(&format!("{path}: {e}")))?;
        if !send(stream, &Response::Data(bytes.to_vec())).await {
            return Ok(());
        }
    }
    send(stream, &Response::Done).await;
    Ok(())
}

/// The status document: this device, its shares with their folders' progress, its peers.
pub fn status(device: &Device) -> Value {
    let folders = device.folder_handles();
    let connected = device
        .connected
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let seen = device.peers.lock().map(|p| p.clone()).unwrap_or_default();
    let shares: Vec<Value> = device
        .home
        .shares()
        .unwrap_or_default()
        .iter()
        .map(|share| {
            let folder = folders
                .iter()
                .find(|(p, _)| *p == share.path)
                .map(|(_, f)| f.status());
            let members = share.members().unwrap_or_default();
            let peers: Vec<Value> = members
                .keys()
                .filter(|d| **d != device.key.device_id())
                .map(|d| {
                    let (name, addr) = seen.get(d).cloned().unwrap_or_default();
                    json!({
                        "device": d.to_string(),
                        "name": name,
                        "connected": connected.contains(d),
                        "address": addr.map(|a| a.to_string()),
                    })
                })
                .collect();
            let state = match &folder {
                None => "not open",
                Some(f) if f.error.is_some() => "error",
                Some(f) if !f.scanned => "scanning",
                Some(f) if f.pending_files > 0 => "syncing",
                Some(_) => "idle",
            };
            json!({
                "path": share.path,
                "id": share.id,
                "state": state,
                "error": folder.as_ref().and_then(|f| f.error.clone()),
                "files_needed": folder.as_ref().map_or(0, |f| f.pending_files),
                "bytes_needed": folder.as_ref().map_or(0, |f| f.pending_bytes),
                "stalled_chunks": folder.as_ref().map_or(0, |f| f.stalled_chunks),
                "peers": peers,
            })
        })
        .collect();
    json!({
        "device": device.key.device_id().to_string(),
        "name": device.home.device_name(),
        "daemon": true,
        "shares": shares,
    })
}
