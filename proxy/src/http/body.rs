//! Streaming bodies with byte counts. Frames pass through untouched (data
//! and trailers, never buffered); the response body writes the request's
//! access log line when it ends or is dropped, so the line carries the
//! bytes actually sent and the full duration.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::access_log::{micros, AccessLog, Entry};
use super::client::StreamSlot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream, counted when it is logged.
pub struct ReqBody {
    inner: Incoming,
    bytes: Option<Arc<AtomicU64>>,
}

impl ReqBody {
    pub fn new(inner: Incoming, bytes: Option<Arc<AtomicU64>>) -> Self {
        ReqBody { inner, bytes }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(n)) = (&r, &this.bytes) {
            if let Some(d) = f.data_ref() {
                n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A log line waiting for its response to finish.
pub struct PendingLog {
    pub entry: Entry,
    pub start: Instant,
    pub request_bytes: Arc<AtomicU64>,
    pub log: Arc<AccessLog>,
}

impl PendingLog {
    fn send(self: Box<Self>, response_bytes: u64) {
        let PendingLog {
            mut entry,
            start,
            request_bytes,
            log,
        } = *self;
        entry.response_bytes = response_bytes;
        entry.request_bytes = request_bytes.load(Ordering::Relaxed);
        entry.duration_us = micros(start.elapsed());
        log.send(entry);
    }
}

/// What the proxy answers with: the upstream's body, or one of its own.
pub struct RespBody {
    inner: Either<Incoming, Full<Bytes>>,
    bytes: u64,
    log: Option<Box<PendingLog>>,
    /// The pooled HTTP/2 stream this body arrives on, freed when it ends.
    slot: Option<StreamSlot>,
}

impl RespBody {
    pub fn upstream(inner: Incoming) -> Self {
        RespBody {
            inner: Either::Left(inner),
            bytes: 0,
            log: None,
            slot: None,
        }
    }

    pub fn local(body: impl Into<Bytes>) -> Self {
        RespBody {
            inner: Either::Right(Full::new(body.into())),
            bytes: 0,
            log: None,
            slot: None,
        }
    }

    pub fn empty() -> Self {
        RespBody::local(Bytes::new())
    }

    pub fn with_log(mut self, log: Option<Box<PendingLog>>) -> Self {
        self.log = log;
        self
    }

    /// The same answer without a body of the proxy's own, for HEAD.
    pub fn headless(mut self) -> Self {
        if let Either::Right(_) = self.inner {
            self.inner = Either::Right(Full::new(Bytes::new()));
        }
        self
    }

    pub fn holding(mut self, slot: StreamSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    fn finish(&mut self) {
        self.slot = None;
        if let Some(log) = self.log.take() {
            log.send(self.bytes);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        self.finish();
    }
}
