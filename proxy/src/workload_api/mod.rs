//! The SPIFFE Workload API for the app, on a Unix socket: gRPC per the
//! spec's `SpiffeWorkloadAPI` (tonic). `FetchX509SVID` streams the app's own
//! SVID (see `identity::app`) and `FetchX509Bundles` the bundles, a new
//! message on each change; the JWT methods answer UNIMPLEMENTED. Every call
//! must carry the spec's security header.

pub mod authority;
mod socket;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, TryStreamExt};
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::identity::app::{AppSvid, AppSvidWatch};
use crate::metrics::Metrics;

pub use socket::{bind, SocketError};

/// The messages and server generated from `proto/workload.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

use proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};

/// The metadata every call must carry, with the value `true`, so that a
/// browser or a server-side request forgery cannot reach the API.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

type Updates<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service: the app's SVID as it changes, and the drain signal that
/// ends open streams.
pub struct WorkloadApi {
    pub svids: AppSvidWatch,
    pub metrics: Arc<Metrics>,
    pub stop: CancellationToken,
}

/// Serve `api` on `listener` until `api.stop` fires; the socket file at
/// `path` is removed then, before open streams are ended.
pub async fn serve(api: WorkloadApi, listener: tokio::net::UnixListener, path: PathBuf) {
    let stop = api.stop.clone();
    let metrics = api.metrics.clone();
    let api_metrics = api.metrics.clone();
    let svc = SpiffeWorkloadApiServer::with_interceptor(api, move |req: Request<()>| {
        match req.metadata().get(SECURITY_HEADER) {
            Some(v) if v == "true" => Ok(req),
            _ => {
                metrics.workload_api.refused("missing_security_header");
                Err(Status::invalid_argument(format!(
                    "security header missing from request: send the metadata `{SECURITY_HEADER}: true`"
                )))
            }
        }
    });
    let shutdown = async move {
        stop.cancelled().await;
        socket::remove(&path);
    };
    let relay_metrics = api_metrics.clone();
    let incoming = UnixListenerStream::new(listener)
        .map_ok(move |app| through_authority_fix(app, relay_metrics.clone()));
    let served = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(svc, incoming, shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the Workload API server stopped");
    }
}

/// The app's connection as the server reads it: its requests through
/// [`authority::relay`], the answers copied back. Broken HTTP/2 framing
/// ends the connection and is counted.
fn through_authority_fix(app: UnixStream, metrics: Arc<Metrics>) -> DuplexStream {
    let (server_side, ours) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (app_read, mut app_write) = app.into_split();
        let (mut ours_read, mut ours_write) = tokio::io::split(ours);
        let up = async {
            match authority::relay(app_read, &mut ours_write).await {
                Ok(()) => {}
                Err(authority::FrameError::Io(e)) => {
                    tracing::debug!(error = %e, "Workload API connection ended");
                }
                Err(e) => {
                    metrics.workload_api.refused("malformed_http2");
                    tracing::info!(error = %e, "Workload API connection refused");
                }
            }
            let _ = ours_write.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut ours_read, &mut app_write).await;
            let _ = app_write.shutdown().await;
        };
        tokio::pin!(up, down);
        tokio::select! {
            // The app is done sending: keep delivering the answers.
            _ = &mut up => down.await,
            // The server is done: nothing more will be answered.
            _ = &mut down => {}
        }
    });
    server_side
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Updates<X509svidResponse>;
    type FetchX509BundlesStream = Updates<X509BundlesResponse>;
    type FetchJWTBundlesStream = Updates<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let served = self.metrics.workload_api.svids_served.clone();
        let updates = self.follow("FetchX509SVID", move |app| {
            served.inc();
            Some(svid_response(app))
        });
        Ok(Response::new(updates))
    }

    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let served = self.metrics.workload_api.bundles_served.clone();
        let mut sent: Option<Vec<CertificateDer<'static>>> = None;
        let updates = self.follow("FetchX509Bundles", move |app| {
            // An SVID rotation under the same CA changes no bundle.
            if sent.as_ref() == Some(&app.bundle.certs) {
                return None;
            }
            sent = Some(app.bundle.certs.clone());
            served.inc();
            Some(bundles_response(app))
        });
        Ok(Response::new(updates))
    }

    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(self.no_jwt())
    }

    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(self.no_jwt())
    }

    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(self.no_jwt())
    }
}

impl WorkloadApi {
    fn no_jwt(&self) -> Status {
        self.metrics.workload_api.refused("unimplemented");
        Status::unimplemented("Palisade issues X.509-SVIDs only; JWT-SVIDs are not served")
    }

    /// A stream of `message(app)` for the current SVID (once there is one)
    /// and each later one, skipping `None`; it ends on drain. Counted in
    /// `workload_api_streams{method}` while open.
    fn follow<T: Send + 'static>(
        &self,
        method: &'static str,
        message: impl FnMut(&AppSvid) -> Option<T> + Send + 'static,
    ) -> Updates<T> {
        let mut svids = self.svids.clone();
        svids.mark_changed();
        let state = (
            svids,
            self.stop.clone(),
            OpenStream::new(self.metrics.workload_api.streams(method)),
            message,
        );
        Box::pin(futures_util::stream::unfold(
            state,
            |(mut svids, stop, open, mut message)| async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        changed = svids.changed() => changed.ok()?,
                    }
                    let current = svids.borrow_and_update().clone();
                    if let Some(m) = current.as_deref().and_then(&mut message) {
                        return Some((Ok(m), (svids, stop, open, message)));
                    }
                }
            },
        ))
    }
}

/// Counts a stream as open until it is dropped.
struct OpenStream(Gauge);

impl OpenStream {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        OpenStream(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Certificates as the API carries them: DER, concatenated.
fn concat_der(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}

/// The app's SVID: its chain, its PKCS#8 key and its trust domain's bundle.
/// Palisade has no foreign trust domains' bundles to federate with.
fn svid_response(app: &AppSvid) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: app.svid.id.to_string(),
            x509_svid: concat_der(&app.svid.key.cert),
            x509_svid_key: app.svid.key_der.secret_der().to_vec(),
            bundle: concat_der(&app.bundle.certs),
            hint: String::new(),
        }],
        crl: Vec::new(),
        federated_bundles: HashMap::new(),
    }
}

/// The bundle of the app's trust domain, keyed by its SPIFFE ID.
fn bundles_response(app: &AppSvid) -> X509BundlesResponse {
    let td = app.svid.id.trust_domain().id_string();
    X509BundlesResponse {
        crl: Vec::new(),
        bundles: HashMap::from([(td, concat_der(&app.bundle.certs))]),
    }
}
