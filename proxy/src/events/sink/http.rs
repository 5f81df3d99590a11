//! The HTTP sinks: batches of events POSTed to a collector (a SIEM's HTTP
//! input, or any endpoint that takes a JSON array or NDJSON), or to the
//! control plane's collector over mTLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use super::{next_backoff, split, Msg, Record, SinkMetrics};
use crate::events::{ControlPlaneLink, EventsError, HttpFormat};

/// Attempts per batch before its events are dropped.
const ATTEMPTS: u32 = 3;

/// Where batches go.
pub(crate) enum Collector {
    Url(Uri),
    ControlPlane(ControlPlaneLink),
}

impl Collector {
    pub fn url(url: &str) -> Result<Collector, EventsError> {
        let bad = |reason: &str| EventsError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => return Err(bad(&format!("scheme {s} is not supported; use http://"))),
            None => return Err(bad("needs http://host:port/path")),
        }
        if uri.authority().is_none() {
            return Err(bad("needs a host"));
        }
        Ok(Collector::Url(uri))
    }
}

pub(crate) struct HttpSink {
    collector: Collector,
    format: HttpFormat,
    batch: usize,
    flush_interval: Duration,
    timeout: Duration,
}

impl HttpSink {
    pub fn new(
        collector: Collector,
        format: HttpFormat,
        batch: usize,
        flush_interval: Duration,
        timeout: Duration,
    ) -> Result<HttpSink, EventsError> {
        if batch == 0 {
            return Err(EventsError::EmptyBatch);
        }
        Ok(HttpSink {
            collector,
            format,
            batch,
            flush_interval,
            timeout,
        })
    }

    pub fn label(&self) -> &'static str {
        match self.collector {
            Collector::Url(_) => "http",
            Collector::ControlPlane(_) => "control_plane",
        }
    }

    pub async fn run(self, mut rx: mpsc::Receiver<Msg>, m: SinkMetrics) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut msgs = Vec::with_capacity(self.batch);
        let mut events: Vec<Arc<Record>> = Vec::with_capacity(self.batch);
        let mut acks = Vec::new();
        let mut open = true;
        while open {
            if rx.recv_many(&mut msgs, self.batch).await == 0 {
                break;
            }
            split(&mut msgs, &mut events, &mut acks);
            // Fill the batch until it is full, flushed, or old enough.
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while events.len() < self.batch && acks.is_empty() {
                let room = self.batch - events.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut msgs, room)).await {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(_) => split(&mut msgs, &mut events, &mut acks),
                    Err(_) => break,
                }
            }
            for chunk in events.chunks(self.batch) {
                self.deliver(&client, chunk, &m).await;
            }
            events.clear();
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
    }

    fn body(&self, chunk: &[Arc<Record>]) -> (Bytes, &'static str) {
        let mut body =
            Vec::with_capacity(chunk.iter().map(|r| r.json.len() + 1).sum::<usize>() + 2);
        match self.format {
            HttpFormat::Json => {
                body.push(b'[');
                for (i, r) in chunk.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(r.json.as_bytes());
                }
                body.push(b']');
                (body.into(), "application/json")
            }
            HttpFormat::Ndjson => {
                for r in chunk {
                    body.extend_from_slice(r.json.as_bytes());
                    body.push(b'\n');
                }
                (body.into(), "application/x-ndjson")
            }
        }
    }

    async fn deliver(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        chunk: &[Arc<Record>],
        m: &SinkMetrics,
    ) {
        let (body, content_type) = self.body(chunk);
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let outcome = self.post(client, body.clone(), content_type).await;
            match outcome {
                Ok(()) => {
                    m.sent.inc_by(chunk.len() as u64);
                    return;
                }
                Err(e) => {
                    m.errors.inc();
                    tracing::warn!(sink = self.label(), attempt, error = %e, events = chunk.len(), "cannot deliver security events");
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait = next_backoff(wait, Duration::from_secs(5));
            }
        }
        m.dropped.inc_by(chunk.len() as u64);
    }

    /// One POST of one batch, within the sink's timeout.
    async fn post(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(), String> {
        tokio::time::timeout(self.timeout, self.exchange(client, body, content_type))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    async fn exchange(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(), String> {
        let uri = match &self.collector {
            Collector::Url(uri) => uri,
            Collector::ControlPlane(link) => {
                let creds = link
                    .creds
                    .load_full()
                    .ok_or("no SVID yet to authenticate with")?;
                return link
                    .cp
                    .post_events(&creds, body.to_vec())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .expect("validated URL and static headers");
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    }
}
