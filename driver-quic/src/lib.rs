//! # clearskies-quic
//!
//! The ClearSkies driver over QUIC: quinn with rustls and the ring provider, for devices that
//! can reach each other over UDP. The TCP + TLS drivers are the fallback where UDP is blocked.
//!
//! This crate is only the transport. It sets up a [`quinn::Endpoint`] with the TLS 1.3
//! configuration every driver shares (`clearskies-net`: raw Ed25519 device keys, mutual
//! authentication, a [`PeerPolicy`] that refuses non-members during the handshake, ALPN
//! `clearskies/1`), and turns a QUIC connection into a byte stream, [`QuicStream`]. The device
//! itself runs on the tokio node runtime of `clearskies-tokio` (quinn runs on tokio): hand the
//! stream to [`NodeHandle::add_connection`](clearskies_tokio::node::NodeHandle::add_connection)
//! like a TLS stream. Nothing of the node loop is repeated here.
//!
//! ## Mapping
//!
//! * **One connection per peer pair, one bidirectional stream per connection**, carrying the
//!   ClearSkies session exactly as a TLS stream would (`spec/wire.md`); QUIC's streams are not
//!   used for multiplexing, because the session layer already schedules control before bulk.
//!   Each endpoint lets its peer open one bidirectional stream and no unidirectional one.
//! * **The dialer opens the stream and writes first.** quinn announces a stream to the peer
//!   only once data is sent on it, so [`accept`] returns only after the dialer has written.
//!   The session layer sends its preface as soon as the dialer's node gets the stream, so this
//!   costs nothing, but it means a dialer must hand its stream to its node (or write) before
//!   the listener's [`accept`] can finish: do not wait for both before using either.
//! * **Lifetimes.** Each [`QuicStream`] keeps its endpoint open, so an application may drop its
//!   own [`quinn::Endpoint`] handle once it stops dialling and accepting.
//! * **Refusal.** As over TCP, a dialer the listener refuses (not a member) finishes its side
//!   of the handshake first: its [`connect`] may succeed, and the refusal arrives as an error on
//!   the stream's first read, naming no device (the refused side learns nothing about the
//!   listener's shares). The listener's [`accept`] fails with an error naming the device.
//! * **Channel binding**: [`channel_binding`], the TLS exporter of the QUIC handshake with the
//!   label and length of [`clearskies_net::channel_binding`].
//! * **Members and pairing on one port.** An endpoint made by [`bind_either`] serves both, as
//!   `clearskies_tokio::tls::accept_either` does over TCP (`spec/transport.md` § 6): it reads
//!   the ClientHello's ALPN before choosing its TLS configuration, so a pairing attempt
//!   (`clearskies-pair/1`) gets the pairing mode and anything else the members mode, where a
//!   stranger is refused during the handshake. [`accept_either`] says which one a connection
//!   came for. A joiner dials with a [`client`] endpoint made with [`PeerPolicy::Pairing`].
//!
//! ## Example
//!
//! ```no_run
//! # async fn example(node: clearskies_tokio::node::NodeHandle) -> std::io::Result<()> {
//! use clearskies_net::PeerPolicy;
//! use clearskies_proto::crypto::DeviceKey;
//!
//! let me = DeviceKey::from_secret(&[1; 32]);
//! let friend = DeviceKey::from_secret(&[2; 32]).device_id();
//! let endpoint = clearskies_quic::bind("0.0.0.0:0".parse().unwrap(), &me, PeerPolicy::pinned([friend]))?;
//! let (peer, stream) = clearskies_quic::connect(&endpoint, "192.0.2.7:4433".parse().unwrap()).await?;
//! node.add_connection(peer.device_id, stream).await.ok();
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use clearskies_net::rustls::pki_types::CertificateDer;
use clearskies_net::{
    ALPN, CHANNEL_BINDING_LABEL, CHANNEL_BINDING_LEN, HandshakeFailure, NotEstablished,
    PAIRING_ALPN, PeerKey, PeerPolicy,
};
use clearskies_proto::crypto::DeviceKey;
pub use clearskies_tokio::tls::Purpose;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use quinn;

