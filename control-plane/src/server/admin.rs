//! Admin API over a Unix socket (mode 0600 in a 0700 directory: filesystem
//! permissions are the operator credential): join tokens, CA rotation and
//! the collected security events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use palisade_policy::SpiffeId;
use tokio::net::UnixListener;

use super::http::{json, parse_json, read_body, read_body_max, Failure, Resp};
use super::State;
use palisade_identity::api::{
    JoinTokenBatchRequest, JoinTokenBatchResponse, JoinTokenRequest, JoinTokenResponse,
    RotateResponse, MAX_JOIN_TOKEN_BATCH, MAX_JOIN_TOKEN_BATCH_BYTES,
};

pub async fn serve(listener: UnixListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc_state = state.clone();
            let svc = service_fn(move |req| {
                let state = svc_state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(state: &State, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let result = match (req.method(), path.as_str()) {
        (&Method::POST, "/v1/join-tokens") => create_token(state, req).await,
        (&Method::POST, "/v1/join-tokens/batch") => create_tokens(state, req).await,
        (&Method::POST, "/v1/ca/rotate") => rotate(state),
        (&Method::GET, "/v1/events") => super::events::get(state, req.uri().query()),
        (&Method::GET, "/v1/baselines") => super::baselines::get(state, req.uri().query()),
        _ => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin route {} {path}", req.method()),
        )),
    };
    result.unwrap_or_else(|f| {
        tracing::info!(path = %path, error = f.code, message = %f.message, "admin request refused");
        f.into_response()
    })
}

async fn create_token(state: &State, req: Request<Incoming>) -> Result<Resp, Failure> {
    let body = read_body(req, Duration::from_secs(10)).await?;
    let r: JoinTokenRequest = parse_json(&body)?;
    let id = workload_id(state, &r.spiffe_id)?;
    let token = mint(state, id.clone(), r.ttl_seconds)?;
    state.metrics.join_tokens_created.inc();
    tracing::info!(spiffe_id = %id, expires_at = token.expires_at, "join token created");
    Ok(json(StatusCode::OK, &token))
}

/// Many tokens in one request: every identity is checked before any token
/// is minted, and the answer keeps the request's order.
async fn create_tokens(state: &State, req: Request<Incoming>) -> Result<Resp, Failure> {
    let body = read_body_max(req, Duration::from_secs(30), MAX_JOIN_TOKEN_BATCH_BYTES).await?;
    let r: JoinTokenBatchRequest = parse_json(&body)?;
    let total: u64 = r.identities.iter().map(|e| u64::from(e.count)).sum();
    if total == 0 || total > u64::from(MAX_JOIN_TOKEN_BATCH) {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_token_request",
            format!("a batch mints 1 to {MAX_JOIN_TOKEN_BATCH} tokens, not {total}"),
        ));
    }
    let ids = r
        .identities
        .iter()
        .enumerate()
        .map(|(i, e)| {
            workload_id(state, &e.spiffe_id).map_err(|mut f| {
                f.message = format!("identities[{i}]: {}", f.message);
                f
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tokens = Vec::with_capacity(total as usize);
    for (id, e) in ids.iter().zip(&r.identities) {
        for _ in 0..e.count {
            tokens.push(mint(state, id.clone(), r.ttl_seconds)?);
            state.metrics.join_tokens_created.inc();
        }
    }
    tracing::info!(
        tokens = tokens.len(),
        identities = ids.len(),
        expires_at = tokens[0].expires_at,
        "join tokens created"
    );
    Ok(json(StatusCode::OK, &JoinTokenBatchResponse { tokens }))
}

/// A SPIFFE ID a join token may attest: in this trust domain, with a path,
/// not the control plane's own.
fn workload_id(state: &State, text: &str) -> Result<SpiffeId, Failure> {
    let bad = |m: String| Failure::new(StatusCode::BAD_REQUEST, "bad_spiffe_id", m);
    let id = SpiffeId::parse(text).map_err(|e| bad(format!("{text:?}: {e}")))?;
    let td = state.authority.trust_domain();
    if !id.is_member_of(td) {
        return Err(bad(format!(
            "{id} is not in this control plane's trust domain {td}"
        )));
    }
    if id.path().is_empty() || id == state.control_plane_id {
        return Err(bad(format!(
            "{id} is reserved; a workload identity needs a path such as /ns/<ns>/sa/<sa>"
        )));
    }
    Ok(id)
}

fn mint(state: &State, id: SpiffeId, ttl_seconds: u64) -> Result<JoinTokenResponse, Failure> {
    let spiffe_id = id.to_string();
    let (token, expires_at) = state
        .tokens
        .create(id, Duration::from_secs(ttl_seconds))
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "bad_token_request", e.to_string()))?;
    Ok(JoinTokenResponse {
        token,
        spiffe_id,
        expires_at,
    })
}

fn rotate(state: &State) -> Result<Resp, Failure> {
    let set = state.authority.rotate().map_err(|e| {
        tracing::error!(error = %e, "CA rotation failed");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rotation_failed",
            e.to_string(),
        )
    })?;
    state.metrics.ca_rotations.inc();
    // Serve with (and accept clients under) the new bundle right away.
    state.refresh_tls(true);
    let active = set.active();
    tracing::info!(ca.seq = active.seq, ca.serial = %active.serial_hex, bundle_size = set.bundle().len(), "CA rotated");
    Ok(json(
        StatusCode::OK,
        &RotateResponse {
            active_ca_serial: active.serial_hex.clone(),
            bundle_size: set.bundle().len(),
        },
    ))
}
