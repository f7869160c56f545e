//! A folder share on any runtime: proto's files layer bound to a real folder through
//! [`clearskies_store::Folder`].
//!
//! Each folder share has one blocking thread that owns the [`Folder`] (scans, chunk reads
//! for peers, assembling and committing files) and one task, the syncer, that makes the
//! decisions with [`clearskies_proto::files::plan`]: local changes found by a scan become
//! records written after the version the disk held; records from peers become files on disk,
//! their missing chunks fetched through the node; conflicts keep both versions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clearskies_proto::db::{self, ShareId, VersionVector};
use clearskies_proto::files::plan::{Local, Plan, plan};
use clearskies_proto::files::{self, FileKind, FileMeta, Hash, path as share_path};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::node::Event;
use clearskies_store::folder::{Folder, FolderError, LocalChange, Staging};
use clearskies_store::{ChunkCache, Versions};
use tokio::sync::{mpsc, oneshot, watch};

use crate::node::{ChunkRead, ChunkReads, FolderLink, NodeHandle};
use crate::{Runtime, unix_micros};

/// Where a folder share lives and how often it is rescanned.
#[derive(Debug, Clone)]
pub struct FolderConfig {
    /// The share.
    pub share: ShareId,
    /// The folder.
    pub root: PathBuf,
    /// The folder's index file (under the tool's home, never inside the folder).
    pub index: PathBuf,
    /// The local-versions file (under the tool's home).
    pub versions: PathBuf,
    /// The shortest interval between rescans; it grows with the cost of a scan.
    pub rescan: Duration,
    /// Watch the folder for changes between rescans (off for a one-off check-in, which
    /// scans once at the start and would only pay for watches it never uses).
    pub watch: bool,
    /// A shallow replica: every record, but content only for pinned paths (and what was
    /// written here); the rest is read on demand through a cache.
    pub shallow: Option<Shallow>,
}

/// How a shallow replica keeps what it reads.
#[derive(Debug, Clone)]
pub struct Shallow {
    /// The chunk cache's folder (under the tool's home).
    pub cache: PathBuf,
    /// The cache's size limit in bytes.
    pub cache_size: u64,
    /// Paths (files or folders) kept fully local.
    pub pinned: Vec<String>,
}

/// Local changes whose records are written at once (see `Syncer::record_all`).
const RECORDS_IN_FLIGHT: usize = 512;

/// Most files committed together (one index and one local-versions transaction).
const COMMIT_BATCH: usize = 1024;

/// Files are committed once this many are ready (or see `Syncer::commit_due`): each commit
/// makes its batch durable with one flush, so a few large batches cost less than many small.
const COMMIT_MIN: usize = 256;

/// The longest a ready file waits for others to be committed with.
const COMMIT_WAIT: Duration = Duration::from_millis(100);

/// Most paths looked up and staged together.
const PLAN_BATCH: usize = 1024;

/// Most files assembled at once: the rest of the changed paths wait, counted as pending,
/// until commits make room. Bounds the temp files and memory in use on a share of any size.
const MAX_BUILDING: usize = 2048;

/// Most node events handled in one round of the syncer (bounded work per wake-up; commits
/// and status follow each round).
const EVENTS_PER_ROUND: usize = 4096;

/// How long a reader waits for a chunk no peer delivers.
pub const CHUNK_WAIT: Duration = Duration::from_secs(20);

/// Chunks a [`RangeReader`] asks for ahead of the one it returns.
pub const READ_AHEAD: usize = 32;

/// A path's state in a shallow replica's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The share path.
    pub path: String,
    /// What it is.
    pub kind: FileKind,
    /// Its size.
    pub size: u64,
    /// `local`, `pinned`, `cached` (some chunks in the cache) or `remote`.
    pub state: &'static str,
    /// For `cached`: chunks in the cache, of how many.
    pub cached: (usize, usize),
}

/// What a folder is doing, for `status` and `sync --once`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderStatus {
    /// The first scan has finished (until then peers must not count this device as agreeing).
    pub scanned: bool,
    /// Paths whose disk state is not yet the database's.
    pub pending_files: usize,
    /// Bytes still to fetch.
    pub pending_bytes: u64,
    /// Chunks no connected peer could provide (retried).
    pub stalled_chunks: usize,
    /// The folder's error state, if any (a missing root, a full disk): nothing is deleted or
    /// overwritten while it lasts.
    pub error: Option<String>,
}

impl FolderStatus {
    /// Whether the disk holds everything the database says it should.
    pub fn is_complete(&self) -> bool {
        self.scanned && self.pending_files == 0 && self.error.is_none()
    }
}

/// The handle of a running folder.
#[derive(Debug, Clone)]
pub struct FolderHandle {
    status: watch::Receiver<FolderStatus>,
    commands: mpsc::UnboundedSender<Command>,
}

impl FolderHandle {
    /// The current status.
    pub fn status(&self) -> FolderStatus {
        self.status.borrow().clone()
    }

    /// Waits for the next status change.
    pub async fn changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    /// Rescans now (a file watcher's debounced event, or a user's request); returns once the
    /// changes found are recorded.
    pub async fn rescan(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Rescan(Some(reply))).is_ok() {
            let _ = done.await;
        }
    }

    /// Reads bytes `start ..= end` of `meta`'s content, chunk by chunk, from disk, the cache
    /// or peers (a shallow replica's `cat`).
    pub fn read_range(&self, meta: &FileMeta, start: u64, end: u64) -> RangeReader {
        RangeReader {
            commands: self.commands.clone(),
            plan: clearskies_proto::files::range::pieces(meta, start, end).into(),
            inflight: VecDeque::new(),
        }
    }

    /// Pins (`true`) or unpins a path of a shallow replica (see [`Shallow`]).
    pub async fn pin(&self, path: &str, pin: bool) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Pin(path.to_owned(), pin, reply))
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// The paths under `prefix` with their state here.
    pub async fn list(&self, prefix: &str) -> Vec<Listed> {
        let (reply, rows) = oneshot::channel();
        if self
            .commands
            .send(Command::List(prefix.to_owned(), reply))
            .is_err()
        {
            return Vec::new();
        }
        rows.await.unwrap_or_default()
    }

    /// Stops the folder's task and thread.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// The bytes of a range, in order, a chunk's worth at a time ([`FolderHandle::read_range`]).
