//! HTTP plumbing shared by the workload and admin APIs: bounded body reads
//! and JSON answers, including the `{"error", "message"}` error shape.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use palisade_identity::api::{ApiError, MAX_BODY_BYTES};

pub type Resp = Response<Full<Bytes>>;

/// An error answer: status, machine-readable code, human message.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn into_response(self) -> Resp {
        let body = ApiError {
            error: self.code.to_owned(),
            message: self.message,
        };
        json(self.status, &body)
    }
}

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).expect("API types serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Reads a request body of at most `MAX_BODY_BYTES` within `timeout`.
pub async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Bytes, Failure> {
    read_body_max(req, timeout, MAX_BODY_BYTES).await
}

/// Reads a request body of at most `max` bytes within `timeout`. A declared
/// Content-Length over the limit is refused before reading anything.
pub async fn read_body_max(
    req: Request<Incoming>,
    timeout: Duration,
    max: usize,
) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), max);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("reading body: {e}"),
        )),
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "request body was not sent in time",
        )),
    }
}

/// The `key=value` pairs of a request's query string, in order.
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
}

/// A query value that must be a number: 400 `bad_query` naming it if not.
pub fn query_number<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, Failure> {
    v.parse().map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("{k}={v:?} is not a number"),
        )
    })
}

/// Parses a JSON body into `T`, with the parser's message on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {e}"),
        )
    })
}
