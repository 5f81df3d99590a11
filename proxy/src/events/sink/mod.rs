//! Event sinks: each runs as one task that drains its own bounded queue, so
//! a slow or dead destination only ever costs its own dropped events.

mod file;
mod http;
mod syslog;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use super::{ControlPlaneLink, EventsError, SinkConfig};

/// One emitted event, shared by every sink.
pub(crate) struct Record {
    /// The `kind` label: `denied`, `baseline.new_peer`, ...
    pub kind: &'static str,
    pub severity_id: u8,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    /// The OCSF event, one line of JSON.
    pub json: String,
}

pub(crate) enum Msg {
    Event(Arc<Record>),
    /// Write out everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

pub(crate) struct SinkMetrics {
    pub sent: Counter,
    pub errors: Counter,
    pub dropped: Counter,
}

/// Most events a writer takes from its queue at once.
const READ_AT_ONCE: usize = 256;

/// A sink, validated and ready to run.
pub(crate) enum Writer {
    Lines(file::Lines),
    Http(http::HttpSink),
    Syslog(syslog::SyslogSink),
}

impl Writer {
    pub fn open(
        cfg: &SinkConfig,
        control_plane: Option<&ControlPlaneLink>,
    ) -> Result<Writer, EventsError> {
        Ok(match cfg {
            SinkConfig::Stdout => Writer::Lines(file::Lines::stdout()),
            SinkConfig::File { path } => Writer::Lines(file::Lines::file(path)?),
            SinkConfig::Http {
                url,
                format,
                batch,
                flush_interval,
                timeout,
            } => Writer::Http(http::HttpSink::new(
                http::Collector::url(url)?,
                *format,
                *batch,
                *flush_interval,
                *timeout,
            )?),
            SinkConfig::ControlPlane {
                batch,
                flush_interval,
            } => Writer::Http(http::HttpSink::new(
                http::Collector::ControlPlane(
                    control_plane.cloned().ok_or(EventsError::NoControlPlane)?,
                ),
                super::HttpFormat::Json,
                *batch,
                *flush_interval,
                // A backstop: the control-plane client has its own deadline.
                std::time::Duration::from_secs(60),
            )?),
            SinkConfig::Syslog {
                address,
                facility,
                app_name,
                reconnect_max,
            } => Writer::Syslog(syslog::SyslogSink::new(
                address,
                *facility,
                app_name,
                *reconnect_max,
            )?),
        })
    }

    pub fn label(&self) -> &'static str {
        match self {
            Writer::Lines(l) => l.label(),
            Writer::Http(h) => h.label(),
            Writer::Syslog(_) => "syslog",
        }
    }

    pub async fn run(self, rx: mpsc::Receiver<Msg>, m: SinkMetrics) {
        match self {
            Writer::Lines(l) => l.run(rx, m).await,
            Writer::Http(h) => h.run(rx, m).await,
            Writer::Syslog(s) => s.run(rx, m).await,
        }
    }
}

/// Splits messages read at once into events and flush requests.
fn split(msgs: &mut Vec<Msg>, events: &mut Vec<Arc<Record>>, acks: &mut Vec<oneshot::Sender<()>>) {
    for m in msgs.drain(..) {
        match m {
            Msg::Event(r) => events.push(r),
            Msg::Flush(ack) => acks.push(ack),
        }
    }
}

/// Doubles `d` up to `max`.
fn next_backoff(d: std::time::Duration, max: std::time::Duration) -> std::time::Duration {
    (d * 2).min(max)
}
