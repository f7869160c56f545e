//! The one verifier both sides use: the peer's "certificate" must be an Ed25519 raw public key,
//! the [`PeerPolicy`] must accept its device, and the handshake signature must verify with it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, PeerMisbehaved,
    SignatureScheme,
};

use crate::keys::PeerKey;
use crate::policy::PeerPolicy;

/// Verifies the peer's raw public key against a [`PeerPolicy`]; used as the client's server
/// verifier and the server's (mandatory) client verifier.
#[derive(Debug)]
pub(crate) struct RawKeyVerifier {
    policy: PeerPolicy,
    algorithms: WebPkiSupportedAlgorithms,
}

impl RawKeyVerifier {
    pub(crate) fn new(policy: PeerPolicy) -> Arc<RawKeyVerifier> {
        Arc::new(RawKeyVerifier {
            policy,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    /// Judges the presented key: well-formed, alone, and accepted by the policy.
    fn judge(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), Error> {
        // A raw public key stands alone (RFC 7250 § 3): there is nothing to chain.
        if !intermediates.is_empty() {
            return Err(CertificateError::BadEncoding.into());
        }
        let peer = PeerKey::from_spki(end_entity.as_ref()).ok_or(CertificateError::BadEncoding)?;
        self.policy.check(&peer.device_id).map_err(|refused| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refused))))
        })
    }

    /// Checks the handshake's `CertificateVerify` signature: Ed25519 only, by the presented key.
    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        // `judge` already accepted this encoding; parsing again keeps the check local.
        if PeerKey::from_spki(cert.as_ref()).is_none() {
            return Err(CertificateError::BadEncoding.into());
        }
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.algorithms,
        )
    }
}

/// Only TLS 1.3 is configured, so rustls never asks for a TLS 1.2 signature check; refuse one
/// all the same rather than accept it unchecked.
fn no_tls12() -> Error {
    Error::General("TLS 1.2 is not used by ClearSkies".to_owned())
}

impl ServerCertVerifier for RawKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // Keys are pinned, never named and never expire: the server name and time do not apply.
        self.judge(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for RawKeyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No certificate authorities: every device presents its own key.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.judge(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}
