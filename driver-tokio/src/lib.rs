//! # clearskies-tokio
//!
//! The ClearSkies driver for tokio: TCP + TLS 1.3 with pinned device keys ([`tls`]), pairing
//! ([`pairing`]), LAN discovery ([`discovery`]), and the whole-device runtime of
//! `clearskies-runtime` run on tokio: [`node`] and [`folder`] re-export it with tokio's
//! spawn and timers ([`Tokio`]), and take tokio byte streams. [`run_session`] binds one
//! [`Session`] to any tokio byte stream.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub use clearskies_runtime::conformance;
pub mod discovery;
pub mod pairing;
pub mod tls;

// `node` and `folder` live in `clearskies-runtime`; these modules only bind them to tokio (they
// are inline so that the moved files keep their history there).
pub mod node {
    //! A whole device on tokio: `clearskies_runtime::node` run with tokio's spawn and timers
    //! ([`Tokio`]). [`NodeHandle::add_connection`] takes tokio byte streams (TLS streams, QUIC
    //! streams) as well as `futures-io` ones.

    use clearskies_proto::node::{Event, Node};
    pub use clearskies_runtime::node::{
        ChunkRead, ChunkReads, FolderLink, FuturesIo, IntoStream, NodeError, NodeHandle, Stream,
        TokioIo, WRITE_QUEUE,
    };
    use tokio::sync::mpsc;

    use crate::{MonotonicClock, Tokio};

    /// Starts `node` on the current tokio runtime. Events (peers, database changes, conflicts)
    /// arrive on the returned receiver; the task ends after [`NodeHandle::shutdown`].
    pub fn spawn_node(
        node: Node,
        clock: MonotonicClock,
    ) -> (
        NodeHandle,
        mpsc::Receiver<Event>,
        tokio::task::JoinHandle<()>,
    ) {
        let (handle, events, owner) = clearskies_runtime::node::node(Tokio, node, clock);
        (handle, events, tokio::spawn(owner))
    }
}

pub mod folder {
    //! A folder share on tokio: `clearskies_runtime::folder` run with tokio's spawn and timers.

    use clearskies_proto::files::FileMeta;
    use clearskies_proto::identity::DeviceId;
    pub use clearskies_runtime::folder::{
        DEBOUNCE, FolderConfig, FolderHandle, FolderStatus, Listed, RangeReader, Shallow,
        ShallowFile,
    };
    use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

    /// Opens a file of a share for reading with tokio's `AsyncRead` + `AsyncSeek`, content
    /// fetched on demand (see [`ShallowFile`]).
    pub fn open_file(folder: &FolderHandle, meta: FileMeta) -> Compat<ShallowFile> {
        folder.open_file(meta).compat()
    }

    use crate::Tokio;
    use crate::node::NodeHandle;

    /// Opens the folder and starts its thread and syncer on the current tokio runtime. The first
    /// scan runs before this returns, so a peer never sees this device as agreeing before it has
    /// looked at its disk.
    pub async fn spawn_folder(
        node: NodeHandle,
        me: DeviceId,
        config: FolderConfig,
    ) -> Result<FolderHandle, String> {
        clearskies_runtime::folder::spawn_folder(Tokio, node, me, config).await
    }
}

use std::time::Instant;

use clearskies_proto::session::{Event, Session};
pub use clearskies_runtime::MonotonicClock;
pub use clearskies_runtime::dial;
pub use clearskies_runtime::session::{Command, HandleError, SessionHandle, extension_message};
use clearskies_runtime::{BoxFuture, Runtime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::compat::TokioAsyncReadCompatExt;

/// The tokio [`Runtime`]: `tokio::spawn` and `tokio::time::sleep_until`. Must be used within a
/// tokio runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

impl Runtime for Tokio {
    fn spawn(&self, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// Runs `session` over the tokio byte stream `io` until it finishes, forwarding its events to
/// `events` and taking commands from `commands`: `clearskies_runtime::session::run_session` on
/// tokio. Returns the transport error, if one ended the session.
pub async fn run_session<T>(
    session: Session,
    io: T,
    clock: MonotonicClock,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> std::io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    clearskies_runtime::session::run_session(&Tokio, session, io.compat(), clock, commands, events)
        .await
}
