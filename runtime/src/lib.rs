//! # clearskies-runtime
//!
//! The whole-device runtime of ClearSkies, written once for every async runtime: proto's
//! [`Node`](clearskies_proto::node::Node) bound to byte streams, a timer and the store
//! ([`node`]), folder shares ([`folder`]), and the conformance suite every driver runs
//! (`conformance`, behind the feature of that name). The drivers (`clearskies-tokio`,
//! `clearskies-async-std`, `clearskies-quic`) only make authenticated connections and say how
//! to spawn a task and wait for a deadline, through [`Runtime`].
//!
//! What this crate needs from a runtime, and how it gets it:
//!
//! * **Tasks and timers**: the [`Runtime`] trait, implemented by each driver.
//! * **Byte streams**: `futures-io`'s `AsyncRead + AsyncWrite` ([`node::Stream`]). With the
//!   `tokio-io` feature, tokio streams are accepted too and adapted with `tokio-util`'s
//!   `compat` ([`node::IntoStream`]).
//! * **Channels**: tokio's `sync` module. Its channels are plain futures that need no tokio
//!   runtime (they work on any executor), they are the most used ones, and the public API of
//!   the tokio driver already hands them out (`spawn_node`'s event receiver), so callers keep
//!   their types.
//! * **Blocking work** (the store's batches, a folder's disk): plain `std` threads, which every
//!   runtime tolerates.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod dial;
pub mod folder;
pub mod node;
pub mod pairing;
pub mod session;
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clearskies_proto::Timestamp;
use tokio::sync::oneshot;

/// A boxed future a [`Runtime`] runs or waits on.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the device runtime needs from an async runtime: running a task in the background and
/// waiting for a deadline. Byte streams come ready-made from the driver; blocking work runs on
/// `std` threads.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Runs `task` in the background until it finishes; nobody waits for it (see
    /// [`spawn_task`] for a task whose result is wanted).
    fn spawn(&self, task: BoxFuture<()>);

    /// A future that completes once `deadline` has passed. Callers still compare the clock
    /// with their deadline when it fires (`STYLE.md` rule 9), so an early wake-up is harmless.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()>;
}

/// A task started by [`spawn_task`]: resolves to its output, or to [`TaskLost`] if the task was
/// dropped or panicked before finishing.
#[derive(Debug)]
pub struct Task<T> {
    output: oneshot::Receiver<T>,
}

/// The task behind a [`Task`] ended without an output (it panicked, or its runtime dropped it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLost;

impl std::fmt::Display for TaskLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the task ended without finishing")
    }
}

impl std::error::Error for TaskLost {}

impl<T> Future for Task<T> {
    type Output = Result<T, TaskLost>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.output).poll(cx).map_err(|_| TaskLost)
    }
}

/// Spawns `future` on `runtime` and returns a [`Task`] that resolves to its output.
pub fn spawn_task<R, F>(runtime: &R, future: F) -> Task<F::Output>
where
    R: Runtime,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (done, output) = oneshot::channel();
    runtime.spawn(Box::pin(async move {
        // Nobody waiting for the output is fine.
        let _ = done.send(future.await);
    }));
    Task { output }
}

/// Runs `future` for at most `limit`: `None` if the time ran out first.
pub async fn timeout<R: Runtime, F: Future>(
    runtime: &R,
    limit: Duration,
    future: F,
) -> Option<F::Output> {
    let sleep = runtime.sleep_until(Instant::now() + limit);
    tokio::select! {
        out = future => Some(out),
        () = sleep => None,
    }
}

/// Sleeps for `duration` on `runtime`.
pub async fn sleep<R: Runtime>(runtime: &R, duration: Duration) {
    runtime.sleep_until(Instant::now() + duration).await
}

/// Waits until `until`, or forever for `None`.
pub(crate) async fn sleep_or_forever<R: Runtime>(runtime: &R, until: Option<Instant>) {
    match until {
        Some(t) => runtime.sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Converts the driver's monotonic clock to proto's [`Timestamp`].
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }

    /// `instant` as a timestamp.
    pub fn at(&self, instant: Instant) -> Timestamp {
        Timestamp::from_micros(
            u64::try_from(instant.saturating_duration_since(self.origin).as_micros())
                .unwrap_or(u64::MAX),
        )
    }

    /// `ts` as an instant.
    pub fn instant(&self, ts: Timestamp) -> Instant {
        self.origin + Duration::from_micros(ts.as_micros())
    }
}

/// Wall-clock microseconds since the Unix epoch (record timestamps, invitation expiry).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs `work` on a new `std` thread and waits for its result without blocking the executor.
/// `Err` if the thread could not be started or panicked.
pub(crate) async fn blocking<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = done.send(work());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    result
        .await
        .map_err(|_| format!("the {name} thread panicked"))
}
