//! Pairing over an authenticated connection: proto's sans-IO [`Joiner`] / [`Inviter`] run
//! inside a [`Session`] on a TLS 1.3 connection made in pairing mode (any key accepted; the
//! PAKE decides), with the connection's exporter value as channel binding. Drivers dial or
//! accept the TCP connection; the TLS handshake ([`crate::tls`]) and everything after it are
//! here, once. [`join_stream`] and [`admit_stream`] take any stream with its binding (a QUIC
//! stream, say).
//!
//! [`Joiner`]: clearskies_proto::pair::Joiner

use std::io;
use std::sync::{Arc, Mutex};

use clearskies_net::PeerPolicy;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::Member;
use clearskies_proto::pair::{
    Admitted, Invitations, Inviter, Joined, Output, PAIR_EXTENSION, PairError,
};
use clearskies_proto::session::{Event, Priority, Session, SessionConfig};
use clearskies_proto::wire::{CloseCode, ExtensionMessage, Message};
use tokio::sync::mpsc;

use crate::node::Stream;
use crate::session::{SessionHandle, run_session};
use crate::tls::{self, TlsStream};
pub use crate::unix_micros;
use crate::{MonotonicClock, Runtime};

/// The close code a listener sends a device that is not a member and did not come to pair.
pub const NOT_A_MEMBER: CloseCode = CloseCode(0x1001);

/// Why pairing did not complete.
#[derive(Debug)]
pub enum PairingFailure {
    /// The network or TLS failed.
    Io(io::Error),
    /// The pairing protocol refused (wrong secret, expired, used, ... ; see its `code()`).
    Refused(PairError),
    /// The session ended before pairing finished.
    Ended(String),
}

impl std::fmt::Display for PairingFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairingFailure::Io(e) => write!(f, "{e}"),
            PairingFailure::Refused(e) => write!(f, "{e}"),
            PairingFailure::Ended(why) => {
                write!(f, "the connection ended before pairing finished: {why}")
            }
        }
    }
}

impl std::error::Error for PairingFailure {}

impl PairingFailure {
    /// The stable code of a protocol refusal (`wrong-secret`, `expired`, ...), if it is one.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            PairingFailure::Refused(e) => Some(e.code()),
            _ => None,
        }
    }
}

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    // Without OS randomness no key can be made either: nothing sensible to do.
    getrandom::getrandom(&mut s).expect("the operating system's random source");
    s
}

/// A connection in pairing mode, as the pairing logic needs it: a `futures-io` byte stream
/// and the connection's channel binding (`spec/transport.md` § 8).
#[derive(Debug)]
pub struct PairingStream<S> {
    /// The byte stream.
    pub stream: S,
    /// The connection's channel binding, equal on both ends.
    pub binding: [u8; 32],
    /// The peer's public key, as its TLS handshake proved it.
    pub peer_key: [u8; 32],
}

impl<S> PairingStream<TlsStream<S>> {
    /// A TLS connection made in pairing mode to or from the device with public key `peer_key`,
    /// with its channel binding.
    pub fn tls(stream: TlsStream<S>, peer_key: [u8; 32]) -> io::Result<Self> {
        Ok(PairingStream {
            binding: tls::channel_binding(&stream)?,
            stream,
            peer_key,
        })
    }
}

impl From<io::Error> for PairingFailure {
    fn from(e: io::Error) -> Self {
        PairingFailure::Io(e)
    }
}

/// One side's pairing logic, fed by [`exchange`].
trait Side {
    type Done;
    fn start(&mut self) -> Vec<Output>;
    fn receive(&mut self, payload: &[u8]) -> Vec<Output>;
    /// Called with `Admitted` (inviter): returns the outputs of granting.
    fn admitted(&mut self, admitted: &Admitted) -> Result<Vec<Output>, PairingFailure>;
    fn done(output: &Output) -> Option<Self::Done>;
}

/// Runs a session on `stream` and the pairing messages inside it until `S` finishes.
async fn exchange<R: Runtime, T: Stream, S: Side>(
    runtime: &R,
    stream: T,
    mut side: S,
    name: &str,
) -> Result<S::Done, PairingFailure> {
    let clock = MonotonicClock::new();
    let config = SessionConfig {
        device_name: name.to_owned(),
        extensions: vec![PAIR_EXTENSION.to_owned()],
        ..SessionConfig::default()
    };
    let session =
        Session::new(config, clock.now()).map_err(|e| PairingFailure::Ended(e.to_string()))?;
    let (handle, commands) = SessionHandle::channel(8);
    let (events_tx, mut events) = mpsc::channel(16);
    let session_runtime = runtime.clone();
    let task = crate::spawn_task(runtime, async move {
        run_session(
            &session_runtime,
            session,
            stream,
            clock,
            commands,
            events_tx,
        )
        .await
    });
    let send = |handle: &SessionHandle, payload| {
        let handle = handle.clone();
        async move {
            let m = Message::Extension(ExtensionMessage {
                name: PAIR_EXTENSION.to_owned(),
                payload,
            });
            handle
                .send(m, Priority::Control)
                .await
                .map_err(|e| PairingFailure::Ended(e.to_string()))
        }
    };
    let mut result = None;
    let mut pending = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Established(n) if !n.extensions.iter().any(|e| e == PAIR_EXTENSION) => {
                // A device that came to sync, not to pair: it is not (or no longer) a member.
                let _ = handle.close(NOT_A_MEMBER, "this device is not a member of any share here: pair with an access code first").await;
                result = Some(Err(PairingFailure::Ended(
                    "the peer came to sync but is not a member".into(),
                )));
            }
            Event::Established(_) => pending.extend(side.start()),
            Event::Message(Message::Extension(m)) if m.name == PAIR_EXTENSION => {
                pending.extend(side.receive(&m.payload))
            }
            Event::Closed(reason) => {
                if result.is_none() {
                    result = Some(Err(PairingFailure::Ended(format!("{reason:?}"))));
                }
                break;
            }
            _ => {}
        }
        while !pending.is_empty() {
            for output in std::mem::take(&mut pending) {
                if let Some(done) = S::done(&output) {
                    result = Some(Ok(done));
                }
                match output {
                    Output::Send(payload) => send(&handle, payload).await?,
                    Output::Admitted(a) => match side.admitted(&a) {
                        Ok(outputs) => pending.extend(outputs),
                        Err(e) => result = Some(Err(e)),
                    },
                    Output::Failed(e) => {
                        result = Some(Err(PairingFailure::Refused(e)));
                    }
                    Output::Persist | Output::Joined(_) => {}
                }
            }
        }
        if result.is_some() {
            // Everything queued goes out before the close.
            let _ = handle.close(CloseCode::NORMAL, "pairing finished").await;
        }
    }
    let _ = task.await;
    result.unwrap_or_else(|| Err(PairingFailure::Ended("no result".into())))
}

