//! The OCSF shape of Palisade's security events: denials as Network Activity
//! (4001) or HTTP Activity (4002) with the Security Control profile, baseline
//! deviations as Detection Findings (2004). One JSON object per event.

use std::net::IpAddr;

use serde::Serialize;

use super::{Denial, Endpoint, Finding, FindingAction, FindingKind, Flow};
use palisade_policy::Direction;

/// The OCSF schema version these events follow.
pub const SCHEMA_VERSION: &str = "1.3.0";

const NETWORK_ACTIVITY: u16 = 4001;
const HTTP_ACTIVITY: u16 = 4002;
const DETECTION_FINDING: u16 = 2004;

/// Severity of a denial and of a finding: Medium.
pub const SEVERITY_MEDIUM: u8 = 3;

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    uid: &'a str,
    product: Product,
    profiles: [&'static str; 1],
}

/// Attributes every event carries.
#[derive(Serialize)]
struct Base<'a> {
    category_uid: u8,
    category_name: &'static str,
    class_uid: u16,
    class_name: &'static str,
    activity_id: u8,
    activity_name: &'static str,
    type_uid: u32,
    severity_id: u8,
    severity: &'static str,
    /// Milliseconds since the Unix epoch.
    time: i64,
    message: String,
    metadata: Metadata<'a>,
    action_id: u8,
    action: &'static str,
    disposition_id: u8,
    disposition: &'static str,
}

#[derive(Serialize)]
struct NetEndpoint<'a> {
    ip: IpAddr,
    port: u16,
    /// The SPIFFE ID, when the peer proved one.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

impl<'a> From<&Endpoint<'a>> for NetEndpoint<'a> {
    fn from(e: &Endpoint<'a>) -> Self {
        NetEndpoint {
            ip: e.addr.ip(),
            port: e.addr.port(),
            uid: e.id,
        }
    }
}

#[derive(Serialize)]
struct ConnectionInfo {
    direction_id: u8,
    direction: &'static str,
    protocol_name: &'static str,
    protocol_num: u8,
}

impl From<Direction> for ConnectionInfo {
    fn from(d: Direction) -> Self {
        let (direction_id, direction) = match d {
            Direction::Ingress => (1, "Inbound"),
            Direction::Egress => (2, "Outbound"),
        };
        ConnectionInfo {
            direction_id,
            direction,
            protocol_name: "tcp",
            protocol_num: 6,
        }
    }
}

#[derive(Serialize)]
struct Url<'a> {
    path: &'a str,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    http_method: &'a str,
    url: Url<'a>,
}

#[derive(Serialize)]
struct Rule<'a> {
    name: &'a str,
    uid: String,
}

#[derive(Serialize)]
struct Policy<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct DenialExtra {
    direction: &'static str,
    decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    /// `policy_reload`: an open connection closed because a reloaded
    /// policy denies it.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Unmapped<T> {
    palisade: T,
}

#[derive(Serialize)]
struct DenialEvent<'a> {
    #[serde(flatten)]
    base: Base<'a>,
    src_endpoint: NetEndpoint<'a>,
    dst_endpoint: NetEndpoint<'a>,
    connection_info: ConnectionInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'a>>,
    firewall_rule: Rule<'a>,
    policy: Policy<'a>,
    unmapped: Unmapped<DenialExtra>,
}

#[derive(Serialize)]
struct FindingInfo<'a> {
    uid: &'a str,
    title: String,
    types: [&'static str; 1],
}

#[derive(Serialize)]
struct Evidence<'a> {
    src_endpoint: NetEndpoint<'a>,
    dst_endpoint: NetEndpoint<'a>,
    connection_info: ConnectionInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_request: Option<HttpRequest<'a>>,
}

#[derive(Serialize)]
struct FindingExtra<'a> {
    kind: &'static str,
    direction: &'static str,
    mode: &'static str,
    action: &'static str,
    /// The learned entry the flow was compared with; `null` when the
    /// baseline had none.
    baseline: Option<&'a super::BaselineEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_rate: Option<f64>,
}

#[derive(Serialize)]
struct FindingEvent<'a> {
    #[serde(flatten)]
    base: Base<'a>,
    status_id: u8,
    status: &'static str,
    finding_info: FindingInfo<'a>,
    evidences: [Evidence<'a>; 1],
    unmapped: Unmapped<FindingExtra<'a>>,
}

fn metadata(uid: &str) -> Metadata<'_> {
    Metadata {
        version: SCHEMA_VERSION,
        uid,
        product: Product {
            name: "Palisade",
            vendor_name: "Palisade",
            version: env!("CARGO_PKG_VERSION"),
        },
        profiles: ["security_control"],
    }
}

fn http_request<'a>(flow: &Flow<'a>) -> Option<HttpRequest<'a>> {
    flow.http.map(|h| HttpRequest {
        http_method: h.method,
        url: Url { path: h.path },
    })
}

/// HTTP Activity's activity for a request method.
fn http_activity(method: &str) -> (u8, &'static str) {
    match method {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        "PATCH" => (9, "Patch"),
        _ => (99, "Other"),
    }
}

