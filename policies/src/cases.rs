//! Policy test cases (`palisadectl policy test`): a YAML list of flows with
//! the expected verdict, parsed with located errors and run against a policy.

use crate::compile::CompiledPolicy;
use crate::decision::{DefaultPolicy, Verdict};
use crate::diag::{unknown_name, Diagnostic};
use crate::flow::{decide_flow, Endpoint, Flow, FlowDecision, HttpRequest};
use crate::model::Direction;
use crate::parse::Cx;
use crate::yaml::{self, Kind, Node, Pos};

const FILE_FIELDS: &[&str] = &["default", "cases"];
const CASE_FIELDS: &[&str] = &[
    "name",
    "from",
    "to",
    "port",
    "method",
    "path",
    "host",
    "direction",
    "expect",
];

/// One expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub pos: Pos,
    /// A label for reports; defaults to `from -> to:port`.
    pub name: String,
    pub flow: Flow,
    /// `None`: the whole flow (egress at the source, ingress at the destination).
    pub direction: Option<Direction>,
    pub expect: Verdict,
}

/// A cases file: the cases and, optionally, the default policy they assume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cases {
    pub default_policy: Option<DefaultPolicy>,
    pub cases: Vec<Case>,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct Outcome<'c> {
    pub case: &'c Case,
    /// `Err` when the case cannot be decided (an address where an identity
    /// is needed).
    pub decision: Result<FlowDecision, String>,
}

impl Outcome<'_> {
    pub fn passed(&self) -> bool {
        matches!(&self.decision, Ok(d) if d.verdict() == self.case.expect)
    }
}

/// Parses a cases file: either a list of cases, or a mapping with `cases`
/// and an optional `default`.
pub fn parse_cases(source_name: &str, text: &str) -> Result<Cases, Vec<Diagnostic>> {
    let mut cx = Cx::new(source_name);
    let mut out = Cases {
        default_policy: None,
        cases: Vec::new(),
    };
    let parsed = yaml::parse_stream(text, |doc| {
        let list = match &doc.kind {
            Kind::Seq(_) => Some(&doc),
            _ => cx.fields(&doc, "a cases file", FILE_FIELDS).and_then(|f| {
                if let Some(d) = f.get("default") {
                    out.default_policy = default_policy(&mut cx, d);
                }
                f.require(&mut cx, "cases")
            }),
        };
        if let Some(items) = list.and_then(|l| cx.list(l, "cases")) {
            out.cases
                .extend(items.iter().filter_map(|n| case(&mut cx, n)));
        }
    });
    if let Err(e) = parsed {
        cx.error(e.pos, e.message);
    }
    if cx.diags.is_empty() {
        Ok(out)
    } else {
        cx.diags.sort_by_key(|d| d.pos);
        Err(cx.diags)
    }
}

/// Runs every case against `policy`.
pub fn run_cases<'c>(policy: &CompiledPolicy, cases: &'c [Case]) -> Vec<Outcome<'c>> {
    cases
        .iter()
        .map(|case| Outcome {
            case,
            decision: decide_flow(policy, &case.flow, case.direction).map_err(|e| e.to_string()),
        })
        .collect()
}

fn default_policy(cx: &mut Cx, node: &Node) -> Option<DefaultPolicy> {
    let s = cx.string(node, "`default`")?;
    match s.parse() {
        Ok(d) => Some(d),
        Err(_) => {
            let names: Vec<&str> = DefaultPolicy::ALL.iter().map(|d| d.as_str()).collect();
            cx.error(node.pos, unknown_name("default policy", &s, &names));
            None
        }
    }
}

fn case(cx: &mut Cx, node: &Node) -> Option<Case> {
    let before = cx.diags.len();
    let f = cx.fields(node, "a case", CASE_FIELDS)?;
    let from = f.require(cx, "from").and_then(|n| endpoint(cx, n, "from"));
    let to = f.require(cx, "to").and_then(|n| endpoint(cx, n, "to"));
    let port = f.require(cx, "port").and_then(|n| port(cx, n));
    let expect = f.require(cx, "expect").and_then(|n| verdict(cx, n));
    let name = f.get("name").and_then(|n| cx.string(n, "`name`"));
    let method = f.get("method").and_then(|n| cx.string(n, "`method`"));
    let path = f.get("path").and_then(|n| cx.string(n, "`path`"));
    let host = f.get("host").and_then(|n| cx.string(n, "`host`"));
    let direction = f.get("direction").and_then(|n| {
        let s = cx.string(n, "`direction`")?;
        s.parse().map_err(|e: String| cx.error(n.pos, e)).ok()
    });
    if cx.diags.len() > before {
        return None;
    }
    let (from, to, port) = (from?, to?, port?);
    let http = (method.is_some() || path.is_some() || host.is_some()).then(|| HttpRequest {
        method: method.unwrap_or_else(|| "GET".into()),
        path: path.unwrap_or_else(|| "/".into()),
        host,
    });
    let name = name.unwrap_or_else(|| format!("{from} -> {to}:{port}"));
    Some(Case {
        pos: node.pos,
        name,
        flow: Flow {
            from,
            to,
            port,
            http,
        },
        direction,
        expect: expect?,
    })
}

fn endpoint(cx: &mut Cx, node: &Node, what: &str) -> Option<Endpoint> {
    let s = cx.string(node, &format!("`{what}`"))?;
    s.parse()
        .map_err(|e| {
            cx.error(
                node.pos,
                format!("`{what}` must be an IP address or a SPIFFE ID: {e}"),
            )
        })
        .ok()
}

fn port(cx: &mut Cx, node: &Node) -> Option<u16> {
    match &node.kind {
        Kind::Int(n) if (1..=65535).contains(n) => Some(*n as u16),
        Kind::Int(n) => {
            cx.error(node.pos, format!("port {n} is out of range 1-65535"));
            None
        }
        other => {
            cx.error(
                node.pos,
                format!("`port` must be a number, found {}", other.describe()),
            );
            None
        }
    }
}

fn verdict(cx: &mut Cx, node: &Node) -> Option<Verdict> {
    match cx.string(node, "`expect`")?.as_str() {
        "allow" => Some(Verdict::Allow),
        "deny" => Some(Verdict::Deny),
        other => {
            cx.error(
                node.pos,
                unknown_name("expectation", other, &["allow", "deny"]),
            );
            None
        }
    }
}
