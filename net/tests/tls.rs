//! The TLS configuration over real loopback TCP sockets (tokio + tokio-rustls), no mocks: who is
//! accepted, who is refused and with what message, what each side learns about the other, and
//! the channel binding the pairing exchange relies on.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clearskies_net::rustls::{self, ClientConfig, ServerConfig};
use clearskies_net::{
    ALPN, HandshakeFailure, KeyRefused, NotEstablished, PAIRING_ALPN, PeerKey, PeerPolicy,
    channel_binding, client_config, describe_handshake_error, established_peer, server_config,
    server_name,
};
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::identity::DeviceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// No test may hang: every one finishes well within this.
const LIMIT: Duration = Duration::from_secs(20);

fn device(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

/// A device with a fresh random key (from ring's system RNG, through rustls's provider).
fn random_device() -> DeviceKey {
    let mut secret = [0; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut secret)
        .expect("the system RNG works");
    DeviceKey::from_secret(&secret)
}

fn peer_key(key: &DeviceKey) -> PeerKey {
    PeerKey::from_public_key(key.public_key())
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

async fn accept(
    listener: &TcpListener,
    config: Arc<ServerConfig>,
) -> io::Result<server::TlsStream<TcpStream>> {
    let (tcp, _) = listener.accept().await?;
    TlsAcceptor::from(config).accept(tcp).await
}

async fn dial(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(server_name(), tcp).await
}

/// One connection: a listener with `server`, a dialer with `client`, both handshakes run
/// concurrently.
async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (
    io::Result<server::TlsStream<TcpStream>>,
    io::Result<client::TlsStream<TcpStream>>,
) {
    let (listener, addr) = listener().await;
    tokio::join!(accept(&listener, server), dial(addr, client))
}

fn run<F: std::future::Future<Output = ()>>(test: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(async {
            tokio::time::timeout(LIMIT, test)
                .await
                .expect("the test finished in time")
        });
}

/// The refusal a failed handshake carries, if this side refused the peer.
fn refusal(err: &io::Error) -> Option<KeyRefused> {
    match HandshakeFailure::from_io(err) {
        HandshakeFailure::Refused(refused) => Some(refused),
        _ => None,
    }
}

/// A refused client finishes its side of the TLS 1.3 handshake before the server judges its
/// key, so the refusal may surface on `connect` or on the first read.
async fn refusal_seen_by_client(dialed: io::Result<client::TlsStream<TcpStream>>) -> io::Error {
    let mut stream = match dialed {
        Err(err) => return err,
        Ok(stream) => stream,
    };
    // No write first: data the refusing server never read would make its close a reset,
    // and a reset may discard the alert before it is read.
    let mut buf = [0; 64];
    match stream.read(&mut buf).await {
        Err(err) => err,
        Ok(n) => panic!("a refused client read {n} bytes instead of an error"),
    }
}

#[test]
fn pinned_devices_handshake_and_exchange_bytes() {
    run(async {
        let (alice, bob) = (device(1), device(2));
        let (server, client) = connect(
            server_config(&alice, PeerPolicy::pinned([bob.device_id()])),
            client_config(&bob, PeerPolicy::pinned([alice.device_id()])),
        )
        .await;
        let mut server = server.expect("alice accepts bob");
        let mut client = client.expect("bob reaches alice");

        // Each side sees the other's device, and the full, ALPN-checked session.
        assert_eq!(established_peer(server.get_ref().1), Ok(peer_key(&bob)));
        assert_eq!(established_peer(client.get_ref().1), Ok(peer_key(&alice)));
        assert_eq!(
            clearskies_net::peer_device(client.get_ref().1).map(|p| p.device_id),
            Some(alice.device_id())
        );
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(ALPN));

        // Bytes both ways: a greeting, then 256 KiB each way at once (more than the socket
        // buffers, so the two directions must run together).
        client.write_all(b"hello from bob").await.unwrap();
        let mut greeting = [0; 14];
        server.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello from bob");

        let up: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..256 * 1024).map(|i| (i % 241) as u8).collect();
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let (received_up, received_down, (), ()) = tokio::join!(
            async {
                let mut buf = vec![0; up.len()];
                server_read.read_exact(&mut buf).await.unwrap();
                buf
            },
            async {
                let mut buf = vec![0; down.len()];
                client_read.read_exact(&mut buf).await.unwrap();
                buf
            },
            async { client_write.write_all(&up).await.unwrap() },
            async { server_write.write_all(&down).await.unwrap() },
        );
        assert!(received_up == up, "bob's bytes arrive intact");
        assert!(received_down == down, "alice's bytes arrive intact");
    });
}

