//! The syslog sink: RFC 5424 messages over TCP, framed with octet counting
//! (RFC 6587), reconnecting with capped exponential backoff.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{next_backoff, split, Msg, Record, SinkMetrics, READ_AT_ONCE};
use crate::events::EventsError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) struct SyslogSink {
    address: String,
    facility: u8,
    app_name: String,
    hostname: String,
    reconnect_max: Duration,
}

impl SyslogSink {
    pub fn new(
        address: &str,
        facility: u8,
        app_name: &str,
        reconnect_max: Duration,
    ) -> Result<SyslogSink, EventsError> {
        if facility > 23 {
            return Err(EventsError::Facility(facility));
        }
        if app_name.is_empty() || app_name.len() > 48 || !app_name.bytes().all(printable) {
            return Err(EventsError::AppName(app_name.to_owned()));
        }
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(EventsError::SyslogAddress(address.to_owned())),
        }
        Ok(SyslogSink {
            address: address.to_owned(),
            facility,
            app_name: app_name.to_owned(),
            hostname: hostname(),
            reconnect_max: reconnect_max.max(FIRST_BACKOFF),
        })
    }

    /// One octet-counted RFC 5424 frame: `LEN SP <PRI>1 TIMESTAMP HOST APP
    /// PROCID MSGID - MSG`.
    fn frame(&self, r: &Record, out: &mut Vec<u8>) {
        let pri = self.facility as u32 * 8 + syslog_severity(r.severity_id) as u32;
        let ts = OffsetDateTime::from_unix_timestamp_nanos(r.time as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "-".to_owned());
        let msg = format!(
            "<{pri}>1 {ts} {} {} {} {} - {}",
            self.hostname,
            self.app_name,
            std::process::id(),
            r.kind,
            r.json
        );
        out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
        out.extend_from_slice(msg.as_bytes());
    }

    pub async fn run(self, mut rx: mpsc::Receiver<Msg>, m: SinkMetrics) {
        let mut conn: Option<TcpStream> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut msgs = Vec::with_capacity(READ_AT_ONCE);
        let mut events = Vec::with_capacity(READ_AT_ONCE);
        let mut acks = Vec::new();
        let mut buf = Vec::new();
        while rx.recv_many(&mut msgs, READ_AT_ONCE).await > 0 {
            split(&mut msgs, &mut events, &mut acks);
            buf.clear();
            for e in &events {
                self.frame(e, &mut buf);
            }
            let n = events.len() as u64;
            events.clear();
            if n > 0 {
                self.deliver(&mut conn, &mut backoff, &buf, &m).await;
                m.sent.inc_by(n);
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    /// Writes `buf`, reconnecting as often as it takes. The batch is held
    /// meanwhile; the queue fills, and what does not fit is dropped and
    /// counted.
    async fn deliver(
        &self,
        conn: &mut Option<TcpStream>,
        backoff: &mut Duration,
        buf: &[u8],
        m: &SinkMetrics,
    ) {
        loop {
            // A daemon that restarted closed our connection; writing into
            // it would lose the batch, so notice the close and reconnect.
            if conn.as_ref().is_some_and(peer_closed) {
                *conn = None;
            }
            let stream = match conn {
                Some(s) => s,
                None => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
                        .await
                    {
                        Ok(Ok(s)) => {
                            *backoff = FIRST_BACKOFF;
                            conn.insert(s)
                        }
                        outcome => {
                            let error = match outcome {
                                Ok(Err(e)) => e.to_string(),
                                _ => "connect timed out".to_owned(),
                            };
                            m.errors.inc();
                            tracing::warn!(sink = "syslog", address = %self.address, error, retry_in = ?*backoff, "cannot reach syslog");
                            tokio::time::sleep(*backoff).await;
                            *backoff = next_backoff(*backoff, self.reconnect_max);
                            continue;
                        }
                    }
                }
            };
            match stream.write_all(buf).await {
                Ok(()) => return,
                Err(e) => {
                    m.errors.inc();
                    tracing::warn!(sink = "syslog", address = %self.address, error = %e, "syslog connection lost");
                    *conn = None;
                }
            }
        }
    }
}

/// Whether the daemon closed the connection (syslog never sends to us, so
/// any end of stream or error means it is gone). A direct non-blocking peek,
/// not the runtime's cached readiness, which may not have seen the close yet.
fn peer_closed(s: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut probe = [0u8; 1];
    !matches!(
        recv(
            s.as_raw_fd(),
            &mut probe,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

fn printable(b: u8) -> bool {
    (33..=126).contains(&b)
}

/// OCSF severity_id to syslog severity.
fn syslog_severity(severity_id: u8) -> u8 {
    match severity_id {
        1 => 6,
        2 => 5,
        3 => 4,
        4 => 3,
        5 => 2,
        6 => 1,
        _ => 5,
    }
}

/// The host name for the HOSTNAME field: printable ASCII, or `-`.
fn hostname() -> String {
    let h: String = crate::hostname()
        .unwrap_or_default()
        .bytes()
        .filter(|b| printable(*b))
        .take(255)
        .map(char::from)
        .collect();
    if h.is_empty() {
        "-".to_owned()
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_octet_counted_rfc5424() {
        let s =
            SyslogSink::new("127.0.0.1:514", 4, "palisade-proxy", Duration::from_secs(1)).unwrap();
        let r = Record {
            kind: "denied",
            severity_id: 3,
            time: 1_700_000_000_123,
            json: r#"{"class_uid":4001}"#.to_owned(),
        };
        let mut out = Vec::new();
        s.frame(&r, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        // auth (4) * 8 + warning (4)
        assert!(msg.starts_with("<36>1 2023-11-14T22:13:20.123Z "), "{msg}");
        assert!(msg.ends_with(r#" denied - {"class_uid":4001}"#), "{msg}");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let d = Duration::from_secs(1);
        assert!(matches!(
            SyslogSink::new("127.0.0.1:514", 24, "p", d),
            Err(EventsError::Facility(24))
        ));
        assert!(matches!(
            SyslogSink::new("127.0.0.1", 4, "p", d),
            Err(EventsError::SyslogAddress(_))
        ));
        assert!(matches!(
            SyslogSink::new("127.0.0.1:514", 4, "has space", d),
            Err(EventsError::AppName(_))
        ));
    }
}
