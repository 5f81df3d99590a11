//! The `events:` settings: the sinks and the flood-control limits, with
//! their defaults stated once, here.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use palisade_identity::duration;

/// `events:` in the proxy config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Where events go; empty turns events off.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Events waiting per sink; past it, events are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The same flow raising the same kind within this window emits once.
    #[serde(default = "default_dedup_window", with = "duration")]
    pub dedup_window: Duration,
    /// Flows remembered for dedup (a fixed table; memory does not grow).
    #[serde(default = "default_dedup_flows")]
    pub dedup_flows: usize,
    /// Events emitted per second at most, across all flows.
    #[serde(default = "default_max_per_second")]
    pub max_per_second: u32,
}

fn default_queue() -> usize {
    1024
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(60)
}
fn default_dedup_flows() -> usize {
    4096
}
fn default_max_per_second() -> u32 {
    100
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            sinks: Vec::new(),
            queue: default_queue(),
            dedup_window: default_dedup_window(),
            dedup_flows: default_dedup_flows(),
            max_per_second: default_max_per_second(),
        }
    }
}

/// One destination for events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines on the proxy's standard output.
    Stdout,
    /// JSON lines appended to a file (created if missing).
    File { path: PathBuf },
    /// Batches POSTed to a collector over plain HTTP.
    Http {
        /// `http://host:port/path`.
        url: String,
        #[serde(default)]
        format: HttpFormat,
        /// Events per POST at most.
        #[serde(default = "default_batch")]
        batch: usize,
        /// A partial batch is sent after this long.
        #[serde(default = "default_flush_interval", with = "duration")]
        flush_interval: Duration,
        /// Deadline for one POST, connection included.
        #[serde(default = "default_http_timeout", with = "duration")]
        timeout: Duration,
    },
    /// Batches POSTed to the control plane's collector over mTLS with the
    /// workload's SVID (a JSON array).
    ControlPlane {
        #[serde(default = "default_batch")]
        batch: usize,
        #[serde(default = "default_flush_interval", with = "duration")]
        flush_interval: Duration,
    },
    /// RFC 5424 messages over TCP with octet counting (RFC 6587).
    Syslog {
        /// `host:port` of the syslog daemon.
        address: String,
        /// Syslog facility number, 0 to 23 (4: security/authorization).
        #[serde(default = "default_facility")]
        facility: u8,
        #[serde(default = "default_app_name")]
        app_name: String,
        /// Longest wait between reconnection attempts.
        #[serde(default = "default_reconnect_max", with = "duration")]
        reconnect_max: Duration,
    },
}

/// The body of an HTTP POST.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// A JSON array of events (`application/json`).
    #[default]
    Json,
    /// One event per line (`application/x-ndjson`).
    Ndjson,
}

fn default_batch() -> usize {
    100
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_facility() -> u8 {
    4
}
fn default_app_name() -> String {
    "palisade-proxy".to_owned()
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl SinkConfig {
    /// The `sink` metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            SinkConfig::Stdout => "stdout",
            SinkConfig::File { .. } => "file",
            SinkConfig::Http { .. } => "http",
            SinkConfig::ControlPlane { .. } => "control_plane",
            SinkConfig::Syslog { .. } => "syslog",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events.queue must be at least 1")]
    EmptyQueue,
    #[error("events sink file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("events sink http: url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("events sink http: batch must be at least 1")]
    EmptyBatch,
    #[error("events sink control_plane: the proxy has no control plane to send to")]
    NoControlPlane,
    #[error("events sink syslog: facility {0} is not a syslog facility (0 to 23)")]
    Facility(u8),
    #[error("events sink syslog: app_name {0:?} must be 1 to 48 printable ASCII characters without spaces")]
    AppName(String),
    #[error("events sink syslog: address {0:?} is not host:port")]
    SyslogAddress(String),
}
