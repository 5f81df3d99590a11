//! L7: HTTP/1.1 and HTTP/2 proxying. After protocol detection a connection
//! is served by hyper; each request is authorized against the policy in
//! force, counted, logged, rewritten (hop-by-hop headers, XFCC) and sent
//! upstream over pooled connections with its body streamed.

pub mod access_log;
pub mod body;
pub mod client;
pub mod denied;
pub mod detect;
pub mod h1_guard;
mod h1_head;
pub mod h2_frames;
pub mod headers;
pub mod inbound;
pub mod normalize;
pub mod outbound;
pub mod server;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use palisade_policy::{Decision, Direction, HttpInfo, SpiffeId};

use self::access_log::{AccessLog, Entry};
use self::body::{PendingLog, RespBody};
use self::detect::Detected;
use crate::config::{AccessLogConfig, HttpConfig, Protocol};
use crate::events::HttpFlow;
use crate::metrics::http::PeerHttp;
use crate::metrics::{direction_label, Metrics};
use crate::{authz, baseline, Runtime};
use palisade_policy::baseline::{Action, BaselineMode};

/// HTTP state shared by every connection.
#[derive(Default)]
pub struct Http {
    pub settings: HttpConfig,
    pub access_log: Option<Arc<AccessLog>>,
    pub apps: client::AppClients,
    pub peers: client::PeerPool,
}

impl Http {
    pub fn new(
        settings: HttpConfig,
        log: &AccessLogConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Http> {
        Ok(Http {
            settings,
            access_log: AccessLog::start(log, metrics)?.map(Arc::new),
            ..Http::default()
        })
    }
}

/// One proxied HTTP connection, shared by its requests.
pub struct Conn {
    pub rt: Arc<Runtime>,
    pub direction: Direction,
    /// Inbound: the caller (`None` for plaintext). Outbound: the destination.
    pub peer: Option<SpiffeId>,
    /// The peer as logged: its SPIFFE ID, or the caller's address.
    pub peer_name: Arc<str>,
    /// This workload's own SPIFFE ID.
    pub own_name: Arc<str>,
    /// The caller's address.
    pub client: SocketAddr,
    /// Inbound: the local app. Outbound: the destination sidecar.
    pub upstream: SocketAddr,
    /// Inbound: the app port. Outbound: the destination port.
    pub port: u16,
    /// The port's configured protocol (inbound: what the app speaks).
    pub protocol: Protocol,
    pub detected: Detected,
    /// Inbound: the XFCC value every request to the app carries.
    pub xfcc: Option<HeaderValue>,
    pub metrics: Arc<PeerHttp>,
    pub guard: Arc<h1_guard::GuardFlags>,
    /// Inbound: GET and the other methods without body semantics may carry
    /// a body to the app (the port's `allow_get_body`).
    pub allow_get_body: bool,
}

impl h1_guard::Report for Conn {
    fn violation(&self, reason: &'static str) {
        self.rt.metrics.http.violation(self.direction, reason);
    }
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rt: Arc<Runtime>,
        direction: Direction,
        peer: Option<SpiffeId>,
        client: SocketAddr,
        upstream: SocketAddr,
        port: u16,
        protocol: Protocol,
        detected: Detected,
    ) -> Conn {
        let own_name: Arc<str> = rt
            .creds
            .load()
            .as_ref()
            .map_or("", |c| c.svid.id.as_str())
            .into();
        let metrics = rt
            .metrics
            .http
            .peer(direction, authz::peer_label(peer.as_ref()));
        let peer_name: Arc<str> = match &peer {
            Some(p) => p.as_str().into(),
            None => client.ip().to_string().into(),
        };
        let xfcc = match (direction, &peer) {
            (Direction::Ingress, Some(p)) => headers::xfcc_value(&own_name, p.as_str()),
            _ => None,
        };
        Conn {
            rt,
            direction,
            peer,
            peer_name,
            own_name,
            client,
            upstream,
            port,
            protocol,
            detected,
            xfcc,
            metrics,
            guard: Default::default(),
            allow_get_body: false,
        }
    }