mod either;

/// Per-stream receive window: how much the peer may send before this end has read it.
///
/// Bulk transfer needs at least the bandwidth-delay product in flight: 8 MiB covers 100 Mbit/s
/// at 650 ms round trip, or 1 Gbit/s at 65 ms, which is more than a home uplink between two
/// devices needs; quinn's default (1.25 MiB) would cap a 100 ms path at about 100 Mbit/s. It
/// is also the most a slow reader makes this end buffer for one peer.
pub const STREAM_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

/// Connection receive window. There is exactly one stream per connection, so a connection
/// window larger than the stream's would never be used; equal, so neither is the bottleneck.
pub const CONNECTION_RECEIVE_WINDOW: u32 = STREAM_RECEIVE_WINDOW;

/// How much unacknowledged data this end keeps in flight: matched to the peer's window, since
/// the peer runs the same configuration.
pub const SEND_WINDOW: u64 = STREAM_RECEIVE_WINDOW as u64;

/// QUIC idle timeout (the smaller of both ends' applies).
///
/// QUIC keep-alive is off: the session layer pings every negotiated keep-alive interval and
/// closes a session that hears nothing for `IDLE_TIMEOUT_FACTOR` intervals, so QUIC-level pings
/// would only duplicate its packets (and wake a phone's radio). Its pings are ack-eliciting, so
/// they also keep the QUIC connection alive. The QUIC idle timeout is then only a backstop for a
/// connection the session layer no longer drives, and must be longer than the session's own
/// idle timeout for the longest interval a device may negotiate (a phone may ask for
/// `MAX_KEEPALIVE`, 24 h), so that it never ends a session the session layer still considers
/// alive: three maximum intervals plus a minute.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(
    clearskies_proto::wire::MAX_KEEPALIVE.as_secs()
        * clearskies_proto::wire::IDLE_TIMEOUT_FACTOR as u64
        + 60,
);

/// How long [`accept`] waits, after the handshake, for the dialer to open its stream. The dialer
/// writes the session preface at once, so a peer that stays silent this long is not a
/// ClearSkies dialer; the connection is closed rather than held for [`IDLE_TIMEOUT`].
pub const FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a finished stream, once dropped, keeps its connection open for the peer to
/// acknowledge the last bytes (the session's close message) before the connection is closed.
pub const LINGER: Duration = Duration::from_secs(10);

/// QUIC application close code: the session ended normally.
pub const CLOSE_DONE: VarInt = VarInt::from_u32(0);
/// QUIC application close code: the connection is not a ClearSkies connection (wrong ALPN, no
/// device key, no stream opened in time).
pub const CLOSE_NOT_CLEARSKIES: VarInt = VarInt::from_u32(1);

/// The transport parameters of every ClearSkies QUIC connection; see the constants for why.
pub fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(None)
        // Invariant: 73 hours in milliseconds fits a QUIC varint (< 2^62).
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .expect("IDLE_TIMEOUT fits a QUIC varint"),
        ));
    config
}

/// Binds a UDP socket at `addr` and returns an endpoint that both accepts connections (as
/// `key`, judging dialers with `policy`) and dials them (as `key`, judging listeners with
/// `policy`). Must be called within a tokio runtime.
pub fn bind(addr: SocketAddr, key: &DeviceKey, policy: PeerPolicy) -> io::Result<quinn::Endpoint> {
    let server_tls = QuicServerConfig::try_from(clearskies_net::server_config(key, policy.clone()))
        .map_err(io::Error::other)?;
    server_endpoint(addr, Arc::new(server_tls), client_config(key, policy)?)
}

