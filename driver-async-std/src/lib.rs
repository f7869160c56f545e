//! # clearskies-async-std
//!
//! The ClearSkies driver for the async-std / smol family: TCP with TLS 1.3 (rustls, ring
//! provider, through `futures-rustls`), built on `futures-io`, `async-io` and `async-net`,
//! which async-std and smol share, so it runs under both. async-std itself is discontinued
//! upstream (RUSTSEC-2025-0052): this crate does not depend on it; only its tests do (they run
//! every scenario under `async_std::task::block_on` and under `smol::block_on`).
//!
//! The device is the one of `clearskies-runtime`, written once for every driver: this crate
//! adds the [`Runtime`] of this family ([`AsyncIo`]: your executor's spawn, `async-io`'s
//! timers), TCP + TLS ([`tls`]) with the configuration and verifiers of `clearskies-net`, and
//! pairing over it ([`pairing`]).
//!
//! ```no_run
//! # fn example() -> std::io::Result<()> {
//! use clearskies_async_std::{AsyncIo, MonotonicClock, node};
//! use clearskies_proto::crypto::DeviceKey;
//! use clearskies_proto::session::SessionConfig;
//!
//! // Under smol; under async-std, spawn with `async_std::task::spawn` instead.
//! let runtime = AsyncIo::new(|task| smol::spawn(task).detach());
//! let clock = MonotonicClock::new();
//! let key = DeviceKey::from_secret(&[1; 32]);
//! let device = clearskies_proto::node::Node::new(key, SessionConfig::default(), clock.now());
//! let (handle, events, task) = node::spawn_node(runtime, device, clock);
//! # let _ = (handle, events, task);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pairing;
pub mod tls;

use std::sync::Arc;
use std::time::Instant;

#[cfg(feature = "conformance")]
pub use clearskies_runtime::conformance;
pub use clearskies_runtime::{
    BoxFuture, MonotonicClock, Runtime, Task, dial, folder, node, session,
};

/// The [`Runtime`] of the async-std / smol family: tasks go to the executor's spawn function
/// given to [`AsyncIo::new`]; timers are `async-io`'s, whose reactor both runtimes share.
#[derive(Clone)]
pub struct AsyncIo {
    spawner: Arc<dyn Fn(BoxFuture<()>) + Send + Sync>,
}

impl std::fmt::Debug for AsyncIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncIo")
    }
}

impl AsyncIo {
    /// A runtime that runs background tasks with `spawn`, which must run each task to its end
    /// without being awaited: `|task| smol::spawn(task).detach()` under smol,
    /// `|task| { async_std::task::spawn(task); }` under async-std.
    pub fn new(spawn: impl Fn(BoxFuture<()>) + Send + Sync + 'static) -> AsyncIo {
        AsyncIo {
            spawner: Arc::new(spawn),
        }
    }
}

impl Runtime for AsyncIo {
    fn spawn(&self, task: BoxFuture<()>) {
        (self.spawner)(task)
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            async_io::Timer::at(deadline).await;
        })
    }
}
