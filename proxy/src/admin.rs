//! Admin HTTP server: liveness, readiness, Prometheus metrics, a JSON config
//! dump and a localhost-only shutdown. It keeps serving during drain so that
//! readiness can be seen going false.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use palisade_identity::duration;

use crate::config::{Config, Interception};
use crate::outbound::EndpointMap;
use crate::Runtime;

pub struct Admin {
    pub rt: Arc<Runtime>,
    /// The parts of /config_dump that never change.
    pub fixed: serde_json::Value,
    /// Transparent mode's endpoint map, for its version.
    pub endpoints: Option<Arc<ArcSwap<EndpointMap>>>,
}

impl Admin {
    pub fn new(
        rt: Arc<Runtime>,
        cfg: &Config,
        listeners: &[(String, SocketAddr)],
        endpoints: Option<Arc<ArcSwap<EndpointMap>>>,
    ) -> Admin {
        let listeners: Vec<_> = listeners
            .iter()
            .map(|(name, addr)| json!({"name": name, "address": addr}))
            .collect();
        // Explicit mode shows transparent mode's defaults, as it always has.
        let (inbound, outbound) = match &cfg.interception {
            Interception::Transparent { inbound, outbound } => (inbound.clone(), outbound.clone()),
            Interception::Explicit { .. } => Default::default(),
        };
        let fixed = json!({
            "mode": cfg.interception.mode(),
            "listeners": listeners,
            "control_plane": {"addresses": cfg.identity.control_plane, "spiffe_id": cfg.control_plane_id()},
            "accepted_trust_domains": cfg.identity.accepted_trust_domains,
            "unmeshed": outbound.unmeshed,
            "permissive_ports": inbound.permissive_ports,
            "timeouts": {
                "detect": duration::format(&cfg.timeouts.detect),
                "connect": duration::format(&cfg.timeouts.connect),
                "handshake": duration::format(&cfg.timeouts.handshake),
                "idle": duration::format(&cfg.timeouts.idle),
            },
            "max_connections": cfg.max_connections,
            "drain_grace_period": duration::format(&cfg.drain_grace_period),
        });
        Admin {
            rt,
            fixed,
            endpoints,
        }
    }

    /// Ready: an SVID, the configuration (in transparent mode that includes
    /// the first endpoint map; with policy sources, their first delivery),
    /// and not draining.
    pub fn is_ready(&self) -> bool {
        self.rt.creds.load().is_some()
            && self.rt.policy.load().is_loaded()
            && self.endpoints.as_ref().is_none_or(|e| e.load().loaded)
            && !self.rt.drain.is_draining()
    }

    fn config_dump(&self) -> serde_json::Value {
        let mut dump = self.fixed.clone();
        let identity = self.rt.creds.load_full().map(|c| {
            json!({
                "spiffe_id": c.svid.id,
                "cert_expires_at": c.svid.expires_at,
                "bundle_fingerprints_sha256": c.bundle.fingerprints(),
            })
        });
        dump["identity"] = identity.unwrap_or(serde_json::Value::Null);
        dump["ready"] = self.is_ready().into();
        dump["draining"] = self.rt.drain.is_draining().into();
        dump["endpoints_version"] = self.endpoints.as_ref().map(|e| e.load().version).into();
        dump["policy_version"] = self.rt.policy.load().version().into();
        dump["policy"] = self.rt.policy.dump();
        dump["baseline"] = self.rt.baseline.dump();
        dump
    }

    pub fn route(&self, method: &Method, path: &str, remote: SocketAddr) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .expect("static response")
        };
        match (method, path) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
            (&Method::GET, "/ready") => match self.is_ready() {
                true => text(StatusCode::OK, "ready\n".into()),
                false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            },
            (&Method::GET, "/metrics") => Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(self.rt.metrics.encode())))
                .expect("static response"),
            (&Method::GET, "/config_dump") => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&self.config_dump()).expect("JSON values serialize"),
                )))
                .expect("static response"),
            (&Method::POST, "/shutdown") if remote.ip().is_loopback() => {
                tracing::info!(client.addr = %remote, "shutdown requested over the admin API");
                self.rt.drain.request();
                text(StatusCode::OK, "shutting down\n".into())
            }
            (&Method::POST, "/shutdown") => {
                tracing::warn!(client.addr = %remote, "shutdown refused: not from localhost");
                text(
                    StatusCode::FORBIDDEN,
                    "shutdown is accepted from localhost only\n".into(),
                )
            }
            (_, "/live" | "/ready" | "/metrics" | "/config_dump" | "/shutdown") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Serve until the process exits.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = admin.route(req.method(), req.uri().path(), remote);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!(client.addr = %remote, error = %e, "admin connection error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        let rt = Arc::new(Runtime::without_identity());
        let mut cfg = Config::default();
        cfg.validate().unwrap();
        Admin::new(rt, &cfg, &[], None)
    }

    #[test]
    fn shutdown_from_another_host_is_forbidden_and_changes_nothing() {
        let a = admin();
        let remote: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        assert_eq!(
            a.route(&Method::POST, "/shutdown", remote).status(),
            StatusCode::FORBIDDEN
        );
        assert!(!a.rt.drain.is_draining());
        let local: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        assert_eq!(
            a.route(&Method::POST, "/shutdown", local).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn not_ready_without_an_svid_and_the_dump_says_why() {
        let a = admin();
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            a.route(&Method::GET, "/ready", local).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            a.route(&Method::GET, "/live", local).status(),
            StatusCode::OK
        );
        let dump = a.config_dump();
        assert!(dump["identity"].is_null());
        assert_eq!(dump["policy"]["source"]["kind"], "none");
        assert_eq!(dump["policy"]["default"], "all-authenticated");
        assert_eq!(dump["ready"], false);
    }
}