    /// The metrics label for the peer.
    pub fn peer_label(&self) -> &str {
        self.metrics.peer()
    }

    /// The start of every request: counted, normalized in place (what is
    /// authorized is what is forwarded), authorized against the policy in
    /// force, maybe logged. `Err` is the finished answer to a request that
    /// goes no further (ambiguous, denied, or CONNECT).
    pub fn begin<B>(&self, req: &mut Request<B>) -> Result<Started, Box<Response<RespBody>>> {
        let start = Instant::now();
        self.metrics.requests.inc();
        if let Err(why) = normalize::apply(req, &self.rt.http.settings.normalization) {
            tracing::info!(
                direction = direction_label(self.direction),
                client.addr = %self.client,
                peer = %self.peer_name,
                reason = why.reason(),
                "HTTP request rejected before authorization: {why}"
            );
            let r = self.refuse(StatusCode::BAD_REQUEST, why.reason(), why.text());
            return Err(Box::new(self.finish(r, start, None)));
        }
        let decision = self.authorize(req);
        let (log, request_bytes) = self.log_start(req, &decision);
        let upgrade = headers::wants_upgrade(req.headers(), req.version());
        if !decision.is_allowed() {
            let mut r = denied::response(req, &decision);
            if upgrade {
                upgrade::close_after(&mut r);
            }
            return Err(Box::new(self.finish(r, start, log)));
        }
        if req.method() == http::Method::CONNECT {
            let mut r = self.local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied\n");
            upgrade::close_after(&mut r);
            return Err(Box::new(self.finish(r, start, log)));
        }
        if let Some(r) = self.baseline(req) {
            return Err(Box::new(self.finish(r, start, log)));
        }
        Ok(Started {
            start,
            log,
            request_bytes,
            upgrade,
        })
    }

    /// Decide one request against the policy in force now (one atomic load),
    /// and count the decision. The peer is the caller inbound and the
    /// destination outbound.
    fn authorize<B>(&self, req: &Request<B>) -> Decision {
        let (method, path, host) = (req.method().as_str(), req.uri().path(), authority(req));
        let addr = match self.direction {
            Direction::Ingress => self.client,
            Direction::Egress => self.upstream,
        };
        let http = HttpInfo { method, path, host };
        let d = authz::http_request(
            &self.rt,
            self.direction,
            self.peer.as_ref(),
            addr,
            self.port,
            http,
        );
        self.rt
            .metrics
            .http
            .decisions(self.direction)
            .count(&d, self.peer_label());
        if !d.is_allowed() {
            tracing::info!(
                direction = direction_label(self.direction),
                client.addr = %self.client,
                peer = %self.peer_name,
                method,
                path,
                authz.policy = %d.label(),
                "HTTP request denied"
            );
            let status = denied::status(req).as_u16();
            let (peer_addr, local_addr) = match self.direction {
                Direction::Ingress => (self.client, self.upstream),
                Direction::Egress => (self.upstream, self.client),
            };
            let flow = HttpFlow { method, path };
            authz::report_denial(
                &self.rt,
                self.direction,
                &d,
                self.peer.as_ref(),
                peer_addr,
                local_addr,
                authz::Denied::Request(flow, status),
            );
        }
        d
    }

