//! Streaming bodies with byte counts. Frames pass through untouched (data
//! and trailers, never buffered); the response body writes the request's
//! access log line when it ends or is dropped, so the line carries the
//! bytes actually sent and the full duration. Also what keeps a body from
//! being read by an app as another request: bodies on GET and the like are
//! refused, and a body an HTTP/1.1 app answered early is never sent on.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::{capture_connection, CaptureConnection};

use super::access_log::{micros, AccessLog, Entry};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream connection that counts the streams it carries (the HTTP/2
/// pool's). Bodies name it through this trait, so they need not know the pool.
pub trait Streams: Send + Sync {
    /// One stream on this connection has ended.
    fn release(&self);
}

/// One stream claimed on a pooled connection, released when dropped.
pub struct StreamSlot(Arc<dyn Streams>);

impl StreamSlot {
    /// Holds a stream already counted on `conn`.
    pub fn claimed(conn: Arc<dyn Streams>) -> Self {
        StreamSlot(conn)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A request body on its way upstream, counted when it is logged.
pub struct ReqBody {
    inner: Incoming,
    bytes: Option<Arc<AtomicU64>>,
    /// Set when an HTTP/1.1 app may answer before the body is all sent.
    link: Option<Arc<BodyLink>>,
}

impl ReqBody {
    pub fn new(inner: Incoming, bytes: Option<Arc<AtomicU64>>) -> Self {
        ReqBody {
            inner,
            bytes,
            link: None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(link) = &this.link {
            if let Err(e) = ready!(link.poll_go(cx)) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(n)) = (&r, &this.bytes) {
            if let Some(d) = f.data_ref() {
                n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        if let Some(link) = &this.link {
            match &r {
                Poll::Ready(None) => link.sent(),
                Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => link.sent(),
                // So that `abort` can wake a body waiting for the client.
                Poll::Pending => link.waker.register(cx.waker()),
                Poll::Ready(_) => {}
            }
        }
        r.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const STREAMING: u8 = 0;
const SENT: u8 = 1;
const HELD: u8 = 2;
const ABORTED: u8 = 3;

/// Between a request body going to an HTTP/1.1 app and the app's answer.
/// An app that answers before it has the whole body may never read the
/// rest, and then takes it for the next request: so the rest is held back
/// once the answer comes, and the connection is ended once the answer is
/// complete (ending it sooner would cut the answer short).
#[derive(Default)]
pub struct BodyLink {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl BodyLink {
    fn sent(&self) {
        let _ = self
            .state
            .compare_exchange(STREAMING, SENT, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Hold the rest of the body back, unless it was all sent.
    fn hold(&self) -> bool {
        self.state
            .compare_exchange(STREAMING, HELD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The answer is complete: end the held body, and with it the connection.
    fn abort(&self) {
        if self
            .state
            .compare_exchange(HELD, ABORTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Ready to go on with the body, held back (pending), or aborted.
    fn poll_go(&self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let aborted = || {
            Poll::Ready(Err(
                "the app answered before the request body was sent".into()
            ))
        };
        match self.state.load(Ordering::Acquire) {
            HELD => {
                self.waker.register(cx.waker());
                if self.state.load(Ordering::Acquire) == ABORTED {
                    aborted()
                } else {
                    Poll::Pending
                }
            }
            ABORTED => aborted(),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// A request body on its way to an HTTP/1.1 app, and the app connection it
/// is written on.
pub struct Unsent {
    link: Arc<BodyLink>,
    conn: CaptureConnection,
}

impl Unsent {
    /// Track `req`'s body, unless it has none.
    pub fn track(req: &mut Request<ReqBody>) -> Option<Unsent> {
        if req.body().is_end_stream() {
            return None;
        }
        let link = Arc::new(BodyLink::default());
        req.body_mut().link = Some(link.clone());
        let conn = capture_connection(req);
        Some(Unsent { link, conn })
    }
}

/// The app's answer as the proxy's. If it came before the request body was
/// all sent, the app connection is never used again (poisoned), the rest of
/// the body is held back, and the connection ends with the answer.
pub fn from_app(resp: Response<Incoming>, unsent: Option<Unsent>) -> Response<RespBody> {
    let held = unsent.filter(|u| u.link.hold());
    if let Some(u) = &held {
        if let Some(c) = u.conn.connection_metadata().as_ref() {
            c.poison();
        }
    }
    resp.map(|b| {
        let mut body = RespBody::upstream(b);
        body.unsent = held.map(|u| u.link);
        body
    })
}

/// Methods whose request body has no defined meaning (RFC 9110 §9.3): many
/// apps never read one, and then take it for the next request.
fn bodiless(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    )
}

/// Why a body on a method without body semantics is refused: a
/// Content-Length above 0, any Transfer-Encoding, or (HTTP/2) DATA after a
/// HEADERS frame without END_STREAM, which is waited for up to `wait`.
/// `Some` is the status, the violation's reason and the text to answer
/// with. An empty body is read to its end, so nothing is left to send.
pub async fn get_body_refusal(
    req: &mut Request<Incoming>,
    wait: Duration,
) -> Option<(StatusCode, &'static str, &'static str)> {
    if !bodiless(req.method()) {
        return None;
    }
    let h = req.headers();
    let declared =
        h.contains_key(TRANSFER_ENCODING) || h.get_all(CONTENT_LENGTH).iter().any(|v| v != "0");
    if declared {
        return Some(BODY_NOT_ALLOWED);
    }
    match tokio::time::timeout(wait, ends_empty(req.body_mut())).await {
        Ok(true) => None,
        Ok(false) => Some(BODY_NOT_ALLOWED),
        Err(_) => Some((
            StatusCode::REQUEST_TIMEOUT,
            "header_read_timeout",
            "the request did not end in time\n",
        )),
    }
}

const BODY_NOT_ALLOWED: (StatusCode, &str, &str) = (
    StatusCode::BAD_REQUEST,
    "body_not_allowed",
    "a body is not allowed on this method\n",
);

/// Whether `body` ends without a byte of data.
async fn ends_empty(body: &mut Incoming) -> bool {
    while !body.is_end_stream() {
        match body.frame().await {
            None => break,
            Some(Ok(f)) if f.data_ref().is_some_and(|d| d.is_empty()) => {}
            Some(_) => return false,
        }
    }
    true
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
    /// A request body held back from the app until this answer ends.
    unsent: Option<Arc<BodyLink>>,
}

impl RespBody {
    pub fn upstream(inner: Incoming) -> Self {
        RespBody {
            inner: Either::Left(inner),
            bytes: 0,
            log: None,
            slot: None,
            unsent: None,
        }
    }

    pub fn local(body: impl Into<Bytes>) -> Self {
        RespBody {
            inner: Either::Right(Full::new(body.into())),
            bytes: 0,
            log: None,
            slot: None,
            unsent: None,
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
        if let Some(link) = self.unsent.take() {
            link.abort();
        }
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
