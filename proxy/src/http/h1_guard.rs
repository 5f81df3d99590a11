//! A guard in front of hyper's HTTP/1 server. hyper resolves a request with
//! both Content-Length and Transfer-Encoding by dropping Content-Length, so
//! the request still reaches the app; a strict proxy must refuse it. The
//! guard follows HTTP/1 message framing on the raw bytes, checks each request
//! head (Content-Length/Transfer-Encoding conflicts and repeats, a non-digit
//! Content-Length, header count and size) and answers slow heads with 408.
//! A refused head is replaced with a byte hyper cannot parse, so hyper itself
//! answers 400 and closes: no request after it is ever read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes that end hyper's parse with a 400: NUL is never valid in a head.
const POISON: &[u8] = b"\0\r\n\r\n";
/// A request line for the head that makes hyper answer 431 (more header
/// fields than it accepts), for heads the guard finds too large.
const TOO_LARGE_LINE: &[u8] = b"GET / HTTP/1.1\r\n";
const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// A chunk-size line longer than this is not a client we want.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// From a head's first byte to its end.
    pub header_read_timeout: Duration,
    /// Between requests, with no byte at all.
    pub idle_timeout: Duration,
}

/// Reports a violation once; shared with the connection's owner so it does
/// not count hyper's resulting error a second time.
pub trait Report: Send + Sync {
    fn violation(&self, reason: &'static str);
}

/// What the owner learns from the guard.
#[derive(Debug, Default)]
pub struct GuardFlags {
    pub reported: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A Content-Length body with this many bytes left.
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after chunk data; the byte count still expected.
    ChunkEnd(u8),
    Trailers,
    /// Not HTTP/1 framing any more (an upgrade or CONNECT was asked for, or
    /// hyper is about to refuse an oversized head): bytes pass unscanned.
    /// The proxy closes a connection whose upgrade did not happen.
    Passthrough,
    /// A refused head was replaced; nothing more is read.
    Poisoned,
    /// Writing the 408, then end of stream.
    TimingOut(usize),
    Closed,
}

pub struct H1Guard<S> {
    io: S,
    state: State,
    /// The current head, trailer block or chunk-size line so far.
    line: Vec<u8>,
    limits: GuardLimits,
    timer: Pin<Box<Sleep>>,
    /// Whether any byte of the current head has arrived (408 vs quiet close).
    head_started: bool,
    /// Lines of the current head so far: hyper refuses a head with too many
    /// fields before it is complete, so the guard counts as it goes.
    head_lines: usize,
    /// Bytes hyper reads instead of a refused head; then end of stream.
    inject: Vec<u8>,
    injected: usize,
    last_write: Instant,
    report: Arc<dyn Report>,
    flags: Arc<GuardFlags>,
}

/// The checks on one complete request head.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Next state after the head.
    Ok(State),
    /// Replace it so hyper answers 431.
    TooLarge(&'static str),
    /// Replace it so hyper answers 400.
    Refuse(&'static str),
}

impl<S> H1Guard<S> {
    pub fn new(
        io: S,
        limits: GuardLimits,
        report: Arc<dyn Report>,
        flags: Arc<GuardFlags>,
    ) -> Self {
        H1Guard {
            io,
            state: State::Head,
            line: Vec::new(),
            limits,
            timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            head_started: false,
            head_lines: 0,
            inject: Vec::new(),
            injected: 0,
            last_write: Instant::now(),
            report,
            flags,
        }
    }

    fn violation(&mut self, reason: &'static str) {
        if !self.flags.reported.swap(true, Ordering::Relaxed) {
            self.report.violation(reason);
        }
        tracing::info!(reason, "HTTP/1 request refused");
    }

    /// Scan newly read bytes in place. Returns how many of them hyper may
    /// see; a refusal truncates there and queues `POISON`.
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Head => {
                    if !self.head_started {
                        // Empty lines before a request line are tolerated.
                        if matches!(data[i], b'\r' | b'\n') {
                            i += 1;
                            continue;
                        }
                        self.head_started = true;
                        self.arm(self.limits.header_read_timeout);
                    }
                    let start = i;
                    let (consumed, done) = take_block(&mut self.line, &data[i..]);
                    self.head_lines += data[i..i + consumed]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count();
                    i += consumed;
                    if !done {
                        // The request line and the fields so far.
                        if self.head_lines > self.limits.max_headers + 1 {
                            self.violation("too_many_headers");
                            self.line = Vec::new();
                            self.state = State::Passthrough;
                        } else if self.line.len() > self.limits.max_header_bytes {
                            // hyper holds the same bytes and refuses them with
                            // 431 once its buffer passes the same limit.
                            self.violation("header_too_large");
                            self.line = Vec::new();
                            self.state = State::Passthrough;
                        }
                        continue;
                    }
                    let verdict = check_head(&self.line, &self.limits);
                    self.line.clear();
                    self.head_started = false;
                    self.head_lines = 0;
                    self.arm(self.limits.idle_timeout);
                    match verdict {
                        Verdict::Ok(next) => self.state = next,
                        Verdict::TooLarge(reason) => {
                            self.violation(reason);
                            self.poison(too_large_head(self.limits.max_headers));
                            return start;
                        }
                        Verdict::Refuse(reason) => {
                            self.violation(reason);
                            self.poison(POISON.to_vec());
                            return start;
                        }
                    }
                }
                State::Body(left) => {
                    let n = left.min((data.len() - i) as u64);
                    i += n as usize;
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Body(left - n)
                    };
                }
                State::ChunkSize => match data[i..].iter().position(|b| *b == b'\n') {
                    None => {
                        self.line.extend_from_slice(&data[i..]);
                        i = data.len();
                        if self.line.len() > MAX_CHUNK_LINE {
                            return self.refuse_here(i, "bad_chunked_body");
                        }
                    }
                    Some(p) => {
                        self.line.extend_from_slice(&data[i..i + p]);
                        i += p + 1;
                        let size = chunk_size(&self.line);
                        self.line.clear();
                        self.state = match size {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData(n),
                            None => return self.refuse_here(i, "bad_chunked_body"),
                        };
                    }
                },
                State::ChunkData(left) => {
                    let n = left.min((data.len() - i) as u64);
                    i += n as usize;
                    self.state = if n == left {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left - n)
                    };
                }
                State::ChunkEnd(left) => {
                    let want = if left == 2 { b'\r' } else { b'\n' };
                    if data[i] != want {
                        return self.refuse_here(i, "bad_chunked_body");
                    }
                    i += 1;
                    self.state = if left == 2 {
                        State::ChunkEnd(1)
                    } else {
                        State::ChunkSize
                    };
                }
                State::Trailers => {
                    // The trailer section ends with an empty line; an empty
                    // trailer section is just that line.
                    if self.line.is_empty() && data[i] == b'\r' {
                        self.line.push(b'\r');
                        i += 1;
                        continue;
                    }
                    if self.line == b"\r" && data[i] == b'\n' {
                        self.line.clear();
                        self.state = State::Head;
                        i += 1;
                        continue;
                    }
                    let (consumed, done) = take_block(&mut self.line, &data[i..]);
                    i += consumed;
                    if done {
                        self.line.clear();
                        self.state = State::Head;
                    } else if self.line.len() > self.limits.max_header_bytes {
                        return self.refuse_here(i, "header_too_large");
                    }
                }
                State::Passthrough | State::Poisoned | State::TimingOut(_) | State::Closed => {
                    return data.len()
                }
            }
        }
        data.len()
    }

    /// Refuse in the middle of a body: hyper has framing of its own and
    /// will fail on the poison too.
    fn refuse_here(&mut self, at: usize, reason: &'static str) -> usize {
        self.violation(reason);
        self.poison(POISON.to_vec());
        at
    }

    fn poison(&mut self, with: Vec<u8>) {
        self.state = State::Poisoned;
        self.inject = with;
        self.injected = 0;
        self.line = Vec::new();
    }

    fn arm(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::TimingOut(mut written) => {
                    while written < TIMEOUT_408.len() {
                        match Pin::new(&mut this.io).poll_write(cx, &TIMEOUT_408[written..]) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                            Poll::Ready(Ok(n)) => {
                                written += n;
                                this.state = State::TimingOut(written);
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    if Pin::new(&mut this.io).poll_flush(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.state = State::Closed;
                    return Poll::Ready(Ok(()));
                }
                State::Poisoned => {
                    let rest = &this.inject[this.injected..];
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    this.injected += n;
                    return Poll::Ready(Ok(()));
                }
                _ => {}
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let after = buf.filled().len();
                    if after == before {
                        return Poll::Ready(Ok(()));
                    }
                    let keep = this.scan(&buf.filled()[before..after]);
                    buf.set_filled(before + keep);
                    if keep == 0 && this.state == State::Poisoned {
                        // Deliver the replacement in this same call.
                        continue;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if this.state != State::Head || this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if this.head_started {
                this.violation("header_read_timeout");
                this.state = State::TimingOut(0);
                continue;
            }
            // Idle between requests; a response still streaming counts as activity.
            let idle_until = this.last_write + this.limits.idle_timeout;
            if idle_until > Instant::now() {
                this.timer.as_mut().reset(idle_until);
                continue;
            }
            this.state = State::Closed;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H1Guard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.last_write = Instant::now();
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.last_write = Instant::now();
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Append `data` to `block` up to and including the empty line that ends a
/// header block. Returns (bytes taken, whether the block is complete).
fn take_block(block: &mut Vec<u8>, data: &[u8]) -> (usize, bool) {
    let mut from = 0;
    while let Some(p) = data[from..].iter().position(|b| *b == b'\n') {
        let end = from + p + 1;
        block.extend_from_slice(&data[from..end]);
        from = end;
        if block.ends_with(b"\n\r\n") || block.ends_with(b"\n\n") {
            return (from, true);
        }
    }
    block.extend_from_slice(&data[from..]);
    (data.len(), false)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|b| *b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// The checks on a complete request head, and where its body ends.
fn check_head(head: &[u8], limits: &GuardLimits) -> Verdict {
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let (mut fields, mut cl_lines, mut te_lines) = (0usize, 0usize, 0usize);
    let mut length: Option<u64> = None;
    let (mut chunked, mut te_list, mut bad_cl) = (false, false, false);
    let (mut upgrade, mut connection_upgrade) = (false, false);
    for line in lines.filter(|l| !l.is_empty()) {
        fields += 1;
        // A line without a colon is hyper's to refuse.
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            cl_lines += 1;
            match std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            {
                Some(v) => {
                    length = v.parse().ok().or_else(|| {
                        bad_cl = true;
                        None
                    })
                }
                None => bad_cl = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            te_list |= value.contains(&b',');
            chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= has_token(value, b"upgrade");
        }
    }
    if fields > limits.max_headers {
        return Verdict::TooLarge("too_many_headers");
    }
    if head.len() > limits.max_header_bytes {
        return Verdict::TooLarge("header_too_large");
    }
    if te_lines > 0 && cl_lines > 0 {
        return Verdict::Refuse("content_length_with_transfer_encoding");
    }
    if te_lines > 1 || te_list {
        return Verdict::Refuse("repeated_transfer_encoding");
    }
    if bad_cl {
        return Verdict::Refuse("invalid_content_length");
    }
    if cl_lines > 1 {
        return Verdict::Refuse("repeated_content_length");
    }
    if te_lines == 1 && !chunked {
        return Verdict::Refuse("unsupported_transfer_encoding");
    }
    if request_line.starts_with(b"CONNECT ") || (upgrade && connection_upgrade) {
        return Verdict::Ok(State::Passthrough);
    }
    Verdict::Ok(match (chunked, length) {
        (true, _) => State::ChunkSize,
        (false, Some(n)) if n > 0 => State::Body(n),
        _ => State::Head,
    })
}

/// The size in a chunk-size line (`1a;ext=1`), or `None` if it is not one.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = trim(&line[digits..]);
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// A head with one header field more than hyper accepts: hyper answers 431.
fn too_large_head(max_headers: usize) -> Vec<u8> {
    let mut v = TOO_LARGE_LINE.to_vec();
    for _ in 0..=max_headers {
        v.extend_from_slice(b"x: y\r\n");
    }
    v.extend_from_slice(b"\r\n");
    v
}
