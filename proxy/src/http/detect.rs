//! Protocol detection: HTTP/2 (the prior-knowledge preface, or ALPN `h2`
//! from another sidecar), HTTP/1.x (a request line), or else opaque TCP. The
//! bytes read to decide are replayed by `Prefixed`, so nothing is lost.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::Protocol;
use crate::io::Prefixed;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The negotiated ALPN protocol as a static value (the TLS session's own
/// borrow cannot outlive handing the stream on).
pub fn alpn(negotiated: Option<&[u8]>) -> Option<&'static [u8]> {
    match negotiated {
        Some(b"h2") => Some(b"h2"),
        Some(b"http/1.1") => Some(b"http/1.1"),
        _ => None,
    }
}

/// A request line longer than this is not worth detecting; the HTTP/1
/// server's own limits answer it.
const MAX_DETECT: usize = 16 * 1024;

/// What a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Opaque,
}

impl Detected {
    pub fn as_str(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Opaque => "opaque",
        }
    }
}

/// Decide what `io` carries: a configured protocol wins, then the ALPN the
/// TLS handshake negotiated, then the first bytes, read within `timeout`.
/// A client that says nothing in time (a server-speaks-first protocol) is
/// opaque. Returns the stream with what was read put back in front.
pub async fn detect<S>(
    mut io: S,
    configured: Protocol,
    alpn: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<(Detected, Prefixed<S>)>
where
    S: AsyncRead + Unpin,
{
    match (configured, alpn) {
        // A sidecar that negotiated h2 sends HTTP/2 whatever the port says.
        (_, Some(b"h2")) => return Ok((Detected::Http2, Prefixed::new(io))),
        (_, Some(b"http/1.1")) => return Ok((Detected::Http1, Prefixed::new(io))),
        (Protocol::Opaque, _) => return Ok((Detected::Opaque, Prefixed::new(io))),
        (Protocol::Http1, _) => return Ok((Detected::Http1, Prefixed::new(io))),
        (Protocol::Http2, _) => return Ok((Detected::Http2, Prefixed::new(io))),
        _ => {}
    }
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    // Bytes already searched for the request line's end: a client that
    // sends one byte per read must not make each read rescan the buffer.
    let mut searched = 0;
    let detected = loop {
        if let Some(d) = classify(&buf, &mut searched) {
            break d;
        }
        if buf.len() >= MAX_DETECT {
            break guess(&buf);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break guess(&buf),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((detected, Prefixed::with_prefix(buf, io)))
}

/// A decision from the bytes so far, or `None` to read more. `searched`
/// bytes are known to hold no line end; it is moved on past what is read.
fn classify(b: &[u8], searched: &mut usize) -> Option<Detected> {
    if b.is_empty() {
        return None;
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // method SP request-target SP HTTP/1.x CRLF. Every registered method
    // is upper case, so lower-case text is opaque at once.
    let method_len = b
        .iter()
        .take(21)
        .take_while(|c| c.is_ascii_uppercase())
        .count();
    if method_len == 0 || method_len > 20 {
        return Some(Detected::Opaque);
    }
    match b.get(method_len) {
        None => None,
        Some(b' ') => {
            let Some(at) = b[*searched..].iter().position(|c| *c == b'\n') else {
                *searched = b.len();
                return None;
            };
            let line_end = *searched + at;
            let line = b[..line_end].strip_suffix(b"\r").unwrap_or(&b[..line_end]);
            Some(
                if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                    Detected::Http1
                } else {
                    Detected::Opaque
                },
            )
        }
        Some(_) => Some(Detected::Opaque),
    }
}

/// Out of time or bytes: a started request line is HTTP/1 (its server then
/// enforces header limits and timeouts); anything else is opaque.
fn guess(b: &[u8]) -> Detected {
    let method_len = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    let looks_http =
        method_len > 0 && method_len <= 20 && (method_len == b.len() || b[method_len] == b' ');
    if looks_http && !H2_PREFACE.starts_with(b) {
        Detected::Http1
    } else {
        Detected::Opaque
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn run(input: &'static [u8], configured: Protocol) -> (Detected, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(input).await.unwrap();
        drop(client);
        let (d, mut s) = detect(server, configured, None, Duration::from_millis(200))
            .await
            .unwrap();
        let mut replay = Vec::new();
        s.read_to_end(&mut replay).await.unwrap();
        (d, replay)
    }

    #[tokio::test]
    async fn request_lines_preface_and_other_bytes_are_told_apart_and_replayed() {
        for (input, want) in [
            (&b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"[..], Detected::Http1),
            (b"POST / HTTP/1.0\n\n", Detected::Http1),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04",
                Detected::Http2,
            ),
            (b"\x16\x03\x01\x00", Detected::Opaque),
            (b"SSH-2.0-OpenSSH\r\n", Detected::Opaque),
            (b"GET / SOMETHING\r\n", Detected::Opaque),
            (b"hello world", Detected::Opaque),
            (b"", Detected::Opaque),
        ] {
            let (d, replay) = run(input, Protocol::Detect).await;
            assert_eq!(d, want, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(replay, input, "every byte is replayed");
        }
    }

    #[test]
    fn a_request_line_read_a_byte_at_a_time_is_searched_once() {
        let line = b"GET /x HTTP/1.1\r\n";
        let mut searched = 0;
        for end in 1..line.len() {
            assert_eq!(classify(&line[..end], &mut searched), None, "{end}");
            assert_eq!(searched, if end > 3 { end } else { 0 });
        }
        assert_eq!(classify(line, &mut searched), Some(Detected::Http1));
    }

    #[tokio::test]
    async fn a_configured_protocol_or_alpn_skips_reading() {
        let (d, replay) = run(b"anything", Protocol::Http1).await;
        assert_eq!((d, &replay[..]), (Detected::Http1, &b"anything"[..]));
        let (_c, server) = tokio::io::duplex(64);
        let (d, _) = detect(
            server,
            Protocol::Opaque,
            Some(b"h2"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(d, Detected::Http2);
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout_and_a_slow_request_line_is_http1() {
        let (_client, server) = tokio::io::duplex(64);
        let (d, _) = detect(server, Protocol::Detect, None, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(d, Detected::Opaque);
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        let (d, _) = detect(server, Protocol::Detect, None, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(d, Detected::Http1);
    }
}
