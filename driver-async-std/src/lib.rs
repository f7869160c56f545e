//! # clearskies-async-std
//!
//! The ClearSkies driver for the async-std / smol family: TCP with TLS 1.3 (rustls, ring
//! provider), built on `futures-io` and `async-io` so it runs under both runtimes (async-std is
//! discontinued upstream, RUSTSEC-2025-0052; smol shares its foundations).
//!
//! Status: placeholder until the drivers issue. The session loop it will run is the same one
//! `clearskies-tokio` runs; the shared parts move to a runtime-neutral crate rather than being
//! copied here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
