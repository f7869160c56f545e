//! Turning a failed handshake into something a person can act on.

use std::fmt;
use std::io;

use rustls::{AlertDescription, CertificateError, Error, InvalidMessage};

use crate::policy::KeyRefused;
use crate::{ALPN, NotEstablished};

/// Why a ClearSkies TLS connection failed, sorted by what a person can do about it.
///
/// Build one from the `io::Error` a TLS stream returned ([`HandshakeFailure::from_io`]) or
/// from the rustls error itself ([`HandshakeFailure::from_tls`]); its `Display` is the human
/// message ([`describe_handshake_error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// This device refused the peer's key: the [`crate::PeerPolicy`] said no.
    Refused(KeyRefused),
    /// The peer refused this device's key (it sent a certificate alert): this device is not a
    /// member of a share the peer holds, or the peer was not expecting to pair.
    RefusedByPeer,
    /// The peer presented no key, or something other than one Ed25519 raw public key.
    BadPeerKey,
    /// The peer presented a key but its handshake signature does not verify with it: it does
    /// not hold that key (an impersonation attempt, or a broken peer).
    KeyNotProven,
    /// The peer speaks TLS but not ClearSkies's profile (TLS 1.3, raw public keys, Ed25519,
    /// ALPN `clearskies/1`).
    Incompatible(String),
    /// The peer does not speak TLS at all (a plain TCP client, another protocol).
    NotTls,
    /// The connection was closed before the handshake finished.
    Closed,
    /// Anything else, with the underlying error's text.
    Other(String),
}

impl HandshakeFailure {
    /// Classifies the error a TLS stream (tokio-rustls, futures-rustls, rustls's own
    /// `complete_io`) returned during or right after the handshake. Those stacks carry rustls's
    /// error inside the `io::Error`; anything else is a transport error.
    pub fn from_io(err: &io::Error) -> HandshakeFailure {
        if let Some(tls) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
        {
            return HandshakeFailure::from_tls(tls);
        }
        if let Some(not_established) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<NotEstablished>())
        {
            return HandshakeFailure::from(not_established);
        }
        match err.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
            _ => HandshakeFailure::Other(err.to_string()),
        }
    }

    /// Classifies a rustls error.
    pub fn from_tls(err: &Error) -> HandshakeFailure {
        match err {
            Error::InvalidCertificate(CertificateError::Other(other)) => {
                match other.0.downcast_ref::<KeyRefused>() {
                    Some(refused) => HandshakeFailure::Refused(refused.clone()),
                    None => HandshakeFailure::Other(err.to_string()),
                }
            }
            Error::InvalidCertificate(CertificateError::BadEncoding)
            | Error::NoCertificatesPresented => HandshakeFailure::BadPeerKey,
            Error::InvalidCertificate(CertificateError::BadSignature) => {
                HandshakeFailure::KeyNotProven
            }
            Error::InvalidCertificate(_) => HandshakeFailure::Other(err.to_string()),
            Error::AlertReceived(alert) => match alert {
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied => HandshakeFailure::RefusedByPeer,
                AlertDescription::CertificateRequired => HandshakeFailure::Incompatible(
                    "the peer requires a device key and this device presented none".to_owned(),
                ),
                AlertDescription::HandshakeFailure
                | AlertDescription::ProtocolVersion
                | AlertDescription::InsufficientSecurity
                | AlertDescription::IllegalParameter
                | AlertDescription::UnsupportedExtension
                | AlertDescription::NoApplicationProtocol => {
                    HandshakeFailure::Incompatible(format!("the peer sent the alert {alert:?}"))
                }
                _ => HandshakeFailure::Other(err.to_string()),
            },
            // Errors in the record header itself: the bytes are not TLS records.
            Error::InvalidMessage(
                InvalidMessage::InvalidContentType
                | InvalidMessage::UnknownProtocolVersion
                | InvalidMessage::MessageTooLarge,
            ) => HandshakeFailure::NotTls,
            Error::PeerIncompatible(why) => HandshakeFailure::Incompatible(format!("{why:?}")),
            Error::NoApplicationProtocol => HandshakeFailure::Incompatible(format!(
                "no common application protocol ({})",
                String::from_utf8_lossy(ALPN)
            )),
            _ => HandshakeFailure::Other(err.to_string()),
        }
    }
}

impl From<&NotEstablished> for HandshakeFailure {
    fn from(err: &NotEstablished) -> HandshakeFailure {
        match err {
            NotEstablished::NoPeerKey => HandshakeFailure::BadPeerKey,
            other => HandshakeFailure::Incompatible(other.to_string()),
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::Refused(refused) => write!(
                f,
                "this device refused the peer's device {}: {}",
                refused.device, refused.reason
            ),
            HandshakeFailure::RefusedByPeer => write!(
                f,
                "the peer refused this device: it is not a member of any share the peer holds \
                 (or the peer was not expecting to pair)"
            ),
            HandshakeFailure::BadPeerKey => write!(
                f,
                "the peer did not present a device key (an Ed25519 raw public key)"
            ),
            HandshakeFailure::KeyNotProven => write!(
                f,
                "the peer presented a device key it could not prove it holds (someone may be \
                 impersonating that device)"
            ),
            HandshakeFailure::Incompatible(why) => write!(
                f,
                "the peer does not speak ClearSkies's TLS (TLS 1.3 with raw Ed25519 keys and \
                 ALPN \"{}\"): {why}",
                String::from_utf8_lossy(ALPN)
            ),
            HandshakeFailure::NotTls => write!(
                f,
                "the peer does not speak TLS: it is not a ClearSkies device, or something \
                 between the devices changed the traffic"
            ),
            HandshakeFailure::Closed => write!(
                f,
                "the connection closed during the TLS handshake (the peer may have refused \
                 this device, or it is not a ClearSkies device)"
            ),
            HandshakeFailure::Other(text) => write!(f, "the TLS handshake failed: {text}"),
        }
    }
}

impl std::error::Error for HandshakeFailure {}

/// The human message for an error from a ClearSkies TLS stream's handshake: who refused whom
/// and why, that the peer is not a ClearSkies device, or the underlying error.
pub fn describe_handshake_error(err: &io::Error) -> String {
    HandshakeFailure::from_io(err).to_string()
}

/// An error from a ClearSkies TLS stream's handshake, of the same kind, with the message of
/// [`describe_handshake_error`]: what every driver's `connect` and `accept` return.
pub fn handshake_error(err: io::Error) -> io::Error {
    io::Error::new(err.kind(), describe_handshake_error(&err))
}
