//! The chunk cache of a shallow replica: content fetched on demand, kept within a size limit,
//! evicted least-recently-used, surviving restarts.
//!
//! Each chunk is a file named by its hash in the cache folder (under the tool's home, never in
//! the share), written to a temp file and renamed into place. A redb index keeps each chunk's
//! size and when it was last used (a counter, not the clock). A chunk is verified against its
//! hash when it enters and again when it is read: the cache never hands out bytes that do not
//! match, so it needs no fsync per chunk (a chunk torn by a crash fails its check and is
//! dropped) and its index is committed without waiting for the disk, made durable when the
//! cache closes. Files the index does not know (written just before a crash) are removed when
//! the cache opens, so the size limit holds across crashes too.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clearskies_proto::files::Hash;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// hash → (last use, size).
const CHUNKS: TableDefinition<'_, &[u8; 32], (u64, u64)> = TableDefinition::new("chunks");
/// `clock` → the last use counter handed out.
const CLOCK: TableDefinition<'_, &str, u64> = TableDefinition::new("clock");

/// The default size limit: 1 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 1 << 30;

/// A bounded, persistent cache of verified chunks.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    db: Database,
    limit: u64,
    /// Bytes of chunks the index holds.
    size: std::cell::Cell<u64>,
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        // Make the index's last commits durable.
        if let Ok(tx) = self.db.begin_write() {
            let _ = tx.commit();
        }
    }
}