/// Asks for [`READ_AHEAD`] chunks ahead, so memory stays bounded whatever the range.
#[derive(Debug)]
pub struct RangeReader {
    commands: mpsc::UnboundedSender<Command>,
    plan: VecDeque<clearskies_proto::files::range::Piece>,
    inflight: VecDeque<(
        oneshot::Receiver<Result<Bytes, String>>,
        clearskies_proto::files::range::Piece,
    )>,
}

impl RangeReader {
    /// The next bytes of the range; `None` at its end. An error says why a chunk could not be
    /// had (no peer holds it); reading may be tried again later.
    pub async fn next(&mut self) -> Option<Result<Bytes, String>> {
        std::future::poll_fn(|cx| self.poll_next_bytes(cx)).await
    }

    /// [`next`](RangeReader::next) as a poll function.
    pub fn poll_next_bytes(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, String>>> {
        use std::future::Future;
        use std::task::Poll;
        while self.inflight.len() < READ_AHEAD {
            let Some(piece) = self.plan.pop_front() else {
                break;
            };
            let (reply, answer) = oneshot::channel();
            let ask = Command::Chunk {
                hash: piece.hash,
                len: piece.len,
                reply,
            };
            if self.commands.send(ask).is_err() {
                return Poll::Ready(Some(Err("the folder has stopped".into())));
            }
            self.inflight.push_back((answer, piece));
        }
        let Some((answer, piece)) = self.inflight.front_mut() else {
            return Poll::Ready(None);
        };
        let piece = *piece;
        let result = match std::pin::Pin::new(answer).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.inflight.pop_front();
        Poll::Ready(Some(match result {
            Ok(Ok(chunk)) if chunk.len() >= piece.to as usize => {
                Ok(chunk.slice(piece.from as usize..piece.to as usize))
            }
            Ok(Ok(_)) => Err("a chunk shorter than its record says".into()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the folder has stopped".into()),
        }))
    }
}

/// A file of a share opened for reading at any position, content fetched on demand: what a
/// shallow replica offers apps (`futures-io` `AsyncRead` + `AsyncSeek`; the tokio driver
/// adapts it to tokio's traits). Reading from a position streams from there to the end,
/// [`READ_AHEAD`] chunks ahead; seeking starts over at the new position.
#[derive(Debug)]
pub struct ShallowFile {
    folder: FolderHandle,
    meta: FileMeta,
    pos: u64,
    reader: Option<RangeReader>,
    /// Bytes fetched and not yet read.
    buffered: Bytes,
}

impl FolderHandle {
    /// Opens the file whose record is `meta` for reading (see [`ShallowFile`]).
    pub fn open_file(&self, meta: FileMeta) -> ShallowFile {
        ShallowFile {
            folder: self.clone(),
            meta,
            pos: 0,
            reader: None,
            buffered: Bytes::new(),
        }
    }
}

impl futures_io::AsyncRead for ShallowFile {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        while this.buffered.is_empty() {
            if this.pos >= this.meta.size || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let (folder, meta, pos) = (&this.folder, &this.meta, this.pos);
            let reader = this
                .reader
                .get_or_insert_with(|| folder.read_range(meta, pos, u64::MAX));
            match reader.poll_next_bytes(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Ready(Some(Err(e))) => {
                    this.reader = None;
                    return Poll::Ready(Err(std::io::Error::other(e)));
                }
                Poll::Ready(Some(Ok(bytes))) => this.buffered = bytes,
            }
        }
        let n = buf.len().min(this.buffered.len());
        buf[..n].copy_from_slice(&this.buffered[..n]);
        let _ = this.buffered.split_to(n);
        this.pos += n as u64;
        Poll::Ready(Ok(n))
    }
}

impl futures_io::AsyncSeek for ShallowFile {
    fn poll_seek(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        to: std::io::SeekFrom,
    ) -> std::task::Poll<std::io::Result<u64>> {
        let this = &mut *self;
        let target = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => this.meta.size.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        let Some(target) = target else {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )));
        };
        if target != this.pos {
            this.pos = target;
            this.reader = None;
            this.buffered = Bytes::new();
        }
        std::task::Poll::Ready(Ok(target))
    }
}

/// How long the folder must be quiet after a change the watcher saw before it is scanned
/// (an editor's save is often several writes and a rename).
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches `root` recursively; every change outside `.clearskies` sends a `()`.
fn watch(
    root: &std::path::Path,
    touched: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let reserved = root.join(share_path::RESERVED_ROOT);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) => {
                !matches!(e.kind, notify::EventKind::Access(_))
                    && e.paths.iter().any(|p| !p.starts_with(&reserved))
            }
            // Overflowed queues and the like: better a scan too many.
            Err(_) => true,
        };
        if relevant {
            let _ = touched.send(());
        }
    })?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

enum Command {
    Rescan(Option<oneshot::Sender<()>>),
    Chunk {
        hash: Hash,
        len: u32,
        reply: oneshot::Sender<Result<Bytes, String>>,
    },
    Pin(String, bool, oneshot::Sender<()>),
    List(String, oneshot::Sender<Vec<Listed>>),
    Stop,
}

type Job = Box<dyn FnOnce(&mut State) + Send>;

/// What the folder's blocking thread owns.
struct State {
    folder: Folder,
    versions: Versions,
    stagings: BTreeMap<String, Staging>,
    cache: Option<ChunkCache>,
}

impl State {
    /// Records the versions that paths just written (`what`, for the log) bring, in one
    /// transaction. A failure is logged; what was written stays written.
    fn record_versions(&self, versions: &[(String, VersionVector)], what: &str) {
        if let Err(e) = self.versions.set_many(versions) {
            tracing::warn!("cannot record the versions of {what}: {e}");
        }
    }
}

/// The folder's blocking thread, as the syncer sees it.
struct Disk {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Disk {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |state| {
            let _ = reply.send(f(state));
        });
        self.jobs.send(job).ok()?;
        answer.await.ok()
    }
}

