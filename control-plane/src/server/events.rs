//! The security-events collector: workloads POST their OCSF events (a JSON
//! array or NDJSON) over mTLS; the latest are kept in a bounded ring (or,
//! with a shared store, in the store for an hour, so every replica serves
//! them all) and served on the admin socket.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, Request, StatusCode};
use hyper::body::Incoming;
use palisade_identity::api::EventsAccepted;
use palisade_policy::SpiffeId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::{json, query_number, query_pairs, read_body_max, Failure, Resp};
use super::State;

/// Events kept, newest last.
pub const KEPT_EVENTS: usize = 1000;
/// Bytes of JSON kept at most, so large events cannot hold much memory.
pub const KEPT_BYTES: usize = 4 * 1024 * 1024;
/// A POST's body at most (a proxy's batch of 100 events fits).
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Events in one POST at most.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Events one GET answers with at most.
const MAX_PAGE: usize = KEPT_EVENTS;

/// One collected event and who sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Increases by one per event collected; `?since=` pages on it.
    pub seq: u64,
    /// The SPIFFE ID of the workload that POSTed it.
    pub reporter: String,
    /// Milliseconds since the Unix epoch.
    pub received_at: i64,
    pub event: Value,
}

/// GET /v1/events on the admin socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<StoredEvent>,
    /// Pass as `?since=` to get only newer events.
    pub next: u64,
}

#[derive(Default)]
struct Ring {
    events: VecDeque<(StoredEvent, usize)>,
    bytes: usize,
    next_seq: u64,
}

#[derive(Default)]
pub struct EventLog {
    ring: Mutex<Ring>,
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl EventLog {
    fn push(&self, reporter: &SpiffeId, events: Vec<Value>) {
        let received_at = now_millis();
        let reporter = reporter.to_string();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            let size = serde_json::to_string(&event).map_or(0, |s| s.len());
            let seq = ring.next_seq;
            ring.next_seq += 1;
            ring.bytes += size;
            ring.events.push_back((
                StoredEvent {
                    seq,
                    reporter: reporter.clone(),
                    received_at,
                    event,
                },
                size,
            ));
            while ring.events.len() > KEPT_EVENTS || ring.bytes > KEPT_BYTES {
                let Some((_, size)) = ring.events.pop_front() else {
                    break;
                };
                ring.bytes -= size;
            }
        }
    }

    /// Events with `seq >= since`, oldest first, at most `limit`.
    pub fn page(&self, since: u64, limit: usize) -> EventsPage {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let events: Vec<StoredEvent> = ring
            .events
            .iter()
            .filter(|(e, _)| e.seq >= since)
            .take(limit)
            .map(|(e, _)| e.clone())
            .collect();
        let next = events
            .last()
            .map_or(ring.next_seq.max(since), |e| e.seq + 1);
        EventsPage { events, next }
    }
}

/// Why a batch was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("body is not JSON: {0}")]
    Json(String),
    #[error(
        "body must be a JSON array of events, or NDJSON with `Content-Type: application/x-ndjson`"
    )]
    NotArray,
    #[error("event {0}: not a JSON object with a numeric `class_uid` (OCSF)")]
    NotEvent(usize),
    #[error("line {0}: {1}")]
    Line(usize, String),
    #[error("more than {MAX_BATCH_EVENTS} events in one batch")]
    TooMany,
}

/// Parses a POSTed batch: a JSON array of OCSF events, or NDJSON (one event
/// per line, blank lines ignored). Each event must be an object with a
/// numeric `class_uid`.
pub fn parse_batch(body: &[u8], ndjson: bool) -> Result<Vec<Value>, BatchError> {
    let events: Vec<Value> = if ndjson {
        let mut out = Vec::new();
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if out.len() == MAX_BATCH_EVENTS {
                return Err(BatchError::TooMany);
            }
            let v =
                serde_json::from_slice(line).map_err(|e| BatchError::Line(i + 1, e.to_string()))?;
            out.push(v);
        }
        out
    } else {
        match serde_json::from_slice(body).map_err(|e| BatchError::Json(e.to_string()))? {
            Value::Array(a) => a,
            _ => return Err(BatchError::NotArray),
        }
    };
    if events.len() > MAX_BATCH_EVENTS {
        return Err(BatchError::TooMany);
    }
    if let Some(i) = events
        .iter()
        .position(|e| !e.get("class_uid").is_some_and(Value::is_u64))
    {
        return Err(BatchError::NotEvent(i));
    }
    Ok(events)
}