/// Binds a UDP socket at `addr` and returns an endpoint that accepts members (judged with
/// `members`, strangers refused during the handshake) and pairing attempts (any key) on the
/// same port, choosing by the ClientHello's ALPN; it dials as a member. Use
/// [`accept_either`] on its connections. Must be called within a tokio runtime.
pub fn bind_either(
    addr: SocketAddr,
    key: &DeviceKey,
    members: PeerPolicy,
) -> io::Result<quinn::Endpoint> {
    let quic = |policy: PeerPolicy| {
        QuicServerConfig::try_from(clearskies_net::server_config(key, policy))
            .map(Arc::new)
            .map_err(io::Error::other)
    };
    let server_tls = either::ByAlpn {
        members: quic(members.clone())?,
        pairing: quic(PeerPolicy::Pairing)?,
    };
    server_endpoint(addr, Arc::new(server_tls), client_config(key, members)?)
}

/// Binds a UDP socket at `addr` for dialling only (it accepts no connection): as `key`,
/// judging listeners with `policy` ([`PeerPolicy::Pairing`] for a joiner). Must be called
/// within a tokio runtime.
pub fn client(
    addr: SocketAddr,
    key: &DeviceKey,
    policy: PeerPolicy,
) -> io::Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(addr)?;
    endpoint.set_default_client_config(client_config(key, policy)?);
    Ok(endpoint)
}

/// The dialer's configuration of every ClearSkies QUIC connection, for
/// [`quinn::Endpoint::connect_with`] or as an endpoint's default.
pub fn client_config(key: &DeviceKey, policy: PeerPolicy) -> io::Result<quinn::ClientConfig> {
    let client_tls = QuicClientConfig::try_from(clearskies_net::client_config(key, policy))
        .map_err(io::Error::other)?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(Arc::new(transport_config()));
    Ok(client)
}

fn server_endpoint(
    addr: SocketAddr,
    crypto: Arc<dyn quinn::crypto::ServerConfig>,
    client: quinn::ClientConfig,
) -> io::Result<quinn::Endpoint> {
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    server.transport_config(Arc::new(transport_config()));
    let mut endpoint = quinn::Endpoint::server(server, addr)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Dials `addr` from `endpoint` (made by [`bind`], [`bind_either`] or [`client`]) and opens
/// the session's stream. Returns the listener's proven key.
///
/// A listener that refuses this device may let `connect` succeed: the refusal then arrives on
/// the stream's first read (see the crate docs).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> io::Result<(PeerKey, QuicStream)> {
    let connecting = endpoint
        .connect(addr, clearskies_net::SERVER_NAME)
        .map_err(io::Error::other)?;
    opened(endpoint, connecting).await
}

/// [`connect`] with `config` (from [`client_config`]) instead of the endpoint's default: a
/// daemon's endpoint dials members, and with a pairing configuration a joiner.
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> io::Result<(PeerKey, QuicStream)> {
    let connecting = endpoint
        .connect_with(config, addr, clearskies_net::SERVER_NAME)
        .map_err(io::Error::other)?;
    opened(endpoint, connecting).await
}

async fn opened(
    endpoint: &quinn::Endpoint,
    connecting: quinn::Connecting,
) -> io::Result<(PeerKey, QuicStream)> {
    let connection = connecting.await.map_err(connection_error)?;
    let (_, peer) = established(&connection)?;
    let (send, recv) = connection.open_bi().await.map_err(connection_error)?;
    Ok((peer, QuicStream::new(endpoint, connection, send, recv)))
}

/// Completes a connection that arrived on `endpoint` (`incoming` is from
/// [`quinn::Endpoint::accept`]) and waits for the dialer's stream. Returns the dialer's proven
/// key.
///
/// A dialer this device's [`PeerPolicy`] refuses fails here, with an error naming its device;
/// so does a pairing attempt (on an endpoint of [`bind_either`], use [`accept_either`]).
pub async fn accept(
    endpoint: &quinn::Endpoint,
    incoming: quinn::Incoming,
) -> io::Result<(PeerKey, QuicStream)> {
    match accept_either(endpoint, incoming).await? {
        (Purpose::Member, peer, stream) => Ok((peer, stream)),
        (Purpose::Pairing, peer, stream) => {
            stream
                .connection()
                .close(CLOSE_NOT_CLEARSKIES, b"this endpoint does not pair");
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "device {} came to pair, which this endpoint does not do",
                    peer.device_id
                ),
            ))
        }
    }
}

