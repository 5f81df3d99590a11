//! The servers at the far end of every path: an echo server for the request
//! load (HTTP/1.1, or HTTP/2 with prior knowledge for the direct path's h2
//! client), and a TCP sink for bulk transfers and connection churn. They run
//! on their own thread and runtime so they never compete with the load loop's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A deliberate pause: the `nth` request (1-based) is answered only after `pause`,
/// which also holds up whatever is queued behind it on that connection.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub nth: u64,
    pub pause: Duration,
}

/// Both backends, alive until dropped.
pub struct Backends {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backends {
    pub fn start() -> anyhow::Result<Backends> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-backends".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => return drop(ready_tx.send(Err(anyhow::Error::from(e)))),
                };
                rt.block_on(async move {
                    let bound = async {
                        let http = TcpListener::bind("127.0.0.1:0").await?;
                        let tcp = TcpListener::bind("127.0.0.1:0").await?;
                        anyhow::Ok((http, tcp))
                    };
                    let (http, tcp) = match bound.await {
                        Ok(pair) => pair,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                    let addrs = (http.local_addr(), tcp.local_addr());
                    let _ = ready_tx.send(Ok(addrs));
                    tokio::select! {
                        _ = serve_echo(http, None) => {}
                        _ = serve_sink(tcp) => {}
                        _ = stop_rx => {}
                    }
                });
            })?;
        let (http, tcp) = ready_rx.recv().context("backend thread died")??;
        Ok(Backends {
            http: http?,
            tcp: tcp?,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answer every POST with its own body; runs until the listener fails.
pub async fn serve_echo(listener: TcpListener, stall: Option<Stall>) -> anyhow::Result<()> {
    let served = Arc::new(AtomicU64::new(0));
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let served = served.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| echo(req, stall, served.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn echo(
    req: Request<Incoming>,
    stall: Option<Stall>,
    served: Arc<AtomicU64>,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
    let body = req.into_body().collect().await?.to_bytes();
    if let Some(stall) = stall.filter(|s| s.nth == n) {
        tokio::time::sleep(stall.pause).await;
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .body(Full::new(body))?)
}

/// Read each connection to EOF, then answer with the byte count (u64, big
/// endian) and close. Bulk transfers and connection churn both use this.
pub async fn serve_sink(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = sink(tcp).await;
        });
    }
}

async fn sink(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    tcp.write_all(&total.to_be_bytes()).await?;
    tcp.shutdown().await
}
