//! The folder executor: one share's folder on a real filesystem (`spec/files.md` § Local
//! state and § Applying).
//!
//! [`Folder`] is what a driver runs the folder side of proto against. It
//!
//! * **scans** the folder ([`Folder::scan`]): walks it without following symlinks, skips
//!   `.clearskies` and what `.clearskiesignore` excludes, re-hashes only what the quick check
//!   (kind, size, mtime, inode, mode) says changed, and reports the changes;
//! * keeps an **index** in a redb file outside the folder: the last scanned or applied state
//!   of every path, and where every chunk hash can be found locally, so that
//!   [`Folder::read_chunk`] serves a peer's request without a scan and [`Folder::stage`]
//!   copies chunks it already has instead of fetching them;
//! * **applies** remote state ([`Folder::stage`], [`Folder::write_chunk`], [`Folder::commit`],
//!   [`Folder::apply_dir`], [`Folder::apply_symlink`], [`Folder::remove`]): content goes to a
//!   temp file under `<root>/.clearskies/tmp/`, is fsynced and renamed into place, and only if
//!   the path still is what the caller last saw (`expected`): otherwise the user changed it
//!   meanwhile and the call fails with [`FolderError::LocalChange`] without touching it.
//!
//! It never writes or reads through a symlink inside the folder: every parent component of a
//! path must be a real directory. Unix only (modes, inodes).
//!
//! Blocking: drivers call it from their blocking thread pool.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clearskies_proto::files::chunker::{Chunker, class_for};
use clearskies_proto::files::meta::Hash;
use clearskies_proto::files::path::{self as share_path, IGNORE_FILE, RESERVED_ROOT};
use clearskies_proto::files::{ChunkRef, FileKind, FileMeta};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use sha2::{Digest, Sha256};

/// Path → entry: the on-disk stat the entry was taken from, then the FileMeta CBOR.
const ENTRIES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("entries");
/// Chunk hash → location: offset (u64 BE) ‖ length (u32 BE) ‖ path (UTF-8).
const CHUNKS: MultimapTableDefinition<'_, &[u8], &[u8]> = MultimapTableDefinition::new("chunks");
/// Format of the entry values.
const ENTRY_FORMAT: u8 = 1;
/// Read buffer for hashing and copying.
const BUFFER: usize = 1 << 20;
/// Where temp files live, below the root.
const TMP_DIR: &str = "tmp";
/// A temp file not staged for this long is abandoned and removed by the next scan.
pub const TEMP_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A file modified less than this long ago is re-hashed before it is served, even when the
/// quick check sees no change: a write in the same timestamp tick as the scan leaves the
/// mtime as it was (`spec/files.md` § 6.4).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A change found by [`Folder::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalChange {
    /// The share path.
    pub path: String,
    /// The new state, or `None` when the path is gone.
    pub meta: Option<FileMeta>,
}

/// Why a folder operation failed. The message says what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum FolderError {
    /// The share's root folder does not exist (or is not a folder). Nothing is reported as
    /// deleted while this lasts.
    RootMissing {
        /// The root.
        root: PathBuf,
    },
    /// The root exists but its `.clearskies` entry is gone although the index holds entries:
    /// most likely an unmounted mount point or a replaced folder. Nothing is reported as
    /// deleted while this lasts.
    MarkerMissing {
        /// The root.
        root: PathBuf,
    },
    /// The disk (or the user's quota) is full. The temp file was removed; retry later.
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// The path changed on disk since it was last scanned; nothing was replaced. Rescan and
    /// decide again.
    LocalChange {
        /// The share path.
        path: String,
    },
    /// The path is not a valid share path, or reaching it would go through a symlink or a
    /// non-directory.
    UnsafePath {
        /// The share path as given.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The metadata does not fit the operation (a directory passed to `stage`, chunk lengths
    /// that do not add up, chunk data of the wrong length or hash, ...).
    BadMeta {
        /// The share path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// `commit` of a staging that still misses chunks.
    Incomplete {
        /// The share path.
        path: String,
        /// How many distinct chunks are missing.
        missing: usize,
    },
    /// A filesystem operation failed.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The index database failed or holds something unreadable.
    Index(String),
}

impl fmt::Display for FolderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FolderError::RootMissing { root } => write!(
                f,
                "the shared folder {} is missing: reconnect the drive or restore the folder (nothing is deleted meanwhile)",
                root.display()
            ),
            FolderError::MarkerMissing { root } => write!(
                f,
                "the shared folder {} has no .clearskies entry: if it is an unmounted drive, mount it; if the folder is really there, create the folder {}/.clearskies to confirm (nothing is deleted meanwhile)",
                root.display(),
                root.display()
            ),
            FolderError::NoSpace { path } => write!(
                f,
                "no space left on the disk while writing {}: free some space (sync resumes by itself)",
                path.display()
            ),
            FolderError::LocalChange { path } => write!(
                f,
                "{path} changed on this device since the last scan; it was left as it is (rescan, then sync again)"
            ),
            FolderError::UnsafePath { path, why } => {
                write!(f, "refusing to touch {path:?}: {why}")
            }
            FolderError::BadMeta { path, why } => {
                write!(
                    f,
                    "cannot apply {path}: {why} (a bug in the caller or the peer)"
                )
            }
            FolderError::Incomplete { path, missing } => write!(
                f,
                "cannot commit {path}: {missing} chunks are still missing (fetch them first)"
            ),
            FolderError::Io { path, source } => {
                write!(
                    f,
                    "{}: {source} (check permissions and the disk)",
                    path.display()
                )
            }
            FolderError::Index(detail) => write!(
                f,
                "the folder index is unusable: {detail} (remove the index file to rebuild it by a full scan)"
            ),
        }
    }
}

impl std::error::Error for FolderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FolderError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Whether an IO error means the disk or the quota is full.
fn is_no_space(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        // ENOSPC and EDQUOT on Linux, for errors that reach us without a kind.
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FolderError + '_ {
    move |source| {
        if is_no_space(&source) {
            FolderError::NoSpace {
                path: path.to_owned(),
            }
        } else {
            FolderError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

fn index_err(e: impl fmt::Display) -> FolderError {
    FolderError::Index(e.to_string())
}

/// What the quick check compares: the on-disk facts an entry was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    kind: FileKind,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    mode: u32,
}

impl Stat {
    /// The stat of a `symlink_metadata`, or `None` for what a folder does not sync
    /// (sockets, FIFOs, devices).
    fn of(m: &fs::Metadata) -> Option<Stat> {
        let t = m.file_type();
        let kind = if t.is_file() {
            FileKind::File
        } else if t.is_dir() {
            FileKind::Dir
        } else if t.is_symlink() {
            FileKind::Symlink
        } else {
            return None;
        };
        Some(Stat {
            kind,
            ino: m.ino(),
            size: if kind == FileKind::Dir { 0 } else { m.len() },
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
            mode: m.mode() & 0o7777,
        })
    }
}

impl Stat {
    /// Whether the quick check sees no change. A directory's mtime is left out: it moves
    /// whenever an entry inside is added or removed, which those entries' own records say
    /// (otherwise syncing a child would "change" its parent on both sides).
    fn unchanged(&self, now: &Stat) -> bool {
        if self.kind == FileKind::Dir && now.kind == FileKind::Dir {
            self.ino == now.ino && self.mode == now.mode
        } else {
            self == now
        }
    }
}

/// One indexed path.
#[derive(Debug, Clone)]
struct Entry {
    stat: Stat,
    meta: FileMeta,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let s = &self.stat;
        let mut v = Vec::with_capacity(30 + 40 * self.meta.chunks.len());
        v.push(ENTRY_FORMAT);
        v.push(u8::from(s.kind));
        v.extend_from_slice(&s.ino.to_be_bytes());
        v.extend_from_slice(&s.size.to_be_bytes());
        v.extend_from_slice(&s.mtime_ns.to_be_bytes());
        v.extend_from_slice(&s.mode.to_be_bytes());
        v.extend_from_slice(&self.meta.encode());
        v
    }

    fn decode(path: &str, v: &[u8]) -> Result<Entry, FolderError> {
        let bad = || FolderError::Index(format!("entry {path:?} is corrupt"));
        Ok(Entry {
            stat: Entry::decode_stat(path, v)?,
            meta: FileMeta::decode(&v[30..]).map_err(|_| bad())?,
        })
    }

    /// Only the stat of an encoded entry: a file's chunk list is not decoded.
    fn decode_stat(path: &str, v: &[u8]) -> Result<Stat, FolderError> {
        let bad = || FolderError::Index(format!("entry {path:?} is corrupt"));
        if v.len() < 30 || v[0] != ENTRY_FORMAT {
            return Err(bad());
        }
        let word = |at: usize| -> [u8; 8] {
            let mut w = [0; 8];
            w.copy_from_slice(&v[at..at + 8]);
            w
        };
        let mut mode = [0; 4];
        mode.copy_from_slice(&v[26..30]);
        Ok(Stat {
            kind: FileKind::try_from(v[1]).map_err(|_| bad())?,
            ino: u64::from_be_bytes(word(2)),
            size: u64::from_be_bytes(word(10)),
            mtime_ns: i64::from_be_bytes(word(18)),
            mode: u32::from_be_bytes(mode),
        })
    }
}

/// A place that holds a chunk (path, offset, length) and the stat the index recorded for its
/// file.
type IndexedPlace = (String, u64, u32, Option<Stat>);

/// A chunk a staged file needs: its hash, length and every offset it occupies.
type Wanted = (Hash, (u32, Vec<u64>));

/// Where a chunk can be read: a file, an offset and the chunk's length.
fn location(path: &str, offset: u64, len: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + path.len());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(path.as_bytes());
    v
}

