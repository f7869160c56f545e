//! How the tool reaches peers and is reached: QUIC (UDP) and TCP + TLS 1.3 on one port, with
//! the same keys, policies and ALPNs (`spec/transport.md`). A listener serves both unless
//! `--transport` restricts it; a dialer tries QUIC first and falls back to TCP.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use clearskies_net::{HandshakeFailure, PeerKey, PeerPolicy};
use clearskies_proto::crypto::DeviceKey;
use clearskies_quic::QuicStream;
use clearskies_quic::quinn::Endpoint;
use clearskies_tokio::tls::{self, Purpose, TlsStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::Failure;

/// How long a QUIC handshake may take before the dialer tries TCP. A QUIC packet to a port
/// nobody serves over UDP is dropped silently, so only a timeout tells.
pub const QUIC_ATTEMPT: Duration = Duration::from_secs(3);

/// Which transports a device uses (`--transport`, or `transport` in the home's config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Both: listen on both, dial QUIC first and fall back to TCP.
    Any,
    /// QUIC only.
    Quic,
    /// TCP + TLS only.
    Tcp,
}

impl Transport {
    /// `quic`, `tcp`, or nothing (both).
    pub fn parse(text: Option<&str>) -> Result<Transport, Failure> {
        match text {
            None => Ok(Transport::Any),
            Some("quic") => Ok(Transport::Quic),
            Some("tcp") => Ok(Transport::Tcp),
            Some(other) => Err(Failure::usage(&format!(
                "--transport {other:?}: expected quic or tcp (leave it out to use both)"
            ))),
        }
    }

    fn quic(self) -> bool {
        self != Transport::Tcp
    }

    fn tcp(self) -> bool {
        self != Transport::Quic
    }
}

/// An authenticated connection over either transport: one byte stream.
#[derive(Debug)]
pub enum Link {
    /// TLS over TCP (a futures-io stream, adapted to tokio's traits).
    Tcp(Box<Compat<TlsStream>>),
    /// The session's bidirectional QUIC stream.
    Quic(Box<QuicStream>),
}

impl Link {
    /// The connection's channel binding (`spec/transport.md` § 8), for pairing.
    pub fn channel_binding(&self) -> io::Result<[u8; 32]> {
        match self {
            Link::Tcp(s) => clearskies_tokio::tls::channel_binding(s.get_ref()),
            Link::Quic(s) => s
                .channel_binding()
                .map_err(|_| io::Error::other("the QUIC handshake gave no channel binding")),
        }
    }

    /// `QUIC` or `TCP`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Link::Tcp(_) => "TCP",
            Link::Quic(_) => "QUIC",
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Link::Quic(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Link::Quic(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Link::Quic(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Tcp(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Link::Quic(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A [`Link`] that keeps its first I/O error, for the dialer to tell a refusal (the
/// listener's alert arrives as an error on the first read) from a session that ended for
/// another reason.
#[derive(Debug)]
pub struct Watched {
    link: Link,
    error: FirstError,
}

/// The first error a [`Watched`] link saw: its text, and whether it is the peer refusing this
/// device.
pub type FirstError = Arc<Mutex<Option<(String, bool)>>>;

impl Link {
    /// The link, and where its first error will be.
    pub fn watched(self) -> (Watched, FirstError) {
        let error = FirstError::default();
        (
            Watched {
                link: self,
                error: error.clone(),
            },
            error,
        )
    }
}

impl Watched {
    fn record<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result {
            let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let failure = match &self.link {
                    Link::Tcp(_) => Some(HandshakeFailure::from_io(e)),
                    Link::Quic(s) => s
                        .connection()
                        .close_reason()
                        .and_then(|reason| clearskies_quic::peer_handshake_failure(&reason)),
                };
                let refused = failure == Some(HandshakeFailure::RefusedByPeer);
                let text = failure.map_or_else(|| e.to_string(), |f| f.to_string());
                *slot = Some((text, refused));
            }
        }
        result
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.link).poll_read(cx, buf);
        this.record(result)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.link).poll_write(cx, buf);
        this.record(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.link).poll_flush(cx);
        this.record(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().link).poll_shutdown(cx)
    }
}

/// Dials peers: QUIC first, TCP when QUIC does not answer (or only the one `--transport` says).
#[derive(Debug)]
pub struct Dialer {
    transport: Transport,
    key: DeviceKey,
    /// The UDP socket QUIC connections are dialled from (none with `--transport tcp`).
    quic: Option<Endpoint>,
    /// Addresses where QUIC failed and TCP worked: tried over TCP first from then on.
    tcp_first: Mutex<BTreeSet<SocketAddr>>,
}

impl Dialer {
    /// A dialer as `key`. Must be called within the tokio runtime.
    pub fn new(transport: Transport, key: &DeviceKey) -> Result<Dialer, Failure> {
        let quic = if transport.quic() {
            // Dual-stack where the host has IPv6 (discovery may report link-local addresses).
            let bind = |ip: IpAddr| {
                clearskies_quic::client(SocketAddr::new(ip, 0), key, PeerPolicy::Pairing)
            };
            let endpoint = bind(Ipv6Addr::UNSPECIFIED.into())
                .or_else(|_| bind(Ipv4Addr::UNSPECIFIED.into()))
                .map_err(|e| Failure::usage(&format!("cannot open a UDP socket for QUIC: {e}")))?;
            Some(endpoint)
        } else {
            None
        };
        Ok(Dialer {
            transport,
            key: key.clone(),
            quic,
            tcp_first: Mutex::new(BTreeSet::new()),
        })
    }

    /// Connects to `addr`, judging the listener with `policy` (members, or pairing for a
    /// joiner). Returns the listener's proven key and the connection.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        policy: PeerPolicy,
    ) -> io::Result<(PeerKey, Link)> {
        let tcp_first = self
            .tcp_first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&addr);
        let quic = self.quic.as_ref();
        let tcp = self.transport.tcp();
        let over_quic = async |endpoint: &Endpoint| {
            let config = clearskies_quic::client_config(&self.key, policy.clone())?;
            let connecting = clearskies_quic::connect_with(endpoint, config, addr);
            match tokio::time::timeout(QUIC_ATTEMPT, connecting).await {
                Ok(connected) => connected.map(|(peer, s)| (peer, Link::Quic(Box::new(s)))),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no QUIC answer within {} s", QUIC_ATTEMPT.as_secs()),
                )),
            }
        };
        let over_tcp = async || {
            tls::connect(addr, &self.key, policy.clone())
                .await
                .map(|(peer, s)| (peer, Link::Tcp(Box::new(s.compat()))))
        };
        match (quic, tcp) {
            (Some(endpoint), false) => over_quic(endpoint).await,
            (None, _) => over_tcp().await,
            (Some(endpoint), true) if tcp_first => match over_tcp().await {
                Ok(connected) => Ok(connected),
                Err(tcp_error) => over_quic(endpoint)
                    .await
                    .map_err(|e| both_failed(&e, &tcp_error)),
            },
            (Some(endpoint), true) => match over_quic(endpoint).await {
                Ok(connected) => Ok(connected),
                Err(quic_error) => {
                    let connected = over_tcp().await.map_err(|e| both_failed(&quic_error, &e))?;
                    self.tcp_first
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(addr);
                    Ok(connected)
                }
            },
        }
    }
}