/// Opens the folder and starts its thread and its syncer (a task on `runtime`). The first scan
/// runs before this returns, so a peer never sees this device as agreeing before it has looked
/// at its disk.
pub async fn spawn_folder<R: Runtime>(
    runtime: R,
    node: NodeHandle,
    me: DeviceId,
    config: FolderConfig,
) -> Result<FolderHandle, String> {
    let (folder_cfg, versions_path) = (config.clone(), config.versions.clone());
    let opened = crate::blocking("clearskies-folder-open", move || {
        let folder =
            Folder::open(&folder_cfg.root, &folder_cfg.index).map_err(|e| e.to_string())?;
        let versions = Versions::open(&versions_path).map_err(|e| e.to_string())?;
        let cache = match &folder_cfg.shallow {
            Some(s) => Some(ChunkCache::open(&s.cache, s.cache_size).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok::<_, String>(State {
            folder,
            versions,
            stagings: BTreeMap::new(),
            cache,
        })
    })
    .await??;
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let (reads_tx, reads_rx) = std::sync::mpsc::channel::<ChunkRead>();
    let answers = node.chunk_reads();
    std::thread::Builder::new()
        .name("clearskies-folder".into())
        .spawn(move || disk_thread(opened, jobs_rx, reads_rx, answers))
        .map_err(|e| e.to_string())?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    node.attach_folder(
        config.share,
        FolderLink {
            reads: reads_tx,
            events: events_tx,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let (status_tx, status_rx) = watch::channel(FolderStatus::default());
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let mut syncer = Syncer {
        runtime: runtime.clone(),
        node,
        me,
        share: config.share,
        disk: Disk { jobs: jobs_tx },
        status: status_tx,
        waiting: BTreeMap::new(),
        building: BTreeMap::new(),
        ready: BTreeSet::new(),
        ready_since: None,
        to_stage: Vec::new(),
        to_make: Vec::new(),
        dirty: BTreeSet::new(),
        stalled: BTreeSet::new(),
        pending_removals: BTreeMap::new(),
        rescan_soon: false,
        replan: BTreeSet::new(),
        replan_all: false,
        root: config.root.clone(),
        error: None,
        scanned: false,
        seen: 0,
        pinned: config.shallow.as_ref().map(|s| s.pinned.clone()),
        readers: BTreeMap::new(),
    };
    let scan_cost = syncer.scan().await;
    syncer.reconcile_all().await;
    let (touched_tx, touched_rx) = mpsc::unbounded_channel();
    // Without a watcher (not asked for, or no inotify instances left) the periodic rescans
    // still run.
    let watcher = if !config.watch {
        None
    } else {
        watch(&config.root, touched_tx)
            .map_err(|e| {
                tracing::warn!(
                    "{}: not watching for changes ({e}); rescanning every {:?}",
                    config.root.display(),
                    config.rescan
                )
            })
            .ok()
    };
    runtime.spawn(Box::pin(syncer.run(
        events_rx,
        commands_rx,
        touched_rx,
        watcher,
        config.rescan,
        scan_cost,
    )));
    Ok(FolderHandle {
        status: status_rx,
        commands: commands_tx,
    })
}

/// Serves chunk reads first (a peer is waiting), then the syncer's jobs.
fn disk_thread(
    mut state: State,
    jobs: std::sync::mpsc::Receiver<Job>,
    reads: std::sync::mpsc::Receiver<ChunkRead>,
    answers: ChunkReads,
) {
    loop {
        while let Ok(read) = reads.try_recv() {
            let data = state
                .folder
                .read_chunk(&read.hash, read.offset, read.len)
                .ok()
                .flatten();
            answers.answer(&read, data);
        }
        match jobs.recv_timeout(Duration::from_millis(5)) {
            Ok(job) => job(&mut state),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A file being assembled: what it will be, and which version it brings.
struct Building {
    target: FileMeta,
    expected: Option<FileMeta>,
    version: VersionVector,
    missing: BTreeSet<Hash>,
    bytes: u64,
}

struct Syncer<R> {
    runtime: R,
    node: NodeHandle,
    me: DeviceId,
    share: ShareId,
    disk: Disk,
    status: watch::Sender<FolderStatus>,
    /// Chunk → paths waiting for it.
    waiting: BTreeMap<Hash, BTreeSet<String>>,
    building: BTreeMap<String, Building>,
    /// Files with every chunk in place, committed together once a commit is due (see
    /// `commit_due`).
    ready: BTreeSet<String>,
    /// When the oldest file in `ready` became ready (see `commit_due`).
    ready_since: Option<Instant>,
    /// Files `apply` decided to write, staged together at the end of a planning batch.
    to_stage: Vec<(String, FileMeta, Option<FileMeta>, VersionVector)>,
    /// Directories `apply` decided to make, made together just before the files are staged.
    to_make: Vec<(String, FileMeta, Option<FileMeta>, VersionVector)>,
    /// Paths whose entry changed and must be planned again.
    dirty: BTreeSet<String>,
    stalled: BTreeSet<Hash>,
    /// Removals planned by `step`, done children first.
    pending_removals: BTreeMap<String, (Option<FileMeta>, VersionVector)>,
    /// The disk changed under a planned write: scan before going on.
    rescan_soon: bool,
    /// Paths to plan again after that scan.
    replan: BTreeSet<String>,
    /// Plan every path again (after an error state ended).
    replan_all: bool,
    root: PathBuf,
    error: Option<String>,
    scanned: bool,
    /// Changes of folder entries received from the node (reported with the pending count).
    seen: u64,
    /// A shallow replica's pinned paths (`None`: a full replica).
    pinned: Option<Vec<String>>,
    /// Chunks readers wait for, with when they give up.
    readers: BTreeMap<Hash, Vec<(ChunkReply, Instant)>>,
}

impl<R: Runtime> Syncer<R> {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut touched: mpsc::UnboundedReceiver<()>,
        // Kept alive for as long as the loop runs.
        _watcher: Option<notify::RecommendedWatcher>,
        rescan: Duration,
        mut scan_cost: Duration,
    ) {
        let mut last_scan = Instant::now();
        // A change seen by the watcher: scan once things have been quiet for DEBOUNCE.
        let mut debounce: Option<Instant> = None;
        loop {
            // Periodic rescans cost at most about 5% of the time.
            let next_scan = last_scan + rescan.max(scan_cost * 20);
            let scan_at = debounce.map_or(next_scan, |d| d.min(next_scan));
            let give_up = self.readers.values().flatten().map(|(_, t)| *t).min();
            let commit_at = self.ready_since.map(|t| t + COMMIT_WAIT);
            let wake = [give_up, commit_at]
                .into_iter()
                .flatten()
                .fold(scan_at, Instant::min);
            let mut replies = Vec::new();
            tokio::select! {
                Some(()) = touched.recv() => {
                    while touched.try_recv().is_ok() {}
                    debounce = Some(Instant::now() + DEBOUNCE);
                    continue;
                }
                event = events.recv() => {
                    let Some(event) = event else { return };
                    let mut chunks = Vec::new();
                    self.on_event(event, &mut chunks);
                    for _ in 1..EVENTS_PER_ROUND {
                        let Ok(event) = events.try_recv() else { break };
                        self.on_event(event, &mut chunks);
                    }
                    self.on_chunks(chunks).await;
                }
                command = commands.recv() => match command {
                    Some(Command::Rescan(reply)) => {
                        replies.extend(reply);
                        scan_cost = self.scan().await;
                        last_scan = Instant::now();
                    }
                    Some(Command::Chunk { hash, len, reply }) => self.chunk_for_reader(hash, len, reply).await,
                    Some(Command::Pin(path, pin, reply)) => {
                        self.pin(path, pin).await;
                        let _ = reply.send(());
                    }
                    Some(Command::List(prefix, reply)) => {
                        let _ = reply.send(self.list(&prefix).await);
                    }
                    Some(Command::Stop) | None => return,
                },
                () = std::future::ready(()), if self.can_plan_more() => {}
                () = self.runtime.sleep_until(wake) => {
                    if Instant::now() >= scan_at {
                        debounce = None;
                        scan_cost = self.scan().await;
                        last_scan = Instant::now();
                    }
                }
            }
            self.expire_readers();
            if std::mem::take(&mut self.replan_all) {
                self.reconcile_all().await;
            }
            self.process_dirty().await;
            self.commit_ready().await;
            if std::mem::take(&mut self.rescan_soon) {
                scan_cost = self.scan().await;
                let replan = std::mem::take(&mut self.replan);
                self.dirty.extend(replan);
                self.process_dirty().await;
                self.commit_ready().await;
            }
            self.publish().await;
            for r in replies {
                let _ = r.send(());
            }
        }
    }

    async fn publish(&self) {
        let status = FolderStatus {
            scanned: self.scanned,
            pending_files: self.building.len() + self.dirty.len(),
            pending_bytes: self.building.values().map(|b| b.bytes).sum(),
            stalled_chunks: self.stalled.len(),
            error: self.error.clone(),
        };
        // Until the first scan is done this device cannot say its disk is complete.
        let pending = if status.is_complete() {
            0
        } else {
            status.pending_files.max(1) as u64
        };
        let _ = self
            .node
            .set_folder_pending(self.share, pending, self.seen)
            .await;
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// Takes in one node event; fetched chunks are gathered in `chunks` for `on_chunks`.
    fn on_event(&mut self, event: Event, chunks: &mut Vec<(Hash, Bytes)>) {
        match event {
            Event::Db {
                event: db::Event::Changed { key },
                ..
            } => {
                if let Some(path) = files::path_of(&key) {
                    self.dirty.insert(path.to_owned());
                    // Counted by the node's driver too: see `NodeHandle::folder_complete`.
                    self.seen += 1;
                }
            }
            Event::Db {
                event: db::Event::Conflict { key, .. },
                ..
            } => {
                if let Some(path) = files::path_of(&key) {
                    self.dirty.insert(path.to_owned());
                }
            }
            Event::Chunk { hash, data, .. } => chunks.push((hash, data)),
            Event::ChunkStalled { hash, .. } => {
                self.stalled.insert(hash);
                for (reply, _) in self.readers.remove(&hash).unwrap_or_default() {
                    let _ = reply.send(Err(no_peer(&hash)));
                }
            }
            _ => {}
        }
    }

    /// Scans the disk and records what changed. Returns how long it took.
    async fn scan(&mut self) -> Duration {
        let started = Instant::now();
        let Some(result) = self.disk.run(|s| s.folder.scan()).await else {
            return started.elapsed();
        };
        match result {
            Ok(changes) => {
                if self.error.take().is_some() {
                    // Back from an error state (the folder returned, space was freed): plan
                    // every path again, including those whose writes failed meanwhile.
                    tracing::info!("{}: usable again, resuming", self.root.display());
                    self.replan_all = true;
                }
                self.record_all(changes).await;
                self.scanned = true;
            }
            Err(e) => {
                let e = e.to_string();
                if self.error.as_ref() != Some(&e) {
                    tracing::error!(
                        "{e}; nothing is changed on this device or sent to others until it is fixed"
                    );
                }
                self.error = Some(e);
            }
        }
        self.publish().await;
        started.elapsed()
    }

    /// Writes the record of a local change, after the version the disk held.
    async fn record(&mut self, change: LocalChange) {
        self.record_all(vec![change]).await;
    }

    /// Writes the records of local changes, each after the version the disk held, many at a
    /// time: the writes are in flight together, so the store commits them in few durable
    /// transactions, and the local versions are kept in one.
    async fn record_all(&mut self, changes: Vec<LocalChange>) {
        let mut changes = changes.into_iter().peekable();
        while changes.peek().is_some() {
            let batch: Vec<LocalChange> = changes.by_ref().take(RECORDS_IN_FLIGHT).collect();
            let paths: Vec<String> = batch.iter().map(|c| c.path.clone()).collect();
            let Some(contexts) = self
                .disk
                .run(move |s| {
                    paths
                        .iter()
                        .map(|p| s.versions.get(p))
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
            else {
                return;
            };
            let contexts = match contexts {
                Ok(c) => c,
                Err(e) => {
                    self.error = Some(e.to_string());
                    return;
                }
            };
            let writes = batch.iter().zip(&contexts).map(|(change, context)| {
                let value = change.meta.as_ref().map(|m| Bytes::from(m.encode()));
                let key = files::key_of(&change.path);
                let node = self.node.clone();
                let (share, context) = (self.share, context.clone());
                async move { node.write_after(share, &key, value, context).await }
            });
            let results = futures_util::future::join_all(writes).await;
            let mut versions = Vec::new();
            for ((change, mut version), result) in batch.into_iter().zip(contexts).zip(results) {
                match result {
                    Ok(dot) => {
                        version.set(dot);
                        versions.push((change.path, version));
                    }
                    Err(e) => self.error = Some(format!("cannot record {}: {e}", change.path)),
                }
            }
            let _ = self.disk.run(move |s| s.versions.set_many(&versions)).await;
        }
    }

    /// Plans every path whose record this device's disk does not already correspond to
    /// (after a start, or when an error state ended). The local versions of all paths are
    /// read in one transaction: an idle share of many files costs no planning.
    async fn reconcile_all(&mut self) {
        if let Ok(entries) = self.node.list(self.share, files::FILES_PREFIX).await {
            let (paths, winners): (Vec<String>, Vec<VersionVector>) = entries
                .iter()
                .filter_map(|(key, entry)| {
                    Some((
                        files::path_of(key)?.to_owned(),
                        entry.winner().version.clone(),
                    ))
                })
                .unzip();
            let all = paths.clone();
            let local = self
                .disk
                .run(move |s| s.versions.get_many(&all))
                .await
                .and_then(Result::ok);
            for (i, path) in paths.into_iter().enumerate() {
                let current = local
                    .as_ref()
                    .and_then(|l| l.get(i))
                    .is_some_and(|v| v.dominates(&winners[i]));
                if !current {
                    self.dirty.insert(path);
                }
            }
        }
        self.process_dirty().await;
        self.commit_ready().await;
        self.publish().await;
    }

    /// Plans every dirty path: creations parents first, removals children first. Paths are
    /// looked up and staged many at a time (one node round trip and one disk job a batch).
    async fn process_dirty(&mut self) {
        if self.error.is_some() {
            // A missing root or a full disk: change nothing until it is fixed.
            return;
        }
        // Paths left for when files being assembled are committed (see MAX_BUILDING).
        let mut deferred = Vec::new();
        // Removing a child can make its deleted parent removable: a few rounds settle it.
        for _ in 0..8 {
            let dirty: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
            if dirty.is_empty() {
                break;
            }
            let started = Instant::now();
            let mut removals = Vec::new();
            for part in dirty.chunks(PLAN_BATCH) {
                if self.building.len() + self.to_stage.len() >= MAX_BUILDING {
                    deferred.extend_from_slice(part);
                    continue;
                }
                let found = self.look_up(part).await;
                for (path, found) in part.iter().zip(found) {
                    if self.building.len() + self.to_stage.len() >= MAX_BUILDING {
                        deferred.push(path.clone());
                        continue;
                    }
                    match self.step(path, found).await {
                        Step::Done => {}
                        Step::RemoveLater => removals.push(path.clone()),
                    }
                }
                self.stage_pending().await;
            }
            for path in removals.into_iter().rev() {
                self.remove(&path).await;
            }
            tracing::debug!("planned {} paths in {:?}", dirty.len(), started.elapsed());
        }
        self.dirty.extend(deferred);
    }

    /// Whether paths wait for room to be assembled and there is room now.
    fn can_plan_more(&self) -> bool {
        self.error.is_none() && !self.dirty.is_empty() && self.building.len() < MAX_BUILDING
    }

    async fn local(&self, path: &str) -> Option<Local> {
        let p = path.to_owned();
        let (meta, version) = self
            .disk
            .run(move |s| (s.folder.local(&p), s.versions.get(&p)))
            .await?;
        Some(Local {
            meta: meta.ok()?,
            version: version.ok()?,
        })
    }

    /// The database entry and the local state of each path (`None`: no entry, an invalid
    /// path, or unreadable local state), with one disk job for all of them.
    async fn look_up(&self, paths: &[String]) -> Vec<Option<(db::Entry, Local)>> {
        let keys = paths.iter().map(|p| files::key_of(p)).collect();
        let entries = match self.node.get_many(self.share, keys).await {
            Ok(e) => e,
            Err(_) => vec![None; paths.len()],
        };
        let wanted: Vec<String> = paths
            .iter()
            .zip(&entries)
            .filter(|(_, e)| e.is_some())
            .map(|(p, _)| p.clone())
            .collect();
        let locals = self
            .disk
            .run(move |s| {
                let versions = s.versions.get_many(&wanted).ok();
                wanted
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let version = versions.as_ref()?.get(i)?.clone();
                        Some(Local {
                            meta: s.folder.local(p).ok()?,
                            version,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        let mut locals = locals.into_iter();
        entries
            .into_iter()
            .map(|e| {
                let entry = e?;
                Some((entry, locals.next().flatten()?))
            })
            .collect()
    }

    async fn step(&mut self, path: &str, found: Option<(db::Entry, Local)>) -> Step {
        if let Err(e) = share_path::validate(path) {
            tracing::warn!("ignoring the record of {path:?}: {e}");
            return Step::Done;
        }
        let Some((entry, local)) = found else {
            return Step::Done;
        };
        match plan(&self.me, &entry, &local) {
            Plan::Nothing => Step::Done,
            Plan::Adopt { version } => {
                self.set_version(path, version).await;
                Step::Done
            }
            Plan::Invalid { detail } => {
                tracing::warn!("ignoring the record of {path}: {detail}");
                Step::Done
            }
            Plan::Apply {
                target: None,
                version,
            } => {
                self.pending_removals
                    .insert(path.to_owned(), (local.meta, version));
                Step::RemoveLater
            }
            Plan::Apply {
                target: Some(target),
                version,
            } => {
                // A shallow replica keeps only what is pinned (or already here) on disk.
                if local.meta.is_some() || self.keeps(path) {
                    self.apply(path, target, local.meta, version).await;
                }
                Step::Done
            }
            Plan::Conflict {
                keep,
                target,
                context,
            } => {
                self.resolve(path, keep, target, local.meta, context).await;
                Step::Done
            }
        }
    }

    /// Whether a path's content belongs on this device's disk (always, unless shallow).
    fn keeps(&self, path: &str) -> bool {
        match &self.pinned {
            None => true,
            Some(pinned) => pinned.iter().any(|p| covers(p, path)),
        }
    }

    /// A reader wants a chunk: from disk or the cache at once, else from peers.
    async fn chunk_for_reader(
        &mut self,
        hash: Hash,
        len: u32,
        reply: oneshot::Sender<Result<Bytes, String>>,
    ) {
        let here = self
            .disk
            .run(move |s| {
                if let Ok(Some(d)) = s.folder.read_chunk(&hash, 0, len) {
                    return Some(d);
                }
                s.cache.as_ref().and_then(|c| c.get(&hash).ok().flatten())
            })
            .await
            .flatten();
        if let Some(data) = here {
            let _ = reply.send(Ok(Bytes::from(data)));
            return;
        }
        let first = !self.readers.contains_key(&hash);
        self.readers
            .entry(hash)
            .or_default()
            .push((reply, Instant::now() + CHUNK_WAIT));
        if first {
            let _ = self.node.want_chunks(self.share, vec![(hash, len)]).await;
        }
    }

    /// Readers whose chunk did not come in time hear why.
    fn expire_readers(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (hash, readers) in &mut self.readers {
            let (gone, keep): (Vec<_>, Vec<_>) = readers.drain(..).partition(|(_, t)| *t <= now);
            *readers = keep;
            for (reply, _) in gone {
                let _ = reply.send(Err(no_peer(hash)));
            }
            if readers.is_empty() {
                expired.push(*hash);
            }
        }
        for hash in expired {
            self.readers.remove(&hash);
        }
    }

    /// Pins (`true`) or unpins a path of a shallow replica. Pinned content is fetched and
    /// kept like a full replica's; unpinned content this device holds as the database has it
    /// is removed from the disk (it stays in the database, readable on demand); content edited
    /// here and not yet recorded stays until it is.
    async fn pin(&mut self, path: String, pin: bool) {
        let Some(pinned) = &mut self.pinned else {
            return;
        };
        pinned.retain(|p| *p != path);
        if pin {
            pinned.push(path.clone());
        }
        let entries = self
            .node
            .list(self.share, &files::key_of(&path))
            .await
            .unwrap_or_default();
        let paths: Vec<String> = entries
            .iter()
            .filter_map(|(k, _)| files::path_of(k))
            .filter(|p| covers(&path, p))
            .map(str::to_owned)
            .collect();
        if pin {
            self.dirty.extend(paths);
            return;
        }
        // Children before their folders.
        for p in paths.iter().rev() {
            if self.keeps(p) {
                continue;
            }
            let Some(local) = self.local(p).await else {
                continue;
            };
            let Ok(Some(entry)) = self.node.get(self.share, &files::key_of(p)).await else {
                continue;
            };
            if local.meta.is_some() && local.version.dominates(&entry.winner().version) {
                self.abandon(p).await;
                let (q, expected) = (p.clone(), local.meta.clone());
                let _ = self
                    .disk
                    .run(move |s| s.folder.remove(&q, expected.as_ref()))
                    .await;
            }
        }
    }

    /// Every path under `prefix` with its state here.
    async fn list(&mut self, prefix: &str) -> Vec<Listed> {
        let entries = self
            .node
            .list(self.share, &files::key_of(prefix))
            .await
            .unwrap_or_default();
        let mut rows = Vec::new();
        for (key, entry) in entries {
            let Some(path) = files::path_of(&key) else {
                continue;
            };
            let Some(Ok(meta)) = entry.winner().value.as_ref().map(|v| FileMeta::decode(v)) else {
                continue;
            };
            let (p, chunks) = (path.to_owned(), meta.chunks.clone());
            let found = self
                .disk
                .run(move |s| {
                    let local = s.folder.local(&p).ok().flatten();
                    let cached = chunks
                        .iter()
                        .filter(|c| {
                            s.cache
                                .as_ref()
                                .is_some_and(|cache| cache.contains(&c.0).unwrap_or(false))
                        })
                        .count();
                    (local, cached)
                })
                .await;
            let (local, cached) = found.unwrap_or((None, 0));
            let here = local.is_some_and(|l| l.same_content(&meta));
            let state = if here && self.pinned.is_some() && self.keeps(path) {
                "pinned"
            } else if here {
                "local"
            } else if cached > 0 {
                "cached"
            } else {
                "remote"
            };
            rows.push(Listed {
                path: path.to_owned(),
                kind: meta.kind,
                size: meta.size,
                state,
                cached: (cached, meta.chunks.len()),
            });
        }
        rows
    }

    async fn set_version(&self, path: &str, version: VersionVector) {
        let p = path.to_owned();
        let _ = self.disk.run(move |s| s.versions.set(&p, &version)).await;
    }

    /// [`Syncer::failed`] for each path of a batch whose write failed.
    fn failed_any(&mut self, results: Vec<(String, Result<(), FolderError>)>) {
        for (path, result) in results {
            if let Err(e) = result {
                self.failed(&path, e);
            }
        }
    }

    /// Reacts to a failed disk write: a local change means a rescan (which records the
    /// local edit as concurrent, so the conflict keeps both); anything else is the folder's
    /// error state.
    fn failed(&mut self, path: &str, e: FolderError) {
        match e {
            FolderError::LocalChange { .. } => {
                // Planned again after the rescan has recorded the local edit.
                self.rescan_soon = true;
                self.replan.insert(path.to_owned());
            }
            other => {
                tracing::error!("cannot update {path}: {other}");
                self.error = Some(other.to_string());
            }
        }
    }

    /// Stops assembling `path` (superseded) and drops its wants no other file shares.
    async fn abandon(&mut self, path: &str) {
        let Some(b) = self.building.remove(path) else {
            return;
        };
        let mut cancel = Vec::new();
        for h in b.missing {
            if let Some(paths) = self.waiting.get_mut(&h) {
                paths.remove(path);
                if paths.is_empty() {
                    self.waiting.remove(&h);
                    cancel.push(h);
                }
            }
        }
        let _ = self.node.cancel_chunks(self.share, cancel).await;
        let p = path.to_owned();
        let _ = self.disk.run(move |s| s.stagings.remove(&p)).await;
    }

    /// Makes the disk at `path` equal to `target`, then remembers `version`.
    async fn apply(
        &mut self,
        path: &str,
        target: FileMeta,
        expected: Option<FileMeta>,
        version: VersionVector,
    ) {
        if self
            .building
            .get(path)
            .is_some_and(|b| b.target == target && b.version == version)
        {
            return;
        }
        self.abandon(path).await;
        let p = path.to_owned();
        match target.kind {
            FileKind::Dir => {
                // Made with the rest of its batch (see `stage_pending`).
                self.to_make.retain(|(q, ..)| q != path);
                self.to_make
                    .push((path.to_owned(), target, expected, version));
            }
            FileKind::Symlink => {
                let (t, e) = (target.clone(), expected.clone());
                let result = self
                    .disk
                    .run(move |s| s.folder.apply_symlink(&p, &t, e.as_ref()))
                    .await;
                match result {
                    Some(Ok(())) => self.set_version(path, version).await,
                    Some(Err(e)) => self.failed(path, e),
                    None => {}
                }
            }
            FileKind::File => {
                // Staged with the rest of its batch (see `stage_pending`).
                self.to_stage.retain(|(q, ..)| q != path);
                self.to_stage
                    .push((path.to_owned(), target, expected, version));
            }
        }
    }

    /// Makes every directory `apply` queued, in one disk job (durable together, see
    /// `Folder::apply_dirs`), and records the versions they bring.
    async fn make_pending(&mut self) {
        let dirs = std::mem::take(&mut self.to_make);
        if dirs.is_empty() {
            return;
        }
        let Some(results) = self
            .disk
            .run(move |s| {
                let items = dirs
                    .iter()
                    .map(|(p, t, e, _)| (p.clone(), t.clone(), e.clone()))
                    .collect();
                let results = s.folder.apply_dirs(items);
                let versions: Vec<(String, VersionVector)> = dirs
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|((p, _, _, v), _)| (p.clone(), v.clone()))
                    .collect();
                s.record_versions(&versions, "made directories");
                dirs.into_iter()
                    .zip(results)
                    .map(|((p, ..), r)| (p, r))
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        self.failed_any(results);
    }

    /// Starts assembling every file `apply` queued: one disk job stages them all (copying
    /// the chunks this device already holds), one request asks the node for what is missing.
    async fn stage_pending(&mut self) {
        self.make_pending().await;
        let files = std::mem::take(&mut self.to_stage);
        if files.is_empty() {
            return;
        }
        let jobs: Vec<(String, FileMeta)> = files
            .iter()
            .map(|(p, t, ..)| (p.clone(), t.clone()))
            .collect();
        let Some(staged) = self
            .disk
            .run(move |s| {
                jobs.into_iter()
                    .map(|(p, t)| {
                        let staging = s.folder.stage(&p, &t)?;
                        let missing: BTreeSet<Hash> = staging.missing().copied().collect();
                        s.stagings.insert(p, staging);
                        Ok::<_, FolderError>(missing)
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        let mut want = Vec::new();
        for ((path, target, expected, version), staged) in files.into_iter().zip(staged) {
            let missing = match staged {
                Ok(m) => m,
                Err(e) => {
                    self.failed(&path, e);
                    continue;
                }
            };
            let lens: BTreeMap<Hash, u32> = target.chunks.iter().map(|c| (c.0, c.1)).collect();
            let bytes = missing
                .iter()
                .filter_map(|h| lens.get(h))
                .map(|&l| u64::from(l))
                .sum();
            for h in &missing {
                let paths = self.waiting.entry(*h).or_default();
                if paths.is_empty() {
                    want.push((*h, lens.get(h).copied().unwrap_or(0)));
                }
                paths.insert(path.clone());
            }
            let complete = missing.is_empty();
            self.building.insert(
                path.clone(),
                Building {
                    target,
                    expected,
                    version,
                    missing,
                    bytes,
                },
            );
            if complete {
                self.ready.insert(path);
            }
        }
        if !want.is_empty() {
            let _ = self.node.want_chunks(self.share, want).await;
        }
    }

    /// Chunks fetched for readers and for files being assembled; the files' writes go to
    /// the disk in one job.
    async fn on_chunks(&mut self, chunks: Vec<(Hash, Bytes)>) {
        let mut writes = Vec::new();
        for (hash, data) in chunks {
            self.stalled.remove(&hash);
            if let Some(readers) = self.readers.remove(&hash) {
                for (reply, _) in readers {
                    let _ = reply.send(Ok(data.clone()));
                }
                let d = data.clone();
                // Kept for the next read (a shallow replica's cache; a full one has none).
                let _ = self
                    .disk
                    .run(move |s| s.cache.as_ref().map(|c| c.put(&hash, &d)))
                    .await;
            }
            if let Some(paths) = self.waiting.remove(&hash) {
                for path in paths {
                    writes.push((path, hash, data.clone()));
                }
            }
        }
        if writes.is_empty() {
            return;
        }
        let Some(results) = self
            .disk
            .run(move |s| {
                writes
                    .into_iter()
                    .map(|(p, hash, d)| {
                        let written = match s.stagings.get_mut(&p) {
                            // Verified by the node's fetch scheduler.
                            Some(staging) => s.folder.write_verified_chunk(staging, &hash, &d),
                            None => Ok(()),
                        };
                        (p, hash, written)
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for (path, hash, written) in results {
            match written {
                Ok(()) => {
                    if let Some(b) = self.building.get_mut(&path) {
                        b.missing.remove(&hash);
                        let len = b
                            .target
                            .chunks
                            .iter()
                            .find(|c| c.0 == hash)
                            .map_or(0, |c| u64::from(c.1));
                        b.bytes = b.bytes.saturating_sub(len);
                    }
                    self.try_commit(&path);
                }
                Err(e) => {
                    self.abandon(&path).await;
                    self.failed(&path, e);
                }
            }
        }
    }

    /// Marks `path` for the next [`Syncer::commit_ready`] once every chunk is in place.
    fn try_commit(&mut self, path: &str) {
        if self
            .building
            .get(path)
            .is_some_and(|b| b.missing.is_empty())
        {
            self.ready.insert(path.to_owned());
        }
    }

    /// Commits every file whose chunks are all in place, many per durable transaction, and
    /// records the versions they bring.
    async fn commit_ready(&mut self) {
        let now = Instant::now();
        if self.ready.is_empty() {
            self.ready_since = None;
            return;
        }
        let since = *self.ready_since.get_or_insert(now);
        if !self.commit_due(since, now) {
            return;
        }
        self.ready_since = None;
        let ready = std::mem::take(&mut self.ready);
        let started = Instant::now();
        let count = ready.len();
        let mut batch = Vec::new();
        for path in ready {
            if self
                .building
                .get(&path)
                .is_some_and(|b| b.missing.is_empty())
                && let Some(b) = self.building.remove(&path)
            {
                batch.push((path, b.expected, b.version));
            }
        }
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(COMMIT_BATCH));
            let part = std::mem::replace(&mut batch, rest);
            let Some(results) = self
                .disk
                .run(move |s| {
                    let mut items = Vec::new();
                    let mut which = Vec::new();
                    for (i, (path, expected, _)) in part.iter().enumerate() {
                        if let Some(staging) = s.stagings.remove(path) {
                            items.push((staging, expected.clone()));
                            which.push(i);
                        }
                    }
                    let results = s.folder.commit_many(items);
                    let mut out: Vec<(String, Result<(), FolderError>)> = Vec::new();
                    let mut versions = Vec::new();
                    for (i, result) in which.into_iter().zip(results) {
                        let (path, _, version) = &part[i];
                        if result.is_ok() {
                            versions.push((path.clone(), version.clone()));
                        }
                        out.push((path.clone(), result));
                    }
                    s.record_versions(&versions, "committed files");
                    out
                })
                .await
            else {
                return;
            };
            self.failed_any(results);
        }
        if count > 0 {
            tracing::debug!("committed {count} files in {:?}", started.elapsed());
        }
    }

    /// Whether the ready files are committed now: enough of them, every file being assembled
    /// is among them (nothing else is coming soon), or the oldest has waited `COMMIT_WAIT`.
    fn commit_due(&self, since: Instant, now: Instant) -> bool {
        self.ready.len() >= COMMIT_MIN
            || self.ready.len() >= self.building.len()
            || now.duration_since(since) >= COMMIT_WAIT
    }

    async fn remove(&mut self, path: &str) {
        let Some((expected, version)) = self.pending_removals.remove(path) else {
            return;
        };
        self.abandon(path).await;
        let p = path.to_owned();
        let result = self
            .disk
            .run(move |s| {
                s.folder.remove(&p, expected.as_ref())?;
                // A directory that still holds something stays.
                s.folder.local(&p).map(|m| m.is_none())
            })
            .await;
        match result {
            Some(Ok(true)) => {
                self.set_version(path, version).await;
                // A parent deleted earlier may have waited for this child to go.
                if let Some((parent, _)) = path.rsplit_once('/') {
                    self.dirty.insert(parent.to_owned());
                }
            }
            // Kept, with its old version, so removing its last child plans it again. A
            // directory holding ignored files stays for good, as it should.
            Some(Ok(false)) => {}
            Some(Err(e)) => self.failed(path, e),
            None => {}
        }
    }

    /// This device wrote a losing version: keep it as a conflict copy, then write the
    /// winner after every sibling (which resolves the conflict everywhere) and apply it.
    async fn resolve(
        &mut self,
        path: &str,
        keep: Option<FileMeta>,
        target: Option<FileMeta>,
        local: Option<FileMeta>,
        context: VersionVector,
    ) {
        if let Some(mut keep) = keep {
            let copy = share_path::conflict_name(path, &self.me, unix_micros());
            keep.conflict_of = Some(path.to_owned());
            let (c, k) = (copy.clone(), keep.clone());
            let kept = self
                .disk
                .run(move |s| {
                    let staging = s.folder.stage(&c, &k)?;
                    s.folder.commit(staging, None)
                })
                .await;
            match kept {
                Some(Ok(())) => {
                    self.record(LocalChange {
                        path: copy.clone(),
                        meta: Some(keep),
                    })
                    .await;
                    tracing::info!("conflict on {path}: this device's version kept as {copy}");
                }
                Some(Err(e)) => return self.failed(path, e),
                None => return,
            }
        }
        let value = target.as_ref().map(|t| Bytes::from(t.encode()));
        let key = files::key_of(path);
        let dot = match self
            .node
            .write_after(self.share, &key, value, context.clone())
            .await
        {
            Ok(dot) => dot,
            Err(e) => {
                self.error = Some(format!("cannot resolve the conflict on {path}: {e}"));
                return;
            }
        };
        let mut version = context;
        version.set(dot);
        match target {
            Some(t) => self.apply(path, t, local, version).await,
            None => {
                self.pending_removals
                    .insert(path.to_owned(), (local, version));
                self.remove(path).await;
            }
        }
    }
}

/// Where a reader's chunk (or why there is none) goes.
type ChunkReply = oneshot::Sender<Result<Bytes, String>>;

/// Whether pinning `pinned` covers `path` (the path itself, or anything inside it).
fn covers(pinned: &str, path: &str) -> bool {
    pinned.is_empty()
        || path == pinned
        || (path.starts_with(pinned) && path.as_bytes().get(pinned.len()) == Some(&b'/'))
}

fn no_peer(hash: &Hash) -> String {
    let mut short = String::new();
    for b in &hash[..6] {
        short.push_str(&format!("{b:02x}"));
    }
    format!(
        "no connected device has chunk {short}… of this file (none online, or none answered within {} s): is a device that holds it online?",
        CHUNK_WAIT.as_secs()
    )
}

enum Step {
    Done,
    RemoveLater,
}
