//! Folder synchronization (layer 6): the directory layer, "just an application" of the
//! database, as the 2014 directory extension was.
//!
//! * [`meta`]: the document stored per path (kind, size, mode, mtime, chunks).
//! * [`path`]: normative path rules: what a share path may be, conflict-copy names.
//! * [`chunker`]: content-defined chunk boundaries (so an insertion re-sends one chunk).
//!
//! Every path of a folder share is a database key: [`FILES_PREFIX`] followed by the path
//! relative to the share root, `/`-separated (`/music/a.flac`). Keys that do not start with
//! the prefix belong to the application and are ignored by this layer. A deleted path is a
//! tombstone of its key. Content travels by chunk hash over the session extension
//! [`FILES_EXTENSION`] (`spec/files.md` is normative).

pub mod chunker;
pub mod fetch;
pub mod meta;
pub mod msg;
pub mod path;
pub mod plan;
pub mod range;

pub use fetch::{FetchEvent, Fetcher};
pub use meta::{ChunkRef, FileKind, FileMeta, Hash};
pub use msg::FilesMessage;

/// Database keys of folder entries start with this.
pub const FILES_PREFIX: &str = "/";

/// The session extension that carries chunk requests and chunk data.
pub const FILES_EXTENSION: &str = "org.clearskies.files";

/// The database key of a share path (`a/b.txt` → `/a/b.txt`).
pub fn key_of(path: &str) -> String {
    let mut key = String::with_capacity(FILES_PREFIX.len() + path.len());
    key.push_str(FILES_PREFIX);
    key.push_str(path);
    key
}

/// The share path of a database key, if the key is a folder entry.
pub fn path_of(key: &str) -> Option<&str> {
    key.strip_prefix(FILES_PREFIX).filter(|p| !p.is_empty())
}