#[test]
fn channel_binding_is_shared_by_both_ends_and_unique_per_connection() {
    run(async {
        let (alice, bob) = (device(1), device(2));
        let server = server_config(&alice, PeerPolicy::pinned([bob.device_id()]));
        let client = client_config(&bob, PeerPolicy::pinned([alice.device_id()]));

        let mut seen = Vec::new();
        for _ in 0..3 {
            let (s, c) = connect(server.clone(), client.clone()).await;
            let (s, c) = (s.expect("accepted"), c.expect("connected"));
            let at_server = channel_binding(s.get_ref().1).expect("handshake done");
            let at_client = channel_binding(c.get_ref().1).expect("handshake done");
            assert_eq!(at_server, at_client, "both ends of one session agree");
            // TLS 1.3 defines no context and an empty context to be the same: what quinn's
            // `export_keying_material(out, label, b"")` computes is this value too.
            let mut empty_context = [0; 32];
            c.get_ref()
                .1
                .export_keying_material(
                    &mut empty_context,
                    clearskies_net::CHANNEL_BINDING_LABEL,
                    Some(b""),
                )
                .unwrap();
            assert_eq!(empty_context, at_client);
            assert_ne!(at_server, [0; 32]);
            seen.push(at_server);
        }
        // The same two devices, the same configurations: still a fresh value each time.
        assert_ne!(seen[0], seen[1]);
        assert_ne!(seen[1], seen[2]);
        assert_ne!(seen[0], seen[2]);
    });
}

#[test]
fn server_refuses_an_unknown_device() {
    run(async {
        let (alice, bob, mallory) = (device(1), device(2), device(9));
        // Mallory knows Alice's key, but Alice only knows Bob.
        let (server, client) = connect(
            server_config(&alice, PeerPolicy::pinned([bob.device_id()])),
            client_config(&mallory, PeerPolicy::pinned([alice.device_id()])),
        )
        .await;

        let err = server.expect_err("alice refuses mallory");
        let refused = refusal(&err).expect("the error is alice's refusal");
        assert_eq!(refused.device, mallory.device_id());
        assert_eq!(
            refused.reason,
            "it is not a member of any share this device holds"
        );
        // The error's own text, and the human message, name the device and the reason.
        let id = mallory.device_id().to_string();
        assert!(err.to_string().contains(&id), "{err}");
        assert!(err.to_string().contains("not a member"), "{err}");
        let message = describe_handshake_error(&err);
        assert!(message.contains(&id), "{message}");
        assert!(message.contains("not a member of any share"), "{message}");

        // Mallory learns only that she was refused, and no byte of application data.
        let client_err = refusal_seen_by_client(client).await;
        assert_eq!(
            HandshakeFailure::from_io(&client_err),
            HandshakeFailure::RefusedByPeer,
            "{client_err}"
        );
        assert!(describe_handshake_error(&client_err).contains("the peer refused this device"));
    });
}

