//! A whole device on any runtime: proto's [`Node`] bound to byte streams, a timer and the
//! store.
//!
//! One owner task runs the node. Each connection has a reader task (bytes → owner) and a
//! writer task (frames ← owner, through a channel of [`WRITE_QUEUE`] frames): the owner pulls a
//! frame from the node only when the writer has room, so proto's scheduling (control before
//! bulk) holds all the way to the socket. Each share's store runs on its own blocking thread,
//! applying batches in order. The application talks to the owner through a [`NodeHandle`].

use std::collections::BTreeMap;

use bytes::Bytes;
use clearskies_proto::db::{self, Dot, Entry, Member, ShareId, VersionVector};
use clearskies_proto::files::Hash;
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::{ConnId, Event, Node, Origin, Output};
use clearskies_store::{ReplicaStore, StoreError};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::{BoxFuture, MonotonicClock, Runtime, unix_micros};

/// Frames queued per connection between the owner and the writer task.
pub const WRITE_QUEUE: usize = 8;
/// Bytes per read from a socket.
const READ_CHUNK: usize = 64 * 1024;
/// Inputs the owner handles per wake-up before re-checking timers and writers.
const INPUTS_PER_WAKE: usize = 64;

/// How long a shutdown waits for the sessions' last frames (their CLOSE) to leave.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A byte stream the driver can run a session on (a TLS stream, a TCP stream in tests), as
/// `futures-io` sees it.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A byte stream of some I/O trait family that the node can take: `futures-io` streams
/// ([`FuturesIo`]) and, with the `tokio-io` feature, tokio streams ([`TokioIo`]). The marker
/// `Family` only lets both blanket implementations exist; callers never name it.
pub trait IntoStream<Family>: Send + 'static {
    /// The stream as the node runs it.
    fn into_stream(self) -> Box<dyn Stream>;
}

/// The [`IntoStream`] family of `futures-io` streams.
#[derive(Debug)]
pub enum FuturesIo {}

impl<T: Stream> IntoStream<FuturesIo> for T {
    fn into_stream(self) -> Box<dyn Stream> {
        Box::new(self)
    }
}

/// The [`IntoStream`] family of tokio streams, adapted with `tokio-util`'s `compat`.
#[cfg(feature = "tokio-io")]
#[derive(Debug)]
pub enum TokioIo {}

#[cfg(feature = "tokio-io")]
impl<T> IntoStream<TokioIo> for T
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    fn into_stream(self) -> Box<dyn Stream> {
        Box::new(tokio_util::compat::TokioAsyncReadCompatExt::compat(self))
    }
}