    /// The learned baseline's check of an allowed request: `Some` is the
    /// answer when protect mode blocks (403) or throttles (429) it.
    fn baseline<B>(&self, req: &Request<B>) -> Option<Response<RespBody>> {
        if self.rt.baseline.mode() == BaselineMode::Off {
            return None;
        }
        let (peer_addr, local_addr) = match self.direction {
            Direction::Ingress => (self.client, self.upstream),
            Direction::Egress => (self.upstream, self.client),
        };
        let http = HttpInfo {
            method: req.method().as_str(),
            path: req.uri().path(),
            host: authority(req),
        };
        let o = baseline::Observed {
            direction: self.direction,
            peer: self.peer.as_ref(),
            peer_addr,
            local_addr,
            port: self.port,
            protocol: palisade_policy::baseline::Protocol::Http,
            http: Some(http),
        };
        match baseline::observe(&self.rt, &o) {
            Action::Pass => None,
            Action::Block => Some(denied::baseline_blocked()),
            Action::Throttle { retry_after_ms } => Some(denied::baseline_throttled(retry_after_ms)),
        }
    }

    /// Start a log line if the access log is on and samples this request.
    pub fn log_start<B>(
        &self,
        req: &Request<B>,
        decision: &Decision,
    ) -> (Option<Box<PendingLog>>, Option<Arc<AtomicU64>>) {
        let Some(log) = self.rt.http.access_log.as_ref().filter(|l| l.sampled()) else {
            return (None, None);
        };
        let (source, destination) = match self.direction {
            Direction::Ingress => (self.peer_name.clone(), self.own_name.clone()),
            Direction::Egress => (self.own_name.clone(), self.peer_name.clone()),
        };
        let request_bytes = Arc::new(AtomicU64::new(0));
        let entry = Entry {
            time: access_log::now_rfc3339(),
            direction: direction_label(self.direction),
            source,
            destination,
            protocol: protocol_of(req.version()),
            method: req.method().as_str().to_owned(),
            authority: authority(req).unwrap_or_default().to_owned(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            status: 0,
            request_bytes: 0,
            response_bytes: 0,
            duration_us: 0,
            decision: decision_name(decision),
            policy: decision.label(),
        };
        let pending = PendingLog {
            entry,
            start: Instant::now(),
            request_bytes: request_bytes.clone(),
            log: log.clone(),
        };
        (Some(Box::new(pending)), Some(request_bytes))
    }

    /// Count the response, observe latency, attach the log line.
    pub fn finish(
        &self,
        mut resp: Response<RespBody>,
        start: Instant,
        log: Option<Box<PendingLog>>,
    ) -> Response<RespBody> {
        let status = resp.status();
        let grpc_failed = resp
            .headers()
            .get("grpc-status")
            .is_some_and(|v| v.as_bytes() != b"0");
        self.metrics
            .response(status.as_u16(), status.is_server_error() || grpc_failed);
        self.metrics
            .latency_ms
            .observe(start.elapsed().as_secs_f64() * 1000.0);
        let log = log.map(|mut l| {
            l.entry.status = status.as_u16();
            l
        });
        let body = std::mem::replace(resp.body_mut(), RespBody::empty());
        *resp.body_mut() = body.with_log(log);
        resp
    }

    /// The answer to a request that broke a limit: the violation counted
    /// under `reason`, and a response of the proxy's own.
    pub fn refuse(
        &self,
        status: StatusCode,
        reason: &'static str,
        text: &'static str,
    ) -> Response<RespBody> {
        h1_guard::Report::violation(self, reason);
        self.local(status, text)
    }

    /// A response of the proxy's own (502, 504, ...).
    pub fn local(&self, status: StatusCode, text: &'static str) -> Response<RespBody> {
        let mut r = Response::new(RespBody::local(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

/// A request that may go upstream.
pub struct Started {
    pub start: Instant,
    pub log: Option<Box<PendingLog>>,
    /// Counts the request body when the request is logged.
    pub request_bytes: Option<Arc<AtomicU64>>,
    /// An HTTP/1.1 upgrade (WebSocket) is asked for.
    pub upgrade: bool,
}

/// The request's authority: the URI's (HTTP/2, absolute form) or `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
}

fn protocol_of(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "other",
    }
}

fn decision_name(d: &Decision) -> &'static str {
    match (d.is_allowed(), d.would_deny) {
        (false, _) => "deny",
        (true, true) => "would_deny",
        (true, false) => "allow",
    }
}
