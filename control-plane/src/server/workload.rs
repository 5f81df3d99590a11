//! Workload API routes: SVID issuance (join token or Kubernetes token),
//! renewal over mTLS, the SPIFFE bundle, the endpoint map, readiness and
//! metrics.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use palisade_policy::SpiffeId;
use rustls::pki_types::CertificateDer;

use super::http::{json, parse_json, query_number, query_pairs, read_body, text, Failure, Resp};
use super::State;
use crate::attest::join_token::RedeemError;
use crate::attest::AttestError;
use crate::ca::csr::{verify_csr_pem, VerifiedCsr};
use crate::store::StoreError;
use palisade_identity::api::{Attestation, RenewRequest, SvidRequest, SvidResponse};
use palisade_identity::bundle::spiffe_bundle;
use palisade_identity::svid::spiffe_id_of;

pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Routes one request. `peer` is the verified client certificate, if any.
pub async fn handle(
    state: &State,
    peer: Option<&CertificateDer<'static>>,
    req: Request<Incoming>,
) -> Resp {
    let path = req.uri().path().to_owned();
    let result = match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/svid") => issue(state, req).await,
        (&Method::POST, "/v1/svid/renew") => renew(state, peer, req).await,
        (&Method::GET, "/v1/bundle") => bundle(state),
        (&Method::GET, "/v1/endpoints") => endpoints(state, peer),
        (&Method::GET, "/v1/policies") => policies(state, peer, req.uri().query()).await,
        (&Method::POST, "/v1/events") => match peer_id(state, peer) {
            Ok(id) => super::events::post(state, id, req).await,
            Err(f) => Err(f),
        },
        (&Method::POST, "/v1/baselines") => match peer_id(state, peer) {
            Ok(id) => super::baselines::post(state, id, req).await,
            Err(f) => Err(f),
        },
        (&Method::GET, "/readyz") => Ok(readyz(state)),
        (&Method::GET, "/metrics") => Ok(text(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            state.metrics.encode(),
        )),
        (
            _,
            "/v1/svid" | "/v1/svid/renew" | "/v1/bundle" | "/v1/endpoints" | "/v1/policies"
            | "/v1/events" | "/v1/baselines" | "/readyz" | "/metrics",
        ) => Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        )),
        _ => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        )),
    };
    result.unwrap_or_else(|f| {
        if path.starts_with("/v1/svid") {
            state.metrics.rejected(f.code);
        } else {
            state.metrics.api_error(f.code);
        }
        tracing::info!(path = %path, status = f.status.as_u16(), error = f.code, message = %f.message, "request refused");
        f.into_response()
    })
}

fn attest_failure(e: AttestError) -> Failure {
    let status = match e {
        AttestError::RenewNoClientCert => StatusCode::UNAUTHORIZED,
        AttestError::K8sDisabled | AttestError::JwtMalformed(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    Failure::new(status, e.reason(), e.to_string())
}

fn csr(pem: &str) -> Result<VerifiedCsr, Failure> {
    verify_csr_pem(pem)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.reason(), e.to_string()))
}

async fn issue(state: &State, req: Request<Incoming>) -> Result<Resp, Failure> {
    let body = read_body(req, state.config.handshake_timeout).await?;
    let r: SvidRequest = parse_json(&body)?;
    // The CSR is checked before the token is spent, so a malformed request
    // does not burn a single-use token.
    let csr = csr(&r.csr)?;
    ensure_store(state)?;
    let (id, method) = match &r.attestation {
        Attestation::JoinToken(t) => match state.tokens.redeem(t).await {
            Ok(id) => (Ok(id), "join_token"),
            Err(RedeemError::Attest(e)) => (Err(e), "join_token"),
            Err(RedeemError::Store(e)) => return Err(store_failure(state, &e)),
        },
        Attestation::K8sSaToken(t) => match &state.k8s {
            Some(v) => (v.verify(t), "k8s_sa_token"),
            None => (Err(AttestError::K8sDisabled), "k8s_sa_token"),
        },
    };
    let id = id.map_err(attest_failure)?;
    sign(state, &csr, &id, method)
}

async fn renew(
    state: &State,
    peer: Option<&CertificateDer<'static>>,
    req: Request<Incoming>,
) -> Result<Resp, Failure> {
    // The TLS layer already verified the chain against the bundle (and the
    // clientAuth EKU); here we only decide which ID it proves.
    let id = peer_id(state, peer)?;
    let body = read_body(req, state.config.handshake_timeout).await?;
    let r: RenewRequest = parse_json(&body)?;
    let csr = csr(&r.csr)?;
    sign(state, &csr, &id, "renew")
}

