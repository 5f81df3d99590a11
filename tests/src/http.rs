//! HTTP parts for end-to-end tests: a small app that speaks HTTP/1.1 and
//! HTTP/2 (it answers with what it received, serves `/v1/large/<n>` as n MiB,
//! serves one gRPC method with trailers, and echoes WebSocket messages), clients for HTTP/1.1, HTTP/2 and
//! gRPC, raw-byte exchanges for attacks, and a mesh of two proxies with a
//! policy file on the server side, in front of that app or another
//! (`MeshApp`, e.g. `lenient::LenientApp`).

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::cp::ControlPlane;
use crate::lenient::LenientApp;
use crate::policy::{policy_doc, spec, use_policy};
use crate::proxy::{Proxy, ProxySpec, CLIENT_ID, SERVER_ID};
use crate::route::Io;
use palisadectl::local::Protocol;

type AppBody = BoxBody<Bytes, Infallible>;

/// The app behind the server-side proxy. Every request's path is recorded,
/// so a test can tell whether something reached it.
pub struct HttpApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

impl HttpApp {
    pub fn start() -> HttpApp {
        HttpApp::bind("127.0.0.1:0")
    }

    pub fn bind(addr: &str) -> HttpApp {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (addr, rt) = serve_app(addr, move |tcp| {
            let seen = s.clone();
            async move {
                let svc = service_fn(move |req| app(seen.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            }
        });
        HttpApp {
            addr,
            seen,
            _rt: rt,
        }
    }

    /// Paths the app has received, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A test app on `addr`: its own one-thread runtime, which stops it when
/// dropped, and `serve` on a task of its own for each connection.
pub fn serve_app<F, Fut>(addr: &str, serve: F) -> (SocketAddr, tokio::runtime::Runtime)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = std::net::TcpListener::bind(addr).expect("bind the test app");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    (addr, rt)
}

fn full(b: impl Into<Bytes>) -> AppBody {
    Full::new(b.into()).boxed()
}

async fn app(
    seen: Arc<Mutex<Vec<String>>>,
    mut req: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    seen.lock().unwrap().push(req.uri().path().to_owned());
    if let Some(mib) = req.uri().path().strip_prefix("/v1/large/") {
        return Ok(Response::new(large(mib.parse().unwrap_or(1))));
    }
    let is_grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket")
    {
        let key = req.headers().get("sec-websocket-key").cloned();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() || ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = derive_accept_key(key.as_ref().map_or(&b""[..], |k| k.as_bytes()));
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        r.headers_mut()
            .insert("sec-websocket-accept", accept.parse().unwrap());
        return Ok(r);
    }
    let head = format!(
        "method={} path={} version={:?} xfcc={}\n",
        req.method(),
        req.uri().path(),
        req.version(),
        req.headers()
            .get_all("x-forwarded-client-cert")
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if is_grpc {
        // Echo the message back; status in the trailers, as gRPC does.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(body)),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))));
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        return Ok(r);
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    Ok(Response::new(full(out)))
}

/// `mib` MiB of `x`, streamed from one shared chunk (so many at once cost
/// the app nothing).
fn large(mib: usize) -> AppBody {
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    let chunks =
        (0..mib * 16).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK))));
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)))
}

/// What a client got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

/// A kept-alive client connection, HTTP/1.1 or HTTP/2 (prior knowledge).
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    pub async fn http1(addr: SocketAddr) -> Client {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Client::http1_on(tcp).await
    }

    pub async fn http2(addr: SocketAddr) -> Client {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Client::http2_on(tcp).await
    }

    /// HTTP/2 (prior knowledge) if `h2`, else HTTP/1.1.
    pub async fn connect(addr: SocketAddr, h2: bool) -> Client {
        match h2 {
            false => Client::http1(addr).await,
            true => Client::http2(addr).await,
        }
    }

    /// HTTP/1.1 on a stream already open (e.g. one of `route::Routes`).
    pub async fn http1_on(io: impl Io + 'static) -> Client {
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn.with_upgrades());
        Client::H1(s)
    }

    /// HTTP/2 (prior knowledge) on a stream already open.
    pub async fn http2_on(io: impl Io + 'static) -> Client {
        let (s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        Client::H2(s)
    }

    /// Send one request; `headers` are added to it.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, hyper::Error> {
        let mut b = Request::builder().method(method);
        b = match self {
            Client::H1(_) => b.uri(path).header("host", "server.demo"),
            Client::H2(_) => b.uri(format!("http://server.demo{path}")),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.request(b.body(Full::new(body.into())).unwrap()).await
    }

    /// Send `req` as it is.
    pub async fn request(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        let resp = match self {
            Client::H1(s) => s.send_request(req).await?,
            Client::H2(s) => s.send_request(req).await?,
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            trailers,
        })
    }

    /// One unary gRPC call (`/demo.Echo/<method>`) with `message` as the
    /// length-prefixed payload.
    pub async fn grpc(&mut self, method: &str, message: &[u8]) -> Result<Answer, hyper::Error> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        let path = format!("/demo.Echo/{method}");
        self.send(
            "POST",
            &path,
            &[("content-type", "application/grpc"), ("te", "trailers")],
            framed,
        )
        .await
    }
}

