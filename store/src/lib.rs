//! # clearskies-store
//!
//! Durable state and the filesystem executor of ClearSkies, shared by every driver so that no
//! driver carries its own storage code (`DESIGN.md`, "store/"). Runtime-agnostic and blocking:
//! drivers call it from their blocking thread pool.
//!
//! * [`ReplicaStore`]: one share's database replica in an embedded, crash-safe
//!   [redb](https://docs.rs/redb) file. It executes the [`PersistOp`] batches proto's
//!   [`Replica`](clearskies_proto::db::Replica) emits, each in one ACID transaction that is
//!   durable (fsynced) when [`ReplicaStore::apply`] returns, and loads the
//!   [`ReplicaState`] a replica restarts from.
//!
//! * [`Folder`] (module [`folder`]): one share's folder on disk: scanning with an index of
//!   what was last seen, serving chunks to peers, and applying remote state through temp
//!   files, fsync and rename, never through a symlink (`spec/files.md`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod folder;

pub use folder::{Folder, FolderError, LocalChange, Staging};

use std::fmt;
use std::path::{Path, PathBuf};

use clearskies_proto::db::{
    Cursor, Forgotten, Meta, PersistOp, Record, ReplicaState, VersionVector,
};
use clearskies_proto::identity::DeviceId;
use clearskies_proto::wire::codec;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

mod versions;
pub use versions::Versions;
pub mod cache;
pub use cache::ChunkCache;

/// Current records by local sequence number, as CBOR.
const RECORDS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("records");
/// Per-peer cursors: device ID → index ID ‖ seq (16 bytes, big-endian).
const CURSORS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("cursors");
/// The replica's metadata under the key `meta`: format ‖ index ‖ seq ‖ write counter ‖ hlc;
/// what it forgot under the key `forgotten`: reset floor (8 bytes, big-endian) ‖ the forgotten
/// version vector as CBOR.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// The on-disk format version: the first word of the metadata. 2 since dots are stored in
/// their compact wire form; a format-1 file is refused (it predates any release).
const FORMAT: u64 = 2;

