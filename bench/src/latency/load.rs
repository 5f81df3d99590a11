//! Open-loop, constant-rate HTTP load (wrk2-style). A pacer thread releases
//! request `i` at `t0 + i / rps` to connection `i % N`; each latency is measured
//! from that intended time, so a stall that holds up queued requests shows in
//! the tail instead of silently lowering the send rate (coordinated omission).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::client::{connect_lanes, ClientHttp, Reconnecting, RequestTemplate};
use super::hist::LatencyHistogram;

/// One load run: how hard, how long, over how many connections.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    pub rps: u32,
    /// Requests in flight at most: HTTP/1.1 connections, or HTTP/2 streams.
    pub connections: usize,
    pub http: ClientHttp,
    /// TCP connections the HTTP/2 streams share.
    pub h2_connections: usize,
    pub body_bytes: usize,
    pub duration: Duration,
    /// A request slower than this is an error.
    pub request_timeout: Duration,
}

impl LoadSpec {
    /// The spec's request slots, connected.
    pub(super) async fn lanes(&self) -> anyhow::Result<Vec<super::client::HttpConn>> {
        connect_lanes(
            self.target,
            self.http,
            self.connections,
            self.h2_connections,
        )
        .await
    }

    /// Requests in the schedule; the run stops after these.
    pub fn total_requests(&self) -> u64 {
        (self.rps as f64 * self.duration.as_secs_f64())
            .round()
            .max(1.0) as u64
    }
}

/// What one run measured.
#[derive(Clone, Default)]
pub struct LoadOutcome {
    /// From each request's intended send time: the corrected latency.
    pub latency: LatencyHistogram,
    /// From the moment the request was actually written: what a closed-loop
    /// tool would report. Kept to show how much the correction matters.
    pub service: LatencyHistogram,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the first intended send to the last completion.
    pub elapsed: Duration,
}

impl LoadOutcome {
    pub fn achieved_rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    pub(super) fn absorb(&mut self, other: LoadOutcome) {
        self.latency.merge(&other.latency);
        self.service.merge(&other.service);
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    pub(super) fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// Run the schedule to the end, or until `duration + request_timeout` has
/// passed; requests not answered by then are errors, so the run always stops.
pub async fn open_loop(spec: &LoadSpec) -> anyhow::Result<LoadOutcome> {
    let template = RequestTemplate::new(spec.body_bytes);
    let conns = spec.lanes().await?;
    let connections = conns.len();
    // Start a moment from now, so the first requests are not already late.
    let t0 = Instant::now() + Duration::from_millis(20);
    let deadline = t0 + spec.duration + spec.request_timeout;

    let mut senders = Vec::with_capacity(connections);
    let mut tasks = Vec::with_capacity(connections);
    for conn in conns {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let conn = Reconnecting::new(spec.target, conn);
        let (template, timeout) = (template.clone(), spec.request_timeout);
        tasks.push(tokio::spawn(drive(
            conn, rx, template, t0, deadline, timeout,
        )));
    }
    let pacer = spawn_pacer(senders, t0, spec.rps, spec.total_requests())?;

    let mut outcome = LoadOutcome::default();
    for task in tasks {
        outcome.absorb(task.await?);
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer thread panicked"))?;
    Ok(outcome)
}

/// Release intended send times on schedule. A plain thread sleeps with ~50 µs
/// slack, where tokio's timer wheel would round every send up to the next ms.
fn spawn_pacer(
    senders: Vec<mpsc::UnboundedSender<Instant>>,
    t0: Instant,
    rps: u32,
    total: u64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rps.max(1)));
    std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            for i in 0..total {
                let intended = t0 + interval.mul_f64(i as f64);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                // A channel closes only if its task panicked, which fails the run.
                let _ = senders[(i % senders.len() as u64) as usize].send(intended);
            }
        })
}