/// Like [`accept`], for an endpoint of [`bind_either`]: also says what the connection came for.
/// A member was judged during the handshake; a pairing attempt may present any key, the
/// pairing exchange decides (`clearskies_tokio::pairing::admit_stream`).
pub async fn accept_either(
    endpoint: &quinn::Endpoint,
    incoming: quinn::Incoming,
) -> io::Result<(Purpose, PeerKey, QuicStream)> {
    let connection = incoming.await.map_err(connection_error)?;
    let (purpose, peer) = established(&connection)?;
    let opened = tokio::time::timeout(FIRST_STREAM_TIMEOUT, connection.accept_bi()).await;
    let (send, recv) = match opened {
        Ok(stream) => stream.map_err(connection_error)?,
        Err(_) => {
            connection.close(CLOSE_NOT_CLEARSKIES, b"no stream opened");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "device {} opened no stream within {} s of the handshake",
                    peer.device_id,
                    FIRST_STREAM_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    Ok((
        purpose,
        peer,
        QuicStream::new(endpoint, connection, send, recv),
    ))
}

/// The checks of `spec/transport.md` § 7 on a QUIC connection, and the peer's key. QUIC is
/// always TLS 1.3 and the configurations of `clearskies-net` disable resumption, so what is left
/// is the ALPN and the key. The connection is closed if a check fails.
fn established(connection: &quinn::Connection) -> io::Result<(Purpose, PeerKey)> {
    let checked = check_established(connection);
    if let Err(err) = &checked {
        connection.close(CLOSE_NOT_CLEARSKIES, err.to_string().as_bytes());
    }
    checked.map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

fn check_established(connection: &quinn::Connection) -> Result<(Purpose, PeerKey), NotEstablished> {
    let protocol = connection
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol);
    // Each end offers only the protocol of its configuration, so the one agreed on is what the
    // connection is for.
    let purpose = match protocol {
        Some(protocol) if protocol == ALPN => Purpose::Member,
        Some(protocol) if protocol == PAIRING_ALPN => Purpose::Pairing,
        other => return Err(NotEstablished::WrongProtocol(other)),
    };
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certificates| PeerKey::from_certificates(&certificates))
        .map(|peer| (purpose, peer))
        .ok_or(NotEstablished::NoPeerKey)
}

/// The channel binding of a QUIC connection (`spec/transport.md` § 8): the TLS exporter of its
/// handshake with [`CHANNEL_BINDING_LABEL`], [`CHANNEL_BINDING_LEN`] bytes and an empty context,
/// which TLS 1.3 defines to equal the absent context [`clearskies_net::channel_binding`] uses.
/// Both ends get the same value.
///
/// Fails only before the handshake has completed.
pub fn channel_binding(
    connection: &quinn::Connection,
) -> Result<[u8; CHANNEL_BINDING_LEN], quinn::crypto::ExportKeyingMaterialError> {
    let mut out = [0; CHANNEL_BINDING_LEN];
    connection.export_keying_material(&mut out, CHANNEL_BINDING_LABEL, b"")?;
    Ok(out)
}

/// The human message for a QUIC connection error: during the handshake, the same words as
/// over TLS (who refused whom and why); afterwards, how the connection ended.
pub fn describe_connection_error(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionClosed(close) => match peer_handshake_failure(err) {
            Some(failure) => failure.to_string(),
            None => format!("the peer closed the QUIC connection: {close}"),
        },
        // Raised here: for a TLS failure, the reason is rustls's error text, which carries the
        // refused device and the policy's reason.
        ConnectionError::TransportError(transport) => match tls_alert(transport.code) {
            Some(CERTIFICATE_UNKNOWN) => format!(
                "this device refused the peer during the QUIC handshake: {}",
                transport.reason
            ),
            Some(_) => format!("the QUIC handshake failed: {}", transport.reason),
            None => format!("QUIC transport error: {transport}"),
        },
        other => format!("the QUIC connection ended: {other}"),
    }
}

