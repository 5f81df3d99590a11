//! Max-throughput mode: every connection sends its next request as soon as the
//! previous answer arrives. It reports the RPS a path sustains, not latency
//! under a given load (for that, use the open-loop mode).

use std::time::Instant;

use super::client::{Reconnecting, RequestTemplate};
use super::load::{LoadOutcome, LoadSpec};

/// Ceiling on requests per connection, so even an absurdly fast path stops.
const MAX_REQUESTS_PER_CONNECTION: u64 = 50_000_000;

/// Run `spec.connections` back-to-back loops for `spec.duration` (`spec.rps`
/// is ignored). Latency here is service time: there is no schedule to miss.
pub async fn max_throughput(spec: &LoadSpec) -> anyhow::Result<LoadOutcome> {
    let template = RequestTemplate::new(spec.body_bytes);
    let conns = spec.lanes().await?;
    let t0 = Instant::now();
    let end = t0 + spec.duration;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let mut conn = Reconnecting::new(spec.target, conn);
            let (template, timeout) = (template.clone(), spec.request_timeout);
            tokio::spawn(async move {
                let mut out = LoadOutcome::default();
                for _ in 0..MAX_REQUESTS_PER_CONNECTION {
                    if Instant::now() >= end {
                        break;
                    }
                    match tokio::time::timeout(timeout, conn.exchange(&template)).await {
                        Ok(Ok(sent)) => {
                            let took = sent.elapsed();
                            out.latency.record(took);
                            out.service.record(took);
                            out.ok += 1;
                        }
                        Ok(Err(e)) => out.error(format!("{e:#}")),
                        Err(_) => {
                            conn.reset();
                            out.error(format!("no answer within {timeout:?}"));
                        }
                    }
                }
                out.elapsed = t0.elapsed();
                out
            })
        })
        .collect();
    let mut outcome = LoadOutcome::default();
    for task in tasks {
        outcome.absorb(task.await?);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::super::backend::serve_echo;
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_throughput_runs_for_its_duration_without_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(serve_echo(listener, None));
        let spec = LoadSpec {
            target,
            rps: 0,
            connections: 2,
            http: crate::latency::client::ClientHttp::Http1,
            h2_connections: 1,
            body_bytes: 1024,
            duration: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
        };
        let out = max_throughput(&spec).await.unwrap();
        assert_eq!(out.errors, 0, "first error: {:?}", out.first_error);
        assert!(out.ok > 0);
        assert!(out.achieved_rps() > 0.0);
    }
}
