//! What the fuzz targets share: a stream that hands the input out in chunks
//! the fuzzer chose (TCP may split bytes anywhere), and a runtime to drive
//! the proxy's async stream parsers on.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Splits fuzz input into a chunking plan and the payload: the first byte
/// says how many plan bytes follow (0 to 7); each plan byte is one chunk
/// length minus one, used in turn. An empty plan means "as much as fits".
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = (n % 8) as usize;
    if rest.len() < n {
        return (&[], rest);
    }
    rest.split_at(n)
}

/// A stream that yields `data` in the chunk lengths of `plan`, then end of
/// stream. It is always ready, so no timer ever fires; writes are dropped.
pub struct Chunked<'a> {
    data: &'a [u8],
    plan: &'a [u8],
    step: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], plan: &'a [u8]) -> Self {
        Chunked {
            data,
            plan,
            step: 0,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = match this.plan {
            [] => usize::MAX,
            plan => plan[this.step % plan.len()] as usize + 1,
        };
        this.step += 1;
        let n = want.min(this.data.len()).min(buf.remaining());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Everything `io` yields until end of stream.
pub async fn read_all(mut io: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    io.read_to_end(&mut out)
        .await
        .expect("the fuzz stream never fails");
    out
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds");
}

/// Runs `f` to completion on this thread's runtime (timers need one).
pub fn block_on<F: Future>(f: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(f))
}

/// The current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