/// The workload SPIFFE ID proven by a verified client certificate.
fn peer_id(state: &State, peer: Option<&CertificateDer<'static>>) -> Result<SpiffeId, Failure> {
    let cert = peer.ok_or_else(|| attest_failure(AttestError::RenewNoClientCert))?;
    let bad = |m: String| attest_failure(AttestError::RenewBadClientCert(m));
    let id = spiffe_id_of(cert).map_err(|e| bad(e.to_string()))?;
    if !id.is_member_of(state.authority.trust_domain()) {
        return Err(bad(format!(
            "{id} is not in trust domain {}",
            state.authority.trust_domain()
        )));
    }
    if id.path().is_empty() || id == state.control_plane_id {
        return Err(bad(format!("{id} is not a workload identity")));
    }
    Ok(id)
}

/// The answer while the state store is down: no SVID is issued, so no
/// replica signs under a CA state it cannot see.
pub const STORE_UNAVAILABLE: &str = "the control plane's state store is unavailable (etcd has no quorum, or cannot be reached); SVIDs are not issued until it is back: keep serving on the current SVID and retry";

fn ensure_store(state: &State) -> Result<(), Failure> {
    if state.store_ready() {
        Ok(())
    } else {
        Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            STORE_UNAVAILABLE,
        ))
    }
}

fn store_failure(state: &State, e: &StoreError) -> Failure {
    state.metrics.store_error(e.reason());
    tracing::warn!(error = %e, "state store operation failed");
    match e {
        StoreError::Unavailable(_) => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            STORE_UNAVAILABLE,
        ),
        _ => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_failed",
            e.to_string(),
        ),
    }
}

/// GET /readyz: 200 while the state store answers, 503 with why not.
pub(crate) fn readyz(state: &State) -> Resp {
    if state.store_ready() {
        text(StatusCode::OK, "text/plain", "ready\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: {STORE_UNAVAILABLE}\n"),
        )
    }
}

fn sign(
    state: &State,
    csr: &VerifiedCsr,
    id: &SpiffeId,
    method: &'static str,
) -> Result<Resp, Failure> {
    ensure_store(state)?;
    let issued = state
        .authority
        .issue(&csr.public_key, id, &[])
        .map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "signing_failed",
                "the CA could not sign this request",
            )
        })?;
    state.metrics.issued(method);
    tracing::debug!(spiffe_id = %id, method, expires_at = issued.expires_at, "issued SVID");
    Ok(json(
        StatusCode::OK,
        &SvidResponse {
            spiffe_id: id.to_string(),
            svid_chain: issued.chain_pem(),
            bundle: issued.bundle_pem.to_string(),
            expires_at: issued.expires_at,
        },
    ))
}

fn bundle(state: &State) -> Result<Resp, Failure> {
    let set = state.authority.snapshot();
    let hint = (state.authority.svid_ttl().as_secs() / 2).clamp(1, 300);
    let doc = spiffe_bundle(set.bundle(), set.bundle_sequence, hint).map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bundle_encoding",
            e.to_string(),
        )
    })?;
    Ok(json(StatusCode::OK, &doc))
}

fn endpoints(state: &State, peer: Option<&CertificateDer<'static>>) -> Result<Resp, Failure> {
    peer_id(state, peer)?;
    Ok(json(StatusCode::OK, &*state.endpoints.load()))
}

/// `?version=N&wait=S`: long poll for the caller's policies.
async fn policies(
    state: &State,
    peer: Option<&CertificateDer<'static>>,
    query: Option<&str>,
) -> Result<Resp, Failure> {
    let id = peer_id(state, peer)?;
    let mut known = None;
    let mut wait = crate::policy_source::MAX_WAIT / 2;
    for (k, v) in query_pairs(query) {
        match k {
            "version" => known = Some(query_number::<u64>(k, v)?),
            "wait" => wait = std::time::Duration::from_secs(query_number(k, v)?),
            _ => {}
        }
    }
    let answer = match &state.policies {
        Some(store) => store.poll(&id, known, wait).await,
        // No --policy-dir: nothing selects anyone; the proxies' defaults apply.
        None => {
            if known == Some(0) {
                tokio::time::sleep(wait.min(crate::policy_source::MAX_WAIT)).await;
            }
            Default::default()
        }
    };
    Ok(json(StatusCode::OK, &answer))
}
