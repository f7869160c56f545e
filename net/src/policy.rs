//! Which peer keys a TLS handshake accepts.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use clearskies_proto::identity::DeviceId;

/// Decides, during the handshake, whether a peer's device may connect.
///
/// The rule (`spec/transport.md` § Pinning) is that a device is accepted only if it is a member
/// of a share both devices hold. The application answers from its current membership, so an
/// implementation typically reads shared state; it is called once per handshake, on the
/// runtime's thread, and should not block.
///
/// Closures `Fn(&DeviceId) -> Result<(), String>` implement it.
pub trait KeyPolicy: Send + Sync {
    /// `Ok` to accept `device`; otherwise the reason it is refused, for a person to read (for
    /// example "not a member of any share on this device"). The handshake then fails with a
    /// [`KeyRefused`] naming the device and this reason.
    fn accept(&self, device: &DeviceId) -> Result<(), String>;
}

impl<F> KeyPolicy for F
where
    F: Fn(&DeviceId) -> Result<(), String> + Send + Sync,
{
    fn accept(&self, device: &DeviceId) -> Result<(), String> {
        self(device)
    }
}

/// A fixed set of accepted devices.
impl KeyPolicy for BTreeSet<DeviceId> {
    fn accept(&self, device: &DeviceId) -> Result<(), String> {
        if self.contains(device) {
            Ok(())
        } else {
            Err("it is not a member of any share this device holds".to_owned())
        }
    }
}

/// How a connection judges the key its peer presents.
#[derive(Clone)]
pub enum PeerPolicy {
    /// Accept only devices the policy accepts (members of a share both hold); any other key is
    /// refused during the handshake, with the policy's reason.
    Members(Arc<dyn KeyPolicy>),
    /// Accept any well-formed Ed25519 key. The handshake still proves the peer holds the key it
    /// presents, and the key is reported afterwards ([`crate::peer_device`]); who the peer *is*
    /// is settled by the pairing exchange (PAKE) that runs next, bound to this connection by
    /// [`crate::channel_binding`]. Use it only for a connection that pairs.
    Pairing,
}

impl PeerPolicy {
    /// Accept the devices `policy` accepts.
    pub fn members(policy: impl KeyPolicy + 'static) -> PeerPolicy {
        PeerPolicy::Members(Arc::new(policy))
    }

    /// Accept exactly `devices`.
    pub fn pinned(devices: impl IntoIterator<Item = DeviceId>) -> PeerPolicy {
        PeerPolicy::members(devices.into_iter().collect::<BTreeSet<_>>())
    }

    /// Whether `device` may connect: `Err` carries the refusal.
    pub fn check(&self, device: &DeviceId) -> Result<(), KeyRefused> {
        match self {
            PeerPolicy::Pairing => Ok(()),
            PeerPolicy::Members(policy) => policy.accept(device).map_err(|reason| KeyRefused {
                device: *device,
                reason,
            }),
        }
    }
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerPolicy::Members(_) => f.write_str("Members(..)"),
            PeerPolicy::Pairing => f.write_str("Pairing"),
        }
    }
}

/// A peer's device refused by the [`PeerPolicy`] during the handshake.
///
/// It reaches the caller inside the handshake's error as
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; [`crate::HandshakeFailure`]
/// finds it again. Its `Display` and `Debug` both give the full device ID and the reason, so
/// the error's text names both however it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRefused {
    /// The refused device.
    pub device: DeviceId,
    /// Why, as the policy said it.
    pub reason: String,
}

impl fmt::Display for KeyRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {} is refused: {}", self.device, self.reason)
    }
}

impl fmt::Debug for KeyRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // rustls prints a certificate error's cause with `Debug`: show the full ID there too.
        f.debug_struct("KeyRefused")
            .field("device", &format_args!("{}", self.device))
            .field("reason", &self.reason)
            .finish()
    }
}

impl std::error::Error for KeyRefused {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_and_closures() {
        let a = DeviceId::from_bytes([1; 32]);
        let b = DeviceId::from_bytes([2; 32]);
        let pinned = PeerPolicy::pinned([a]);
        assert_eq!(pinned.check(&a), Ok(()));
        let refused = pinned.check(&b).unwrap_err();
        assert_eq!(refused.device, b);
        assert!(refused.to_string().contains(&b.to_string()));
        assert!(format!("{refused:?}").contains(&b.to_string()));

        let closure = PeerPolicy::members(move |d: &DeviceId| {
            if *d == b {
                Err("read-only devices may not dial in".to_owned())
            } else {
                Ok(())
            }
        });
        assert_eq!(closure.check(&a), Ok(()));
        assert_eq!(
            closure.check(&b).unwrap_err().reason,
            "read-only devices may not dial in"
        );
        assert_eq!(PeerPolicy::Pairing.check(&b), Ok(()));
    }
}