#[test]
fn client_refuses_an_unknown_server() {
    run(async {
        let (alice, bob, mallory) = (device(1), device(2), device(9));
        let alice_id = alice.device_id();
        // Bob remembered an address for Alice; Mallory answers there. Bob's policy explains.
        let bob_policy = PeerPolicy::members(move |device: &DeviceId| {
            if *device == alice_id {
                Ok(())
            } else {
                Err("this address was remembered for another device".to_owned())
            }
        });
        let (server, client) = connect(
            server_config(&mallory, PeerPolicy::pinned([bob.device_id()])),
            client_config(&bob, bob_policy),
        )
        .await;

        let err = client.expect_err("bob refuses mallory");
        let refused = refusal(&err).expect("the error is bob's refusal");
        assert_eq!(refused.device, mallory.device_id());
        assert_eq!(
            refused.reason,
            "this address was remembered for another device"
        );
        let message = describe_handshake_error(&err);
        assert!(
            message.contains(&mallory.device_id().to_string()),
            "{message}"
        );
        assert!(
            message.contains("remembered for another device"),
            "{message}"
        );

        let server_err = server.expect_err("mallory's handshake fails too");
        assert_eq!(
            HandshakeFailure::from_io(&server_err),
            HandshakeFailure::RefusedByPeer,
            "{server_err}"
        );
    });
}

#[test]
fn pairing_accepts_any_key_and_reports_it() {
    run(async {
        let inviter = device(1);
        for _ in 0..2 {
            let newcomer = random_device();
            let (server, client) = connect(
                server_config(&inviter, PeerPolicy::Pairing),
                client_config(&newcomer, PeerPolicy::Pairing),
            )
            .await;
            let (server, client) = (server.expect("accepted"), client.expect("connected"));
            assert_eq!(
                established_peer(server.get_ref().1),
                Ok(peer_key(&newcomer))
            );
            assert_eq!(established_peer(client.get_ref().1), Ok(peer_key(&inviter)));
        }
    });
}

#[test]
fn a_man_in_the_middle_holds_two_sessions_with_different_bindings() {
    run(async {
        // Alice dials what she thinks is Bob; Mallory accepts, dials Bob herself and relays.
        // During pairing both honest devices accept any key, so TLS alone cannot stop her.
        let (alice, bob, mallory) = (device(1), device(2), device(9));
        let (to_mallory, mallory_addr) = listener().await;
        let (to_bob, bob_addr) = listener().await;

        let bob_side = async {
            let mut stream = accept(&to_bob, server_config(&bob, PeerPolicy::Pairing))
                .await
                .expect("bob accepts");
            let mut buf = [0; 12];
            stream.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pair with me");
            let binding = channel_binding(stream.get_ref().1).unwrap();
            (binding, established_peer(stream.get_ref().1).unwrap())
        };
        let mallory_side = async {
            let mut from_alice = accept(&to_mallory, server_config(&mallory, PeerPolicy::Pairing))
                .await
                .expect("mallory accepts alice");
            let mut to_bob = dial(bob_addr, client_config(&mallory, PeerPolicy::Pairing))
                .await
                .expect("mallory reaches bob");
            let mut buf = [0; 12];
            from_alice.read_exact(&mut buf).await.unwrap();
            to_bob.write_all(&buf).await.unwrap();
            to_bob.flush().await.unwrap();
            (
                channel_binding(from_alice.get_ref().1).unwrap(),
                channel_binding(to_bob.get_ref().1).unwrap(),
            )
        };
        let alice_side = async {
            let mut stream = dial(mallory_addr, client_config(&alice, PeerPolicy::Pairing))
                .await
                .expect("alice connects");
            stream.write_all(b"pair with me").await.unwrap();
            stream.flush().await.unwrap();
            let binding = channel_binding(stream.get_ref().1).unwrap();
            (binding, established_peer(stream.get_ref().1).unwrap())
        };
        let ((bob_binding, bob_sees), (leg_alice, leg_bob), (alice_binding, alice_sees)) =
            tokio::join!(bob_side, mallory_side, alice_side);

        // The relay worked, and each honest device sees Mallory's key, not the other's.
        assert_eq!(alice_sees, peer_key(&mallory));
        assert_eq!(bob_sees, peer_key(&mallory));
        // Each leg's two ends agree; the legs differ, so a pairing transcript that includes the
        // binding cannot be the same for Alice and Bob.
        assert_eq!(alice_binding, leg_alice);
        assert_eq!(bob_binding, leg_bob);
        assert_ne!(alice_binding, bob_binding);
    });
}

