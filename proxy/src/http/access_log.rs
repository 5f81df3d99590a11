//! The access log: one JSON object per line per request, for a SIEM. The
//! request path only fills a record and `try_send`s it into a bounded
//! channel; a writer task serializes and writes. When the writer falls
//! behind, lines are dropped and counted rather than slowing requests.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::AccessLogConfig;
use crate::metrics::Metrics;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    pub direction: &'static str,
    /// The caller: a SPIFFE ID, or its address when unauthenticated.
    #[serde(serialize_with = "shared_str")]
    pub source: Arc<str>,
    #[serde(serialize_with = "shared_str")]
    pub destination: Arc<str>,
    pub protocol: &'static str,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// 0 when no response was sent (the client went away).
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_us: u64,
    /// `allow`, `deny` or `would_deny`.
    pub decision: &'static str,
    /// `namespace/name/rule`, or `default/<default>`.
    pub policy: String,
}

/// The sending side, shared by every connection.
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    /// A request is logged when its sampling draw is below this.
    threshold: u32,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Start the writer; `None` when the log is off.
    pub fn start(cfg: &AccessLogConfig, metrics: Arc<Metrics>) -> std::io::Result<Option<Self>> {
        if !cfg.enabled || cfg.sample == 0.0 {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = if cfg.path.as_os_str() == "stdout" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&cfg.path)?,
            )
        };
        let (tx, rx) = mpsc::channel(cfg.buffer);
        // Blocking writes stay off the runtime's worker threads.
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, out))?;
        Ok(Some(AccessLog {
            tx,
            threshold: (cfg.sample * u32::MAX as f64) as u32,
            metrics,
        }))
    }

    /// Whether this request is sampled in; decided before anything is copied.
    pub fn sampled(&self) -> bool {
        self.threshold == u32::MAX || rand::random::<u32>() < self.threshold
    }

    pub fn send(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.metrics.http.access_log_dropped.inc();
        }
    }
}

fn write_loop(mut rx: mpsc::Receiver<Entry>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        // Write what is queued, then flush once.
        while let Some(e) = next {
            if serde_json::to_writer(&mut out, &e).is_ok() {
                let _ = out.write_all(b"\n");
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::warn!(error = %e, "access log write failed");
        }
    }
}

fn shared_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::from(SystemTime::now());
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&format).unwrap_or_default()
}

pub fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}