fn both_failed(quic: &io::Error, tcp: &io::Error) -> io::Error {
    io::Error::new(tcp.kind(), format!("over QUIC: {quic}; over TCP: {tcp}"))
}

/// What `run` and `sync --once` listen on: TCP and UDP on one port (or one of them).
#[derive(Debug)]
pub struct Listener {
    /// The address both are bound to (the port chosen when 0 was asked for).
    pub addr: SocketAddr,
    /// TLS over TCP, unless `--transport quic`.
    pub tcp: Option<TcpListener>,
    /// QUIC, members and pairing, unless `--transport tcp`.
    pub quic: Option<Endpoint>,
}

/// How many ports a listener on port 0 tries before giving up: the port TCP got may be taken
/// over UDP.
const PORT_TRIES: usize = 16;

/// Binds what `transport` says at `addr` (port 0: any port free for both), accepting members
/// judged by `members` and pairing attempts. Must be called within the tokio runtime.
pub async fn listen(
    addr: SocketAddr,
    transport: Transport,
    key: &DeviceKey,
    members: &PeerPolicy,
) -> Result<Listener, Failure> {
    let cannot = |what: &str, e: io::Error| {
        Failure::usage(&format!("cannot listen on {addr} ({what}): {e}"))
    };
    let mut last = None;
    for _ in 0..PORT_TRIES {
        let tcp = if transport.tcp() {
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| cannot("TCP", e))?,
            )
        } else {
            None
        };
        let bound = match &tcp {
            Some(l) => l.local_addr().map_err(|e| cannot("TCP", e))?,
            None => addr,
        };
        if !transport.quic() {
            return Ok(Listener {
                addr: bound,
                tcp,
                quic: None,
            });
        }
        match clearskies_quic::bind_either(bound, key, members.clone()) {
            Ok(endpoint) => {
                let addr = endpoint.local_addr().map_err(|e| cannot("UDP", e))?;
                return Ok(Listener {
                    addr,
                    tcp,
                    quic: Some(endpoint),
                });
            }
            // TCP chose a port that is taken over UDP: try another.
            Err(e) if addr.port() == 0 && tcp.is_some() => last = Some(e),
            Err(e) => return Err(cannot("UDP, for QUIC", e)),
        }
    }
    Err(cannot(
        "UDP, for QUIC",
        last.unwrap_or_else(|| io::Error::other("no free port")),
    ))
}

/// Accepts one TCP connection's TLS, for either purpose.
pub async fn accept_tcp(
    tcp: tokio::net::TcpStream,
    key: &DeviceKey,
    members: PeerPolicy,
) -> io::Result<(Purpose, PeerKey, Link)> {
    let members = clearskies_net::server_config(key, members);
    let pairing = clearskies_net::server_config(key, PeerPolicy::Pairing);
    let (purpose, peer, stream) = tls::accept_either(tcp, members, pairing).await?;
    Ok((purpose, peer, Link::Tcp(Box::new(stream.compat()))))
}

/// Accepts one QUIC connection, for either purpose.
pub async fn accept_quic(
    endpoint: &Endpoint,
    incoming: clearskies_quic::quinn::Incoming,
) -> io::Result<(Purpose, PeerKey, Link)> {
    let (purpose, peer, stream) = clearskies_quic::accept_either(endpoint, incoming).await?;
    Ok((purpose, peer, Link::Quic(Box::new(stream))))
}
