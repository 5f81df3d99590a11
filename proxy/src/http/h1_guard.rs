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

use super::h1_head::{
    check_head, chunk_size, take_block, too_large_head, HeadCheck, HeadLimits, Next,
};

/// Bytes that end hyper's parse with a 400: NUL is never valid in a head.
const POISON: &[u8] = b"\0\r\n\r\n";
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
    /// Refuse a request target with a `#` fragment (which hyper would drop
    /// silently): `http.normalization.fragment: reject`.
    pub reject_fragment: bool,
}

impl GuardLimits {
    fn head(&self) -> HeadLimits {
        HeadLimits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            reject_fragment: self.reject_fragment,
        }
    }
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

impl State {
    /// Where framing goes on after an accepted head.
    fn after(next: Next) -> State {
        match next {
            Next::Head => State::Head,
            Next::Body(n) => State::Body(n),
            Next::Chunked => State::ChunkSize,
            Next::Passthrough => State::Passthrough,
        }
    }
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
                    // Head bytes hyper already holds from earlier reads.
                    let prior_tail = self.line.last().copied();
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
                    let verdict = check_head(&self.line, self.limits.head());
                    self.line.clear();
                    self.head_started = false;
                    self.head_lines = 0;
                    self.arm(self.limits.idle_timeout);
                    match verdict {
                        HeadCheck::Ok(next) => self.state = State::after(next),
                        HeadCheck::TooLarge(reason) => {
                            self.violation(reason);
                            self.poison(too_large_head(self.limits.max_headers, prior_tail));
                            return start;
                        }
                        HeadCheck::Refuse(reason) => {
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
                        // Checked here too: the limit must not depend on
                        // whether the line arrived in one read.
                        if self.line.len() > MAX_CHUNK_LINE {
                            return self.refuse_here(i, "bad_chunked_body");
                        }
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
                    let start = i;
                    let (consumed, done) = take_block(&mut self.line, &data[i..]);
                    i += consumed;
                    // Whole or not: a block that arrives in one read is
                    // held to the same limit.
                    if self.line.len() > self.limits.max_header_bytes {
                        return self.refuse_here(start, "header_too_large");
                    }
                    if done {
                        self.line.clear();
                        self.state = State::Head;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Count(AtomicUsize, std::sync::Mutex<Vec<&'static str>>);

    impl Report for Count {
        fn violation(&self, reason: &'static str) {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1.lock().unwrap().push(reason);
        }
    }

    const LIMITS: GuardLimits = GuardLimits {
        max_header_bytes: 8192,
        max_headers: 10,
        header_read_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(60),
        reject_fragment: true,
    };

    /// What the HTTP server behind the guard reads, for `input`.
    async fn through(input: &[u8]) -> (Vec<u8>, Arc<Count>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let count = Arc::new(Count::default());
        let mut g = H1Guard::new(server, LIMITS, count.clone(), Default::default());
        let mut seen = Vec::new();
        g.read_to_end(&mut seen).await.unwrap();
        (seen, count)
    }

    #[tokio::test]
    async fn valid_pipelined_requests_with_bodies_pass_untouched() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
                      POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                      3;x=y\r\nGET\r\n0\r\nT: 1\r\n\r\n\
                      GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let (seen, count) = through(input).await;
        assert_eq!(seen, input);
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
    }

    /// What the server reads when it reads with one large buffer, so each
    /// read takes everything the client has sent.
    async fn through_in_one_read(input: &[u8]) -> (Vec<u8>, Arc<Count>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let count = Arc::new(Count::default());
        let mut g = H1Guard::new(server, LIMITS, count.clone(), Default::default());
        let (mut seen, mut buf) = (Vec::new(), vec![0u8; 1 << 20]);
        loop {
            let n = g.read(&mut buf).await.unwrap();
            if n == 0 {
                return (seen, count);
            }
            seen.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn an_oversized_trailer_block_is_refused_even_when_it_arrives_in_one_read() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
        let trailer = format!("X-T: {}\r\n\r\n", "a".repeat(LIMITS.max_header_bytes));
        let (seen, count) = through_in_one_read(&[&head[..], trailer.as_bytes()].concat()).await;
        assert_eq!(seen, [&head[..], POISON].concat());
        assert_eq!(*count.1.lock().unwrap(), vec!["header_too_large"]);
    }

    #[tokio::test]
    async fn an_oversized_chunk_size_line_is_refused_even_when_it_arrives_in_one_read() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body = format!("1{}\r\nx\r\n0\r\n\r\n", " ".repeat(MAX_CHUNK_LINE));
        let (seen, count) = through_in_one_read(&[&head[..], body.as_bytes()].concat()).await;
        assert_eq!(seen, [&head[..], POISON].concat());
        assert_eq!(*count.1.lock().unwrap(), vec!["bad_chunked_body"]);
    }

    #[tokio::test]
    async fn a_smuggling_head_is_replaced_and_nothing_after_it_is_read() {
        let first = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n";
        let bad = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
        let (seen, count) = through(&[&first[..], &bad[..]].concat()).await;
        // hyper may already hold part of the bad head; it never gets its end.
        assert!(
            seen.starts_with(first) && seen.ends_with(POISON),
            "{seen:?}"
        );
        let bad_part = &seen[first.len()..seen.len() - POISON.len()];
        assert!(bad.starts_with(bad_part) && !bad_part.windows(4).any(|w| w == b"\r\n\r\n"));
        assert_eq!(
            *count.1.lock().unwrap(),
            vec!["content_length_with_transfer_encoding"]
        );
    }

    #[tokio::test]
    async fn a_fragment_in_the_request_target_is_refused_unless_normalized() {
        let req = b"GET /admin/x#frag HTTP/1.1\r\nHost: x\r\n\r\n";
        let (seen, count) = through(req).await;
        // hyper may hold part of the head; it never gets its end.
        let head_part = &seen[..seen.len() - POISON.len()];
        assert!(seen.ends_with(POISON) && !head_part.windows(4).any(|w| w == b"\r\n\r\n"));
        assert_eq!(*count.1.lock().unwrap(), vec!["fragment"]);
        let limits = GuardLimits {
            reject_fragment: false,
            ..LIMITS
        };
        assert_eq!(check_head(req, limits.head()), HeadCheck::Ok(Next::Head));
    }

    #[tokio::test]
    async fn content_length_forms_are_checked() {
        for (cl, reason) in [
            ("+5", "invalid_content_length"),
            ("5, 5", "invalid_content_length"),
            ("0x5", "invalid_content_length"),
        ] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\nhello");
            let (seen, count) = through(req.as_bytes()).await;
            assert!(seen.ends_with(POISON), "{cl}");
            assert!(!seen.ends_with(b"hello"), "{cl}");
            assert_eq!(*count.1.lock().unwrap(), vec![reason], "{cl}");
        }
    }

    #[tokio::test]
    async fn too_many_fields_become_a_head_hyper_answers_431() {
        let fields: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
        let (seen, count) = through(format!("GET / HTTP/1.1\r\n{fields}\r\n").as_bytes()).await;
        // Whatever part hyper held, what it reads has more fields than it takes.
        let text = String::from_utf8_lossy(&seen);
        assert!(
            text.lines().filter(|l| l.contains(':')).count() > LIMITS.max_headers,
            "{text}"
        );
        assert!(text.starts_with("GET / HTTP/1.1\r\n") && text.ends_with("\r\n\r\n"));
        assert_eq!(*count.1.lock().unwrap(), vec!["too_many_headers"]);
    }

    #[tokio::test]
    async fn a_slow_head_gets_408() {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        let count = Arc::new(Count::default());
        let mut g = H1Guard::new(server, LIMITS, count.clone(), Default::default());
        let mut seen = Vec::new();
        g.read_to_end(&mut seen).await.unwrap();
        let mut answer = vec![0u8; TIMEOUT_408.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, TIMEOUT_408);
        assert_eq!(*count.1.lock().unwrap(), vec!["header_read_timeout"]);
    }

    #[test]
    fn chunk_size_lines_parse_with_extensions_and_refuse_junk() {
        assert_eq!(chunk_size(b"1a;name=v\r"), Some(26));
        assert_eq!(chunk_size(b"0\r"), Some(0));
        assert_eq!(chunk_size(b"zz\r"), None);
        assert_eq!(chunk_size(b"5 x\r"), None);
    }
}
