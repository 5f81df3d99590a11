//! The demo's workloads and traffic: one line-echo service per workload (and
//! HTTP ones a scenario adds), and calls that go through the caller's
//! sidecar to the callee's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Serve `name`'s echo service: every line gets `<name> got: <line>` back.
pub async fn serve_echo(name: &'static str, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = format!("{name} got: {line}\n");
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Serve `name` over HTTP/1.1: every request gets 200 and
/// `<name> got: <method> <path>`.
pub async fn serve_http(name: &'static str, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = hyper::service::service_fn(
            move |req: hyper::Request<hyper::body::Incoming>| async move {
                let reply = format!("{name} got: {} {}", req.method(), req.uri().path());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                    reply,
                ))))
            },
        );
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

/// One kind of call the demo makes: from a caller, through its sidecar's
/// outbound listener for the callee.
#[derive(Debug, Clone)]
pub struct Call {
    pub from: String,
    pub to: String,
    pub from_id: String,
    pub to_id: String,
    /// The caller's outbound listener for this callee.
    pub via: SocketAddr,
    /// What is called when it is not the callee's echo service, as shown
    /// after `from -> to` (`GET /v1/orders/1042`, `port 21007`).
    pub what: String,
    /// `GET` this path over HTTP/1.1 instead of an echo line.
    pub http_path: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// The callee answered.
    Answered { reply: String, took: Duration },
    /// The mesh closed the connection before any answer: a denial.
    Refused { took: Duration },
    /// An HTTP answer other than 2xx, and the sidecar's
    /// `x-palisade-denied` reason if it gave one.
    Rejected {
        status: u16,
        reason: Option<String>,
        took: Duration,
    },
    /// Something else went wrong (the sidecar is not listening, a timeout).
    Failed(String),
}

impl Call {
    pub async fn run(&self) -> Outcome {
        if let Some(path) = &self.http_path {
            return self.get(path).await;
        }
        let start = Instant::now();
        let attempt = async {
            let mut s = TcpStream::connect(self.via).await?;
            s.write_all(format!("hello from {}\n", self.from).as_bytes())
                .await?;
            let mut reply = String::new();
            let n = BufReader::new(&mut s).read_line(&mut reply).await?;
            Ok::<_, std::io::Error>((n, reply))
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok((0, _))) => Outcome::Refused {
                took: start.elapsed(),
            },
            Ok(Ok((_, reply))) => Outcome::Answered {
                reply: reply.trim_end().to_owned(),
                took: start.elapsed(),
            },
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Refused {
                took: start.elapsed(),
            },
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(_) => Outcome::Failed("no answer within 3s".into()),
        }
    }
    async fn get(&self, path: &str) -> Outcome {
        let start = Instant::now();
        let attempt = async {
            let mut conn = Http1::connect(self.via).await?;
            conn.get(path).await
        };
        let took = || start.elapsed();
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok((status, reply))) if (200..300).contains(&status) => Outcome::Answered {
                reply: format!("{status} {reply}"),
                took: took(),
            },
            Ok(Ok((status, reason))) => Outcome::Rejected {
                status,
                reason: (!reason.is_empty()).then_some(reason),
                took: took(),
            },
            Ok(Err(HttpError::Closed)) => Outcome::Refused { took: took() },
            Ok(Err(HttpError::Other(e))) => Outcome::Failed(e),
            Err(_) => Outcome::Failed("no answer within 3s".into()),
        }
    }

    /// `GET` this call's path again and again on one kept-alive connection
    /// for `how_long`: the statuses answered, in order.
    pub async fn burst(&self, how_long: Duration) -> Result<Vec<u16>, String> {
        let path = self.http_path.as_deref().unwrap_or("/");
        let mut conn = Http1::connect(self.via).await.map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut statuses = Vec::new();
        while start.elapsed() < how_long {
            match tokio::time::timeout(Duration::from_secs(3), conn.get(path)).await {
                Ok(Ok((status, _))) => statuses.push(status),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no answer within 3s".into()),
            }
        }
        Ok(statuses)
    }
}

/// Why an HTTP call got no answer.
enum HttpError {
    /// The mesh closed the connection: a denial.
    Closed,
    Other(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Closed => f.write_str("connection closed by the mesh"),
            HttpError::Other(e) => f.write_str(e),
        }
    }
}

impl From<hyper::Error> for HttpError {
    fn from(e: hyper::Error) -> Self {
        if e.is_incomplete_message() || e.is_canceled() {
            return HttpError::Closed;
        }
        HttpError::Other(e.to_string())
    }
}

/// An HTTP/1.1 client connection through a caller's sidecar.
struct Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Http1 {
    async fn connect(via: SocketAddr) -> Result<Http1, HttpError> {
        let stream = TcpStream::connect(via)
            .await
            .map_err(|e| HttpError::Other(e.to_string()))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Http1(send))
    }

    /// The status and, for 2xx, the body; otherwise the `x-palisade-denied`
    /// reason (empty when there is none).
    async fn get(&mut self, path: &str) -> Result<(u16, String), HttpError> {
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "demo")
            .body(Empty::new())
            .map_err(|e| HttpError::Other(e.to_string()))?;
        // The previous answer must be read to its end before the next request.
        self.0.ready().await?;
        let resp = self.0.send_request(req).await?;
        let status = resp.status().as_u16();
        let reason = resp
            .headers()
            .get("x-palisade-denied")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.into_body().collect().await?.to_bytes();
        if (200..300).contains(&status) {
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        } else {
            Ok((status, reason))
        }
    }
}

/// Counts per call.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub answered: u64,
    pub refused: u64,
    pub failed: u64,
    pub last: Option<Outcome>,
}

pub struct Tally {
    pub per_call: Vec<Counts>,
}

impl Tally {
    pub fn new(calls: &[Call]) -> Tally {
        Tally {
            per_call: vec![Counts::default(); calls.len()],
        }
    }

    pub fn record(&mut self, i: usize, outcome: Outcome) {
        let c = &mut self.per_call[i];
        match &outcome {
            Outcome::Answered { .. } => c.answered += 1,
            Outcome::Refused { .. } | Outcome::Rejected { .. } => c.refused += 1,
            Outcome::Failed(_) => c.failed += 1,
        }
        c.last = Some(outcome);
    }
}
