//! What to do about one path: the decision between the database and the disk.
//!
//! A device keeps, per path, the state on its disk and the version of the record that state
//! corresponds to ([`Local`]). A scan that finds the disk changed writes a record *after that
//! version* ([`Replica::write_after`](crate::db::Replica::write_after)), so an edit made while
//! a remote change was on its way is concurrent with it, never silently on top of it. Given the
//! database entry and the local state, [`plan`] decides:
//!
//! * the local version covers the winner: nothing to do (the disk is as new or newer);
//! * the winner covers the local version: make the disk equal to the winner;
//! * the entry is a conflict and one sibling is this device's version of the disk: keep the
//!   local content as a conflict copy, then write the winner's content after every sibling
//!   (which resolves the conflict on every device) and make the disk equal to it. Only the
//!   writer of a losing version does this, so exactly one copy is made, by the one device
//!   sure to hold its content. Identical contents need no copy.
//!
//! `spec/files.md` § Conflicts is normative.

use super::meta::FileMeta;
use crate::db::{Entry, Record, VersionVector};
use crate::identity::DeviceId;

/// A path's state on this device's disk and the record version it corresponds to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Local {
    /// What is on disk (`None`: nothing).
    pub meta: Option<FileMeta>,
    /// The version of the record the disk state corresponds to (empty: none yet).
    pub version: VersionVector,
}

/// The decision for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The disk is current (or newer: a scan will record it).
    Nothing,
    /// The disk already holds the winner's content; only the local version moves.
    Adopt {
        /// The version to remember.
        version: VersionVector,
    },
    /// Make the disk equal to `target` (`None`: remove the path), then remember `version`.
    Apply {
        /// The winner's state.
        target: Option<FileMeta>,
        /// The winner's version.
        version: VersionVector,
    },
    /// This device wrote a losing sibling: keep `keep` (the local content) as a conflict
    /// copy, write `target` after `context` to resolve, then apply it.
    Conflict {
        /// The local (losing) content to keep under a conflict name (`None`: nothing to
        /// keep, the contents are identical or the local version is a deletion).
        keep: Option<FileMeta>,
        /// The winner's state (`None`: the winner is a deletion).
        target: Option<FileMeta>,
        /// The merge of every sibling's version: what the resolving write supersedes.
        context: VersionVector,
    },
    /// The winner's document is not a valid file record; the path is left alone.
    Invalid {
        /// Why.
        detail: String,
    },
}

fn decode(record: &Record) -> Result<Option<FileMeta>, String> {
    match &record.value {
        None => Ok(None),
        Some(v) => FileMeta::decode(v).map(Some).map_err(|e| e.to_string()),
    }
}

fn same(a: &Option<FileMeta>, b: &Option<FileMeta>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_content(b) && a.mode == b.mode && a.mtime_ns == b.mtime_ns,
        _ => false,
    }
}

/// Decides what `me` does about a path whose database entry is `entry`. See the
/// [module docs](self).
pub fn plan(me: &DeviceId, entry: &Entry, local: &Local) -> Plan {
    let winner = entry.winner();
    if local.version.dominates(&winner.version) {
        return Plan::Nothing;
    }
    let target = match decode(winner) {
        Ok(t) => t,
        Err(detail) => return Plan::Invalid { detail },
    };
    if entry.is_conflict()
        && let Some(mine) = entry
            .siblings()
            .skip(1)
            .find(|s| s.dot.writer == *me && s.version == local.version)
    {
        // Identical content, or a losing deletion: nothing to keep, resolve in place.
        let keep = match (decode(mine), &local.meta) {
            (Ok(Some(lost)), Some(on_disk))
                if lost.same_content(on_disk)
                    && !target.as_ref().is_some_and(|t| t.same_content(on_disk)) =>
            {
                Some(on_disk.clone())
            }
            _ => None,
        };
        return Plan::Conflict {
            keep,
            target,
            context: entry.version(),
        };
    }
    if !winner.version.dominates(&local.version)
        && !entry
            .siblings()
            .any(|s| s.version.dominates(&local.version))
    {
        // Our version is not in the database yet (a write on its way): wait for it.
        return Plan::Nothing;
    }
    if same(&local.meta, &target) {
        return Plan::Adopt {
            version: winner.version.clone(),
        };
    }
    Plan::Apply {
        target,
        version: winner.version.clone(),
    }
}