/// Why the store failed. The message says what to do.
#[derive(Debug)]
pub enum StoreError {
    /// The database file could not be opened, read or written (disk full, permissions, IO).
    Database {
        /// The file.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
    /// The file holds something this version cannot read.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Database { path, detail } => write!(
                f,
                "cannot use the database {}: {detail} (check free disk space and permissions)",
                path.display()
            ),
            StoreError::Corrupt { path, detail } => write!(
                f,
                "the database {} is unreadable: {detail} (restore it from a backup or remove it to resync)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

/// One share's replica on disk.
pub struct ReplicaStore {
    db: Database,
    path: PathBuf,
}

impl fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ReplicaStore {
    /// Opens (creating if needed) the replica database at `path` and loads its state.
    pub fn open(path: &Path) -> Result<(ReplicaStore, ReplicaState), StoreError> {
        let store = ReplicaStore {
            db: Database::create(path).map_err(|e| db_error(path, e))?,
            path: path.to_owned(),
        };
        let state = store.load()?;
        Ok((store, state))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies one batch atomically; when this returns `Ok`, the batch is on stable storage.
    /// On error nothing of the batch was applied.
    pub fn apply(&self, ops: &[PersistOp]) -> Result<(), StoreError> {
        let err = |e: &dyn fmt::Display| db_error(&self.path, e);
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut records = tx.open_table(RECORDS).map_err(|e| err(&e))?;
            let mut cursors = tx.open_table(CURSORS).map_err(|e| err(&e))?;
            let mut meta = tx.open_table(META).map_err(|e| err(&e))?;
            for op in ops {
                match op {
                    PersistOp::PutRecord { seq, record } => {
                        records
                            .insert(*seq, codec::encode(record).as_slice())
                            .map_err(|e| err(&e))?;
                    }
                    PersistOp::RemoveRecord { seq } => {
                        records.remove(*seq).map_err(|e| err(&e))?;
                    }
                    PersistOp::SetCursor { peer, cursor } => {
                        let mut v = [0u8; 16];
                        v[..8].copy_from_slice(&cursor.index.to_be_bytes());
                        v[8..].copy_from_slice(&cursor.seq.to_be_bytes());
                        cursors
                            .insert(&peer.as_bytes()[..], &v[..])
                            .map_err(|e| err(&e))?;
                    }
                    PersistOp::SetMeta(m) => {
                        let mut v = Vec::with_capacity(40);
                        for x in [FORMAT, m.index, m.seq, m.write_counter, m.hlc] {
                            v.extend_from_slice(&x.to_be_bytes());
                        }
                        meta.insert("meta", v.as_slice()).map_err(|e| err(&e))?;
                    }
                    PersistOp::SetForgotten(f) => {
                        let mut v = f.floor.to_be_bytes().to_vec();
                        v.extend_from_slice(&codec::encode(&f.version));
                        meta.insert("forgotten", v.as_slice())
                            .map_err(|e| err(&e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| err(&e))
    }

    fn load(&self) -> Result<ReplicaState, StoreError> {
        let err = |e: &dyn fmt::Display| db_error(&self.path, e);
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let mut state = ReplicaState::default();
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        match tx.open_table(META) {
            Ok(meta) => {
                if let Some(v) = meta.get("meta").map_err(|e| err(&e))? {
                    let v = v.value();
                    let word = |i: usize| -> Result<u64, StoreError> {
                        v.get(i * 8..i * 8 + 8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_be_bytes)
                            .ok_or_else(|| corrupt("metadata is truncated".into()))
                    };
                    if word(0)? != FORMAT {
                        return Err(corrupt(format!(
                            "format {} is not {FORMAT} (written by an older development build)",
                            word(0)?
                        )));
                    }
                    state.meta = Meta {
                        index: word(1)?,
                        seq: word(2)?,
                        write_counter: word(3)?,
                        hlc: word(4)?,
                    };
                }
                if let Some(v) = meta.get("forgotten").map_err(|e| err(&e))? {
                    let v = v.value();
                    let (floor, vector) = v
                        .split_first_chunk::<8>()
                        .ok_or_else(|| corrupt("forgotten state is truncated".into()))?;
                    let version: VersionVector = codec::decode(vector)
                        .map_err(|e| corrupt(format!("forgotten vector: {e}")))?;
                    state.forgotten = Forgotten {
                        version,
                        floor: u64::from_be_bytes(*floor),
                    };
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(state),
            Err(e) => return Err(err(&e)),
        }
        if let Ok(records) = tx.open_table(RECORDS) {
            for entry in records.iter().map_err(|e| err(&e))? {
                let (seq, bytes) = entry.map_err(|e| err(&e))?;
                let record: Record = codec::decode(bytes.value())
                    .map_err(|e| corrupt(format!("record {}: {e}", seq.value())))?;
                state.records.push((seq.value(), record));
            }
        }
        if let Ok(cursors) = tx.open_table(CURSORS) {
            for entry in cursors.iter().map_err(|e| err(&e))? {
                let (peer, v) = entry.map_err(|e| err(&e))?;
                let id: [u8; 32] = peer
                    .value()
                    .try_into()
                    .map_err(|_| corrupt("bad cursor key".into()))?;
                let v: [u8; 16] = v
                    .value()
                    .try_into()
                    .map_err(|_| corrupt("bad cursor".into()))?;
                let (index, seq) = v.split_at(8);
                state.cursors.insert(
                    DeviceId::from_bytes(id),
                    Cursor {
                        index: u64::from_be_bytes(index.try_into().unwrap_or_default()),
                        seq: u64::from_be_bytes(seq.try_into().unwrap_or_default()),
                    },
                );
            }
        }
        Ok(state)
    }
}

fn db_error(path: &Path, e: impl fmt::Display) -> StoreError {
    StoreError::Database {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}
