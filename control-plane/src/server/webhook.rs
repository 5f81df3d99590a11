//! The mutating admission webhook: POST /inject takes an `AdmissionReview`
//! from the API server and answers with `palisade_inject`'s JSON Patch. It is
//! served on its own HTTPS port (`--webhook-listen`) with a certificate for
//! the Service's DNS name from this control plane's CA.

use arc_swap::ArcSwap;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use palisade_inject::admission::{self, PATH};

use super::http::{json, read_body_max, Failure, Resp};
use super::tls::{self, ServingTls, TlsError};
use super::State;
use crate::ca::Authority;
use crate::config::Config;

/// Largest review read: the API server sends objects up to about 3 MiB.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

/// The webhook's settings and its serving TLS, renewed like the API's.
pub struct Webhook {
    pub dns: String,
    pub settings: palisade_inject::Settings,
    pub tls: ArcSwap<ServingTls>,
}

impl Webhook {
    /// `None` without `--webhook-listen`.
    pub fn new(config: &Config, auth: &Authority) -> Result<Option<Webhook>, TlsError> {
        if config.webhook.webhook_listen.is_none() {
            return Ok(None);
        }
        let dns = config.webhook.webhook_dns.clone();
        let tls = tls::build_webhook(auth, &dns)?;
        Ok(Some(Webhook {
            dns,
            settings: config.inject_settings(),
            tls: ArcSwap::from_pointee(tls),
        }))
    }
}

/// Routes one request on the webhook port.
pub async fn handle(state: &State, req: Request<Incoming>) -> Resp {
    let result = match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => review(state, req).await,
        (_, PATH) => Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("only POST is allowed on {PATH}"),
        )),
        (_, path) => Err(Failure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}; the webhook is POST {PATH}"),
        )),
    };
    result.unwrap_or_else(|f| {
        state.metrics.webhook_error(f.code);
        tracing::info!(status = f.status.as_u16(), error = f.code, message = %f.message, "admission request refused");
        f.into_response()
    })
}

async fn review(state: &State, req: Request<Incoming>) -> Result<Resp, Failure> {
    let webhook = state.webhook.as_ref().expect("served only when configured");
    let body = read_body_max(req, state.config.handshake_timeout, MAX_REVIEW_BYTES).await?;
    match admission::review(&body, &webhook.settings) {
        Ok(answer) => {
            state
                .metrics
                .webhook_reviews
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: answer.outcome,
                })
                .inc();
            tracing::debug!(
                uid = %answer.review["response"]["uid"],
                outcome = answer.outcome,
                operations = answer.patch.0.len(),
                "admission review answered"
            );
            Ok(json(StatusCode::OK, &answer.review))
        }
        Err(e) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            e.reason(),
            e.to_string(),
        )),
    }
}
