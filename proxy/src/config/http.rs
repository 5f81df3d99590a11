//! The `http:` and `access_log:` sections and the per-port `protocol`
//! setting: how the proxy treats HTTP, its limits, and its access log.

use std::path::PathBuf;
use std::time::Duration;

use palisade_policy::normalize::Normalization;
use serde::{Deserialize, Serialize};

use palisade_identity::duration;

/// What a port carries. `detect` looks at the first bytes (or ALPN).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Detect,
    Http1,
    Http2,
    /// Never parsed: L4 forwarding only (server-speaks-first protocols,
    /// databases, anything not HTTP).
    Opaque,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Request line plus headers, in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Header fields per request; more gets 431.
    pub max_headers: usize,
    /// From a request's first byte to the end of its headers; slower gets 408.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// From a request's headers to the response's headers; longer gets 504.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// HTTP/2 streams one client may have open at once.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before they are served;
    /// beyond it the connection gets GOAWAY (rapid reset).
    pub max_pending_resets: usize,
    /// Idle pooled connections (to the app and between sidecars) close after this.
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    /// What each class of ambiguous request path gets: `reject` (400, the
    /// default) or `normalize`. Shared with `palisadectl policy explain`.
    pub normalization: Normalization,
    /// HTTP/2 flow-control window of one stream, in bytes: what a stalled
    /// stream can hold. A connection's window is this times
    /// `max_concurrent_streams`, so stalled streams never hold another's.
    pub stream_window_bytes: u32,
    /// An HTTP/2 connection with nothing received for this long is sent a PING.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// A PING not answered within this closes the connection.
    #[serde(with = "duration")]
    pub ping_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// `stdout`, or a file path (appended to).
    pub path: PathBuf,
    /// Fraction of requests logged, 0.0 to 1.0.
    pub sample: f64,
    /// Lines waiting for the writer; beyond it lines are dropped and counted.
    pub buffer: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_concurrent_streams: 100,
            max_pending_resets: 20,
            pool_idle_timeout: Duration::from_secs(90),
            normalization: Normalization::default(),
            stream_window_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            path: PathBuf::from("stdout"),
            sample: 1.0,
            buffer: 8192,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        // hyper cannot parse a request head into a smaller buffer than this.
        if self.max_header_bytes < 8192 {
            return Err("http.max_header_bytes must be at least 8192".into());
        }
        if self.max_headers == 0 || self.max_concurrent_streams == 0 {
            return Err(
                "http.max_headers and http.max_concurrent_streams must be at least 1".into(),
            );
        }
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.stream_window_bytes) {
            return Err(format!(
                "http.stream_window_bytes must be between {MIN_WINDOW} and {MAX_WINDOW}, got {}",
                self.stream_window_bytes
            ));
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return Err("http.ping_interval and http.ping_timeout must be above zero".into());
        }
        Ok(())
    }

    /// An HTTP/2 connection's flow-control window: room for every stream's
    /// whole window, so streams that stop reading cannot starve the others.
    pub fn connection_window(&self) -> u32 {
        let all = u64::from(self.max_concurrent_streams) * u64::from(self.stream_window_bytes);
        all.min(u64::from(MAX_WINDOW)) as u32
    }
}

/// HTTP/2's default and largest flow-control windows (RFC 9113 §6.9).
const MIN_WINDOW: u32 = 65_535;
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

impl AccessLogConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample) {
            return Err(format!(
                "access_log.sample must be between 0.0 and 1.0, got {}",
                self.sample
            ));
        }
        if self.buffer == 0 {
            return Err("access_log.buffer must be at least 1".into());
        }
        Ok(())
    }
}
