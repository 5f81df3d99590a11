//! Raw TCP measurements through a path's L4 entry: bulk throughput (one
//! connection, many bytes) and connection churn (many connections, one byte
//! each: through sidecars, every one is a full mTLS handshake).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `bytes` over one connection to the sink and wait for its count.
/// Returns the elapsed time from connect to the sink's answer.
pub async fn bulk(target: SocketAddr, bytes: u64, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let transfer = async {
        let mut tcp = TcpStream::connect(target).await?;
        let chunk = vec![0x5au8; 256 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            tcp.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        tcp.shutdown().await?;
        let counted = tcp
            .read_u64()
            .await
            .context("reading the sink's byte count")?;
        if counted != bytes {
            bail!("sink counted {counted} bytes, sent {bytes}");
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(timeout, transfer)
        .await
        .with_context(|| format!("bulk transfer of {bytes} bytes took over {timeout:?}"))??;
    Ok(start.elapsed())
}

/// Connections completed by a churn run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ChurnOutcome {
    pub connections: u64,
    pub errors: u64,
    pub elapsed_s: f64,
}

impl ChurnOutcome {
    pub fn per_second(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.connections as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// Ceiling on connections per worker, so a run stops even if time checks fail.
const MAX_CONNECTIONS_PER_WORKER: u64 = 1_000_000;

/// `workers` loops, each opening a connection, sending one byte, half-closing
/// and waiting for the sink's count, for `duration`.
pub async fn churn(
    target: SocketAddr,
    workers: usize,
    duration: Duration,
    timeout: Duration,
) -> anyhow::Result<(ChurnOutcome, Option<String>)> {
    let t0 = Instant::now();
    let end = t0 + duration;
    let tasks: Vec<_> = (0..workers.max(1))
        .map(|_| {
            tokio::spawn(async move {
                let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None);
                for _ in 0..MAX_CONNECTIONS_PER_WORKER {
                    if Instant::now() >= end {
                        break;
                    }
                    match tokio::time::timeout(timeout, one_connection(target)).await {
                        Ok(Ok(())) => ok += 1,
                        Ok(Err(e)) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{e:#}"));
                        }
                        Err(_) => {
                            errors += 1;
                            first_error.get_or_insert(format!("no answer within {timeout:?}"));
                        }
                    }
                }
                (ok, errors, first_error)
            })
        })
        .collect();
    let mut outcome = ChurnOutcome::default();
    let mut first_error = None;
    for task in tasks {
        let (ok, errors, e) = task.await?;
        outcome.connections += ok;
        outcome.errors += errors;
        first_error = first_error.or(e);
    }
    outcome.elapsed_s = t0.elapsed().as_secs_f64();
    Ok((outcome, first_error))
}

async fn one_connection(target: SocketAddr) -> anyhow::Result<()> {
    let mut tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(b"x").await?;
    tcp.shutdown().await?;
    let counted = tcp
        .read_u64()
        .await
        .context("reading the sink's byte count")?;
    if counted != 1 {
        bail!("sink counted {counted} bytes, sent 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::backend::serve_sink;
    use super::*;

    async fn sink() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_sink(listener));
        addr
    }

    #[tokio::test]
    async fn bulk_transfer_is_counted_byte_for_byte_by_the_sink() {
        let target = sink().await;
        bulk(target, 3 * 1024 * 1024 + 7, Duration::from_secs(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn churn_completes_connections_without_errors() {
        let target = sink().await;
        let (out, first_error) = churn(
            target,
            2,
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.errors, 0, "{first_error:?}");
        assert!(out.connections > 0);
    }
}