/// Why a request to the node failed.
#[derive(Debug)]
pub enum NodeError {
    /// The node's task has stopped.
    Stopped,
    /// The node refused the request.
    Refused(clearskies_proto::Error),
    /// The store failed; nothing was acknowledged.
    Store(String),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Stopped => write!(f, "the node has stopped"),
            NodeError::Refused(e) => write!(f, "{e}"),
            NodeError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NodeError {}

enum Input {
    Connection {
        peer: DeviceId,
        origin: Origin,
        stream: Box<dyn Stream>,
    },
    Bytes(ConnId, Bytes),
    Closed(ConnId),
    Writable,
    Persisted(ShareId, u64, Result<(), String>),
    OpenShare {
        share: ShareId,
        members: BTreeMap<DeviceId, Member>,
        store: ReplicaStore,
        state: db::ReplicaState,
        reply: oneshot::Sender<()>,
    },
    Put {
        share: ShareId,
        key: String,
        value: Option<Bytes>,
        /// `Some`: supersede exactly this version (see `Node::write_after`).
        context: Option<VersionVector>,
        reply: oneshot::Sender<Result<Dot, NodeError>>,
    },
    AttachFolder {
        share: ShareId,
        link: FolderLink,
    },
    WantChunks {
        share: ShareId,
        chunks: Vec<(Hash, u32)>,
    },
    CancelChunks {
        share: ShareId,
        chunks: Vec<Hash>,
    },
    ChunkRead(ConnId, u32, Option<Vec<u8>>),
    FolderPending(ShareId, u64, u64),
    FolderComplete {
        share: ShareId,
        reply: oneshot::Sender<bool>,
    },
    Connected {
        peer: DeviceId,
        reply: oneshot::Sender<bool>,
    },
    SetMembership {
        share: ShareId,
        device: DeviceId,
        member: Option<Member>,
        reply: oneshot::Sender<Result<Dot, NodeError>>,
    },
    Members {
        share: ShareId,
        reply: oneshot::Sender<BTreeMap<DeviceId, Member>>,
    },
    Watch {
        share: ShareId,
        prefix: String,
        keys: mpsc::UnboundedSender<String>,
    },
    RemoveMember {
        share: ShareId,
        device: DeviceId,
        code: clearskies_proto::wire::CloseCode,
        reason: String,
    },
    Synced {
        peer: DeviceId,
        reply: oneshot::Sender<bool>,
    },
    AddMember {
        share: ShareId,
        member: Member,
    },
    Get {
        share: ShareId,
        key: String,
        reply: oneshot::Sender<Option<Entry>>,
    },
    GetMany {
        share: ShareId,
        keys: Vec<String>,
        reply: oneshot::Sender<Vec<Option<Entry>>>,
    },
    List {
        share: ShareId,
        prefix: String,
        reply: oneshot::Sender<Vec<(String, Entry)>>,
    },
    /// Answered once the sessions are closed and the stores released.
    Shutdown(oneshot::Sender<()>),
}

/// The application's side of a running node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    inputs: mpsc::Sender<Input>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

impl NodeHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(make(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)
    }

    /// Hands the node an authenticated connection to `peer` (TLS verified the peer's key).
    /// Prefer [`add_connection_from`](NodeHandle::add_connection_from) where it is known who
    /// dialled.
    pub async fn add_connection<Family>(
        &self,
        peer: DeviceId,
        stream: impl IntoStream<Family>,
    ) -> Result<(), NodeError> {
        self.add_connection_from(peer, Origin::Unknown, stream)
            .await
    }

