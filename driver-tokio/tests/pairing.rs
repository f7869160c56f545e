//! Pairing over real loopback TLS sockets: the right code pairs; a wrong secret, an expired,
//! a cancelled and a used code each fail with their own code; a man in the middle who relays
//! between two TLS connections is detected.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clearskies_net::PeerPolicy;
use clearskies_proto::code::AccessCode;
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member};
use clearskies_proto::pair::{Admitted, InvitationOptions, Invitations};
use clearskies_tokio::pairing::{self, PairingFailure, unix_micros};
use clearskies_tokio::tls;
use futures_util::io::AsyncReadExt;
use tokio::net::TcpListener;

const SHARE: [u8; 32] = [0x33; 32];

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

struct Inviter {
    addr: SocketAddr,
    invitations: Arc<Mutex<Invitations>>,
    task: tokio::task::JoinHandle<Result<Admitted, PairingFailure>>,
}

/// An inviter (device 1) serving one pairing attempt.
async fn inviter(invitations: Arc<Mutex<Invitations>>) -> Inviter {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = invitations.clone();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        pairing::admit(tcp, &key(1), registry, |admitted| {
            vec![
                Member {
                    public_key: key(1).public_key(),
                    access: Access::ReadWrite,
                },
                Member {
                    public_key: admitted.public_key,
                    access: admitted.access,
                },
            ]
        })
        .await
    });
    Inviter {
        addr,
        invitations,
        task,
    }
}

fn registry_with(options: InvitationOptions) -> (Arc<Mutex<Invitations>>, AccessCode) {
    let mut invitations = Invitations::new();
    let code = invitations
        .create(unix_micros(), [0x5c; 16], SHARE, options)
        .unwrap();
    (Arc::new(Mutex::new(invitations)), code)
}

#[tokio::test]
async fn the_right_code_pairs_and_both_sides_learn_each_other() {
    let (invitations, code) = registry_with(InvitationOptions {
        access: Access::ReadOnly,
        ..InvitationOptions::default()
    });
    let server = inviter(invitations.clone()).await;
    let joined = pairing::join(server.addr, &key(2), &code)
        .await
        .expect("pairs");
    let admitted = server.task.await.unwrap().expect("admits");
    assert_eq!(joined.share_id, SHARE);
    assert_eq!(joined.access, Access::ReadOnly);
    assert_eq!(joined.inviter_public_key, key(1).public_key());
    assert!(
        joined
            .members
            .iter()
            .any(|m| m.public_key == key(2).public_key() && m.access == Access::ReadOnly)
    );
    assert_eq!(admitted.public_key, key(2).public_key());
    assert_eq!(admitted.access, Access::ReadOnly);
    // Single use: the code is now used up.
    assert_refused(server.invitations, 3, &code, "used").await;
}

#[tokio::test]
async fn a_wrong_secret_fails_on_both_sides() {
    let (invitations, code) = registry_with(InvitationOptions::default());
    // Same locator (the inviter finds the invitation), different secret half.
    let mut bytes = code.to_bytes();
    bytes[15] ^= 1;
    let wrong = AccessCode::from_bytes(bytes);
    let server = inviter(invitations.clone()).await;
    let err = pairing::join(server.addr, &key(2), &wrong)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("wrong-secret"), "{err}");
    let err = server.task.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("wrong-secret"), "{err}");
    let invitation = invitations
        .lock()
        .unwrap()
        .get(&code.locator_id())
        .unwrap()
        .clone();
    assert_eq!(invitation.failures(), 1, "the failure was counted");
}

#[tokio::test]
async fn expired_and_cancelled_codes_fail_with_their_own_reason() {
    let (invitations, code) = registry_with(InvitationOptions {
        lifetime_micros: 1,
        ..InvitationOptions::default()
    });
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_refused(invitations, 2, &code, "expired").await;

    let (invitations, code) = registry_with(InvitationOptions::default());
    assert!(
        invitations
            .lock()
            .unwrap()
            .cancel(&code.locator_id(), unix_micros())
    );
    assert_refused(invitations, 2, &code, "cancelled").await;

    let (invitations, _) = registry_with(InvitationOptions::default());
    assert_refused(
        invitations,
        2,
        &AccessCode::from_bytes([0x77; 16]),
        "unknown-code",
    )
    .await;
}

/// Device `joiner` tries `code` against an inviter holding `invitations`: both sides must fail,
/// the joiner with `expected`.
async fn assert_refused(
    invitations: Arc<Mutex<Invitations>>,
    joiner: u8,
    code: &AccessCode,
    expected: &str,
) {
    let server = inviter(invitations).await;
    let err = pairing::join(server.addr, &key(joiner), code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(expected), "{err}");
    assert!(
        server.task.await.unwrap().is_err(),
        "the inviter admitted nobody"
    );
}

#[tokio::test]
async fn a_relaying_man_in_the_middle_who_knows_the_code_is_detected() {
    let (invitations, code) = registry_with(InvitationOptions::default());
    let server = inviter(invitations.clone()).await;
    // The attacker terminates TLS on both legs with its own key and relays the plaintext.
    let mitm = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = mitm.local_addr().unwrap();
    let attacker = key(9);
    let relay = tokio::spawn(async move {
        let (tcp, _) = mitm.accept().await.unwrap();
        let server_config = clearskies_net::server_config(&attacker, PeerPolicy::Pairing);
        let (_, from_joiner) = tls::accept(tcp, server_config).await.unwrap();
        let (_, to_inviter) = tls::connect(server.addr, &attacker, PeerPolicy::Pairing)
            .await
            .unwrap();
        let (joiner_in, mut joiner_out) = from_joiner.split();
        let (inviter_in, mut inviter_out) = to_inviter.split();
        let _ = futures_util::future::join(
            futures_util::io::copy(joiner_in, &mut inviter_out),
            futures_util::io::copy(inviter_in, &mut joiner_out),
        )
        .await;
    });
    let err = pairing::join(mitm_addr, &key(2), &code).await.unwrap_err();
    assert_eq!(err.code(), Some("wrong-secret"), "{err}");
    let err = server.task.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("wrong-secret"), "{err}");
    relay.abort();
    // Nobody was admitted.
    let invitation = invitations
        .lock()
        .unwrap()
        .get(&code.locator_id())
        .unwrap()
        .clone();
    assert_eq!(invitation.admitted(), 0);
}