/// One connection's share of the schedule, each request sent as soon as it is
/// due and the connection is free.
async fn drive(
    mut conn: Reconnecting,
    mut schedule: mpsc::UnboundedReceiver<Instant>,
    template: RequestTemplate,
    t0: Instant,
    deadline: Instant,
    request_timeout: Duration,
) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let mut last_done = t0;
    while let Some(intended) = schedule.recv().await {
        let now = Instant::now();
        if now >= deadline {
            out.error("not answered before the run's deadline");
            continue;
        }
        let budget = request_timeout.min(deadline - now);
        match tokio::time::timeout(budget, conn.exchange(&template)).await {
            Ok(Ok(sent)) => {
                let done = Instant::now();
                out.latency.record(done - intended);
                out.service.record(done - sent);
                out.ok += 1;
                last_done = done;
            }
            Ok(Err(e)) => out.error(format!("{e:#}")),
            Err(_) => {
                conn.reset();
                out.error(format!("no answer within {budget:?}"));
            }
        }
    }
    out.elapsed = last_done.saturating_duration_since(t0);
    out
}

#[cfg(test)]
mod tests {
    use super::super::backend::{serve_echo, Stall};
    use super::*;

    async fn stalling_echo(stall: Stall) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_echo(listener, Some(stall)));
        addr
    }

    /// One connection at 1,000 RPS for 1 s; request 500 is held for 100 ms. The
    /// ~100 requests scheduled during the stall queue behind it, so from their
    /// intended send times about 10% of samples spread over 0..100 ms, the top
    /// 1% above 90 ms. A closed-loop tool would see a single slow request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_stall_shows_in_the_corrected_tail() {
        let pause = Duration::from_millis(100);
        let target = stalling_echo(Stall { nth: 500, pause }).await;
        let spec = LoadSpec {
            target,
            rps: 1000,
            connections: 1,
            http: ClientHttp::Http1,
            h2_connections: 1,
            body_bytes: 1024,
            duration: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        };
        let out = open_loop(&spec).await.unwrap();

        assert_eq!(out.errors, 0, "first error: {:?}", out.first_error);
        assert_eq!(out.ok, 1000);
        let corrected = out.latency.summary();
        assert!(corrected.max >= 100.0, "max {} ms", corrected.max);
        assert!(
            corrected.p99 >= 80.0,
            "p99 {} ms should carry the stall",
            corrected.p99
        );
        let held_up = out.latency.count_at_least(Duration::from_millis(50));
        assert!(
            held_up >= 40,
            "only {held_up} requests waited 50 ms or more"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_scheduled_request_is_sent_over_all_connections() {
        let target = stalling_echo(Stall {
            nth: u64::MAX,
            pause: Duration::ZERO,
        })
        .await;
        let spec = LoadSpec {
            target,
            rps: 400,
            connections: 4,
            http: ClientHttp::Http1,
            h2_connections: 1,
            body_bytes: 1024,
            duration: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
        };
        let out = open_loop(&spec).await.unwrap();
        assert_eq!(out.errors, 0, "first error: {:?}", out.first_error);
        assert_eq!(out.ok, spec.total_requests());
        assert_eq!(out.latency.len(), out.ok);
        assert!(out.achieved_rps() > 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2_lanes_share_connections_and_every_request_is_answered() {
        let target = stalling_echo(Stall {
            nth: u64::MAX,
            pause: Duration::ZERO,
        })
        .await;
        let spec = LoadSpec {
            target,
            rps: 400,
            connections: 8,
            http: ClientHttp::Http2,
            h2_connections: 2,
            body_bytes: 1024,
            duration: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
        };
        let lanes = spec.lanes().await.unwrap();
        assert_eq!(lanes.len(), 8);
        let out = open_loop(&spec).await.unwrap();
        assert_eq!(out.errors, 0, "first error: {:?}", out.first_error);
        assert_eq!(out.ok, spec.total_requests());
    }

    #[tokio::test]
    async fn unreachable_target_fails_instead_of_reporting_numbers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        drop(listener);
        let spec = LoadSpec {
            target,
            rps: 100,
            connections: 1,
            http: ClientHttp::Http1,
            h2_connections: 1,
            body_bytes: 16,
            duration: Duration::from_millis(100),
            request_timeout: Duration::from_secs(1),
        };
        assert!(open_loop(&spec).await.is_err());
    }
}