fn parse_location(v: &[u8]) -> Option<(String, u64, u32)> {
    let offset = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let len = u32::from_be_bytes(v.get(8..12)?.try_into().ok()?);
    let path = std::str::from_utf8(v.get(12..)?).ok()?;
    Some((path.to_owned(), offset, len))
}

/// The `len` bytes at `offset` of `file` if they hash to `hash`.
fn read_verified(file: &File, hash: &Hash, offset: u64, len: u32) -> Option<Vec<u8>> {
    let mut data = vec![0u8; len as usize];
    file.read_exact_at(&mut data, offset).ok()?;
    (Sha256::digest(&data)[..] == hash[..]).then_some(data)
}

/// Two states that a sync must treat as equal: content, kind, mode and mtime.
fn same_state(a: &FileMeta, b: &FileMeta) -> bool {
    a.same_content(b) && a.mode == b.mode && a.mtime_ns == b.mtime_ns
}

fn system_time(ns: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// The permission bits applied for a recorded mode. Set-user-ID and set-group-ID are never
/// applied to files: a peer must not be able to plant a privileged executable.
fn applied_mode(kind: FileKind, mode: u32) -> u32 {
    match kind {
        FileKind::File => mode & 0o1777,
        _ => mode & 0o7777,
    }
}

/// Most threads hashing new and changed files during a scan.
const HASH_THREADS: usize = 4;

/// A file at least this large is hashed on several threads when a scan has fewer files to
/// hash than cores.
const PARALLEL_HASHING: u64 = 32 << 20;

/// Staging starts the writeback of what it copied every this many bytes.
const WRITE_BEHIND: u64 = 16 << 20;

/// A file at least this large has its local chunks verified on several threads when staged.
const PARALLEL_STAGING: u64 = 8 << 20;

/// A batch of at least this many staged files is made durable with one `syncfs`.
const SYNCFS_BATCH: usize = 16;

/// More than this many directories to sync at once are synced with one `syncfs`.
const SYNCFS_DIRS: usize = 4;

/// Threads that finish a batch of staged files together (a device with a queue serves
/// their fsyncs in parallel; one after another, each waits for the last).
const SYNC_THREADS: usize = 4;

/// Sets each staged file's mode and mtime and makes it durable, spread over up to
/// [`SYNC_THREADS`] threads, each holding one file open at a time; returns each file's
/// metadata, in order.
///
/// A batch of at least [`SYNCFS_BATCH`] files is made durable with one `syncfs` of their
/// filesystem instead of one fsync each (one device flush instead of hundreds); if that
/// fails or is not available, each file is fsynced, so each gets its own outcome.
fn finish_parallel<'a>(
    stagings: impl Iterator<Item = &'a Staging>,
) -> Vec<io::Result<fs::Metadata>> {
    fn finish(s: &Staging, fsync: bool) -> io::Result<fs::Metadata> {
        let file = OpenOptions::new().read(true).write(true).open(&s.temp)?;
        file.set_permissions(fs::Permissions::from_mode(applied_mode(
            FileKind::File,
            s.meta.mode,
        )))?;
        file.set_times(FileTimes::new().set_modified(system_time(s.meta.mtime_ns)))?;
        if fsync {
            file.sync_all()?;
        }
        file.metadata()
    }
    let stagings: Vec<&Staging> = stagings.collect();
    let lost = || Err(io::Error::other("fsync thread panicked"));
    if stagings.len() >= SYNCFS_BATCH {
        let results = map_parallel(&stagings, SYNC_THREADS, |s| finish(s, false), lost);
        if sync_filesystem(&stagings[0].temp).is_ok() {
            return results;
        }
    }
    map_parallel(&stagings, SYNC_THREADS, |s| finish(s, true), lost)
}

/// Makes the entries of `dirs` durable: one `syncfs` when there are more than a few (see
/// [`finish_parallel`]), else (or if that fails) an fsync of each, on up to
/// [`SYNC_THREADS`] threads.
fn sync_dirs(dirs: &[PathBuf]) -> Result<(), FolderError> {
    if dirs.len() > SYNCFS_DIRS && sync_filesystem(&dirs[0]).is_ok() {
        return Ok(());
    }
    let synced = map_parallel(
        dirs,
        SYNC_THREADS,
        |dir| File::open(dir).and_then(|d| d.sync_all()).err(),
        || Some(io::Error::other("fsync thread panicked")),
    );
    match dirs.iter().zip(synced).find_map(|(d, e)| e.map(|e| (d, e))) {
        Some((dir, e)) => Err(io_err(dir)(e)),
        None => Ok(()),
    }
}

/// `syncfs` of the filesystem holding `path`: every dirty page and inode on it is written
/// and the device flushed. It reports write-back errors (Linux 5.8 and later); elsewhere it
/// is not available and callers fsync file by file.
fn sync_filesystem(path: &Path) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let any = File::open(path)?;
        rustix::fs::syncfs(&any).map_err(io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = path;
        Err(io::Error::from(ErrorKind::Unsupported))
    }
}

