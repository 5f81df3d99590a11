//! L4 forwarding: both directions with half-close (tokio's
//! copy_bidirectional, fixed buffers), byte counters bumped per read with no
//! allocation, and an idle timeout.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::{Active, Counted};
use crate::metrics::ConnMetrics;

/// Per-direction copy buffer. 64 KiB rather than 16: a read from the app
/// becomes four TLS records sent in one `writev`, and each direction takes a
/// quarter of the syscalls (both sidecars: 216 → 88 per MiB of bulk TCP).
const BUF: usize = 64 * 1024;

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed; bytes from downstream and from upstream.
    Closed {
        from_downstream: u64,
        from_upstream: u64,
    },
    IdleTimeout,
    Error(io::Error),
}

/// Copy between the accepted connection (`downstream`) and the one the proxy
/// opened (`upstream`) until both sides close or nothing moves for `idle`.
pub async fn forward<D, U>(downstream: D, mut upstream: U, m: &ConnMetrics, idle: Duration) -> Ended
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = AtomicU64::new(0);
    let mut counted = Counted::new(
        downstream,
        Active {
            metrics: m,
            moved: &activity,
        },
    );
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut counted, &mut upstream, BUF, BUF);
    tokio::select! {
        r = copy => match r {
            Ok((a, b)) => Ended::Closed { from_downstream: a, from_upstream: b },
            Err(e) => Ended::Error(e),
        },
        _ = idle_watch(&activity, idle) => Ended::IdleTimeout,
    }
}

/// Resolves once `activity` has not changed for a whole `idle` period
/// (checked four times per period, so it fires within 1.25 × idle).
async fn idle_watch(activity: &AtomicU64, idle: Duration) {
    let step = (idle / 4).max(Duration::from_millis(10));
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        let now = activity.load(Ordering::Relaxed);
        if now == last {
            quiet += step;
            if quiet >= idle {
                return;
            }
        } else {
            last = now;
            quiet = Duration::ZERO;
        }
    }
}

/// Logs how a forwarded connection ended.
pub fn log_end(client: SocketAddr, peer: &str, ended: Ended) {
    match ended {
        Ended::Closed {
            from_downstream,
            from_upstream,
        } => {
            tracing::debug!(client.addr = %client, peer, from_downstream, from_upstream, "connection closed")
        }
        Ended::IdleTimeout => tracing::info!(client.addr = %client, peer, "idle timeout; closed"),
        Ended::Error(e) => {
            tracing::debug!(client.addr = %client, peer, error = %e, "connection ended with an error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use palisade_policy::Direction;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_flow_both_ways_with_half_close_and_are_counted() {
        let metrics = Metrics::new();
        let m = metrics.conn(Direction::Ingress, "spiffe://td/x", true);
        let (mut client, proxy_down) = tokio::io::duplex(1024);
        let (proxy_up, mut server) = tokio::io::duplex(1024);
        let fwd = tokio::spawn({
            let m = m.clone();
            async move { forward(proxy_down, proxy_up, &m, Duration::from_secs(60)).await }
        });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The other direction still works after the client half-closed.
        server.write_all(b"world!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        assert!(matches!(
            fwd.await.unwrap(),
            Ended::Closed {
                from_downstream: 5,
                from_upstream: 6
            }
        ));
        assert_eq!(m.read_bytes.get(), 5);
        assert_eq!(m.write_bytes.get(), 6);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_timeout() {
        let metrics = Metrics::new();
        let m = metrics.conn(Direction::Egress, "x", false);
        let (_client, proxy_down) = tokio::io::duplex(64);
        let (proxy_up, _server) = tokio::io::duplex(64);
        let ended = forward(proxy_down, proxy_up, &m, Duration::from_millis(50)).await;
        assert!(matches!(ended, Ended::IdleTimeout));
    }
}
