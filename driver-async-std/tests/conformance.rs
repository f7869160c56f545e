//! The driver conformance suite (`clearskies_runtime::conformance`) over TCP + TLS 1.3 on
//! `async-net` and `futures-rustls`, on real loopback sockets, run twice: under smol
//! (`smol::block_on`, tasks on smol's executor) and under async-std
//! (`async_std::task::block_on`, tasks on async-std's). Plus the driver's own pairing glue
//! and `accept_either`, under both.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};

use async_net::TcpListener;
use clearskies_async_std::conformance::{self, Cut, PairingTransport, Transport};
use clearskies_async_std::node::FuturesIo;
use clearskies_async_std::tls::{self, Purpose, TlsStream};
use clearskies_async_std::{AsyncIo, pairing};
use clearskies_net::rustls::ServerConfig;
use clearskies_net::{PeerKey, PeerPolicy};
use clearskies_proto::crypto::DeviceKey;
use clearskies_proto::db::{Access, Member};
use clearskies_proto::pair::{InvitationOptions, Invitations};

/// TCP + TLS with the nodes' tasks on `runtime`.
struct Tls {
    runtime: AsyncIo,
}

impl Transport for Tls {
    type Runtime = AsyncIo;
    type Listener = (TcpListener, Arc<ServerConfig>);
    type Family = FuturesIo;
    type Stream = TlsStream;

    fn runtime(&self) -> AsyncIo {
        self.runtime.clone()
    }

    async fn listen(&self, key: &DeviceKey, policy: PeerPolicy) -> Self::Listener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (listener, clearskies_net::server_config(key, policy))
    }

    fn addr(listener: &Self::Listener) -> SocketAddr {
        listener.0.local_addr().unwrap()
    }

    async fn accept(&self, listener: &Self::Listener) -> io::Result<(PeerKey, TlsStream, Cut)> {
        let (tcp, _) = listener.0.accept().await?;
        // async-net streams are shared handles: a clone shuts the socket down under TLS.
        let twin = tcp.clone();
        let (peer, stream) = tls::accept(tcp, listener.1.clone()).await?;
        let cut: Cut = Box::new(move || {
            let _ = twin.shutdown(Shutdown::Both);
        });
        Ok((peer, stream, cut))
    }

    async fn dial(
        &self,
        key: &DeviceKey,
        policy: PeerPolicy,
        addr: SocketAddr,
    ) -> io::Result<(PeerKey, TlsStream)> {
        tls::connect(addr, key, policy).await
    }
}

impl PairingTransport for Tls {
    fn channel_binding(stream: &TlsStream) -> io::Result<[u8; 32]> {
        tls::channel_binding(stream)
    }
}

/// Runs `test` under `smol::block_on`, with the nodes' tasks on smol's executor.
fn under_smol<F: Future<Output = ()>>(test: impl FnOnce(Tls) -> F) {
    let runtime = AsyncIo::new(|task| smol::spawn(task).detach());
    // Boxed: a scenario's future is too large for a test thread's stack in debug builds.
    smol::block_on(Box::pin(test(Tls { runtime })));
}

/// Runs `test` under `async_std::task::block_on`, with the nodes' tasks on async-std's
/// executor.
fn under_async_std<F: Future<Output = ()>>(test: impl FnOnce(Tls) -> F) {
    let runtime = AsyncIo::new(|task| {
        async_std::task::spawn(task);
    });
    async_std::task::block_on(Box::pin(test(Tls { runtime })));
}

/// One test per scenario and runtime: `on_smol::NAME` and `on_async_std::NAME`.
macro_rules! under_both {
    ($($name:ident),* $(,)?) => {
        mod on_smol {
            $(
                #[test]
                fn $name() {
                    super::under_smol(|t| async move { super::$name(&t).await });
                }
            )*
        }
        mod on_async_std {
            $(
                #[test]
                fn $name() {
                    super::under_async_std(|t| async move { super::$name(&t).await });
                }
            )*
        }
    };
}

use conformance::{
    a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting,
    a_device_pairs_with_an_access_code_then_syncs_as_a_member,
    a_device_that_is_not_a_member_is_refused_in_the_handshake,
    a_dialer_keeps_the_connection_up_and_redials_after_a_cut,
    a_read_only_member_reads_but_its_writes_are_refused,
    a_watch_streams_the_changes_under_its_prefix,
    an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart,
    two_nodes_sync_both_ways_and_a_restarted_node_catches_up,
};

under_both!(
    two_nodes_sync_both_ways_and_a_restarted_node_catches_up,
    a_device_that_is_not_a_member_is_refused_in_the_handshake,
    a_connection_cut_mid_transfer_is_reported_and_the_replicas_converge_after_reconnecting,
    a_read_only_member_reads_but_its_writes_are_refused,
    an_acknowledged_write_survives_shutdown_and_reaches_the_peer_after_restart,
    a_device_pairs_with_an_access_code_then_syncs_as_a_member,
    one_port_serves_members_and_pairing_through_the_driver_api,
    a_watch_streams_the_changes_under_its_prefix,
    a_dialer_keeps_the_connection_up_and_redials_after_a_cut,
);

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret(&[n; 32])
}

/// The driver's own API on one listening port: `accept_either` sorts a member's dial from a
/// pairing one; `pairing::join` and `pairing::admit_stream` pair device 3 with device 1.
async fn one_port_serves_members_and_pairing_through_the_driver_api(transport: &Tls) {
    let runtime = transport.runtime();
    let share = [0x33; 32];
    let mut registry = Invitations::new();
    let code = registry
        .create(
            pairing::unix_micros(),
            [0x5c; 16],
            share,
            InvitationOptions::default(),
        )
        .unwrap();
    let invitations = Arc::new(Mutex::new(registry));
    let members = clearskies_net::server_config(&key(1), PeerPolicy::pinned([key(2).device_id()]));
    let pairs = clearskies_net::server_config(&key(1), PeerPolicy::Pairing);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    // A member's dial.
    let serving = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tls::accept_either(tcp, members.clone(), pairs.clone()).await
    };
    let (member, joiner) = (key(2), key(3));
    let dialing = tls::connect(addr, &member, PeerPolicy::pinned([key(1).device_id()]));
    let (served, dialed) = futures_util::future::join(serving, dialing).await;
    let (purpose, peer, _stream) = served.expect("member accepted");
    assert_eq!(purpose, Purpose::Member);
    assert_eq!(peer.device_id, key(2).device_id());
    assert_eq!(
        dialed.expect("member dials").0.device_id,
        key(1).device_id()
    );

    // A pairing dial on the same port.
    let serving = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let (purpose, peer, stream) = tls::accept_either(tcp, members.clone(), pairs.clone())
            .await
            .expect("pairing accepted");
        assert_eq!(purpose, Purpose::Pairing);
        let granted = |admitted: &clearskies_proto::pair::Admitted| {
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
        };
        let connection = pairing::PairingStream::tls(stream, peer.public_key).unwrap();
        pairing::admit_stream(
            &runtime,
            connection,
            b"127.0.0.1",
            &key(1),
            invitations.clone(),
            granted,
        )
        .await
    };
    let joining = pairing::join(&runtime, addr, &joiner, &code);
    let (admitted, joined) = futures_util::future::join(serving, joining).await;
    let admitted = admitted.expect("admitted");
    let joined = joined.expect("joined");
    assert_eq!(admitted.public_key, key(3).public_key());
    assert_eq!(joined.share_id, share);
    assert_eq!(joined.inviter_public_key, key(1).public_key());
    assert!(
        joined
            .members
            .iter()
            .any(|m| m.public_key == key(3).public_key())
    );
}