/// Starts writing back the dirty pages of `file` in `start..end` without waiting for them.
/// On Linux `POSIX_FADV_DONTNEED` does that (and drops pages already clean); elsewhere this
/// does nothing. Errors are ignored: the fsync is what makes the data durable.
fn write_behind(file: &File, start: u64, end: u64) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(len) = std::num::NonZeroU64::new(end.saturating_sub(start)) {
        let _ = rustix::fs::fadvise(file, start, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (file, start, end);
}

/// A read buffer for a file of `size` bytes: at most [`BUFFER`], and no larger than the file
/// needs (zeroing a large buffer for each of many small files costs more than reading them).
fn read_buffer(size: u64) -> Vec<u8> {
    let len = usize::try_from(size.saturating_add(1)).map_or(BUFFER, |n| n.min(BUFFER));
    vec![0u8; len]
}

/// Reads `file` (of about `size` bytes) to its end, chunking and hashing as it goes: the
/// chunks and the bytes read.
fn hash_chunks(mut file: &File, size: u64, class: u32) -> io::Result<(Vec<ChunkRef>, u64)> {
    let mut chunker = Chunker::new(class);
    let mut hasher = Sha256::new();
    let mut chunks = Vec::new();
    let mut buffer = read_buffer(size);
    let mut start = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &buffer[..n];
        while let Some(cut) = chunker.next_cut(rest) {
            hasher.update(&rest[..cut]);
            let len = chunker.position() - start;
            start = chunker.position();
            // A chunk is at most the class's maximum, which fits a u32.
            chunks.push(ChunkRef(hasher.finalize_reset().into(), len as u32));
            rest = &rest[cut..];
        }
        hasher.update(rest);
    }
    let total = chunker.position();
    if let Some(len) = chunker.finish() {
        chunks.push(ChunkRef(hasher.finalize().into(), len));
    }
    Ok((chunks, total))
}

/// [`hash_chunks`] for one large file: this thread finds the cut points while `threads`
/// others hash the chunks found so far, reading them again (from the page cache the first
/// read just filled).
fn hash_chunks_parallel(
    mut file: &File,
    class: u32,
    threads: usize,
) -> io::Result<(Vec<ChunkRef>, u64)> {
    let (jobs, queue) = std::sync::mpsc::sync_channel::<(usize, u64, u32)>(1024);
    let queue = std::sync::Mutex::new(queue);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> io::Result<Vec<(usize, Hash)>> {
                    let mut out = Ok(Vec::new());
                    let mut buffer = Vec::new();
                    // After an error, jobs are still taken (and dropped) so the sender never
                    // waits on a full queue.
                    while let Ok((i, at, len)) =
                        queue.lock().map_or(Err(()), |q| q.recv().map_err(drop))
                    {
                        let Ok(done) = &mut out else { continue };
                        buffer.resize(len as usize, 0);
                        match file.read_exact_at(&mut buffer, at) {
                            Ok(()) => done.push((i, Sha256::digest(&buffer).into())),
                            Err(e) => out = Err(e),
                        }
                    }
                    out
                })
            })
            .collect();
        let mut chunker = Chunker::new(class);
        let mut lens = Vec::new();
        let mut buffer = vec![0u8; BUFFER];
        let mut start = 0u64;
        let mut read = Ok(());
        let send = |lens: &mut Vec<u32>, start: u64, len: u32| {
            let sent = jobs.send((lens.len(), start, len));
            lens.push(len);
            sent.is_ok()
        };
        'reading: loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    read = Err(e);
                    break;
                }
            };
            let mut rest = &buffer[..n];
            while let Some(cut) = chunker.next_cut(rest) {
                let len = (chunker.position() - start) as u32;
                if !send(&mut lens, start, len) {
                    break 'reading;
                }
                start = chunker.position();
                rest = &rest[cut..];
            }
        }
        let total = chunker.position();
        if let Some(len) = chunker.finish() {
            send(&mut lens, start, len);
        }
        drop(jobs);
        let mut hashes: Vec<Option<Hash>> = vec![None; lens.len()];
        for worker in workers {
            let done = worker
                .join()
                .map_err(|_| io::Error::other("a hashing thread panicked"))??;
            for (i, hash) in done {
                hashes[i] = Some(hash);
            }
        }
        read?;
        let chunks = hashes
            .into_iter()
            .zip(lens)
            .map(|(hash, len)| hash.map(|h| ChunkRef(h, len)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| io::Error::other("a chunk was not hashed"))?;
        Ok((chunks, total))
    })
}

/// At most `max`, and no more than the machine's cores: threads for work that keeps a core busy.
fn cpu_threads(max: usize) -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(max))
}

/// `f` over `items` on up to `threads` scoped threads (no more than there are items), each
/// taking the next item as it finishes one; the results come back in the items' order. An
/// item whose thread panicked gets `lost()`.
fn map_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
    lost: impl Fn() -> R,
) -> Vec<R> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return out;
                        };
                        out.push((i, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in done {
        slots[i] = Some(r);
    }
    slots.into_iter().map(|r| r.unwrap_or_else(&lost)).collect()
}

/// A file being assembled from chunks in a temp file (see [`Folder::stage`]).
#[derive(Debug)]
pub struct Staging {
    path: String,
    meta: FileMeta,
    /// Not kept open between writes: a device assembling many files at once must not run out
    /// of file descriptors.
    temp: PathBuf,
    /// Chunk hash → its length and every offset it occupies in the file, for chunks not
    /// yet written.
    missing: BTreeMap<Hash, (u32, Vec<u64>)>,
}

impl Staging {
    /// The chunks still to be written with [`Folder::write_chunk`], each once.
    pub fn missing(&self) -> impl Iterator<Item = &Hash> {
        self.missing.keys()
    }

    /// Whether every chunk is in place.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The share path being written.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The state the file will have.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }
}

/// One share's folder and its index.
pub struct Folder {
    root: PathBuf,
    index_path: PathBuf,
    db: Database,
}

impl fmt::Debug for Folder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Folder")
            .field("root", &self.root)
            .field("index", &self.index_path)
            .finish_non_exhaustive()
    }
}