fn db_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError::Database {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

impl ChunkCache {
    /// Opens (or creates) the cache in `dir` with at most `limit` bytes of chunks. A cache
    /// reopened with a smaller limit is trimmed at once.
    pub fn open(dir: &Path, limit: u64) -> Result<ChunkCache, StoreError> {
        let err = db_err(dir);
        fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = Database::create(dir.join("cache.redb")).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(CHUNKS).map_err(|e| err(&e))?;
        tx.open_table(CLOCK).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        let cache = ChunkCache {
            dir: dir.to_owned(),
            db,
            limit,
            size: std::cell::Cell::new(0),
        };
        cache.size.set(cache.indexed_size()?);
        cache.remove_strays()?;
        cache.evict(0)?;
        Ok(cache)
    }

    fn file(&self, hash: &Hash) -> PathBuf {
        let mut name = String::with_capacity(64);
        for b in hash {
            name.push_str(&format!("{b:02x}"));
        }
        self.dir.join(name)
    }

    /// Bytes of chunks held.
    pub fn size(&self) -> Result<u64, StoreError> {
        Ok(self.size.get())
    }

    /// Removes chunk files the index does not know.
    fn remove_strays(&self) -> Result<(), StoreError> {
        let err = db_err(&self.dir);
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let table = tx.open_table(CHUNKS).map_err(|e| err(&e))?;
        for entry in fs::read_dir(&self.dir).map_err(|e| err(&e))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stem = name.strip_suffix(".tmp").unwrap_or(&name);
            let Some(hash) = unhex(stem) else {
                continue;
            };
            if name.ends_with(".tmp") || table.get(&hash).map_err(|e| err(&e))?.is_none() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn indexed_size(&self) -> Result<u64, StoreError> {
        let err = db_err(&self.dir);
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let table = tx.open_table(CHUNKS).map_err(|e| err(&e))?;
        let mut total = 0;
        for row in table.iter().map_err(|e| err(&e))? {
            let (_, v) = row.map_err(|e| err(&e))?;
            total += v.value().1;
        }
        Ok(total)
    }

    /// Whether the cache holds `hash` (without touching its recency).
    pub fn contains(&self, hash: &Hash) -> Result<bool, StoreError> {
        let err = db_err(&self.dir);
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let table = tx.open_table(CHUNKS).map_err(|e| err(&e))?;
        Ok(table.get(hash).map_err(|e| err(&e))?.is_some())
    }

    /// The chunk, verified, marked as just used; `None` if absent (or found damaged, in
    /// which case it is dropped).
    pub fn get(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.contains(hash)? {
            return Ok(None);
        }
        let data = match fs::read(self.file(hash)) {
            Ok(d) => d,
            Err(_) => {
                self.drop_chunk(hash)?;
                return Ok(None);
            }
        };
        if Sha256::digest(&data).as_slice() != hash {
            self.drop_chunk(hash)?;
            return Ok(None);
        }
        self.touch(hash, data.len() as u64)?;
        Ok(Some(data))
    }

    /// Adds a chunk (ignored if `data` does not hash to `hash`), first evicting the least
    /// recently used chunks until it fits the limit. A chunk larger than the limit is not
    /// kept.
    pub fn put(&self, hash: &Hash, data: &[u8]) -> Result<(), StoreError> {
        if Sha256::digest(data).as_slice() != hash || data.len() as u64 > self.limit {
            return Ok(());
        }
        if self.contains(hash)? {
            return self.touch(hash, data.len() as u64);
        }
        // Room first, so the folder never holds more than the limit, even for a moment.
        self.evict(data.len() as u64)?;
        let err = db_err(&self.dir);
        let path = self.file(hash);
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp).map_err(|e| err(&e))?;
            f.write_all(data).map_err(|e| err(&e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| err(&e))?;
        self.touch(hash, data.len() as u64)?;
        self.size.set(self.size.get() + data.len() as u64);
        Ok(())
    }

    fn touch(&self, hash: &Hash, size: u64) -> Result<(), StoreError> {
        let err = db_err(&self.dir);
        let mut tx = self.db.begin_write().map_err(|e| err(&e))?;
        tx.set_durability(redb::Durability::None)
            .map_err(|e| err(&e))?;
        {
            let mut clock = tx.open_table(CLOCK).map_err(|e| err(&e))?;
            let now = clock
                .get("clock")
                .map_err(|e| err(&e))?
                .map_or(0, |v| v.value())
                + 1;
            clock.insert("clock", now).map_err(|e| err(&e))?;
            let mut chunks = tx.open_table(CHUNKS).map_err(|e| err(&e))?;
            chunks.insert(hash, (now, size)).map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))
    }

    fn drop_chunk(&self, hash: &Hash) -> Result<(), StoreError> {
        let err = db_err(&self.dir);
        let mut tx = self.db.begin_write().map_err(|e| err(&e))?;
        tx.set_durability(redb::Durability::None)
            .map_err(|e| err(&e))?;
        {
            let mut chunks = tx.open_table(CHUNKS).map_err(|e| err(&e))?;
            if let Some(old) = chunks.remove(hash).map_err(|e| err(&e))? {
                self.size.set(self.size.get().saturating_sub(old.value().1));
            }
        }
        tx.commit().map_err(|e| err(&e))?;
        let _ = fs::remove_file(self.file(hash));
        Ok(())
    }

    /// Evicts least recently used chunks until `room` more bytes fit.
    fn evict(&self, room: u64) -> Result<(), StoreError> {
        let err = db_err(&self.dir);
        let mut size = self.size.get();
        if size + room <= self.limit {
            return Ok(());
        }
        let mut by_age: Vec<(u64, [u8; 32], u64)> = {
            let tx = self.db.begin_read().map_err(|e| err(&e))?;
            let table = tx.open_table(CHUNKS).map_err(|e| err(&e))?;
            let mut rows = Vec::new();
            for row in table.iter().map_err(|e| err(&e))? {
                let (k, v) = row.map_err(|e| err(&e))?;
                let (used, len) = v.value();
                rows.push((used, *k.value(), len));
            }
            rows
        };
        by_age.sort();
        for (_, hash, len) in by_age {
            if size + room <= self.limit {
                break;
            }
            self.drop_chunk(&hash)?;
            size = size.saturating_sub(len);
        }
        Ok(())
    }
}

fn unhex(name: &str) -> Option<Hash> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: usize) -> (Hash, Vec<u8>) {
        let data = vec![n; len];
        (Sha256::digest(&data).into(), data)
    }

    #[test]
    fn chunks_are_kept_verified_and_evicted_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 3000).unwrap();
        let (a, b, c) = (chunk(1, 1000), chunk(2, 1000), chunk(3, 1000));
        cache.put(&a.0, &a.1).unwrap();
        cache.put(&b.0, &b.1).unwrap();
        cache.put(&c.0, &c.1).unwrap();
        // Use a: b is now the least recently used.
        assert_eq!(cache.get(&a.0).unwrap(), Some(a.1.clone()));
        let d = chunk(4, 1000);
        cache.put(&d.0, &d.1).unwrap();
        assert!(cache.size().unwrap() <= 3000);
        assert!(
            !cache.contains(&b.0).unwrap(),
            "the least recently used chunk went first"
        );
        assert!(cache.contains(&a.0).unwrap() && cache.contains(&d.0).unwrap());
        // Bytes that do not match their hash never enter.
        cache.put(&a.0, &[9; 10]).unwrap();
        assert_eq!(cache.get(&a.0).unwrap(), Some(a.1.clone()));
    }

    #[test]
    fn the_cache_survives_a_restart_and_drops_damaged_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (chunk(1, 500), chunk(2, 500));
        {
            let cache = ChunkCache::open(dir.path(), 10_000).unwrap();
            cache.put(&a.0, &a.1).unwrap();
            cache.put(&b.0, &b.1).unwrap();
        }
        // A chunk file the index never recorded (written just before a crash) goes at open.
        let stray = dir.path().join("ab".repeat(32));
        fs::write(&stray, b"stray").unwrap();
        // Damage one on disk.
        let cache = ChunkCache::open(dir.path(), 10_000).unwrap();
        assert!(!stray.exists(), "a stray chunk file is removed");
        assert_eq!(cache.size().unwrap(), 1000);
        fs::write(cache.file(&b.0), b"not the chunk").unwrap();
        assert_eq!(cache.get(&a.0).unwrap(), Some(a.1));
        assert_eq!(
            cache.get(&b.0).unwrap(),
            None,
            "a damaged chunk is never handed out"
        );
        assert!(!cache.contains(&b.0).unwrap());
        // Reopened with a smaller limit: trimmed at once.
        drop(cache);
        let cache = ChunkCache::open(dir.path(), 100).unwrap();
        assert_eq!(cache.size().unwrap(), 0);
    }
}