    /// [`add_connection`](NodeHandle::add_connection), saying which side dialled, so that a
    /// simultaneous open (both devices dialling each other, or discovery and a configured
    /// address at once) leaves both devices with the same session.
    pub async fn add_connection_from<Family>(
        &self,
        peer: DeviceId,
        origin: Origin,
        stream: impl IntoStream<Family>,
    ) -> Result<(), NodeError> {
        self.inputs
            .send(Input::Connection {
                peer,
                origin,
                stream: stream.into_stream(),
            })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Opens a share's replica from its store, as [`ReplicaStore::open`] returned it.
    pub async fn open_share(
        &self,
        share: ShareId,
        members: BTreeMap<DeviceId, Member>,
        (store, state): (ReplicaStore, db::ReplicaState),
    ) -> Result<(), NodeError> {
        self.ask(|reply| Input::OpenShare {
            share,
            members,
            store,
            state,
            reply,
        })
        .await
    }

    /// Writes a document (CBOR); returns once it is durable.
    pub async fn put(&self, share: ShareId, key: &str, value: Bytes) -> Result<Dot, NodeError> {
        let key = key.to_owned();
        self.ask(|reply| Input::Put {
            share,
            key,
            value: Some(value),
            context: None,
            reply,
        })
        .await?
    }

    /// Writes `value` (a tombstone for `None`) superseding exactly `context`; returns once
    /// durable. See `Node::write_after`.
    pub async fn write_after(
        &self,
        share: ShareId,
        key: &str,
        value: Option<Bytes>,
        context: VersionVector,
    ) -> Result<Dot, NodeError> {
        let key = key.to_owned();
        self.ask(|reply| Input::Put {
            share,
            key,
            value,
            context: Some(context),
            reply,
        })
        .await?
    }

    /// Routes `share`'s chunk reads to `link.reads` and its database and chunk events to
    /// `link.events` (see the `folder` module).
    pub async fn attach_folder(&self, share: ShareId, link: FolderLink) -> Result<(), NodeError> {
        self.inputs
            .send(Input::AttachFolder { share, link })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Fetches chunks (hash, length) of `share` from peers; they arrive as `Event::Chunk` on
    /// the attached folder's link.
    pub async fn want_chunks(
        &self,
        share: ShareId,
        chunks: Vec<(Hash, u32)>,
    ) -> Result<(), NodeError> {
        self.inputs
            .send(Input::WantChunks { share, chunks })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Says how many paths of `share` this device's disk still lacks (peers wait for 0
    /// before they count this device as in sync).
    pub async fn set_folder_pending(
        &self,
        share: ShareId,
        pending: u64,
        seen: u64,
    ) -> Result<(), NodeError> {
        self.inputs
            .send(Input::FolderPending(share, pending, seen))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Whether the folder of `share` holds everything its database says, counting changes
    /// the node has handed to the folder and it has not processed yet.
    pub async fn folder_complete(&self, share: ShareId) -> Result<bool, NodeError> {
        self.ask(|reply| Input::FolderComplete { share, reply })
            .await
    }

    /// No longer wants these chunks.
    pub async fn cancel_chunks(&self, share: ShareId, chunks: Vec<Hash>) -> Result<(), NodeError> {
        self.inputs
            .send(Input::CancelChunks { share, chunks })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Deletes a key; returns once the deletion is durable.
    pub async fn delete(&self, share: ShareId, key: &str) -> Result<Dot, NodeError> {
        let key = key.to_owned();
        self.ask(|reply| Input::Put {
            share,
            key,
            value: None,
            context: None,
            reply,
        })
        .await?
    }

    /// Whether a session with `peer` is established and in use.
    pub async fn is_connected(&self, peer: DeviceId) -> Result<bool, NodeError> {
        self.ask(|reply| Input::Connected { peer, reply }).await
    }

    /// Whether this device and `peer` agree on every share they have in common.
    pub async fn synced_with(&self, peer: DeviceId) -> Result<bool, NodeError> {
        self.ask(|reply| Input::Synced { peer, reply }).await
    }

    /// Adds a member to a share (a device that just paired).
    pub async fn add_member(&self, share: ShareId, member: Member) -> Result<(), NodeError> {
        self.inputs
            .send(Input::AddMember { share, member })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Removes `device` from `share`; if it is a member of no other share, its connection is
    /// closed with `code` and `reason`.
    pub async fn remove_member(
        &self,
        share: ShareId,
        device: DeviceId,
        code: clearskies_proto::wire::CloseCode,
        reason: &str,
    ) -> Result<(), NodeError> {
        self.inputs
            .send(Input::RemoveMember {
                share,
                device,
                code,
                reason: reason.to_owned(),
            })
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Writes `device`'s membership of `share` as a signed, replicated record (`None`:
    /// removed); returns once durable. See `Node::set_membership`.
    pub async fn set_membership(
        &self,
        share: ShareId,
        device: DeviceId,
        member: Option<Member>,
    ) -> Result<Dot, NodeError> {
        self.ask(|reply| Input::SetMembership {
            share,
            device,
            member,
            reply,
        })
        .await?
    }

    /// Every change of a key of `share` starting with `prefix`, from now on, as a stream of
    /// keys (read their new state with [`get`](NodeHandle::get)). Ends when the node stops.
    pub async fn watch(&self, share: ShareId, prefix: &str) -> Result<Watch, NodeError> {
        let (keys, rx) = mpsc::unbounded_channel();
        self.inputs
            .send(Input::Watch {
                share,
                prefix: prefix.to_owned(),
                keys,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(Watch { keys: rx })
    }

    /// The members of `share` as its replica knows them (configuration and replicated
    /// membership records).
    pub async fn members(&self, share: ShareId) -> Result<BTreeMap<DeviceId, Member>, NodeError> {
        self.ask(|reply| Input::Members { share, reply }).await
    }

    /// A key's current versions (every sibling while in conflict), tombstones included.
    pub async fn get(&self, share: ShareId, key: &str) -> Result<Option<Entry>, NodeError> {
        let key = key.to_owned();
        self.ask(|reply| Input::Get { share, key, reply }).await
    }

    /// The entries of many keys at once, in order (one round trip to the node).
    pub async fn get_many(
        &self,
        share: ShareId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Entry>>, NodeError> {
        self.ask(|reply| Input::GetMany { share, keys, reply })
            .await
    }

    /// Keys with `prefix`, in order.
    pub async fn list(
        &self,
        share: ShareId,
        prefix: &str,
    ) -> Result<Vec<(String, Entry)>, NodeError> {
        let prefix = prefix.to_owned();
        self.ask(|reply| Input::List {
            share,
            prefix,
            reply,
        })
        .await
    }

    /// Stops the node: sessions are closed, the task returns.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.inputs.send(Input::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// A chunk read a peer asked for: answer with [`ChunkReads::answer`].
#[derive(Debug)]
pub struct ChunkRead {
    /// The connection that asked.
    pub conn: ConnId,
    /// The request.
    pub id: u32,
    /// The chunk.
    pub hash: Hash,
    /// Where in it.
    pub offset: u32,
    /// How many bytes.
    pub len: u32,
}

/// Where a folder's work comes from: the node sends the share's chunk reads (to be served
/// from disk on a blocking thread) and its database and chunk events here.
#[derive(Debug)]
pub struct FolderLink {
    /// Chunk reads, consumed on the folder's blocking thread.
    pub reads: std::sync::mpsc::Sender<ChunkRead>,
    /// Database and chunk events of the share.
    pub events: mpsc::UnboundedSender<Event>,
}

/// A folder attached to the node, and how far it has caught up with the changes handed to it.
#[derive(Debug)]
struct Attached {
    link: FolderLink,
    /// Changes of folder entries handed to the folder.
    sent: u64,
    /// Paths its disk lacked at its last report.
    pending: u64,
    /// Changes it had processed at its last report.
    seen: u64,
}

/// Answers chunk reads from a blocking thread.
#[derive(Debug, Clone)]
pub struct ChunkReads {
    inputs: mpsc::Sender<Input>,
}

impl ChunkReads {
    /// Sends the answer to `read` (`None`: not here).
    pub fn answer(&self, read: &ChunkRead, data: Option<Vec<u8>>) {
        let _ = self
            .inputs
            .blocking_send(Input::ChunkRead(read.conn, read.id, data));
    }
}

impl NodeHandle {
    /// What a folder's blocking thread answers chunk reads with.
    pub fn chunk_reads(&self) -> ChunkReads {
        ChunkReads {
            inputs: self.inputs.clone(),
        }
    }
}

/// Prepares `node` to run on `runtime`: returns its handle, the receiver its events (peers,
/// database changes, conflicts) arrive on, and the owner task, which the caller spawns with its
/// runtime's own spawn (so that it gets that runtime's join handle) or awaits. The owner task
/// spawns each connection's reader and writer on `runtime`; it ends after
/// [`NodeHandle::shutdown`] once every store has written what it was given.
pub fn node<R: Runtime>(
    runtime: R,
    node: Node,
    clock: MonotonicClock,
) -> (NodeHandle, mpsc::Receiver<Event>, BoxFuture<()>) {
    let (inputs, receiver) = mpsc::channel(256);
    let (events_tx, events) = mpsc::channel(1024);
    let (write_loops, write_loops_done) = mpsc::channel(1);
    let owner = Owner {
        runtime,
        node,
        clock,
        inputs: inputs.clone(),
        writers: BTreeMap::new(),
        stores: BTreeMap::new(),
        store_threads: Vec::new(),
        pending_puts: BTreeMap::new(),
        folders: BTreeMap::new(),
        watchers: Vec::new(),
        next_collection: clearskies_proto::Timestamp::ZERO,
        next_conn: 1,
        write_loops: Some(write_loops),
        write_loops_done,
        shutdown_replies: Vec::new(),
        events: events_tx,
    };
    (NodeHandle { inputs }, events, Box::pin(owner.run(receiver)))
}

/// [`node`], with the owner task spawned on `runtime`.
pub fn spawn_node<R: Runtime>(
    runtime: R,
    node: Node,
    clock: MonotonicClock,
) -> (NodeHandle, mpsc::Receiver<Event>, crate::Task<()>) {
    let (handle, events, owner) = self::node(runtime.clone(), node, clock);
    (handle, events, crate::spawn_task(&runtime, owner))
}

struct Owner<R> {
    runtime: R,
    node: Node,
    clock: MonotonicClock,
    inputs: mpsc::Sender<Input>,
    writers: BTreeMap<ConnId, mpsc::Sender<Bytes>>,
    stores: BTreeMap<ShareId, std::sync::mpsc::Sender<(u64, Vec<db::PersistOp>)>>,
    store_threads: Vec<std::thread::JoinHandle<()>>,
    pending_puts: BTreeMap<Dot, oneshot::Sender<Result<Dot, NodeError>>>,
    folders: BTreeMap<ShareId, Attached>,
    /// `NodeHandle::watch` subscriptions: share, key prefix, where changed keys go.
    watchers: Vec<(ShareId, String, mpsc::UnboundedSender<String>)>,
    /// When tombstones past the horizon are next collected (at start, then daily).
    next_collection: clearskies_proto::Timestamp,
    next_conn: ConnId,
    events: mpsc::Sender<Event>,
    /// Every write loop holds a clone; all dropped means every connection is closed.
    write_loops: Option<mpsc::Sender<()>>,
    write_loops_done: mpsc::Receiver<()>,
    shutdown_replies: Vec<oneshot::Sender<()>>,
}

impl<R: Runtime> Owner<R> {
    async fn run(mut self, inputs: mpsc::Receiver<Input>) {
        self.serve(inputs).await;
        // Tell every peer (GOING_AWAY), let what is queued leave, and close the transports,
        // for at most SHUTDOWN_GRACE: a peer that stopped reading does not hold us up.
        let runtime = self.runtime.clone();
        let grace = crate::sleep(&runtime, SHUTDOWN_GRACE);
        let close = async {
            self.node.close_all(self.clock.now(), "shutting down");
            self.flush().await;
            self.writers.clear();
            self.write_loops = None;
            self.write_loops_done.recv().await
        };
        tokio::select! {
            _ = close => {}
            () = grace => {}
        }
        self.writers.clear();
        // Let each store finish the batches it has, then release its file, before the task
        // ends: a node restarted right after can open it again.
        self.stores.clear();
        let threads = std::mem::take(&mut self.store_threads);
        let _ = crate::blocking("clearskies-store-join", move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        for reply in self.shutdown_replies.drain(..) {
            let _ = reply.send(());
        }
    }

    async fn serve(&mut self, mut inputs: mpsc::Receiver<Input>) {
        loop {
            let deadline = Some(
                self.node
                    .poll_timeout()
                    .map_or(self.next_collection, |t| t.min(self.next_collection)),
            );
            let sleep =
                crate::sleep_or_forever(&self.runtime, deadline.map(|t| self.clock.instant(t)));
            tokio::select! {
                input = inputs.recv() => {
                    let Some(input) = input else { return };
                    if !self.handle(input) {
                        return;
                    }
                    // Bounded work per wake-up: take what is already queued, up to a limit.
                    for _ in 0..INPUTS_PER_WAKE {
                        match inputs.try_recv() {
                            Ok(input) => if !self.handle(input) { return },
                            Err(_) => break,
                        }
                    }
                }
                () = sleep => {}
            }
            // Check the deadline against the clock, not only the timer future.
            let now = self.clock.now();
            if deadline.is_some_and(|d| d <= now) {
                self.node.handle_timeout(now);
            }
            if now >= self.next_collection {
                // Tombstones older than the horizon go (spec/database.md § 9.7).
                let collected = self.node.collect_garbage(crate::unix_micros());
                if collected > 0 {
                    tracing::info!("collected {collected} tombstones past the horizon");
                }
                self.next_collection = now + COLLECTION_INTERVAL;
            }
            self.flush().await;
        }
    }

    /// Handles one input; `false` ends the node.
    fn handle(&mut self, input: Input) -> bool {
        let now = self.clock.now();
        match input {
            Input::Connection {
                peer,
                origin,
                stream,
            } => {
                let conn = self.next_conn;
                self.next_conn += 1;
                let (reader, writer) = stream.split();
                let (frames_tx, frames_rx) = mpsc::channel(WRITE_QUEUE);
                self.writers.insert(conn, frames_tx);
                self.runtime
                    .spawn(Box::pin(read_loop(conn, reader, self.inputs.clone())));
                self.runtime.spawn(Box::pin(write_loop(
                    conn,
                    writer,
                    frames_rx,
                    self.inputs.clone(),
                    self.write_loops.clone(),
                )));
                self.node.handle_connected_from(now, conn, peer, origin);
            }
            Input::Bytes(conn, bytes) => self.node.handle_bytes(now, conn, &bytes),
            Input::Closed(conn) => {
                self.writers.remove(&conn);
                self.node.handle_closed(now, conn);
            }
            Input::Writable => {}
            Input::Persisted(share, id, result) => match result {
                Ok(()) => self.node.handle_persisted(&share, id),
                Err(e) => {
                    // A failed batch is never confirmed: nothing after it is acknowledged or
                    // sent. Tell every waiting writer why.
                    for (_, reply) in std::mem::take(&mut self.pending_puts) {
                        let _ = reply.send(Err(NodeError::Store(e.clone())));
                    }
                }
            },
            Input::OpenShare {
                share,
                members,
                store,
                state,
                reply,
            } => {
                let (tx, rx) = std::sync::mpsc::channel::<(u64, Vec<db::PersistOp>)>();
                let inputs = self.inputs.clone();
                let thread = std::thread::Builder::new()
                    .name("clearskies-store".into())
                    .spawn(move || {
                        while let Ok((id, mut ops)) = rx.recv() {
                            // Batches queued meanwhile go in the same transaction: one
                            // durable commit for many writes (their order is kept, and each
                            // is acknowledged only once the commit is on disk).
                            let mut ids = vec![id];
                            while ids.len() < MAX_BATCHES_PER_COMMIT
                                && let Ok((id, more)) = rx.try_recv()
                            {
                                ids.push(id);
                                ops.extend(more);
                            }
                            let result = store.apply(&ops).map_err(|e: StoreError| e.to_string());
                            // Once the node has stopped nobody hears the answer, but the
                            // batches already queued are still applied (see `Owner::run`).
                            for id in ids {
                                let _ = inputs.blocking_send(Input::Persisted(
                                    share,
                                    id,
                                    result.clone(),
                                ));
                            }
                        }
                    })
                    .expect("spawning the store thread");
                self.store_threads.push(thread);
                self.stores.insert(share, tx);
                self.node.open_share(share, members, state, random_u64());
                let _ = reply.send(());
            }
            Input::Put {
                share,
                key,
                value,
                context,
                reply,
            } => {
                let result = match (value, context) {
                    (value, Some(c)) => {
                        self.node
                            .write_after(&share, unix_micros(), &key, value, &c)
                    }
                    (Some(v), None) => self.node.put(&share, unix_micros(), &key, v),
                    (None, None) => self.node.delete(&share, unix_micros(), &key),
                };
                match result {
                    Ok(dot) => {
                        self.pending_puts.insert(dot, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NodeError::Refused(e)));
                    }
                }
            }
            Input::Synced { peer, reply } => {
                let _ = reply.send(self.node.is_synced_with(&peer));
            }
            Input::AddMember { share, member } => {
                let device = DeviceId::from_public_key(&member.public_key);
                self.node.add_member(&share, device, member);
            }
            Input::Get { share, key, reply } => {
                let entry = self
                    .node
                    .replica(&share)
                    .and_then(|r| r.entry(&key))
                    .cloned();
                let _ = reply.send(entry);
            }
            Input::GetMany { share, keys, reply } => {
                let replica = self.node.replica(&share);
                let entries = keys
                    .iter()
                    .map(|k| replica.and_then(|r| r.entry(k)).cloned())
                    .collect();
                let _ = reply.send(entries);
            }
            Input::List {
                share,
                prefix,
                reply,
            } => {
                let list = self
                    .node
                    .replica(&share)
                    .map(|r| {
                        r.range(&prefix)
                            .map(|(k, e)| (k.clone(), e.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = reply.send(list);
            }
            Input::AttachFolder { share, link } => {
                self.folders.insert(
                    share,
                    Attached {
                        link,
                        sent: 0,
                        pending: 1,
                        seen: 0,
                    },
                );
                self.report_folder(share);
            }
            Input::WantChunks { share, chunks } => {
                for (hash, len) in chunks {
                    self.node.want_chunk(share, hash, len);
                }
            }
            Input::CancelChunks { share, chunks } => {
                for hash in chunks {
                    self.node.cancel_chunk(&share, &hash);
                }
            }
            Input::ChunkRead(conn, id, data) => self.node.chunk_read(conn, id, data),
            Input::FolderPending(share, pending, seen) => {
                if let Some(f) = self.folders.get_mut(&share) {
                    f.pending = pending;
                    f.seen = seen;
                }
                self.report_folder(share);
            }
            Input::Connected { peer, reply } => {
                let _ = reply.send(self.node.connection_to(&peer).is_some());
            }
            Input::FolderComplete { share, reply } => {
                let _ = reply.send(self.node.folder_pending(&share) == Some(0));
            }
            Input::RemoveMember {
                share,
                device,
                code,
                reason,
            } => self.node.remove_member(now, &share, &device, code, &reason),
            Input::SetMembership {
                share,
                device,
                member,
                reply,
            } => match self
                .node
                .set_membership(&share, crate::unix_micros(), device, member)
            {
                Ok(dot) => {
                    self.pending_puts.insert(dot, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(NodeError::Refused(e)));
                }
            },
            Input::Watch {
                share,
                prefix,
                keys,
            } => self.watchers.push((share, prefix, keys)),
            Input::Members { share, reply } => {
                let members = self
                    .node
                    .replica(&share)
                    .map(|r| r.members().clone())
                    .unwrap_or_default();
                let _ = reply.send(members);
            }
            Input::Shutdown(reply) => {
                self.shutdown_replies.push(reply);
                return false;
            }
        }
        true
    }

    /// Drains outputs and pulls frames for every writer with room.
    async fn flush(&mut self) {
        self.drain_outputs().await;
        let now = self.clock.now();
        let conns: Vec<ConnId> = self.writers.keys().copied().collect();
        for conn in conns {
            let Some(writer) = self.writers.get(&conn) else {
                continue;
            };
            while let Ok(permit) = writer.try_reserve() {
                match self.node.poll_transmit(now, conn) {
                    Some(frame) => permit.send(frame),
                    None => break,
                }
            }
        }
        // poll_transmit may have finished sessions.
        self.drain_outputs().await;
    }

    /// Tells the node (and so peers) how far a folder is: what it reported, plus the changes
    /// it has been handed and not processed yet.
    fn report_folder(&mut self, share: ShareId) {
        if let Some(f) = self.folders.get(&share) {
            let pending = f.pending + f.sent.saturating_sub(f.seen);
            self.node.set_folder_pending(&share, pending);
        }
    }

    async fn drain_outputs(&mut self) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Persist { share, id, ops } => {
                    if let Some(store) = self.stores.get(&share) {
                        let _ = store.send((id, ops));
                    }
                }
                Output::Close { conn } => {
                    // Dropping the sender lets the writer finish the queued frames and shut
                    // the socket down.
                    self.writers.remove(&conn);
                }
                Output::ReadChunk {
                    conn,
                    id,
                    share,
                    hash,
                    offset,
                    len,
                } => {
                    let read = ChunkRead {
                        conn,
                        id,
                        hash,
                        offset,
                        len,
                    };
                    match self.folders.get(&share) {
                        Some(folder) => {
                            if let Err(e) = folder.link.reads.send(read) {
                                self.node.chunk_read(e.0.conn, e.0.id, None);
                            }
                        }
                        None => self.node.chunk_read(conn, id, None),
                    }
                }
                Output::Event(event) => {
                    if let Event::Db {
                        event: db::Event::WriteAcked { dot },
                        ..
                    } = &event
                        && let Some(reply) = self.pending_puts.remove(dot)
                    {
                        let _ = reply.send(Ok(*dot));
                    }
                    let share = match &event {
                        Event::Db { share, .. }
                        | Event::Chunk { share, .. }
                        | Event::ChunkStalled { share, .. } => Some(*share),
                        _ => None,
                    };
                    if let Event::Db {
                        share,
                        event: db::Event::Changed { key },
                    } = &event
                    {
                        self.watchers.retain(|(s, prefix, keys)| {
                            s != share
                                || !key.starts_with(prefix.as_str())
                                || keys.send(key.clone()).is_ok()
                        });
                    }
                    if let Some(share) = share
                        && let Some(folder) = self.folders.get_mut(&share)
                    {
                        let entry_changed = matches!(&event, Event::Db { event: db::Event::Changed { key }, .. } if clearskies_proto::files::path_of(key).is_some());
                        let _ = folder.link.events.send(event.clone());
                        if entry_changed {
                            folder.sent += 1;
                            self.report_folder(share);
                        }
                        if matches!(event, Event::Chunk { .. } | Event::ChunkStalled { .. }) {
                            continue;
                        }
                    }
                    // A slow event consumer slows the node rather than losing events.
                    let _ = self.events.send(event).await;
                }
            }
        }
    }
}

/// The most store batches one transaction takes.
const MAX_BATCHES_PER_COMMIT: usize = 1024;

/// How often tombstones past the horizon are collected.
pub const COLLECTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The keys that change under a prefix ([`NodeHandle::watch`]): a stream, or `next().await`.
#[derive(Debug)]
pub struct Watch {
    keys: mpsc::UnboundedReceiver<String>,
}

impl Watch {
    /// The next key that changed; `None` once the node has stopped.
    pub async fn next(&mut self) -> Option<String> {
        self.keys.recv().await
    }
}

impl futures_util::Stream for Watch {
    type Item = String;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<String>> {
        self.keys.poll_recv(cx)
    }
}

/// A random 64-bit value from the operating system (a new replica's index ID).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without OS randomness the process cannot make keys either: nothing sensible to do.
    getrandom::getrandom(&mut b).expect("the operating system's random source");
    u64::from_le_bytes(b)
}

async fn read_loop<R: AsyncRead + Unpin>(conn: ConnId, mut reader: R, inputs: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = inputs.send(Input::Closed(conn)).await;
                return;
            }
            Ok(n) => {
                if inputs
                    .send(Input::Bytes(conn, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    conn: ConnId,
    mut writer: W,
    mut frames: mpsc::Receiver<Bytes>,
    inputs: mpsc::Sender<Input>,
    // Dropped when the loop ends (the node's shutdown waits for all of them).
    _alive: Option<mpsc::Sender<()>>,
) {
    while let Some(frame) = frames.recv().await {
        if writer.write_all(&frame).await.is_err() {
            let _ = inputs.send(Input::Closed(conn)).await;
            return;
        }
        if frames.is_empty() {
            if writer.flush().await.is_err() {
                let _ = inputs.send(Input::Closed(conn)).await;
                return;
            }
            // Room for more: ask the owner to pull.
            let _ = inputs.try_send(Input::Writable);
        }
    }
    let _ = writer.close().await;
}
