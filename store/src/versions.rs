//! Per path of a folder share: the version of the record the disk state corresponds to
//! (see `clearskies_proto::files::plan`). A stale entry is harmless: the plan compares
//! contents and adopts the newer version when the disk already matches it.

use std::path::{Path, PathBuf};

use clearskies_proto::db::VersionVector;
use clearskies_proto::wire::codec;
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::StoreError;

const VERSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("versions");

/// The local versions of one folder share, in their own redb file under the home.
#[derive(Debug)]
pub struct Versions {
    db: Database,
    path: PathBuf,
}

impl Versions {
    /// Opens (or creates) the file.
    pub fn open(path: &Path) -> Result<Versions, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Database {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(VERSIONS).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(Versions {
            db,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// The version recorded for `path` (empty if none).
    pub fn get(&self, path: &str) -> Result<VersionVector, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(VERSIONS).map_err(|e| self.err(e))?;
        match table.get(path).map_err(|e| self.err(e))? {
            None => Ok(VersionVector::new()),
            Some(v) => codec::decode(v.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// The versions of many paths, read in one transaction, in order.
    pub fn get_many(&self, paths: &[String]) -> Result<Vec<VersionVector>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(VERSIONS).map_err(|e| self.err(e))?;
        paths
            .iter()
            .map(
                |path| match table.get(path.as_str()).map_err(|e| self.err(e))? {
                    None => Ok(VersionVector::new()),
                    Some(v) => codec::decode(v.value()).map_err(|e| StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: e.to_string(),
                    }),
                },
            )
            .collect()
    }

    /// Records `version` for `path`, durably.
    pub fn set(&self, path: &str, version: &VersionVector) -> Result<(), StoreError> {
        self.set_many(&[(path.to_owned(), version.clone())])
    }

    /// Records several paths' versions in one durable transaction.
    pub fn set_many(&self, versions: &[(String, VersionVector)]) -> Result<(), StoreError> {
        if versions.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(VERSIONS).map_err(|e| self.err(e))?;
            for (path, version) in versions {
                table
                    .insert(path.as_str(), codec::encode(version).as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clearskies_proto::crypto::DeviceKey;
    use clearskies_proto::db::Dot;

    #[test]
    fn versions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("versions.redb");
        let mut v = VersionVector::new();
        v.set(Dot {
            writer: DeviceKey::from_secret(&[1; 32]).device_id(),
            counter: 7,
        });
        {
            let versions = Versions::open(&file).unwrap();
            assert_eq!(versions.get("a/b").unwrap(), VersionVector::new());
            versions.set("a/b", &v).unwrap();
        }
        let versions = Versions::open(&file).unwrap();
        assert_eq!(versions.get("a/b").unwrap(), v);
    }
}
