//! One [`Session`] bound to a byte stream, on any runtime: [`run_session`] and the
//! application's [`SessionHandle`].
//!
//! The loop follows proto's contract: one owner task; wait for bytes, the deadline or a
//! command; feed exactly one input; drain events; write frames while the socket takes them;
//! re-arm the timer from `poll_timeout`, checking the deadline against the clock itself.

use bytes::Bytes;
use clearskies_proto::session::{Event, Priority, Session};
use clearskies_proto::wire::{CloseCode, Message};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::{MonotonicClock, Runtime, sleep_or_forever};

/// What the application asks of a running session.
#[derive(Debug)]
pub enum Command {
    /// Queue a message; the reply says whether the session accepted it.
    Send(
        Message,
        Priority,
        oneshot::Sender<Result<(), clearskies_proto::Error>>,
    ),
    /// Close the session with a code and reason once every message queued before it has
    /// been written (proto's own `close` discards them).
    Close(CloseCode, String),
}

/// The application's side of a running session: sends commands to [`run_session`].
#[derive(Debug, Clone)]
pub struct SessionHandle {
    commands: mpsc::Sender<Command>,
}

/// Why a command did not reach the session or was refused by it.
#[derive(Debug)]
pub enum HandleError {
    /// The session's task has ended.
    Stopped,
    /// The session refused the command (not established, closed, queue full, ...).
    Refused(clearskies_proto::Error),
}

impl std::fmt::Display for HandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandleError::Stopped => write!(f, "the session has stopped"),
            HandleError::Refused(e) => write!(f, "the session refused: {e}"),
        }
    }
}

impl std::error::Error for HandleError {}

impl SessionHandle {
    /// A handle and the receiver to pass to [`run_session`].
    pub fn channel(capacity: usize) -> (SessionHandle, mpsc::Receiver<Command>) {
        let (commands, receiver) = mpsc::channel(capacity);
        (SessionHandle { commands }, receiver)
    }

    /// Queues `message`; returns once the session has accepted or refused it.
    pub async fn send(&self, message: Message, priority: Priority) -> Result<(), HandleError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Send(message, priority, reply))
            .await
            .map_err(|_| HandleError::Stopped)?;
        answer
            .await
            .map_err(|_| HandleError::Stopped)?
            .map_err(HandleError::Refused)
    }

    /// Asks the session to close with `code` and `reason` after the messages already queued
    /// have been written. Later commands are not taken.
    pub async fn close(&self, code: CloseCode, reason: &str) -> Result<(), HandleError> {
        self.commands
            .send(Command::Close(code, reason.to_owned()))
            .await
            .map_err(|_| HandleError::Stopped)
    }
}

/// Size of one read from the transport.
const READ_BUFFER: usize = 64 * 1024;

/// Runs `session` over `io` (a `futures-io` stream), with `runtime`'s timers, until it finishes, forwarding its events to `events` and taking
/// commands from `commands`. Returns the transport error, if one ended the session.
///
/// Reading and writing proceed together: the loop writes a frame only while the socket takes
/// it and keeps reading meanwhile, so two peers that both send a lot cannot deadlock on full
/// socket buffers, and a control message queued behind bulk data leaves as soon as the frame
/// in progress is written.
pub async fn run_session<R, T>(
    runtime: &R,
    mut session: Session,
    io: T,
    clock: MonotonicClock,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) -> std::io::Result<()>
where
    R: Runtime,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = io.split();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut commands_open = true;
    // The frame being written, and whether written bytes may still sit in a buffer.
    let mut pending = Bytes::new();
    let mut needs_flush = false;
    // A close the app asked for, applied once the queued messages have left.
    let mut closing: Option<(CloseCode, String)> = None;
    loop {
        while let Some(event) = session.poll_event() {
            // The app hung up on events: keep running the protocol anyway.
            let _ = events.send(event).await;
        }
        if pending.is_empty() {
            match session.poll_transmit(clock.now()) {
                Some(frame) => pending = frame,
                None => {
                    if let Some((code, reason)) = closing.take() {
                        session.close(clock.now(), code, &reason);
                        continue;
                    }
                }
            }
        }
        if pending.is_empty() && !needs_flush && session.is_finished() {
            let _ = writer.close().await;
            return Ok(());
        }
        let deadline = session.poll_timeout();
        let sleep_until = deadline.map(|t| clock.instant(t));
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) => session.handle_transport_closed(clock.now()),
                Ok(n) => session.handle_bytes(clock.now(), &buf[..n]),
                Err(e) => {
                    session.handle_transport_closed(clock.now());
                    while let Some(event) = session.poll_event() {
                        let _ = events.send(event).await;
                    }
                    return Err(e);
                }
            },
            written = write_or_flush(&mut writer, &pending), if !pending.is_empty() || needs_flush => {
                match written? {
                    0 => needs_flush = false,
                    n => {
                        let _ = pending.split_to(n);
                        needs_flush = true;
                    }
                }
            }
            command = commands.recv(), if commands_open && closing.is_none() => match command {
                Some(Command::Send(message, priority, reply)) => {
                    // The app may have stopped waiting for the answer; that is its business.
                    let _ = reply.send(session.send(message, priority));
                }
                Some(Command::Close(code, reason)) => closing = Some((code, reason)),
                None => commands_open = false,
            },
            () = sleep_or_forever(runtime, sleep_until) => {}
        }
        // Check the deadline against the clock, not only the timer future.
        let now = clock.now();
        if deadline.is_some_and(|d| d <= now) {
            session.handle_timeout(now);
        }
    }
}

/// Writes some of `pending` (returning how much), or flushes when it is empty (returning 0).
async fn write_or_flush<W: AsyncWrite + Unpin>(
    writer: &mut W,
    pending: &[u8],
) -> std::io::Result<usize> {
    if pending.is_empty() {
        writer.flush().await.map(|()| 0)
    } else {
        writer.write(pending).await
    }
}

/// Convenience for tests and demos: an extension message.
pub fn extension_message(name: &str, payload: impl Into<Bytes>) -> Message {
    Message::Extension(clearskies_proto::wire::ExtensionMessage {
        name: name.to_owned(),
        payload: payload.into(),
    })
}
