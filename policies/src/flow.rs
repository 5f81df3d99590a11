//! A whole flow, source to destination: the egress check at the source's
//! sidecar and the ingress check at the destination's. What `explain`,
//! `test` and `diff` reason about.

use std::fmt;
use std::net::IpAddr;

use crate::compile::CompiledPolicy;
use crate::decide::decide;
use crate::decision::{Decision, HttpInfo, Peer, Request, Verdict};
use crate::model::Direction;
use crate::normalize::{self, Normalization, Rejection};
use crate::spiffe::{SpiffeId, SpiffeIdError};

/// One end of a flow: a meshed workload, or an address outside the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Identity(SpiffeId),
    Address(IpAddr),
}

impl Endpoint {
    fn peer(&self) -> Peer<'_> {
        match self {
            Endpoint::Identity(id) => Peer::Identity(id),
            Endpoint::Address(ip) => Peer::Address(*ip),
        }
    }

    fn identity(&self) -> Option<&SpiffeId> {
        match self {
            Endpoint::Identity(id) => Some(id),
            Endpoint::Address(_) => None,
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = SpiffeIdError;
    /// An IP address, or else a SPIFFE ID.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(Endpoint::Address(ip)),
            Err(_) => SpiffeId::parse(s).map(Endpoint::Identity),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Identity(id) => write!(f, "{id}"),
            Endpoint::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// An HTTP request's method, path (with any query) and host, owned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
}

impl HttpRequest {
    fn info(&self) -> HttpInfo<'_> {
        HttpInfo {
            method: &self.method,
            path: &self.path,
            host: self.host.as_deref(),
        }
    }

    /// The request as the proxy decides and forwards it (`host` is its
    /// `Host`), or why the proxy answers 400 before any rule.
    pub fn normalized(&self, cfg: &Normalization) -> Result<HttpRequest, Rejection> {
        let hosts = self.host.as_deref().map(str::as_bytes);
        let n = normalize::request(&self.method, &self.path, None, hosts, cfg)?;
        Ok(HttpRequest {
            method: self.method.clone(),
            path: n.target(),
            host: n.authority.map(|a| a.into_owned()),
        })
    }
}

/// Traffic from `from` to `to` on `port`, optionally one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub from: Endpoint,
    pub to: Endpoint,
    pub port: u16,
    pub http: Option<HttpRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("the ingress check needs `to` to be a SPIFFE ID (the local workload), not an address")]
    IngressNeedsIdentity,
    #[error(
        "the egress check needs `from` to be a SPIFFE ID (the local workload), not an address"
    )]
    EgressNeedsIdentity,
    #[error("at least one end of a flow must be a SPIFFE ID")]
    NoIdentity,
}

/// The checks a flow passes through. `connection` is the L4 decision;
/// `request` the per-request decision when the flow carries HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub direction: Direction,
    pub connection: Decision,
    pub request: Option<Decision>,
}

impl Check {
    /// The decision that settled this check: the first denial, else the
    /// most specific allow.
    pub fn deciding(&self) -> &Decision {
        match &self.request {
            Some(_) if !self.connection.is_allowed() => &self.connection,
            Some(r) => r,
            None => &self.connection,
        }
    }

    pub fn verdict(&self) -> Verdict {
        let opaque_blocked = self.request.is_none() && self.connection.http_required;
        if self.deciding().is_allowed() && !opaque_blocked {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

/// The egress check at the source, then the ingress check at the
/// destination; either may be absent (restricted by `only`, or when that
/// end is a bare address with no sidecar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowDecision {
    pub checks: Vec<Check>,
    /// The flow's HTTP request as normalized and decided, or why it is
    /// rejected (400) before any rule; `None` for a connection only.
    pub request: Option<Result<HttpRequest, Rejection>>,
}

impl FlowDecision {
    /// Why the request is answered 400 before any rule, if it is.
    pub fn rejected(&self) -> Option<Rejection> {
        self.request
            .as_ref()
            .and_then(|r| r.as_ref().err())
            .copied()
    }

    /// Deny if the request is rejected or any check denies.
    pub fn verdict(&self) -> Verdict {
        if self.rejected().is_none() && self.checks.iter().all(|c| c.verdict() == Verdict::Allow) {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// The check that decided: the first denying one, else the last.
    pub fn deciding(&self) -> &Check {
        self.checks
            .iter()
            .find(|c| c.verdict() == Verdict::Deny)
            .or(self.checks.last())
            .expect("a flow decision has at least one check")
    }
}

/// Decides a flow, in one direction only (`only`) or end to end, with the
/// proxy's default normalization.
pub fn decide_flow(
    policy: &CompiledPolicy,
    flow: &Flow,
    only: Option<Direction>,
) -> Result<FlowDecision, FlowError> {
    decide_flow_with(policy, flow, only, &Normalization::default())
}

/// `decide_flow`, with the request normalized as `cfg` says (the proxy's
/// `http.normalization`). A rejected request gets the connection checks only.
pub fn decide_flow_with(
    policy: &CompiledPolicy,
    flow: &Flow,
    only: Option<Direction>,
    cfg: &Normalization,
) -> Result<FlowDecision, FlowError> {
    let request = flow.http.as_ref().map(|h| h.normalized(cfg));
    let http = request
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .map(HttpRequest::info);
    let mut checks = Vec::with_capacity(2);
    let egress = match only {
        Some(Direction::Ingress) => None,
        Some(Direction::Egress) => {
            Some(flow.from.identity().ok_or(FlowError::EgressNeedsIdentity)?)
        }
        None => flow.from.identity(),
    };
    let ingress = match only {
        Some(Direction::Egress) => None,
        Some(Direction::Ingress) => {
            Some(flow.to.identity().ok_or(FlowError::IngressNeedsIdentity)?)
        }
        None => flow.to.identity(),
    };
    if let Some(local) = egress {
        checks.push(check(
            policy,
            Direction::Egress,
            local,
            flow.to.peer(),
            flow.port,
            http,
        ));
    }
    if let Some(local) = ingress {
        checks.push(check(
            policy,
            Direction::Ingress,
            local,
            flow.from.peer(),
            flow.port,
            http,
        ));
    }
    if checks.is_empty() {
        return Err(FlowError::NoIdentity);
    }
    Ok(FlowDecision { checks, request })
}

fn check(
    policy: &CompiledPolicy,
    direction: Direction,
    local: &SpiffeId,
    peer: Peer<'_>,
    port: u16,
    http: Option<HttpInfo<'_>>,
) -> Check {
    let req = Request {
        direction,
        local,
        peer,
        port,
        http: None,
    };
    let connection = decide(policy, &req);
    let request = http.map(|h| {
        decide(
            policy,
            &Request {
                http: Some(h),
                ..req
            },
        )
    });
    Check {
        direction,
        connection,
        request,
    }
}