#[test]
fn a_plain_tcp_client_is_refused_without_panic() {
    run(async {
        let alice = device(1);
        let server = server_config(&alice, PeerPolicy::pinned([device(2).device_id()]));

        // A client speaking HTTP, and one that connects and closes without a word.
        for (request, expected) in [
            (
                &b"GET / HTTP/1.1\r\nHost: alice\r\n\r\n"[..],
                HandshakeFailure::NotTls,
            ),
            (&b""[..], HandshakeFailure::Closed),
        ] {
            let (listener, addr) = listener().await;
            let config = server.clone();
            let accepting = tokio::spawn(async move {
                accept(&listener, config).await.map(|_| ()).map_err(|err| {
                    (
                        HandshakeFailure::from_io(&err),
                        describe_handshake_error(&err),
                    )
                })
            });
            let mut plain = TcpStream::connect(addr).await.unwrap();
            plain.write_all(request).await.unwrap();
            plain.shutdown().await.unwrap();
            // Whatever the server answers, it is not a handshake (record type 22).
            let mut answer = Vec::new();
            let _ = plain.read_to_end(&mut answer).await;
            assert_ne!(
                answer.first(),
                Some(&22),
                "the server answered with a handshake"
            );

            let result = accepting.await.expect("the accepting task did not panic");
            let (failure, message) = result.expect_err("the handshake failed");
            assert_eq!(failure, expected, "{message}");
            if expected == HandshakeFailure::NotTls {
                assert!(message.contains("does not speak TLS"), "{message}");
            }
        }
    });
}

#[test]
fn a_tls_client_meeting_a_plain_server_fails_cleanly() {
    run(async {
        let (listener, addr) = listener().await;
        let plain_server = async {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
            let mut sink = Vec::new();
            let _ = tcp.read_to_end(&mut sink).await;
        };
        let client = client_config(&device(2), PeerPolicy::pinned([device(1).device_id()]));
        let ((), dialed) = tokio::join!(plain_server, dial(addr, client));
        let err = dialed.expect_err("no TLS server there");
        assert_eq!(
            HandshakeFailure::from_io(&err),
            HandshakeFailure::NotTls,
            "{err}"
        );
    });
}

#[test]
fn a_peer_without_the_alpn_is_not_established() {
    run(async {
        let (alice, bob) = (device(1), device(2));
        // A client with Bob's key that offers no ALPN: rustls completes the handshake over TCP,
        // and `established_peer` is where the server refuses it.
        let mut no_alpn = (*client_config(&bob, PeerPolicy::pinned([alice.device_id()]))).clone();
        no_alpn.alpn_protocols.clear();
        let (server, client) = connect(
            server_config(&alice, PeerPolicy::pinned([bob.device_id()])),
            Arc::new(no_alpn),
        )
        .await;
        let (server, _client) = (server.expect("accepted"), client.expect("connected"));
        let err = established_peer(server.get_ref().1).expect_err("no ALPN, no session");
        assert_eq!(err, NotEstablished::WrongProtocol(None));
        let message = describe_handshake_error(&err.into());
        assert!(message.contains("clearskies/1"), "{message}");

        // A client offering only another protocol is refused by rustls during the handshake.
        let mut other = (*client_config(&bob, PeerPolicy::pinned([alice.device_id()]))).clone();
        other.alpn_protocols = vec![b"h2".to_vec()];
        let (server, _client) = connect(
            server_config(&alice, PeerPolicy::pinned([bob.device_id()])),
            Arc::new(other),
        )
        .await;
        let err = server.expect_err("no common protocol");
        assert!(
            matches!(
                HandshakeFailure::from_io(&err),
                HandshakeFailure::Incompatible(_)
            ),
            "{err}"
        );
    });
}

/// Offers raw public keys but has no key to present.
#[derive(Debug)]
struct NoKey;

impl rustls::client::ResolvesClientCert for NoKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }

    fn has_certs(&self) -> bool {
        false
    }
}