impl Folder {
    /// Opens the folder at `root` with its index at `index` (a redb file, created if needed,
    /// kept outside the folder: under the tool's home). Creates `<root>/.clearskies/tmp/`.
    pub fn open(root: &Path, index: &Path) -> Result<Folder, FolderError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(FolderError::RootMissing {
                    root: root.to_owned(),
                });
            }
        }
        let tmp = root.join(RESERVED_ROOT).join(TMP_DIR);
        let db = Database::create(index).map_err(index_err)?;
        let tx = db.begin_write().map_err(index_err)?;
        let indexed = {
            let entries = tx.open_table(ENTRIES).map_err(index_err)?;
            tx.open_multimap_table(CHUNKS).map_err(index_err)?;
            entries.len().map_err(index_err)?
        };
        tx.commit().map_err(index_err)?;
        // A fresh share creates the marker; an indexed one whose marker vanished is left
        // alone so that `scan` reports it instead of treating the folder as emptied.
        if indexed == 0 || root.join(RESERVED_ROOT).is_dir() {
            fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        Ok(Folder {
            root: root.to_owned(),
            index_path: index.to_owned(),
            db,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn check_root(&self) -> Result<(), FolderError> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(FolderError::RootMissing {
                    root: self.root.clone(),
                });
            }
        }
        if !self.root.join(RESERVED_ROOT).is_dir() {
            return Err(FolderError::MarkerMissing {
                root: self.root.clone(),
            });
        }
        Ok(())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(RESERVED_ROOT).join(TMP_DIR)
    }

    /// The absolute path of a share path (`a/b` → `<root>/a/b`).
    fn abs(&self, path: &str) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(path.split('/'));
        p
    }

    // ---- index ---------------------------------------------------------------------------

    /// Every indexed entry.
    fn load_entries(&self) -> Result<BTreeMap<String, Entry>, FolderError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let table = tx.open_table(ENTRIES).map_err(index_err)?;
        let mut out = BTreeMap::new();
        for item in table.iter().map_err(index_err)? {
            let (k, v) = item.map_err(index_err)?;
            let path = k.value().to_owned();
            let entry = Entry::decode(&path, v.value())?;
            out.insert(path, entry);
        }
        Ok(out)
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, FolderError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let table = tx.open_table(ENTRIES).map_err(index_err)?;
        match table.get(path).map_err(index_err)? {
            Some(v) => Ok(Some(Entry::decode(path, v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes index updates in one durable transaction: `Some` puts, `None` removes.
    fn update_index(&self, updates: &[(String, Option<Entry>)]) -> Result<(), FolderError> {
        if updates.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(index_err)?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(index_err)?;
            let mut chunks = tx.open_multimap_table(CHUNKS).map_err(index_err)?;
            for (path, entry) in updates {
                let old = match entries.get(path.as_str()).map_err(index_err)? {
                    Some(v) => Some(Entry::decode(path, v.value())?),
                    None => None,
                };
                if let Some(old) = old {
                    let mut offset = 0u64;
                    for c in &old.meta.chunks {
                        let loc = location(path, offset, c.len());
                        chunks
                            .remove(&c.hash()[..], loc.as_slice())
                            .map_err(index_err)?;
                        offset += u64::from(c.len());
                    }
                }
                match entry {
                    Some(e) => {
                        entries
                            .insert(path.as_str(), e.encode().as_slice())
                            .map_err(index_err)?;
                        let mut offset = 0u64;
                        for c in &e.meta.chunks {
                            let loc = location(path, offset, c.len());
                            chunks
                                .insert(&c.hash()[..], loc.as_slice())
                                .map_err(index_err)?;
                            offset += u64::from(c.len());
                        }
                    }
                    None => {
                        entries.remove(path.as_str()).map_err(index_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(index_err)
    }

    /// The path's state as last scanned or applied, `None` if not indexed.
    pub fn local(&self, path: &str) -> Result<Option<FileMeta>, FolderError> {
        Ok(self.entry(path)?.map(|e| e.meta))
    }

    /// Whether some indexed file holds the chunk (as of its last scan).
    pub fn has_chunk(&self, hash: &Hash) -> Result<bool, FolderError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let chunks = tx.open_multimap_table(CHUNKS).map_err(index_err)?;
        let mut locations = chunks.get(&hash[..]).map_err(index_err)?;
        Ok(locations.next().is_some())
    }

    /// [`Folder::locations`], each with the stat the index recorded for its file.
    fn locations_with_stat(&self, hash: &Hash) -> Result<Vec<IndexedPlace>, FolderError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let chunks = tx.open_multimap_table(CHUNKS).map_err(index_err)?;
        let entries = tx.open_table(ENTRIES).map_err(index_err)?;
        let mut out = Vec::new();
        for v in chunks.get(&hash[..]).map_err(index_err)? {
            let v = v.map_err(index_err)?;
            if let Some((path, offset, len)) = parse_location(v.value()) {
                let stat = match entries.get(path.as_str()).map_err(index_err)? {
                    Some(e) => Some(Entry::decode_stat(&path, e.value())?),
                    None => None,
                };
                out.push((path, offset, len, stat));
            }
        }
        Ok(out)
    }

    fn locations(&self, hash: &Hash) -> Result<Vec<(String, u64, u32)>, FolderError> {
        let tx = self.db.begin_read().map_err(index_err)?;
        let chunks = tx.open_multimap_table(CHUNKS).map_err(index_err)?;
        let mut out = Vec::new();
        for v in chunks.get(&hash[..]).map_err(index_err)? {
            let v = v.map_err(index_err)?;
            if let Some(loc) = parse_location(v.value()) {
                out.push(loc);
            }
        }
        Ok(out)
    }

    // ---- safety --------------------------------------------------------------------------

    /// Validates a share path and checks that each existing parent component is a real
    /// directory (not a symlink, not a file). Returns whether all parents exist.
    fn check_parents(&self, path: &str) -> Result<bool, FolderError> {
        share_path::validate(path).map_err(|e| FolderError::UnsafePath {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        let mut dir = self.root.clone();
        let components: Vec<&str> = path.split('/').collect();
        for name in &components[..components.len() - 1] {
            dir.push(name);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) => {
                    let what = if m.file_type().is_symlink() {
                        "a symlink"
                    } else {
                        "not a directory"
                    };
                    return Err(FolderError::UnsafePath {
                        path: path.to_owned(),
                        why: format!(
                            "its parent {} is {what}: paths are never followed through it",
                            dir.strip_prefix(&self.root).unwrap_or(&dir).display()
                        ),
                    });
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(true)
    }

    /// Creates the missing parent directories of a checked path.
    fn create_parents(&self, path: &str) -> Result<(), FolderError> {
        let mut dir = self.root.clone();
        let components: Vec<&str> = path.split('/').collect();
        for name in &components[..components.len() - 1] {
            dir.push(name);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(FolderError::UnsafePath {
                        path: path.to_owned(),
                        why: "a parent changed into something that is not a directory".into(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(io_err(&dir))?;
                }
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(())
    }

    /// Opens an indexed file for reading without following symlinks anywhere below the root:
    /// `None` if it is gone, not a regular file, or was swapped while opening.
    fn open_plain(&self, path: &str) -> Result<Option<(File, Stat)>, FolderError> {
        match self.check_parents(path) {
            Ok(true) => {}
            Ok(false) | Err(FolderError::UnsafePath { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
        let abs = self.abs(path);
        let before = match fs::symlink_metadata(&abs) {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&abs)(e)),
        };
        // Unreadable (permissions, IO errors): not usable now, kept as indexed.
        let Ok(file) = File::open(&abs) else {
            return Ok(None);
        };
        let opened = file.metadata().map_err(io_err(&abs))?;
        // Swapped for a symlink (or another file) between the check and the open.
        if opened.ino() != before.ino() || opened.dev() != before.dev() {
            return Ok(None);
        }
        Ok(Stat::of(&opened).map(|s| (file, s)))
    }

    /// Whether the path on disk is still what `expected` says (via the index's quick check).
    /// `None` expects the path not to exist; an expected directory is matched by any
    /// directory (our own writes inside it move its mtime).
    fn matches_expected(
        &self,
        path: &str,
        abs: &Path,
        expected: Option<&FileMeta>,
    ) -> Result<(bool, Option<Stat>), FolderError> {
        let disk = match fs::symlink_metadata(abs) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(abs)(e)),
        };
        let stat = disk.as_ref().and_then(Stat::of);
        let ok = match (expected, &disk) {
            (None, None) => true,
            (None, Some(_)) | (Some(_), None) => false,
            // A directory has no content to lose: any directory is the expected one.
            (Some(want), Some(_)) if want.kind == FileKind::Dir => {
                stat.is_some_and(|s| s.kind == FileKind::Dir)
            }
            (Some(want), Some(_)) => match (self.entry(path)?, stat) {
                (Some(entry), Some(stat)) => {
                    entry.stat.unchanged(&stat) && same_state(&entry.meta, want)
                }
                _ => false,
            },
        };
        Ok((ok, stat))
    }

    // ---- scan ----------------------------------------------------------------------------

    /// Walks the folder and returns what changed since the last scan (or apply), updating the
    /// index in one durable transaction.
    ///
    /// Never reports deletions when the root is missing ([`FolderError::RootMissing`]) or its
    /// `.clearskies` marker is gone ([`FolderError::MarkerMissing`]); nor for entries below a
    /// directory it cannot read, nor for a file that changed while being hashed (it is picked
    /// up by the next scan). A path that becomes ignored is forgotten by the index without a
    /// deletion being reported.
    pub fn scan(&mut self) -> Result<Vec<LocalChange>, FolderError> {
        self.check_root()?;
        let old = self.load_entries()?;
        let ignore = self.ignore_rules();
        let mut walk = Walk {
            folder: self,
            old: &old,
            ignore: &ignore,
            seen: BTreeSet::new(),
            keep: Vec::new(),
            changes: Vec::new(),
            updates: Vec::new(),
            to_hash: Vec::new(),
        };
        walk.dir(&self.root.clone(), "")?;
        walk.hash_all()?;
        let Walk {
            seen,
            keep,
            mut changes,
            mut updates,
            ..
        } = walk;
        // The root may have vanished during the walk: then nothing is deleted.
        self.check_root()?;
        for (path, entry) in &old {
            if seen.contains(path) {
                continue;
            }
            let kept = keep
                .iter()
                .any(|k| path == k || path.starts_with(&format!("{k}/")));
            if kept {
                continue;
            }
            updates.push((path.clone(), None));
            let ignored = ignore
                .matched_path_or_any_parents(self.abs(path), entry.stat.kind == FileKind::Dir)
                .is_ignore();
            if !ignored {
                changes.push(LocalChange {
                    path: path.clone(),
                    meta: None,
                });
            }
        }
        self.update_index(&updates)?;
        self.remove_abandoned_temp_files();
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(changes)
    }

    /// Removes temp files nobody staged for [`TEMP_MAX_AGE`] (a transfer abandoned because
    /// the remote file changed again, or a crash between creating and renaming a symlink).
    fn remove_abandoned_temp_files(&self) {
        let Ok(dir) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let now = SystemTime::now();
        for item in dir.flatten() {
            let old = item
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > TEMP_MAX_AGE);
            if old {
                let _ = fs::remove_file(item.path());
            }
        }
    }

    /// The rules of `<root>/.clearskiesignore` (none if it is missing or unreadable).
    fn ignore_rules(&self) -> Gitignore {
        let mut builder = GitignoreBuilder::new(&self.root);
        let file = self.root.join(IGNORE_FILE);
        if file.is_file() {
            // Bad lines are skipped; the rest still apply.
            let _ = builder.add(&file);
        }
        builder.build().unwrap_or_else(|_| Gitignore::empty())
    }

    /// Hashes a file: its chunk list, or `None` if it changed while being read.
    /// Hashes a file, with `threads` hashing threads when it is large: its chunk list, or
    /// `None` if it changed while being read.
    fn hash_file(
        &self,
        path: &str,
        before: &Stat,
        threads: usize,
    ) -> Result<Option<Vec<ChunkRef>>, FolderError> {
        let Some((file, opened)) = self.open_plain(path)? else {
            return Ok(None);
        };
        if opened != *before {
            return Ok(None);
        }
        let abs = self.abs(path);
        let class = class_for(before.size);
        let hashed = if threads > 1 && before.size >= PARALLEL_HASHING {
            hash_chunks_parallel(&file, class, threads)
        } else {
            hash_chunks(&file, before.size, class)
        };
        // Unreadable now: keep the indexed state until a later scan.
        let Ok((chunks, total)) = hashed else {
            return Ok(None);
        };
        let after = file.metadata().map_err(io_err(&abs))?;
        let now = fs::symlink_metadata(&abs).ok().and_then(|m| Stat::of(&m));
        if Stat::of(&after) != Some(*before) || now != Some(*before) || total != before.size {
            return Ok(None);
        }
        Ok(Some(chunks))
    }

    // ---- serving chunks --------------------------------------------------------------------

    /// Reads `len` bytes at `offset` within the chunk `hash` from a local file that holds it.
    /// `None` if no indexed file still holds it, or if the range lies outside the chunk.
    ///
    /// A file the quick check vouches for (same inode, size, mtime and mode as when it was
    /// hashed, and not modified within [`RACY_WINDOW`] of now) is trusted as indexed: only
    /// the range asked for is read. Any other file has the whole chunk read and hashed first
    /// (`spec/files.md` § 8, answering).
    pub fn read_chunk(
        &self,
        hash: &Hash,
        offset: u32,
        len: u32,
    ) -> Result<Option<Vec<u8>>, FolderError> {
        let slice = |data: Vec<u8>| {
            let start = offset as usize;
            let end = start.checked_add(len as usize)?;
            data.get(start..end).map(<[u8]>::to_vec)
        };
        let Some(end) = offset.checked_add(len) else {
            return Ok(None);
        };
        let now = SystemTime::now();
        for (path, at, chunk_len, indexed) in self.locations_with_stat(hash)? {
            if end > chunk_len {
                return Ok(None);
            }
            let Some((file, stat)) = self.open_plain(&path)? else {
                continue;
            };
            let settled = now
                .duration_since(system_time(stat.mtime_ns))
                .is_ok_and(|age| age >= RACY_WINDOW);
            if indexed.is_some_and(|i| i.unchanged(&stat)) && settled {
                let mut data = vec![0u8; len as usize];
                if file
                    .read_exact_at(&mut data, at + u64::from(offset))
                    .is_ok()
                {
                    return Ok(Some(data));
                }
                continue;
            }
            if let Some(data) = read_verified(&file, hash, at, chunk_len) {
                return Ok(slice(data));
            }
        }
        Ok(None)
    }

    /// The whole chunk from any local file that still holds it (verified).
    fn find_chunk(&self, hash: &Hash) -> Result<Option<Vec<u8>>, FolderError> {
        for (path, offset, len) in self.locations(hash)? {
            let Some((file, _)) = self.open_plain(&path)? else {
                continue;
            };
            if let Some(data) = read_verified(&file, hash, offset, len) {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    // ---- applying --------------------------------------------------------------------------

    /// Starts writing the file `path` with the state `meta`: opens (or resumes) its temp file
    /// under `<root>/.clearskies/tmp/`, keeps the chunks a previous attempt already wrote
    /// (verified), and copies every chunk some local file holds (verified). What is left is
    /// [`Staging::missing`].
    pub fn stage(&mut self, path: &str, meta: &FileMeta) -> Result<Staging, FolderError> {
        self.check_root()?;
        self.check_parents(path)?;
        let bad = |why: &str| FolderError::BadMeta {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if meta.kind != FileKind::File {
            return Err(bad("only files are staged"));
        }
        meta.check().map_err(bad)?;

        let mut id = Sha256::new();
        id.update(b"clearskies/staging/v1\0");
        id.update(path.as_bytes());
        id.update([0]);
        id.update(meta.size.to_be_bytes());
        for c in &meta.chunks {
            id.update(c.hash());
            id.update(c.len().to_be_bytes());
        }
        let id = id.finalize();
        let hex: String = id[..16].iter().map(|b| format!("{b:02x}")).collect();
        let tmp_dir = self.tmp_dir();
        fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let temp = tmp_dir.join(format!("{hex}.part"));
        let result = self.prepare(path, meta, &temp);
        if let Err(FolderError::NoSpace { .. }) = &result {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn prepare(&self, path: &str, meta: &FileMeta, temp: &Path) -> Result<Staging, FolderError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(temp)
            .map_err(io_err(temp))?;
        // Touched so that the scan's clean-up of abandoned temp files leaves it alone.
        file.set_times(FileTimes::new().set_modified(SystemTime::now()))
            .map_err(io_err(temp))?;
        let existing = file.metadata().map_err(io_err(temp))?.len();
        if existing != meta.size {
            file.set_len(meta.size).map_err(io_err(temp))?;
        }
        let mut wanted: BTreeMap<Hash, (u32, Vec<u64>)> = BTreeMap::new();
        let mut offset = 0u64;
        for c in &meta.chunks {
            wanted
                .entry(*c.hash())
                .or_insert_with(|| (c.len(), Vec::new()))
                .1
                .push(offset);
            offset += u64::from(c.len());
        }
        // In file order, so that the temp file is written front to back.
        let mut wanted: Vec<Wanted> = wanted.into_iter().collect();
        wanted.sort_unstable_by_key(|(_, (_, offsets))| offsets[0]);
        // Whether the chunk is in place now: kept from a previous attempt or copied from a
        // local file that holds it (both verified).
        let place = |(hash, (len, offsets)): &Wanted| {
            let mut data = None;
            let mut wrong = Vec::new();
            // Only a resumed temp file has anything to read back (no buffer otherwise).
            let holds = |at: u64| {
                let mut buffer = vec![0u8; *len as usize];
                (file.read_exact_at(&mut buffer, at).is_ok()
                    && Sha256::digest(&buffer)[..] == hash[..])
                    .then_some(buffer)
            };
            for &at in offsets {
                match (at < existing).then(|| holds(at)).flatten() {
                    Some(held) => {
                        data.get_or_insert(held);
                    }
                    None => wrong.push(at),
                }
            }
            if data.is_none() {
                data = self.find_chunk(hash)?;
            }
            let Some(data) = data else {
                return Ok(false);
            };
            for at in wrong {
                file.write_all_at(&data, at).map_err(io_err(temp))?;
            }
            Ok(true)
        };
        // Verifying a large file's local chunks is hashing: spread it over the cores.
        let threads = if meta.size >= PARALLEL_STAGING {
            cpu_threads(HASH_THREADS)
        } else {
            1
        };
        // Runs of about `WRITE_BEHIND` bytes, each done by one thread, which then starts that
        // part's writeback: the disk writes while the rest is copied, and the fsync before
        // the rename has less left to wait for.
        let mut segments: Vec<&[Wanted]> = Vec::new();
        let mut rest = &wanted[..];
        while !rest.is_empty() {
            let mut bytes = 0u64;
            let n = rest
                .iter()
                .position(|(_, (len, _))| {
                    bytes += u64::from(*len);
                    bytes >= WRITE_BEHIND
                })
                .map_or(rest.len(), |i| i + 1);
            let (segment, tail) = rest.split_at(n);
            segments.push(segment);
            rest = tail;
        }
        let placed = map_parallel(
            &segments,
            threads,
            |segment| {
                let placed: Vec<_> = segment.iter().map(place).collect();
                if placed.iter().any(|p| matches!(p, Ok(true))) {
                    let first = segment.first().map_or(0, |(_, (_, o))| o[0]);
                    let end = segment
                        .last()
                        .map_or(0, |(_, (len, o))| o[0] + u64::from(*len));
                    write_behind(&file, first, end);
                }
                placed
            },
            || {
                vec![Err(FolderError::Io {
                    path: temp.to_owned(),
                    source: io::Error::other("a staging thread panicked"),
                })]
            },
        );
        let placed = placed.into_iter().flatten();
        let mut missing = BTreeMap::new();
        for ((hash, entry), placed) in wanted.into_iter().zip(placed) {
            if !placed? {
                missing.insert(hash, entry);
            }
        }
        drop(file);
        Ok(Staging {
            path: path.to_owned(),
            meta: meta.clone(),
            temp: temp.to_owned(),
            missing,
        })
    }

    /// Writes the chunk `hash` at every offset it occupies in the staged file. Writing a chunk
    /// that is not missing is a no-op. On a full disk the temp file is removed
    /// ([`FolderError::NoSpace`]): stage again later.
    pub fn write_chunk(
        &mut self,
        staging: &mut Staging,
        hash: &Hash,
        data: &[u8],
    ) -> Result<(), FolderError> {
        if staging.missing.contains_key(hash) && Sha256::digest(data)[..] != hash[..] {
            return Err(FolderError::BadMeta {
                path: staging.path.clone(),
                why: "chunk data does not match its hash".into(),
            });
        }
        self.write_verified_chunk(staging, hash, data)
    }

    /// [`Folder::write_chunk`] for data already checked against `hash` (the fetch scheduler
    /// verifies every chunk before handing it over): hashing it again would double the cost
    /// of receiving. Only the length is checked.
    pub fn write_verified_chunk(
        &mut self,
        staging: &mut Staging,
        hash: &Hash,
        data: &[u8],
    ) -> Result<(), FolderError> {
        let Some((len, offsets)) = staging.missing.get(hash) else {
            return Ok(());
        };
        if data.len() != *len as usize {
            return Err(FolderError::BadMeta {
                path: staging.path.clone(),
                why: "chunk data does not match its length".into(),
            });
        }
        let written = OpenOptions::new()
            .write(true)
            .open(&staging.temp)
            .and_then(|file| {
                offsets
                    .iter()
                    .try_for_each(|&at| file.write_all_at(data, at))
            });
        if let Err(e) = written {
            let err = io_err(&staging.temp)(e);
            if let FolderError::NoSpace { .. } = err {
                let _ = fs::remove_file(&staging.temp);
            }
            return Err(err);
        }
        staging.missing.remove(hash);
        Ok(())
    }

    /// Puts a complete staged file in place: fsyncs it, sets mode and mtime, checks that the
    /// path on disk is still `expected` (`None`: must not exist) and renames it over the path,
    /// then fsyncs the directory and indexes the file. On [`FolderError::LocalChange`] nothing
    /// is replaced and the temp file is removed (the caller decides anew after a rescan).
    pub fn commit(
        &mut self,
        staging: Staging,
        expected: Option<&FileMeta>,
    ) -> Result<(), FolderError> {
        let mut results = self.commit_many(vec![(staging, expected.cloned())]);
        results.pop().unwrap_or(Ok(()))
    }

    /// [`Folder::commit`] for many files at once, with one result each, in order. The files
    /// are fsynced together (on a few threads, so the device sees them in parallel), each
    /// directory that received one is fsynced once, and the index is updated in one durable
    /// transaction: many small files cost a fraction of committing them one by one, and
    /// nothing is indexed before its file and directory entry are on disk.
    pub fn commit_many(
        &mut self,
        items: Vec<(Staging, Option<FileMeta>)>,
    ) -> Vec<Result<(), FolderError>> {
        let mut results: Vec<Result<(), FolderError>> = Vec::with_capacity(items.len());
        let mut open = Vec::new();
        for (i, (staging, expected)) in items.into_iter().enumerate() {
            results.push(Ok(()));
            if !staging.is_complete() {
                results[i] = Err(FolderError::Incomplete {
                    path: staging.path.clone(),
                    missing: staging.missing.len(),
                });
                continue;
            }
            open.push((i, staging, expected));
        }
        // Data first: every temp file is on disk, with its mode and mtime, before any of them
        // is renamed into place.
        let synced = finish_parallel(open.iter().map(|(_, s, _)| s));
        let mut updates = Vec::new();
        let mut dirs = BTreeSet::new();
        let mut placed = Vec::new();
        for ((i, staging, expected), synced) in open.into_iter().zip(synced) {
            let temp = staging.temp.clone();
            let outcome = synced
                .map_err(io_err(&temp))
                .and_then(|stat| self.place(staging, expected.as_ref(), &stat));
            match outcome {
                Ok((path, entry, parent)) => {
                    dirs.insert(parent);
                    updates.push((path, Some(entry)));
                    placed.push(i);
                }
                Err(e) => {
                    if let FolderError::NoSpace { .. } | FolderError::LocalChange { .. } = &e {
                        let _ = fs::remove_file(&temp);
                    }
                    results[i] = Err(e);
                }
            }
        }
        // Then the directory entries, then the index.
        self.settle_batch(dirs, &updates, &placed, &mut results);
        results
    }

    /// Renames one fsynced, complete staged file over its path if the disk still holds what
    /// was expected there. Returns the index entry and the directory to fsync.
    fn place(
        &mut self,
        staging: Staging,
        expected: Option<&FileMeta>,
        stat: &fs::Metadata,
    ) -> Result<(String, Entry, PathBuf), FolderError> {
        let Staging {
            path, meta, temp, ..
        } = staging;
        self.check_root()?;
        self.check_parents(&path)?;

        self.create_parents(&path)?;
        let abs = self.abs(&path);
        let (ok, current) = self.matches_expected(&path, &abs, expected)?;
        if !ok {
            return Err(FolderError::LocalChange { path });
        }
        if current.is_some_and(|s| s.kind == FileKind::Dir) {
            // A directory replaced by a file: only if nothing is left in it.
            fs::remove_dir(&abs).map_err(|e| {
                if e.kind() == ErrorKind::DirectoryNotEmpty {
                    FolderError::LocalChange { path: path.clone() }
                } else {
                    io_err(&abs)(e)
                }
            })?;
        }
        fs::rename(&temp, &abs).map_err(io_err(&abs))?;
        let stat = Stat::of(stat).ok_or_else(|| FolderError::Io {
            path: abs.clone(),
            source: io::Error::other("the temp file is not a regular file"),
        })?;
        let parent = abs.parent().unwrap_or(&self.root).to_owned();
        Ok((path, Entry { stat, meta }, parent))
    }

    fn sync_parent(&self, abs: &Path) -> Result<(), FolderError> {
        let parent = abs.parent().unwrap_or(&self.root);
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(parent))
    }

    /// Creates or updates the directory `path` with the mode and mtime of `meta`. An existing
    /// directory satisfies an expectation of nothing or of a directory (directories have no
    /// content to lose); anything else at the path must be `expected`, and is replaced (a
    /// directory only if empty).
    pub fn apply_dir(
        &mut self,
        path: &str,
        meta: &FileMeta,
        expected: Option<&FileMeta>,
    ) -> Result<(), FolderError> {
        let mut results = self.apply_dirs(vec![(path.to_owned(), meta.clone(), expected.cloned())]);
        results.pop().unwrap_or(Ok(()))
    }

    /// [`Folder::apply_dir`] for many directories (parents before children), durable together:
    /// the directories made or changed and their parents are synced together
    /// ([`sync_dirs`]), and the index records them all in one transaction. One result per
    /// item, in order.
    pub fn apply_dirs(
        &mut self,
        items: Vec<(String, FileMeta, Option<FileMeta>)>,
    ) -> Vec<Result<(), FolderError>> {
        let mut results = Vec::with_capacity(items.len());
        let mut entries = Vec::new();
        let mut made = Vec::new();
        let mut dirs = BTreeSet::new();
        for (path, meta, expected) in items {
            match self.make_dir(&path, &meta, expected.as_ref()) {
                Ok((abs, stat)) => {
                    dirs.insert(abs.parent().unwrap_or(&self.root).to_owned());
                    dirs.insert(abs);
                    made.push(results.len());
                    entries.push((path, Some(Entry { stat, meta })));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        self.settle_batch(dirs, &entries, &made, &mut results);
        results
    }

    /// The end of a batch that changed the entries of `dirs`: makes those durable, then
    /// indexes `entries`. If either fails, the items at `done` (those `entries` record) get
    /// the error.
    fn settle_batch(
        &self,
        dirs: BTreeSet<PathBuf>,
        entries: &[(String, Option<Entry>)],
        done: &[usize],
        results: &mut [Result<(), FolderError>],
    ) {
        let dirs: Vec<PathBuf> = dirs.into_iter().collect();
        let durable = sync_dirs(&dirs).and_then(|()| self.update_index(entries));
        if let Err(e) = durable {
            let why = e.to_string();
            for &i in done {
                results[i] = Err(FolderError::Io {
                    path: self.root.clone(),
                    source: io::Error::other(why.clone()),
                });
            }
        }
    }

    /// The disk part of [`Folder::apply_dir`], without syncing: the directory's absolute
    /// path and stat once made.
    fn make_dir(
        &self,
        path: &str,
        meta: &FileMeta,
        expected: Option<&FileMeta>,
    ) -> Result<(PathBuf, Stat), FolderError> {
        self.check_root()?;
        self.check_parents(path)?;
        if meta.kind != FileKind::Dir {
            return Err(FolderError::BadMeta {
                path: path.to_owned(),
                why: "apply_dir needs a directory".into(),
            });
        }
        self.create_parents(path)?;
        let abs = self.abs(path);
        let is_dir = fs::symlink_metadata(&abs)
            .map(|m| m.file_type().is_dir())
            .unwrap_or(false);
        let dir_ok = is_dir && expected.is_none_or(|e| e.kind == FileKind::Dir);
        if !dir_ok {
            let (ok, stat) = self.matches_expected(path, &abs, expected)?;
            if !ok {
                return Err(FolderError::LocalChange {
                    path: path.to_owned(),
                });
            }
            if stat.is_some() {
                fs::remove_file(&abs).map_err(io_err(&abs))?;
            }
            fs::create_dir(&abs).map_err(io_err(&abs))?;
        }
        fs::set_permissions(
            &abs,
            fs::Permissions::from_mode(applied_mode(FileKind::Dir, meta.mode)),
        )
        .map_err(io_err(&abs))?;
        let dir = File::open(&abs).map_err(io_err(&abs))?;
        dir.set_times(FileTimes::new().set_modified(system_time(meta.mtime_ns)))
            .map_err(io_err(&abs))?;
        let m = dir.metadata().map_err(io_err(&abs))?;
        let stat = Stat::of(&m).ok_or_else(|| FolderError::Io {
            path: abs.clone(),
            source: io::Error::other("not a directory"),
        })?;
        Ok((abs, stat))
    }

    fn index_as(
        &self,
        path: &str,
        abs: &Path,
        m: &fs::Metadata,
        meta: &FileMeta,
    ) -> Result<(), FolderError> {
        let stat = Stat::of(m).ok_or_else(|| FolderError::Io {
            path: abs.to_owned(),
            source: io::Error::other("not a file, directory or symlink"),
        })?;
        let entry = Entry {
            stat,
            meta: meta.clone(),
        };
        self.update_index(&[(path.to_owned(), Some(entry))])
    }

    /// Creates (or replaces) the symlink `path` with the exact target text of `meta`, even if
    /// it points outside the folder (it is never followed). Symlink mtimes are not applied.
    pub fn apply_symlink(
        &mut self,
        path: &str,
        meta: &FileMeta,
        expected: Option<&FileMeta>,
    ) -> Result<(), FolderError> {
        self.check_root()?;
        self.check_parents(path)?;
        let target = match (&meta.kind, &meta.target) {
            (FileKind::Symlink, Some(t)) => t.clone(),
            _ => {
                return Err(FolderError::BadMeta {
                    path: path.to_owned(),
                    why: "apply_symlink needs a symlink with a target".into(),
                });
            }
        };
        self.create_parents(path)?;
        let abs = self.abs(path);
        let (ok, stat) = self.matches_expected(path, &abs, expected)?;
        if !ok {
            return Err(FolderError::LocalChange {
                path: path.to_owned(),
            });
        }
        if stat.is_some_and(|s| s.kind == FileKind::Dir) {
            fs::remove_dir(&abs).map_err(|e| {
                if e.kind() == ErrorKind::DirectoryNotEmpty {
                    FolderError::LocalChange {
                        path: path.to_owned(),
                    }
                } else {
                    io_err(&abs)(e)
                }
            })?;
        }
        // Made beside the temp files, then renamed over the path: replacing is atomic.
        let mut id = Sha256::new();
        id.update(b"clearskies/symlink/v1\0");
        id.update(path.as_bytes());
        let hex: String = id.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tmp_dir = self.tmp_dir();
        fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let temp = tmp_dir.join(format!("{hex}.link"));
        let _ = fs::remove_file(&temp);
        std::os::unix::fs::symlink(&target, &temp).map_err(io_err(&temp))?;
        fs::rename(&temp, &abs).map_err(io_err(&abs))?;
        self.sync_parent(&abs)?;
        let m = fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
        self.index_as(path, &abs, &m, meta)
    }

    /// Deletes the file or symlink `path`, or the directory `path` if it is empty, provided
    /// the disk still shows `expected`. A directory that still holds something (ignored or
    /// not yet synced files) is left in place and indexed as it is now, so the next scan does
    /// not report it. A path already gone is fine.
    pub fn remove(&mut self, path: &str, expected: Option<&FileMeta>) -> Result<(), FolderError> {
        self.check_root()?;
        if !self.check_parents(path)? {
            return self.update_index(&[(path.to_owned(), None)]);
        }
        let abs = self.abs(path);
        let (ok, stat) = self.matches_expected(path, &abs, expected)?;
        let Some(stat) = stat else {
            let gone = fs::symlink_metadata(&abs).is_err();
            if gone {
                return self.update_index(&[(path.to_owned(), None)]);
            }
            return Err(FolderError::UnsafePath {
                path: path.to_owned(),
                why: "it is neither a file, a directory nor a symlink".into(),
            });
        };
        if !ok {
            return Err(FolderError::LocalChange {
                path: path.to_owned(),
            });
        }
        if stat.kind == FileKind::Dir {
            match fs::remove_dir(&abs) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {
                    let m = fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
                    let meta = self.entry(path)?.map(|e| e.meta).ok_or_else(|| {
                        FolderError::LocalChange {
                            path: path.to_owned(),
                        }
                    })?;
                    return self.index_as(path, &abs, &m, &meta);
                }
                Err(e) => return Err(io_err(&abs)(e)),
            }
        } else {
            fs::remove_file(&abs).map_err(io_err(&abs))?;
        }
        self.sync_parent(&abs)?;
        self.update_index(&[(path.to_owned(), None)])
    }
}

/// State of one scan's walk.
struct Walk<'a> {
    folder: &'a Folder,
    old: &'a BTreeMap<String, Entry>,
    ignore: &'a Gitignore,
    /// Paths present now.
    seen: BTreeSet<String>,
    /// Paths (and everything below them) to keep as indexed: unreadable or changing.
    keep: Vec<String>,
    changes: Vec<LocalChange>,
    updates: Vec<(String, Option<Entry>)>,
    /// New or changed files, hashed after the walk (several at a time).
    to_hash: Vec<(PathBuf, String, Stat)>,
}

impl Walk<'_> {
    fn dir(&mut self, abs: &Path, rel: &str) -> Result<(), FolderError> {
        let mut names = Vec::new();
        let read = match fs::read_dir(abs) {
            Ok(r) => r,
            Err(e) if rel.is_empty() => return Err(io_err(abs)(e)),
            Err(_) => {
                // Unreadable: keep what the index knows below it rather than delete it.
                self.keep.push(rel.to_owned());
                return Ok(());
            }
        };
        for item in read {
            match item {
                // Stat relative to the open directory (no symlink is followed): cheaper than
                // walking the whole path again for each of many files.
                Ok(item) => names.push((item.file_name(), item.metadata())),
                Err(_) => {
                    self.keep.push(rel.to_owned());
                    return Ok(());
                }
            }
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, metadata) in names {
            // Names that are not UTF-8 cannot be share paths: not synced.
            let Some(name) = name.to_str() else { continue };
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if share_path::validate(&path).is_err() {
                continue; // `.clearskies` at the root, names too long, backslashes, ...
            }
            let child = abs.join(name);
            let Ok(m) = metadata else {
                self.keep.push(path);
                continue;
            };
            let Some(stat) = Stat::of(&m) else { continue };
            if self
                .ignore
                .matched(&child, stat.kind == FileKind::Dir)
                .is_ignore()
            {
                continue;
            }
            self.entry(&child, path, stat)?;
        }
        Ok(())
    }

    fn entry(&mut self, abs: &Path, path: String, stat: Stat) -> Result<(), FolderError> {
        self.seen.insert(path.clone());
        let old = self.old.get(&path);
        let unchanged = old.is_some_and(|o| o.stat.unchanged(&stat));
        if !unchanged {
            let meta = match stat.kind {
                FileKind::Dir => Some(FileMeta {
                    kind: FileKind::Dir,
                    mode: stat.mode,
                    mtime_ns: stat.mtime_ns,
                    size: 0,
                    chunks: Vec::new(),
                    target: None,
                    conflict_of: None,
                }),
                FileKind::Symlink => fs::read_link(abs)
                    .ok()
                    .and_then(|t| t.into_os_string().into_string().ok())
                    .map(|target| FileMeta {
                        kind: FileKind::Symlink,
                        mode: stat.mode,
                        mtime_ns: stat.mtime_ns,
                        size: target.len() as u64,
                        chunks: Vec::new(),
                        target: Some(target),
                        conflict_of: None,
                    }),
                FileKind::File => {
                    self.to_hash.push((abs.to_owned(), path.clone(), stat));
                    None
                }
            };
            if let Some(meta) = meta {
                self.record(&path, stat, meta);
            }
        }
        if stat.kind == FileKind::Dir {
            self.dir(abs, &path)?;
        }
        Ok(())
    }

    /// Hashes the new and changed files the walk found, on up to [`HASH_THREADS`] threads
    /// (each takes the next file), and records them in walk order.
    fn hash_all(&mut self) -> Result<(), FolderError> {
        let files = std::mem::take(&mut self.to_hash);
        let this = &*self;
        let threads = cpu_threads(HASH_THREADS);
        // Fewer files than cores: each file's chunks are hashed on several threads.
        let per_file = (threads / files.len().max(1)).max(1);
        let results = map_parallel(
            &files,
            threads,
            |(abs, path, stat)| this.hash_settled(abs, path, *stat, per_file),
            || {
                Err(FolderError::Io {
                    path: this.folder.root.clone(),
                    source: io::Error::other("a hashing thread panicked"),
                })
            },
        );
        for ((_, path, _), result) in files.into_iter().zip(results) {
            match result? {
                Some((meta, now)) => self.record(&path, now, meta),
                // Still changing (or unreadable): keep the old entry, try next scan.
                None => self.keep.push(path),
            }
        }
        Ok(())
    }

    /// Hashes a file, once more if it changed while being read; `None` if it keeps changing.
    fn hash_settled(
        &self,
        abs: &Path,
        path: &str,
        stat: Stat,
        threads: usize,
    ) -> Result<Option<(FileMeta, Stat)>, FolderError> {
        let mut stat = stat;
        for attempt in 0..2 {
            if attempt > 0 {
                match fs::symlink_metadata(abs).ok().and_then(|m| Stat::of(&m)) {
                    Some(s) if s.kind == FileKind::File => stat = s,
                    _ => return Ok(None),
                }
            }
            if let Some(chunks) = self.folder.hash_file(path, &stat, threads)? {
                let meta = FileMeta {
                    kind: FileKind::File,
                    mode: stat.mode,
                    mtime_ns: stat.mtime_ns,
                    size: stat.size,
                    chunks,
                    target: None,
                    conflict_of: None,
                };
                return Ok(Some((meta, stat)));
            }
        }
        Ok(None)
    }

    /// Indexes the new state; reports it if it differs from the indexed one.
    fn record(&mut self, path: &str, stat: Stat, meta: FileMeta) {
        let old = self.old.get(path);
        if !old.is_some_and(|o| same_state(&o.meta, &meta)) {
            self.changes.push(LocalChange {
                path: path.to_owned(),
                meta: Some(meta.clone()),
            });
            self.updates
                .push((path.to_owned(), Some(Entry { stat, meta })));
        } else if let Some(o) = old {
            // Same state, new inode or mode bits we do not apply: keep the recorded meta.
            self.updates.push((
                path.to_owned(),
                Some(Entry {
                    stat,
                    meta: o.meta.clone(),
                }),
            ));
        }
    }
}
