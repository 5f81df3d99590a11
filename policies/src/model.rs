//! The validated policy documents: what a network team wrote, with every
//! value parsed into its type and every node's source position kept.

use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::spiffe::SpiffeId;
use crate::yaml::Pos;

pub const API_VERSION: &str = "palisade.dev/v1alpha1";
pub const KIND: &str = "SegmentationPolicy";

/// One `SegmentationPolicy` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyDoc {
    #[serde(skip)]
    pub source: Arc<str>,
    #[serde(skip)]
    pub pos: Pos,
    pub namespace: String,
    pub name: String,
    pub targets: Vec<Target>,
    pub mode: Mode,
    /// `None` when the document has no `ingress` key: it does not select its
    /// targets for ingress. `Some(vec![])` selects them and allows nothing.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
    /// `spec.baseline.mode`: the learned-baseline mode of the targets'
    /// sidecars, over their `baseline.mode` setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::baseline::BaselineMode>,
}

impl PolicyDoc {
    /// `<namespace>/<name>`, how decisions and metrics name this policy.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether this policy selects `workload` (in either direction).
    pub fn selects(&self, workload: &SpiffeId) -> bool {
        self.targets.iter().any(|t| t.matches(workload))
    }
}

/// Which side of the workload a rule guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic into the local workload; the peer is the source.
    Ingress,
    /// Traffic out of the local workload; the peer is the destination.
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ingress" => Ok(Direction::Ingress),
            "egress" => Ok(Direction::Egress),
            _ => Err(format!(
                "unknown direction `{s}`, expected `ingress` or `egress`"
            )),
        }
    }
}

/// `enforce` blocks; `audit` never blocks and reports what it would block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// An identity pattern: one exact SPIFFE ID, or every ID under a path
/// prefix (`spiffe://td/ns/shop/*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum IdMatch {
    Exact(SpiffeId),
    /// The prefix up to and including the final `/`, e.g. `spiffe://td/ns/shop/`.
    Prefix(String),
}

impl IdMatch {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            IdMatch::Exact(e) => e == id,
            IdMatch::Prefix(p) => {
                id.as_str().len() > p.len() && id.as_str().starts_with(p.as_str())
            }
        }
    }
}

impl fmt::Display for IdMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdMatch::Exact(id) => write!(f, "{id}"),
            IdMatch::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Which workloads a policy selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Identity(IdMatch),
    /// Every `spiffe://<any td>/ns/<namespace>/sa/<sa>`.
    Namespace(String),
}

impl Target {
    pub fn matches(&self, workload: &SpiffeId) -> bool {
        match self {
            Target::Identity(m) => m.matches(workload),
            Target::Namespace(ns) => workload.namespace() == Some(ns.as_str()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Identity(m) => write!(f, "identity {m}"),
            Target::Namespace(ns) => write!(f, "namespace {ns}"),
        }
    }
}

/// One entry of a rule's `from` (ingress) or `to` (egress) list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerMatch {
    Identity(IdMatch),
    /// Identities `spiffe://<td>/ns/<namespace>/sa/<sa>` in the local
    /// workload's own trust domain.
    Namespace(String),
    /// Peers known only by address: plaintext sources, or egress
    /// destinations outside the mesh.
    Cidr(IpNet),
}

impl fmt::Display for PeerMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerMatch::Identity(m) => write!(f, "{m}"),
            PeerMatch::Namespace(ns) => write!(f, "namespace {ns}"),
            PeerMatch::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortRange::ALL {
            f.write_str("any")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// One entry of a rule's `http` list. Empty lists mean "any".
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
pub struct HttpMatch {
    pub methods: Vec<String>,
    pub paths: Vec<PathMatch>,
    pub hosts: Vec<HostMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    Exact(String),
    /// `/v1/refunds/*` is stored as `/v1/refunds`; it matches that path and
    /// everything below it.
    Prefix(String),
    /// `/v1/users/{id}`: each `{name}` segment matches exactly one
    /// non-empty segment, the others themselves. With `prefix` (written
    /// `/v1/users/{id}/*`) it also matches everything below.
    Template {
        path: String,
        prefix: bool,
    },
}

impl PathMatch {
    /// The path as written, without a final `/*`.
    pub fn base(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
            PathMatch::Template { path, .. } => path,
        }
    }

    /// Whether it also matches everything below its base.
    pub fn is_prefix(&self) -> bool {
        matches!(
            self,
            PathMatch::Prefix(_) | PathMatch::Template { prefix: true, .. }
        )
    }
}

/// A `{name}` segment of a path template: one segment, whatever it holds.
pub fn is_placeholder(segment: &str) -> bool {
    segment
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .is_some_and(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.is_prefix() {
            true => write!(f, "{}/*", self.base()),
            false => f.write_str(self.base()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostMatch {
    /// Lowercase host, without port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Suffix(String),
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    #[serde(skip)]
    pub pos: Pos,
    pub name: String,
    pub action: Action,
    /// `None` (the key omitted) matches any peer.
    pub peers: Option<Vec<PeerMatch>>,
    /// `None` (the key omitted) matches any port.
    pub ports: Option<Vec<PortRange>>,
    /// `None` (the key omitted) matches any traffic, HTTP or not.
    pub http: Option<Vec<HttpMatch>>,
}
