//! A QUIC listener's TLS that serves members and pairing on one port.
//!
//! quinn fixes an endpoint's TLS configuration before a connection's first packet is read, and
//! a rustls configuration judges client keys with one verifier for every connection, unaware
//! of the ALPN. [`ByAlpn`] wraps the two configurations of `clearskies-net` (members, pairing):
//! each connection's session holds the ClientHello until it is complete, reads its ALPN with
//! rustls's own parser, and hands it to a session of the configuration it asks for. From then
//! on every call goes to that session; before, the members session stands in, which has nothing
//! to say until it has read a ClientHello. This is what `clearskies_tokio::tls::accept_either`
//! does over TCP with rustls's `LazyConfigAcceptor`.

use std::any::Any;
use std::sync::Arc;

use clearskies_net::rustls;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::crypto::{
    ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, ServerConfig, Session,
    UnsupportedVersion,
};
use quinn::{ConnectionId, Side};
use quinn_proto::TransportError;
use quinn_proto::transport_parameters::TransportParameters;

/// The TLS handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The longest ClientHello waited for; anything longer is handed on as is (the members session
/// then fails the handshake). A ClientHello of either configuration is well under 2 KiB.
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The server TLS of [`crate::bind_either`].
pub(crate) struct ByAlpn {
    pub(crate) members: Arc<QuicServerConfig>,
    pub(crate) pairing: Arc<QuicServerConfig>,
}

impl ServerConfig for ByAlpn {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        // Initial keys depend on the version and connection ID only.
        self.members.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.members.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn Session> {
        Box::new(Choosing {
            session: self.members.clone().start_session(version, params),
            undecided: Some((self.pairing.clone(), version, *params)),
            hello: Vec::new(),
        })
    }
}

/// A connection's session, before and after the choice.
struct Choosing {
    /// The members session until the choice; then the chosen one.
    session: Box<dyn Session>,
    /// What a pairing session is started with, until the choice.
    undecided: Option<(Arc<QuicServerConfig>, u32, TransportParameters)>,
    /// The ClientHello's bytes so far, until the choice.
    hello: Vec<u8>,
}

/// Whether a complete ClientHello (a TLS handshake message) asks for pairing; `None` while it
/// is incomplete.
fn wants_pairing(hello: &[u8]) -> Option<bool> {
    let [kind, a, b, c, ..] = *hello else {
        return None;
    };
    let len = 4 + ((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c));
    if kind != CLIENT_HELLO || len > MAX_CLIENT_HELLO {
        return Some(false);
    }
    let message = hello.get(..len)?;
    // rustls parses TLS records: wrap the message in handshake records.
    let mut records = Vec::with_capacity(len + 5);
    for chunk in message.chunks(16 * 1024) {
        let [hi, lo] = u16::try_from(chunk.len()).unwrap_or(u16::MAX).to_be_bytes();
        records.extend_from_slice(&[0x16, 0x03, 0x03, hi, lo]);
        records.extend_from_slice(chunk);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut input = records.as_slice();
    while !input.is_empty() {
        match acceptor.read_tls(&mut input) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Some(match acceptor.accept() {
        Ok(Some(accepted)) => accepted
            .client_hello()
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == clearskies_net::PAIRING_ALPN)),
        // Not a ClientHello rustls can read: the members session refuses it.
        Ok(None) | Err(_) => false,
    })
}

impl Session for Choosing {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.session.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        self.session.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.session.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.session.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.session.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        if self.undecided.is_none() {
            return self.session.read_handshake(buf);
        }
        self.hello.extend_from_slice(buf);
        let Some(pairing) = wants_pairing(&self.hello) else {
            return Ok(false);
        };
        if let Some((config, version, params)) = self.undecided.take()
            && pairing
        {
            self.session = config.start_session(version, &params);
        }
        let hello = std::mem::take(&mut self.hello);
        self.session.read_handshake(&hello)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.session.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        self.session.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.session.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.session.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.session.export_keying_material(output, label, context)
    }
}

#[cfg(test)]
mod tests {
    use super::wants_pairing;

    #[test]
    fn an_incomplete_or_foreign_client_hello() {
        assert_eq!(wants_pairing(&[]), None);
        assert_eq!(wants_pairing(&[1, 0, 0]), None);
        assert_eq!(wants_pairing(&[1, 0, 0, 10, 0]), None);
        // Not a ClientHello, or too long to wait for: the members session judges it.
        assert_eq!(wants_pairing(&[2, 0, 0, 1, 0]), Some(false));
        assert_eq!(wants_pairing(&[1, 0xff, 0, 0]), Some(false));
        // Complete but garbage.
        assert_eq!(wants_pairing(&[1, 0, 0, 2, 9, 9]), Some(false));
    }
}