/// What the peer's TLS alert says, when the peer closed the connection with one: for a dialer
/// the listener refused, [`HandshakeFailure::RefusedByPeer`]. The alert is all the peer tells;
/// its reasons stay local (`spec/transport.md` § 12).
pub fn peer_handshake_failure(err: &ConnectionError) -> Option<HandshakeFailure> {
    let ConnectionError::ConnectionClosed(close) = err else {
        return None;
    };
    tls_alert(close.error_code).map(|alert| {
        HandshakeFailure::from_tls(&clearskies_net::rustls::Error::AlertReceived(alert.into()))
    })
}

/// The TLS alert `certificate_unknown`, which the verifiers of `clearskies-net` send when the
/// [`PeerPolicy`] refuses a device.
const CERTIFICATE_UNKNOWN: u8 = 46;

/// The TLS alert a QUIC `CRYPTO_ERROR` code carries (RFC 9001 § 4.8: 0x100 + alert).
fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    u64::from(code)
        .checked_sub(0x100)
        .and_then(|alert| u8::try_from(alert).ok())
}

fn connection_error(err: ConnectionError) -> io::Error {
    let kind = match err {
        ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        ConnectionError::LocallyClosed => io::ErrorKind::NotConnected,
        ConnectionError::ConnectionClosed(_)
        | ConnectionError::ApplicationClosed(_)
        | ConnectionError::Reset => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, describe_connection_error(&err))
}

/// Replaces quinn's "connection lost" stream errors with [`describe_connection_error`], so that
/// a refused dialer's first read says it was refused.
fn stream_error(err: io::Error) -> io::Error {
    let lost = err.get_ref().and_then(|inner| {
        if let Some(quinn::ReadError::ConnectionLost(lost)) = inner.downcast_ref() {
            Some(lost.clone())
        } else if let Some(quinn::WriteError::ConnectionLost(lost)) = inner.downcast_ref() {
            Some(lost.clone())
        } else {
            None
        }
    });
    match lost {
        Some(lost) => connection_error(lost),
        None => err,
    }
}

/// The session's bidirectional QUIC stream as one tokio byte stream. Shutting it down finishes
/// the send side; the connection stays open while the stream exists.
///
/// Dropping a finished stream keeps the connection up to [`LINGER`] for the peer to acknowledge
/// the last bytes, then closes it with [`CLOSE_DONE`]; dropping an unfinished one closes the
/// connection at once (an abort).
///
/// The stream holds a handle on its endpoint, so the UDP socket stays open while the session
/// runs even if the application drops its own handle: with quinn 0.11, a connection whose
/// endpoint handles were all dropped was seen to stall (nothing sent or received, not even a
/// close), in this crate's tests.
#[derive(Debug)]
pub struct QuicStream {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    finished: bool,
}

impl QuicStream {
    fn new(
        endpoint: &quinn::Endpoint,
        connection: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Self {
        QuicStream {
            _endpoint: endpoint.clone(),
            connection,
            send,
            recv,
            finished: false,
        }
    }

    /// The QUIC connection carrying this stream (for [`channel_binding`], statistics, or to
    /// close it).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// This connection's [`channel_binding`].
    pub fn channel_binding(
        &self,
    ) -> Result<[u8; CHANNEL_BINDING_LEN], quinn::crypto::ExportKeyingMaterialError> {
        channel_binding(&self.connection)
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf).map_err(stream_error)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf).map_err(stream_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends as soon as congestion control allows; there is no buffer to flush.
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.finished {
            self.finished = true;
            self.send.finish().map_err(io::Error::other)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        if !self.finished {
            // Not finished: an abort. Dropping the last handle closes the connection at once.
            return;
        }
        // Without a runtime there is nothing to wait on: the connection closes at once.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let acknowledged = self.send.stopped();
        let connection = self.connection.clone();
        let endpoint = self._endpoint.clone();
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, acknowledged).await;
            connection.close(CLOSE_DONE, b"session over");
            drop(endpoint);
        });
    }
}
