//! Graceful drain: readiness goes false first, listeners stop accepting, and
//! in-flight connections get a grace period to finish before the process exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Cancelled when listeners must stop accepting.
    stop_accepting: CancellationToken,
    /// Every connection task, so drain can wait for them.
    pub connections: TaskTracker,
    /// Fired by SIGTERM/SIGINT or `POST /shutdown`.
    requested: CancellationToken,
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn stop_accepting(&self) -> &CancellationToken {
        &self.stop_accepting
    }

    /// Ask for a drain; idempotent.
    pub fn request(&self) {
        self.requested.cancel();
    }

    pub async fn requested(&self) {
        self.requested.cancelled().await
    }

    /// Run the drain: unready, stop accepting, wait up to `grace` for open
    /// connections. Returns how many were still open at the deadline.
    pub async fn run(&self, grace: Duration) -> usize {
        self.draining.store(true, Ordering::Release);
        self.stop_accepting.cancel();
        self.connections.close();
        let open = self.connections.len();
        tracing::info!(
            open_connections = open,
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            let left = self.connections.len();
            tracing::warn!(
                open_connections = left,
                "grace period over; closing what is left"
            );
            return left;
        }
        0
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_in_flight_work_and_stops_accepting() {
        let d = Drain::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        d.connections.spawn(async move {
            let _ = rx.await;
        });
        let run = d.run(Duration::from_secs(5));
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => panic!("drain finished with a connection open"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert!(d.is_draining());
        assert!(d.stop_accepting().is_cancelled());
        tx.send(()).unwrap();
        assert_eq!(run.await, 0);
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_grace_period() {
        let d = Drain::default();
        d.connections.spawn(std::future::pending::<()>());
        assert_eq!(d.run(Duration::from_millis(30)).await, 1);
    }
}
