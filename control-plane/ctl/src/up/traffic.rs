//! The demo's workloads and traffic: one line-echo service per workload, and
//! calls that go through the caller's sidecar to the callee's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// The callee answered.
    Answered { reply: String, took: Duration },
    /// The mesh closed the connection before any answer: a denial.
    Refused { took: Duration },
    /// Something else went wrong (the sidecar is not listening, a timeout).
    Failed(String),
}

impl Call {
    pub async fn run(&self) -> Outcome {
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
            Outcome::Refused { .. } => c.refused += 1,
            Outcome::Failed(_) => c.failed += 1,
        }
        c.last = Some(outcome);
    }
}
