//! # clearskies-quic
//!
//! The ClearSkies driver over QUIC (quinn with rustls and the ring provider): one connection per
//! peer pair, certificate verifiers that pin device keys, channel binding from the TLS exporter,
//! flow-control windows sized for bulk transfer. QUIC is used where UDP works; the TCP drivers
//! are the fallback.
//!
//! Status: placeholder until the drivers issue.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