fn peer_name<'a>(e: &Endpoint<'a>) -> std::borrow::Cow<'a, str> {
    match e.id {
        Some(id) => id.into(),
        None => e.addr.ip().to_string().into(),
    }
}

/// A policy denial as one JSON line (without the newline).
pub fn denial(d: &Denial<'_>, uid: &str, time: i64) -> String {
    let flow = &d.flow;
    let (class_uid, class_name, activity_id, activity_name) = match flow.http {
        Some(h) => {
            let (id, name) = http_activity(h.method);
            (HTTP_ACTIVITY, "HTTP Activity", id, name)
        }
        None if d.revoked => (NETWORK_ACTIVITY, "Network Activity", 2, "Close"),
        None => (NETWORK_ACTIVITY, "Network Activity", 5, "Refuse"),
    };
    let what = match flow.http {
        Some(h) => format!("{} {} on port {}", h.method, h.path, flow.dst.addr.port()),
        None if d.revoked => format!("open connection to port {}", flow.dst.addr.port()),
        None => format!("connection to port {}", flow.dst.addr.port()),
    };
    let outcome = if d.revoked {
        "closed: the reloaded policy denies it"
    } else {
        "denied"
    };
    let message = format!(
        "{} {what} from {} {outcome}: {}",
        flow.direction.as_str(),
        peer_name(&flow.src),
        d.matched
    );
    let event = DenialEvent {
        base: Base {
            category_uid: 4,
            category_name: "Network Activity",
            class_uid,
            class_name,
            activity_id,
            activity_name,
            type_uid: class_uid as u32 * 100 + activity_id as u32,
            severity_id: SEVERITY_MEDIUM,
            severity: "Medium",
            time,
            message,
            metadata: metadata(uid),
            action_id: 2,
            action: "Denied",
            disposition_id: 2,
            disposition: "Blocked",
        },
        src_endpoint: (&flow.src).into(),
        dst_endpoint: (&flow.dst).into(),
        connection_info: flow.direction.into(),
        http_request: http_request(flow),
        firewall_rule: Rule {
            name: d.matched.rule_label(),
            uid: d.matched.label(),
        },
        policy: Policy {
            name: d.matched.policy_label(),
        },
        unmapped: Unmapped {
            palisade: DenialExtra {
                direction: flow.direction.as_str(),
                decision: d.matched.label(),
                http_status: d.http_status,
                reason: d.revoked.then_some("policy_reload"),
            },
        },
    };
    serde_json::to_string(&event).expect("events serialize")
}

/// A baseline deviation as one JSON line (without the newline).
pub fn finding(f: &Finding<'_>, uid: &str, time: i64) -> String {
    let flow = &f.flow;
    let (action_id, action, disposition_id, disposition) = match f.action {
        FindingAction::Allowed => (1, "Allowed", 1, "Allowed"),
        FindingAction::Blocked => (2, "Denied", 2, "Blocked"),
        FindingAction::Throttled => (2, "Denied", 99, "Throttled"),
    };
    let peer = match flow.direction {
        Direction::Ingress => peer_name(&flow.src),
        Direction::Egress => peer_name(&flow.dst),
    };
    let port = flow.dst.addr.port();
    let title = match (f.kind, flow.http) {
        (FindingKind::NewPeer, _) => format!("New peer {peer}"),
        (FindingKind::NewPort, _) => format!("New port {port} with {peer}"),
        (FindingKind::NewRoute, Some(h)) => {
            format!("New route {} {} with {peer}", h.method, h.path)
        }
        (FindingKind::NewRoute, None) => format!("New route with {peer}"),
        (FindingKind::RateSpike, _) => format!("Rate spike on port {port} with {peer}"),
    };
    let event = FindingEvent {
        base: Base {
            category_uid: 2,
            category_name: "Findings",
            class_uid: DETECTION_FINDING,
            class_name: "Detection Finding",
            activity_id: 1,
            activity_name: "Create",
            type_uid: DETECTION_FINDING as u32 * 100 + 1,
            severity_id: SEVERITY_MEDIUM,
            severity: "Medium",
            time,
            message: format!("{title} ({} mode, {})", f.mode.as_str(), f.action.as_str()),
            metadata: metadata(uid),
            action_id,
            action,
            disposition_id,
            disposition,
        },
        status_id: 1,
        status: "New",
        finding_info: FindingInfo {
            uid,
            title,
            types: [f.kind.as_str()],
        },
        evidences: [Evidence {
            src_endpoint: (&flow.src).into(),
            dst_endpoint: (&flow.dst).into(),
            connection_info: flow.direction.into(),
            http_request: http_request(flow),
        }],
        unmapped: Unmapped {
            palisade: FindingExtra {
                kind: f.kind.as_str(),
                direction: flow.direction.as_str(),
                mode: f.mode.as_str(),
                action: f.action.as_str(),
                baseline: f.baseline.as_ref(),
                observed_rate: f.observed_rate,
            },
        },
    };
    serde_json::to_string(&event).expect("events serialize")
}
