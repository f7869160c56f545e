//! # clearskies-store
//!
//! Durable state and the filesystem executor of ClearSkies, shared by every driver so that no
//! driver carries its own storage code (`DESIGN.md`, "store/").
//!
//! proto emits storage requests (persist a batch of records, read a chunk, write a chunk into a
//! temp file, finalize with fsync + verify + rename, scan a folder); this crate executes them,
//! blocking, on whatever thread pool the driver provides, and hands back the results that the
//! driver feeds to proto.
//!
//! Status: the crate is a placeholder until the database issue (embedded redb store) and the
//! folder issue (scanner, chunk IO) land. It deliberately exports nothing yet.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