struct JoinSide {
    joiner: clearskies_proto::pair::Joiner,
}

impl Side for JoinSide {
    type Done = Joined;
    fn start(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.joiner.poll_output()).collect()
    }
    fn receive(&mut self, payload: &[u8]) -> Vec<Output> {
        self.joiner.handle_payload(payload);
        std::iter::from_fn(|| self.joiner.poll_output()).collect()
    }
    fn admitted(&mut self, _: &Admitted) -> Result<Vec<Output>, PairingFailure> {
        Ok(Vec::new())
    }
    fn done(output: &Output) -> Option<Joined> {
        match output {
            Output::Joined(j) => Some(j.clone()),
            _ => None,
        }
    }
}

/// The joiner, on a connection it dialled in pairing mode: pairs with `code`. Returns the
/// share, access and members.
pub async fn join_stream<R: Runtime, T: Stream>(
    runtime: &R,
    connection: PairingStream<T>,
    key: &DeviceKey,
    code: &AccessCode,
) -> Result<Joined, PairingFailure> {
    let joiner = clearskies_proto::pair::Joiner::new(
        code,
        connection.binding,
        key.public_key(),
        connection.peer_key,
        seed(),
    );
    exchange(runtime, connection.stream, JoinSide { joiner }, "joiner").await
}

struct InviteSide<F> {
    inviter: Inviter,
    invitations: Arc<Mutex<Invitations>>,
    members: F,
}

impl<F: FnMut(&Admitted) -> Vec<Member>> Side for InviteSide<F> {
    type Done = Admitted;
    fn start(&mut self) -> Vec<Output> {
        Vec::new()
    }
    fn receive(&mut self, payload: &[u8]) -> Vec<Output> {
        // A poisoned registry means another pairing panicked; its data is still consistent
        // (every change is one call), so keep going.
        let mut invitations = self.invitations.lock().unwrap_or_else(|p| p.into_inner());
        self.inviter
            .handle_payload(unix_micros(), &mut invitations, payload);
        drop(invitations);
        std::iter::from_fn(|| self.inviter.poll_output()).collect()
    }
    fn admitted(&mut self, admitted: &Admitted) -> Result<Vec<Output>, PairingFailure> {
        let members = (self.members)(admitted);
        self.inviter
            .grant(members)
            .map_err(|e| PairingFailure::Ended(format!("cannot grant: {e:?}")))?;
        Ok(std::iter::from_fn(|| self.inviter.poll_output()).collect())
    }
    fn done(output: &Output) -> Option<Admitted> {
        match output {
            Output::Admitted(a) => Some(a.clone()),
            _ => None,
        }
    }
}

/// The inviter, on a connection accepted in pairing mode from a device at `address` (an
/// opaque key for the per-address limit): checks its code against `invitations`.
/// `members(admitted)` records the new member and returns the share's member list (the new
/// device included) to grant.
pub async fn admit_stream<R: Runtime, T: Stream>(
    runtime: &R,
    connection: PairingStream<T>,
    address: &[u8],
    key: &DeviceKey,
    invitations: Arc<Mutex<Invitations>>,
    members: impl FnMut(&Admitted) -> Vec<Member>,
) -> Result<Admitted, PairingFailure> {
    let inviter = Inviter::new(
        connection.binding,
        key.public_key(),
        connection.peer_key,
        address,
        seed(),
    );
    exchange(
        runtime,
        connection.stream,
        InviteSide {
            inviter,
            invitations,
            members,
        },
        "inviter",
    )
    .await
}

/// The inviter on a connection `tcp` just accepted from `address`: runs the TLS handshake in
/// pairing mode, then [`admit_stream`]. (Set the socket's `TCP_NODELAY` first, as for any
/// ClearSkies connection.)
pub async fn admit_tcp<R: Runtime, S: Stream>(
    runtime: &R,
    tcp: S,
    address: &[u8],
    key: &DeviceKey,
    invitations: Arc<Mutex<Invitations>>,
    members: impl FnMut(&Admitted) -> Vec<Member>,
) -> Result<Admitted, PairingFailure> {
    let config = clearskies_net::server_config(key, PeerPolicy::Pairing);
    let (joiner, stream) = tls::accept(tcp, config).await?;
    let connection = PairingStream::tls(stream, joiner.public_key)?;
    admit_stream(runtime, connection, address, key, invitations, members).await
}
