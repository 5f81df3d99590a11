//! Follows the HTTP/2 frames a client sends, by the 9-byte frame headers in
//! the byte stream (payloads are skipped by length). It counts resets and
//! CONTINUATIONs (h2 answers both floods with GOAWAY ENHANCE_YOUR_CALM and
//! does not say which), and closes a connection whose preface and SETTINGS,
//! or whose header block (HEADERS up to END_HEADERS), is not complete within
//! the header read timeout: h2 itself would wait for them forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::detect::H2_PREFACE;

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

const PREFACE_TIMEOUT: u8 = 1;
const HEADER_TIMEOUT: u8 = 2;

#[derive(Debug, Default)]
pub struct FrameCounts {
    pub resets: AtomicU32,
    pub continuations: AtomicU32,
    timed_out: AtomicU8,
}

impl FrameCounts {
    /// The timeout that closed the connection, if one did.
    pub fn timeout_reason(&self) -> Option<&'static str> {
        match self.timed_out.load(Ordering::Relaxed) {
            PREFACE_TIMEOUT => Some("h2_preface_timeout"),
            HEADER_TIMEOUT => Some("h2_header_read_timeout"),
            _ => None,
        }
    }

    /// The attack an ENHANCE_YOUR_CALM most likely answered.
    pub fn calm_reason(&self) -> &'static str {
        if self.continuations.load(Ordering::Relaxed) > self.resets.load(Ordering::Relaxed) {
            "h2_continuation_flood"
        } else {
            "h2_rapid_reset"
        }
    }
}

/// What the client still owes before it may take its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Nothing,
    /// The preface and the SETTINGS frame that follows it.
    Preface,
    /// The rest of a header block.
    Headers,
}

pub struct FrameCounter<S> {
    io: S,
    /// Preface bytes still to skip.
    preface: usize,
    header: [u8; 9],
    have: usize,
    /// Payload bytes still to skip.
    skip: usize,
    counts: Arc<FrameCounts>,
    owed: Owed,
    /// Whether the frame being skipped completes what is owed.
    settles: bool,
    /// When the client started owing; taken lazily, so a header block that
    /// arrives in one read costs no clock read and no timer.
    since: Option<Instant>,
    timeout: Duration,
    /// One timer per connection, reset rather than reallocated.
    timer: Pin<Box<Sleep>>,
}

impl<S> FrameCounter<S> {
    pub fn new(io: S, counts: Arc<FrameCounts>, timeout: Duration) -> Self {
        FrameCounter {
            io,
            preface: H2_PREFACE.len(),
            header: [0; 9],
            have: 0,
            skip: 0,
            counts,
            owed: Owed::Preface,
            settles: false,
            since: None,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                data = &data[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.frame_done();
                }
            } else {
                let n = (9 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 9 {
                    self.have = 0;
                    self.frame_start();
                }
            }
        }
    }

    fn frame_start(&mut self) {
        let h = &self.header;
        self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, end_headers) = (h[3], h[4] & END_HEADERS != 0);
        match kind {
            RST_STREAM => {
                self.counts.resets.fetch_add(1, Ordering::Relaxed);
            }
            CONTINUATION => {
                self.counts.continuations.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.settles = match (self.owed, kind) {
            // The first frame after the preface is SETTINGS (h2 checks it).
            (Owed::Preface, _) => true,
            (Owed::Nothing, HEADERS) => {
                self.owed = Owed::Headers;
                end_headers
            }
            (Owed::Headers, CONTINUATION) => end_headers,
            _ => false,
        };
        if self.skip == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if self.settles {
            self.owed = Owed::Nothing;
            self.since = None;
            self.settles = false;
        }
    }

    /// Whether what is owed is overdue; arms the timer for it otherwise.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        if self.owed == Owed::Nothing {
            return false;
        }
        let deadline = *self.since.get_or_insert_with(Instant::now) + self.timeout;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let reason = match self.owed {
            Owed::Preface => PREFACE_TIMEOUT,
            _ => HEADER_TIMEOUT,
        };
        self.counts.timed_out.store(reason, Ordering::Relaxed);
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameCounter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let after = buf.filled().len();
        if after > before {
            let new = &buf.filled()[before..after];
            this.observe(new);
        }
        if this.overdue(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP/2 preface or header block not complete in time",
            )));
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameCounter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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

    fn header(len: u8, kind: u8, flags: u8) -> [u8; 9] {
        [0, 0, len, kind, flags, 0, 0, 0, 1]
    }

    #[tokio::test]
    async fn a_header_block_is_owed_until_its_end_headers_frame_ends_whatever_the_reads() {
        let counts = Arc::new(FrameCounts::default());
        let mut f = FrameCounter::new((), counts.clone(), Duration::from_secs(1));
        f.observe(&H2_PREFACE[..10]);
        assert_eq!(f.owed, Owed::Preface);
        f.observe(&H2_PREFACE[10..]);
        f.observe(&header(6, 0x4, 0));
        assert_eq!(f.owed, Owed::Preface, "SETTINGS payload still to come");
        f.observe(&[0; 6]);
        assert_eq!(f.owed, Owed::Nothing);

        f.observe(&header(5, HEADERS, 0x1));
        f.observe(&[0; 5]);
        assert_eq!(f.owed, Owed::Headers, "no END_HEADERS yet");
        f.observe(&header(2, CONTINUATION, END_HEADERS));
        f.observe(&[0]);
        assert_eq!(
            f.owed,
            Owed::Headers,
            "the last CONTINUATION is not all here"
        );
        f.observe(&[0]);
        assert_eq!(f.owed, Owed::Nothing);

        // A whole block in one read, then a DATA frame: nothing owed.
        let mut whole = header(1, HEADERS, END_HEADERS).to_vec();
        whole.push(0);
        whole.extend_from_slice(&header(3, 0x0, 0));
        f.observe(&whole);
        assert_eq!(f.owed, Owed::Nothing);
        assert_eq!(f.since, None);
        assert_eq!(counts.continuations.load(Ordering::Relaxed), 1);
    }
}
