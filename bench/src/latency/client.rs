//! One persistent HTTP/1.1 client connection that POSTs a fixed body and checks
//! the echo, shared by the open-loop and the max-throughput load loops.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Path every load request targets; the palisade policy allows exactly this.
pub const ECHO_PATH: &str = "/echo";
/// Authority sent in `Host`, so proxies can route on it.
pub const ECHO_HOST: &str = "echo.bench";

/// What each request carries: a body of a fixed size, built once and cloned cheaply.
#[derive(Clone)]
pub struct RequestTemplate {
    body: Bytes,
}

impl RequestTemplate {
    pub fn new(body_bytes: usize) -> RequestTemplate {
        RequestTemplate {
            body: Bytes::from(vec![b'p'; body_bytes]),
        }
    }

    fn build(&self) -> Request<Full<Bytes>> {
        Request::builder()
            .method(Method::POST)
            .uri(ECHO_PATH)
            .header(header::HOST, ECHO_HOST)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, self.body.len())
            .body(Full::new(self.body.clone()))
            .expect("static request parts are valid")
    }
}

/// A keep-alive HTTP/1.1 connection; one request in flight at a time.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
}

impl HttpConn {
    pub async fn connect(target: SocketAddr) -> anyhow::Result<HttpConn> {
        let tcp = TcpStream::connect(target)
            .await
            .with_context(|| format!("connect {target}"))?;
        // Small requests must not wait for Nagle's timer.
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            // The error surfaces again on the next send, where it is counted.
            let _ = conn.await;
        });
        Ok(HttpConn { sender })
    }

    /// Send one request and read the whole echo; any deviation is an error.
    pub async fn exchange(&mut self, template: &RequestTemplate) -> anyhow::Result<()> {
        self.sender.ready().await?;
        let response = self.sender.send_request(template.build()).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!(
                "status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
        if body.len() != template.body.len() {
            return Err(anyhow!(
                "echo had {} bytes, sent {}",
                body.len(),
                template.body.len()
            ));
        }
        Ok(())
    }
}

/// An [`HttpConn`] that is dropped after a failure and re-established by the
/// next request, so one broken connection costs errors, not the whole run.
pub struct Reconnecting {
    target: SocketAddr,
    conn: Option<HttpConn>,
}

impl Reconnecting {
    pub fn new(target: SocketAddr, conn: HttpConn) -> Reconnecting {
        Reconnecting {
            target,
            conn: Some(conn),
        }
    }

    /// One exchange; returns when the request was sent (after any reconnect).
    pub async fn exchange(&mut self, template: &RequestTemplate) -> anyhow::Result<Instant> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(HttpConn::connect(self.target).await?),
        };
        let sent = Instant::now();
        let result = conn.exchange(template).await;
        if result.is_err() {
            self.conn = None;
        }
        result.map(|()| sent)
    }

    /// Drop the connection: an exchange was abandoned half-way (timed out).
    pub fn reset(&mut self) {
        self.conn = None;
    }
}

/// Check that the path enforces its HTTP rule: a `GET` (only `POST /echo` is
/// allowed) must be answered 403 by the proxy, never reach the echo server.
pub async fn expect_denied(target: SocketAddr) -> anyhow::Result<()> {
    let check = async {
        let mut conn = HttpConn::connect(target).await?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(ECHO_PATH)
            .header(header::HOST, ECHO_HOST)
            .body(Full::new(Bytes::new()))?;
        conn.sender.ready().await?;
        let status = conn.sender.send_request(request).await?.status();
        if status != StatusCode::FORBIDDEN {
            bail!("GET {ECHO_PATH} got {status}, expected 403: the HTTP rule is not enforced");
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .map_err(|_| anyhow!("no answer to the policy check within 10s"))?
}

/// Send one request on a fresh connection, retrying until `timeout`; used to
/// wait until a freshly started path answers end to end.
pub async fn probe(target: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let template = RequestTemplate::new(16);
    loop {
        let attempt = async {
            let mut conn = HttpConn::connect(target).await?;
            conn.exchange(&template).await
        };
        let last = match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("no answer within 2s"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last.context(format!("{target} never answered within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