#[test]
fn a_client_without_a_key_is_refused() {
    run(async {
        let (alice, bob) = (device(1), device(2));
        let mut keyless = (*client_config(&bob, PeerPolicy::pinned([alice.device_id()]))).clone();
        keyless.client_auth_cert_resolver = Arc::new(NoKey);
        let (server, client) = connect(
            server_config(&alice, PeerPolicy::pinned([bob.device_id()])),
            Arc::new(keyless),
        )
        .await;
        let err = server.expect_err("mutual authentication is mandatory");
        assert_eq!(
            HandshakeFailure::from_io(&err),
            HandshakeFailure::BadPeerKey,
            "{err}"
        );
        let client_err = refusal_seen_by_client(client).await;
        let message = describe_handshake_error(&client_err);
        assert!(
            matches!(
                HandshakeFailure::from_io(&client_err),
                HandshakeFailure::Incompatible(_)
            ),
            "{client_err}"
        );
        assert!(message.contains("presented none"), "{message}");
    });
}

/// PKCS#8 v1 of an Ed25519 seed (`spec/transport.md` § Keys), to build a forged key by hand.
fn pkcs8(seed: [u8; 32]) -> Vec<u8> {
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend_from_slice(&seed);
    der
}

/// A key that presents `claimed`'s public key but signs with `signer`'s private key.
fn forged(claimed: &DeviceKey, signer: &DeviceKey) -> Arc<rustls::sign::CertifiedKey> {
    let der = pkcs8(signer.secret_bytes());
    let signing =
        rustls::crypto::ring::sign::any_eddsa_type(&der.as_slice().into()).expect("an Ed25519 key");
    let spki = clearskies_net::spki(&claimed.public_key()).to_vec();
    Arc::new(rustls::sign::CertifiedKey::new(vec![spki.into()], signing))
}

#[test]
fn a_client_presenting_someone_elses_key_is_refused() {
    run(async {
        let (alice, bob, mallory) = (device(1), device(2), device(9));
        // Mallory presents Bob's public key, which Alice accepts, but holds only her own secret.
        let mut impostor =
            (*client_config(&mallory, PeerPolicy::pinned([alice.device_id()]))).clone();
        impostor.client_auth_cert_resolver = Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(forged(&bob, &mallory)),
        );
        let (server, client) = connect(
            server_config(&alice, PeerPolicy::pinned([bob.device_id()])),
            Arc::new(impostor),
        )
        .await;
        let err = server.expect_err("the signature does not verify with bob's key");
        assert_eq!(
            HandshakeFailure::from_io(&err),
            HandshakeFailure::KeyNotProven,
            "{err}"
        );
        assert!(describe_handshake_error(&err).contains("could not prove"));
        let _ = refusal_seen_by_client(client).await;
    });
}

#[test]
fn a_server_presenting_someone_elses_key_is_refused() {
    run(async {
        let (alice, bob, mallory) = (device(1), device(2), device(9));
        // Mallory answers at Alice's address with Alice's public key and her own secret; even a
        // pairing client, which accepts any key, checks that the server holds the key it shows.
        for policy in [PeerPolicy::pinned([alice.device_id()]), PeerPolicy::Pairing] {
            let mut impostor = (*server_config(&mallory, PeerPolicy::Pairing)).clone();
            // Speak whichever protocol the client asks for: the key proof is what is tested.
            impostor.alpn_protocols = vec![ALPN.to_vec(), PAIRING_ALPN.to_vec()];
            impostor.cert_resolver = Arc::new(
                rustls::server::AlwaysResolvesServerRawPublicKeys::new(forged(&alice, &mallory)),
            );
            let (_server, client) =
                connect(Arc::new(impostor), client_config(&bob, policy.clone())).await;
            let err = client.expect_err("the signature does not verify with alice's key");
            assert_eq!(
                HandshakeFailure::from_io(&err),
                HandshakeFailure::KeyNotProven,
                "{policy:?}: {err}"
            );
        }
    });
}