/// POST /v1/events from a workload (`reporter`, proven by its SVID).
pub async fn post(
    state: &State,
    reporter: SpiffeId,
    req: Request<Incoming>,
) -> Result<Resp, Failure> {
    let ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let body = read_body_max(req, state.config.handshake_timeout, MAX_BATCH_BYTES).await?;
    let events = parse_batch(&body, ndjson)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "bad_events", e.to_string()))?;
    let accepted = events.len();
    if state.store.shared() {
        let stored: Vec<Value> = events
            .into_iter()
            .map(|event| serde_json::json!({"reporter": reporter.as_str(), "received_at": now_millis(), "event": event}))
            .collect();
        state.store.append_events(&stored).await.map_err(|e| {
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            )
        })?;
    } else {
        state.events.push(&reporter, events);
    }
    tracing::debug!(reporter = %reporter, accepted, "security events collected");
    Ok(json(StatusCode::OK, &EventsAccepted { accepted }))
}

/// GET /v1/events?since=SEQ&limit=N on the admin socket.
pub async fn get(state: &State, query: Option<&str>) -> Result<Resp, Failure> {
    let mut since = 0;
    let mut limit = MAX_PAGE;
    for (k, v) in query_pairs(query) {
        match k {
            "since" => since = query_number(k, v)?,
            "limit" => limit = query_number::<usize>(k, v)?.min(MAX_PAGE),
            _ => {}
        }
    }
    if !state.store.shared() {
        return Ok(json(StatusCode::OK, &state.events.page(since, limit)));
    }
    let stored = state.store.recent_events(since, limit).await.map_err(|e| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    })?;
    let events: Vec<StoredEvent> = stored
        .into_iter()
        .filter_map(|(seq, v)| {
            Some(StoredEvent {
                seq,
                reporter: v.get("reporter")?.as_str()?.to_owned(),
                received_at: v.get("received_at")?.as_i64()?,
                event: v.get("event")?.clone(),
            })
        })
        .collect();
    let next = events.last().map_or(since, |e| e.seq + 1);
    Ok(json(StatusCode::OK, &EventsPage { events, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_arrays_or_ndjson_of_ocsf_objects() {
        let a = parse_batch(br#"[{"class_uid":2004},{"class_uid":4001}]"#, false).unwrap();
        assert_eq!(a.len(), 2);
        let n = parse_batch(b"{\"class_uid\":2004}\n\n{\"class_uid\":4002}\n", true).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(
            parse_batch(br#"{"class_uid":2004}"#, false),
            Err(BatchError::NotArray)
        );
        assert_eq!(
            parse_batch(br#"[{"class_uid":2004},{"class":1}]"#, false),
            Err(BatchError::NotEvent(1))
        );
        assert!(matches!(
            parse_batch(b"{\"class_uid\":1}\nnope\n", true),
            Err(BatchError::Line(2, _))
        ));
    }

    #[test]
    fn the_ring_keeps_the_latest_and_pages_by_seq() {
        let log = EventLog::default();
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        let ev = |i: u64| serde_json::json!({"class_uid": 2004, "i": i});
        log.push(&id, (0..KEPT_EVENTS as u64 + 5).map(ev).collect());
        let page = log.page(0, usize::MAX);
        assert_eq!(page.events.len(), KEPT_EVENTS);
        assert_eq!(page.events[0].seq, 5);
        assert_eq!(page.events[0].event["i"], 5);
        assert_eq!(page.next, KEPT_EVENTS as u64 + 5);
        assert!(log.page(page.next, 10).events.is_empty());
        assert_eq!(log.page(page.next, 10).next, page.next);
        assert_eq!(page.events[0].reporter, "spiffe://td/ns/a/sa/b");
    }
}