/// The grpc-status of an answer: from the trailers, or the headers of a
/// trailers-only response.
pub fn grpc_status(a: &Answer) -> Option<String> {
    a.trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| a.headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Write `bytes` on a fresh connection, then read until the peer closes or
/// nothing arrives for `quiet`. Returns what came back.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(quiet)).unwrap();
    let _ = s.write_all(bytes);
    read_until_quiet(&mut s)
}

/// Read until EOF, an error, or a read timeout.
pub fn read_until_quiet(s: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of the first HTTP/1 response in `raw`.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// An app a mesh can front: where it listens, and what B's inbound port
/// for it says it speaks.
pub trait MeshApp {
    fn addr(&self) -> SocketAddr;
    /// What B's inbound listener for it carries.
    fn protocol(&self) -> Protocol;
}

impl MeshApp for HttpApp {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn protocol(&self) -> Protocol {
        Protocol::Detect
    }
}

/// It speaks HTTP/1.1 only, so B must never send it HTTP/2.
impl MeshApp for LenientApp {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }
}

/// client → proxy A (outbound route, HTTP detected) → HTTP/2 over mTLS →
/// proxy B (inbound, policy from `policy` file) → the app (`HttpApp`, or
/// any `MeshApp` such as `LenientApp` through `with_app`).
pub struct HttpMesh<A = HttpApp> {
    pub cp: ControlPlane,
    pub app: A,
    pub a: Proxy,
    pub b: Proxy,
    /// Where the client app connects (A's outbound route, plaintext).
    pub a_out: SocketAddr,
    /// B's inbound listener (mTLS only).
    pub b_in: SocketAddr,
    pub policy: PathBuf,
    _dir: tempfile::TempDir,
}

/// Ingress for the server: `client` may `GET` under `/v1/*` and call the
/// gRPC method `Allowed`; the WebSocket path `/ws` is open to it too.
pub fn default_ingress() -> String {
    format!(
        "  ingress:\n    - name: client-reads\n      action: allow\n      from: [{{identity: {CLIENT_ID}}}]\n      \
         http:\n        - {{methods: [GET], paths: [\"/v1/*\", \"/ws\"]}}\n        \
         - {{methods: [POST], paths: [\"/demo.Echo/Allowed\"]}}\n"
    )
}

impl HttpMesh {
    /// Start with `ingress` as the server's policy body; `tweak_a` and
    /// `tweak_b` may add settings (extra YAML) before the proxies start.
    pub fn start(
        ingress: &str,
        tweak_a: impl FnOnce(&mut ProxySpec),
        tweak_b: impl FnOnce(&mut ProxySpec),
    ) -> HttpMesh {
        HttpMesh::with_app(HttpApp::start(), ingress, tweak_a, tweak_b)
    }
}

impl<A: MeshApp> HttpMesh<A> {
    /// `start`, in front of `app`.
    pub fn with_app(
        app: A,
        ingress: &str,
        tweak_a: impl FnOnce(&mut ProxySpec),
        tweak_b: impl FnOnce(&mut ProxySpec),
    ) -> HttpMesh<A> {
        let cp = ControlPlane::start();
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("server.yaml");
        std::fs::write(&policy, policy_doc("server", SERVER_ID, ingress)).unwrap();
        let mut b = spec(&cp, "proxy-b", SERVER_ID);
        let b_in = b.inbound(app.addr(), false);
        b.inbound.last_mut().expect("just added").protocol = app.protocol();
        use_policy(&mut b, &policy, "  debounce: 10ms\n");
        tweak_b(&mut b);
        let mut a = spec(&cp, "proxy-a", CLIENT_ID);
        let a_out = a.route(b_in, SERVER_ID);
        tweak_a(&mut a);
        let b = Proxy::start_ready(b);
        let a = Proxy::start_ready(a);
        HttpMesh {
            cp,
            app,
            a,
            b,
            a_out,
            b_in,
            policy,
            _dir: dir,
        }
    }

    /// Replace the server's policy body and wait until B has swapped it in.
    pub fn set_ingress(&self, ingress: &str) {
        self.set_policy(&policy_doc("server", SERVER_ID, ingress));
    }

    /// Replace the server's policy file with `text` and wait until B has
    /// swapped it in.
    pub fn set_policy(&self, text: &str) {
        let before = self.b.metric("policy_reloads_total", &[]);
        crate::policy::write_atomic(&self.policy, text);
        crate::eventually(
            "the new policy is in force",
            Duration::from_secs(10),
            || (self.b.metric("policy_reloads_total", &[]) > before).then_some(()),
        );
    }
}

/// A current-thread runtime for a test's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
