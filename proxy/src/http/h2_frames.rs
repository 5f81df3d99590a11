//! Counts the HTTP/2 frames a client sends, by the 9-byte frame headers in
//! the byte stream (payloads are skipped by length). h2 answers both a
//! rapid reset and a CONTINUATION flood with GOAWAY ENHANCE_YOUR_CALM and
//! does not say which; these counts do.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::detect::H2_PREFACE;

const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;

#[derive(Debug, Default)]
pub struct FrameCounts {
    pub resets: AtomicU32,
    pub continuations: AtomicU32,
}

impl FrameCounts {
    /// The attack an ENHANCE_YOUR_CALM most likely answered.
    pub fn calm_reason(&self) -> &'static str {
        if self.continuations.load(Ordering::Relaxed) > self.resets.load(Ordering::Relaxed) {
            "h2_continuation_flood"
        } else {
            "h2_rapid_reset"
        }
    }
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
}

impl<S> FrameCounter<S> {
    pub fn new(io: S, counts: Arc<FrameCounts>) -> Self {
        FrameCounter {
            io,
            preface: H2_PREFACE.len(),
            header: [0; 9],
            have: 0,
            skip: 0,
            counts,
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
            } else {
                let n = (9 - self.have).min(data.len());
                self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = &self.header;
                    self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    match h[3] {
                        RST_STREAM => self.counts.resets.fetch_add(1, Ordering::Relaxed),
                        CONTINUATION => self.counts.continuations.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }
            }
        }
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
