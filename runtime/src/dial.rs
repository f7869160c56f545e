//! Keeping a connection up: the dialer every driver uses (a driver supplies how to connect;
//! this loop decides when).

use std::future::Future;
use std::io;
use std::time::Duration;

use clearskies_net::PeerKey;
use clearskies_proto::node::Origin;

use crate::Runtime;
use crate::node::{IntoStream, NodeHandle};

/// The first pause before redialing, doubled after each failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest pause between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a new connection may take to become a session before it counts as a failure.
pub const SESSION_SETUP: Duration = Duration::from_secs(5);
/// How often an established session is checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Dials with `connect`, hands each connection to `node`, and redials when the session ends,
/// with exponential backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] while attempts fail (a
/// refused or unreachable peer, or a connection that never became a session). Returns when
/// the node stops.
pub async fn keep_connected<R, F, Fut, S, Family>(runtime: &R, node: &NodeHandle, mut connect: F)
where
    R: Runtime,
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<(PeerKey, S)>>,
    S: IntoStream<Family>,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        let established = match connect().await {
            Ok((peer, stream)) => {
                let device = peer.device_id;
                if node
                    .add_connection_from(device, Origin::Dialed, stream)
                    .await
                    .is_err()
                {
                    return;
                }
                if established_within(runtime, node, device).await {
                    // Up: wait for it to end.
                    loop {
                        match node.is_connected(device).await {
                            Ok(true) => crate::sleep(runtime, CHECK_EVERY).await,
                            Ok(false) => break,
                            Err(_) => return,
                        }
                    }
                    true
                } else {
                    false
                }
            }
            Err(e) => {
                tracing::debug!("dial failed: {e}");
                false
            }
        };
        backoff = if established {
            BACKOFF_MIN
        } else {
            (backoff * 2).min(BACKOFF_MAX)
        };
        crate::sleep(runtime, backoff).await;
    }
}

/// Whether a session with `device` is in use within [`SESSION_SETUP`].
async fn established_within<R: Runtime>(
    runtime: &R,
    node: &NodeHandle,
    device: clearskies_proto::DeviceId,
) -> bool {
    let mut waited = Duration::ZERO;
    while waited < SESSION_SETUP {
        if node.is_connected(device).await.unwrap_or(false) {
            return true;
        }
        crate::sleep(runtime, CHECK_EVERY).await;
        waited += CHECK_EVERY;
    }
    false
}
