//! One persistent HTTP/1.1 or HTTP/2 (prior knowledge) client connection that
//! POSTs a fixed body and checks the echo, shared by the open-loop and the
//! max-throughput load loops and the sweep.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;

/// Path every load request targets; the palisade policy allows exactly this.
pub const ECHO_PATH: &str = "/echo";
/// Authority sent in `Host`, so proxies can route on it.
pub const ECHO_HOST: &str = "echo.bench";

/// The HTTP version the load client speaks to a path's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientHttp {
    /// HTTP/1.1 keep-alive: one request in flight per connection.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c): many streams per connection.
    Http2,
}

impl ClientHttp {
    pub fn name(self) -> &'static str {
        match self {
            ClientHttp::Http1 => "http1",
            ClientHttp::Http2 => "http2",
        }
    }
}

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

    fn build(&self, http: ClientHttp) -> Request<Full<Bytes>> {
        request(http, Method::POST)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, self.body.len())
            .body(Full::new(self.body.clone()))
            .expect("static request parts are valid")
    }
}

/// `<method> /echo` to `echo.bench`: in origin form with `Host` over HTTP/1.1,
/// as the `:authority` of an absolute URI over HTTP/2.
fn request(http: ClientHttp, method: Method) -> hyper::http::request::Builder {
    let builder = Request::builder().method(method);
    match http {
        ClientHttp::Http1 => builder.uri(ECHO_PATH).header(header::HOST, ECHO_HOST),
        ClientHttp::Http2 => builder.uri(format!("http://{ECHO_HOST}{ECHO_PATH}")),
    }
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// A keep-alive connection, or one stream's share of an HTTP/2 connection;
/// one request in flight at a time.
pub struct HttpConn {
    sender: Sender,
}

impl HttpConn {
    pub async fn connect(target: SocketAddr, http: ClientHttp) -> anyhow::Result<HttpConn> {
        let tcp = TcpStream::connect(target)
            .await
            .with_context(|| format!("connect {target}"))?;
        // Small requests must not wait for Nagle's timer.
        tcp.set_nodelay(true)?;
        let io = TokioIo::new(tcp);
        // Each connection's error surfaces again on the next send, where it is counted.
        let sender = match http {
            ClientHttp::Http1 => {
                let (sender, conn) = http1::handshake(io).await?;
                tokio::spawn(async move { drop(conn.await) });
                Sender::Http1(sender)
            }
            ClientHttp::Http2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(async move { drop(conn.await) });
                Sender::Http2(sender)
            }
        };
        Ok(HttpConn { sender })
    }

    /// Another stream on the same HTTP/2 connection; `None` for HTTP/1.1.
    fn stream(&self) -> Option<HttpConn> {
        match &self.sender {
            Sender::Http1(_) => None,
            Sender::Http2(s) => Some(HttpConn {
                sender: Sender::Http2(s.clone()),
            }),
        }
    }

    fn http(&self) -> ClientHttp {
        match self.sender {
            Sender::Http1(_) => ClientHttp::Http1,
            Sender::Http2(_) => ClientHttp::Http2,
        }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
            Sender::Http2(s) => {
                s.ready().await?;
                s.send_request(request).await
            }
        }
    }

    /// Send one request and read the whole echo; any deviation is an error.
    pub async fn exchange(&mut self, template: &RequestTemplate) -> anyhow::Result<()> {
        let request = template.build(self.http());
        let response = self.send(request).await?;
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

/// `lanes` request slots, each with one request in flight at a time: over
/// HTTP/1.1 a connection each, over HTTP/2 streams spread over at most
/// `h2_connections` connections.
pub async fn connect_lanes(
    target: SocketAddr,
    http: ClientHttp,
    lanes: usize,
    h2_connections: usize,
) -> anyhow::Result<Vec<HttpConn>> {
    let lanes = lanes.max(1);
    let connections = match http {
        ClientHttp::Http1 => lanes,
        ClientHttp::Http2 => h2_connections.clamp(1, lanes),
    };
    let mut out = Vec::with_capacity(lanes);
    for _ in 0..connections {
        out.push(HttpConn::connect(target, http).await?);
    }
    for i in connections..lanes {
        let stream = out[i % connections].stream().expect("only HTTP/2 shares");
        out.push(stream);
    }
    Ok(out)
}

/// An [`HttpConn`] that is dropped after a failure and re-established by the
/// next request, so one broken connection costs errors, not the whole run.
/// An HTTP/2 lane reconnects on a connection of its own.
pub struct Reconnecting {
    target: SocketAddr,
    http: ClientHttp,
    conn: Option<HttpConn>,
}

impl Reconnecting {
    pub fn new(target: SocketAddr, conn: HttpConn) -> Reconnecting {
        Reconnecting {
            target,
            http: conn.http(),
            conn: Some(conn),
        }
    }

    /// One exchange; returns when the request was sent (after any reconnect).
    pub async fn exchange(&mut self, template: &RequestTemplate) -> anyhow::Result<Instant> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self
                .conn
                .insert(HttpConn::connect(self.target, self.http).await?),
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
pub async fn expect_denied(target: SocketAddr, http: ClientHttp) -> anyhow::Result<()> {
    let check = async {
        let mut conn = HttpConn::connect(target, http).await?;
        let request = request(http, Method::GET).body(Full::new(Bytes::new()))?;
        let status = conn.send(request).await?.status();
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
pub async fn probe(target: SocketAddr, http: ClientHttp, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let template = RequestTemplate::new(16);
    loop {
        let attempt = async {
            let mut conn = HttpConn::connect(target, http).await?;
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
