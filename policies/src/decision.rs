//! What `decide()` is asked (`Request`) and what it answers (`Decision`),
//! plus the proxy's fallback for workloads no policy selects (`DefaultPolicy`).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{Direction, Mode};
use crate::spiffe::SpiffeId;

/// The other end of a connection: an authenticated identity, or only an
/// address (plaintext source, or a destination outside the mesh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    Identity(&'a SpiffeId),
    Address(IpAddr),
}

impl fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Identity(id) => write!(f, "{id}"),
            Peer::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// The L7 part of a request, when the proxy has parsed HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpInfo<'a> {
    pub method: &'a str,
    /// The request target's path; a query string, if present, is ignored.
    pub path: &'a str,
    /// The `Host`/`:authority`, with or without a port.
    pub host: Option<&'a str>,
}

/// One authorization question. For `Ingress`, `peer` is the source and
/// `port` the destination port on `local`; for `Egress`, `peer` is the
/// destination and `port` its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub direction: Direction,
    /// The workload the sidecar serves.
    pub local: &'a SpiffeId,
    pub peer: Peer<'a>,
    pub port: u16,
    /// `None` for the connection-level (L4) check; `Some` per HTTP request.
    pub http: Option<HttpInfo<'a>>,
}

/// What applies to a workload that no policy selects in a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Deny everything.
    Deny,
    /// Allow any peer with a verified SPIFFE identity; deny address-only peers.
    AllAuthenticated,
    /// Allow everything.
    AllUnauthenticated,
    /// Allow everything, reporting each connection as one `deny` would block.
    Audit,
}

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 4] = [
        DefaultPolicy::Deny,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::Audit => "audit",
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown default policy `{0}`, expected one of `deny`, `all-authenticated`, `all-unauthenticated`, `audit`")]
pub struct UnknownDefaultPolicy(pub String);

impl std::str::FromStr for DefaultPolicy {
    type Err = UnknownDefaultPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DefaultPolicy::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDefaultPolicy(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What made a decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Matched {
    /// A rule matched. `policy` is `<namespace>/<name>`.
    Rule { policy: Arc<str>, rule: Arc<str> },
    /// The workload is selected by `policy` (the first selecting policy in
    /// `namespace/name` order) but no rule matched: default-deny.
    NoRule { policy: Arc<str> },
    /// No policy selects the workload in this direction.
    Default(DefaultPolicy),
}

impl Matched {
    /// The `policy` metrics label: `shop/payments`, or `default`.
    pub fn policy_label(&self) -> &str {
        match self {
            Matched::Rule { policy, .. } | Matched::NoRule { policy } => policy,
            Matched::Default(_) => "default",
        }
    }

    /// The `rule` metrics label: the rule name, empty when no rule matched,
    /// or the default policy's name.
    pub fn rule_label(&self) -> &str {
        match self {
            Matched::Rule { rule, .. } => rule,
            Matched::NoRule { .. } => "",
            Matched::Default(d) => d.as_str(),
        }
    }

    /// `shop/payments/frontend-charges`, `shop/payments` (no rule matched) or
    /// `default/deny`.
    pub fn label(&self) -> String {
        match self {
            Matched::NoRule { policy } => policy.to_string(),
            _ => format!("{}/{}", self.policy_label(), self.rule_label()),
        }
    }
}

impl fmt::Display for Matched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matched::Rule { policy, rule } => write!(f, "rule `{rule}` of policy {policy}"),
            Matched::NoRule { policy } => {
                write!(f, "no rule matched, and policy {policy} selects the workload, so it is default-deny")
            }
            Matched::Default(d) => write!(
                f,
                "no policy selects the workload in this direction; default `{d}` applies"
            ),
        }
    }
}

/// The answer to a `Request`, explaining itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    /// What the proxy must do.
    pub verdict: Verdict,
    /// An audit-mode policy (or the `audit` default) would have denied this;
    /// the verdict is `Allow` and the proxy counts it as `would_deny`.
    pub would_deny: bool,
    /// The rule, or the default, that made the decision. When `would_deny`
    /// is set, the audit rule that would have denied.
    pub matched: Matched,
    /// `Audit` when the decision is an audit report (`would_deny`).
    pub mode: Mode,
    /// Connection-level (L4) allow granted only by rules restricted to HTTP
    /// requests: the proxy must check every request (with `http: Some`)
    /// and must not pass opaque, non-HTTP traffic.
    pub http_required: bool,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }

    /// See `Matched::label`.
    pub fn label(&self) -> String {
        self.matched.label()
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.would_deny {
            write!(f, "allow (audit would deny: {})", self.matched)?;
        } else {
            write!(f, "{}: {}", self.verdict, self.matched)?;
        }
        if self.http_required {
            f.write_str(" (HTTP requests only; each request is checked)")?;
        }
        Ok(())
    }
}

/// A stable JSON shape for tools: `{verdict, would_deny, mode, policy,
/// rule, matched, http_required, reason}`.
impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let matched = match self.matched {
            Matched::Rule { .. } => "rule",
            Matched::NoRule { .. } => "no-rule",
            Matched::Default(_) => "default",
        };
        let mut st = s.serialize_struct("Decision", 8)?;
        st.serialize_field("verdict", &self.verdict)?;
        st.serialize_field("would_deny", &self.would_deny)?;
        st.serialize_field("mode", &self.mode)?;
        st.serialize_field("matched", matched)?;
        st.serialize_field("policy", self.matched.policy_label())?;
        st.serialize_field("rule", self.matched.rule_label())?;
        st.serialize_field("http_required", &self.http_required)?;
        st.serialize_field("reason", &self.matched.to_string())?;
        st.end()
    }
}
