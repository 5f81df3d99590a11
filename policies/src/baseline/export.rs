//! A baseline turned into policy as code: a `SegmentationPolicy` that allows
//! every learned flow and nothing else, commented with what was seen, and a
//! matching cases file for `palisadectl policy test`.
//!
//! Rules are one per peer and port. HTTP flows become `http` entries whose
//! path is the template itself: the language's `{id}` matches exactly one
//! segment, so `/v1/users/{id}` allows `/v1/users/7` and not
//! `/v1/users/7/admin`. Only a template cut with `{rest}` becomes a prefix
//! there (`/*`). The comments list the templates each entry stands for. A
//! port also seen carrying opaque bytes, or HTTP without a request, gets no
//! `http`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::key::{FlowPeer, Protocol};
use super::snapshot::{Entry, Snapshot};
use super::template::{example, ID, REST};
use super::time::rfc3339;
use crate::http::path_matches;
use crate::model::{is_placeholder, Direction, PathMatch, API_VERSION, KIND};
use crate::spiffe::SpiffeId;

/// The exported policy and cases, as YAML text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub policy: String,
    pub cases: String,
}

/// A group's `http` entries: path (None = any) to methods (None = any),
/// with the entries behind each.
type HttpEntries<'a> = BTreeMap<Option<String>, (Option<BTreeSet<&'a str>>, Vec<&'a Entry>)>;

/// The flows of one peer on one port.
#[derive(Default)]
struct Group<'a> {
    /// Entries without a route (connections).
    connections: Vec<&'a Entry>,
    opaque: bool,
    routes: Vec<&'a Entry>,
}

impl Group<'_> {
    /// The `http` entries; `None` when the rule needs no `http`.
    fn http(&self) -> Option<HttpEntries<'_>> {
        if self.opaque || self.routes.is_empty() {
            return None;
        }
        let mut out = HttpEntries::new();
        for e in &self.routes {
            let route = e.flow.route.as_ref().expect("routes have a route");
            let slot = out
                .entry(path_match(&route.template))
                .or_insert_with(|| (Some(BTreeSet::new()), Vec::new()));
            match (&mut slot.0, expressible_method(&route.method)) {
                (Some(methods), true) => {
                    methods.insert(&route.method);
                }
                (methods, _) => *methods = None,
            }
            slot.1.push(e);
        }
        // An entry needs a method or a path; with neither, allow all HTTP.
        if out.contains_key(&None) && out[&None].0.is_none() {
            return None;
        }
        Some(out)
    }
}

/// The policy path for a template: the template, whose `{id}` segments
/// match one segment each; a final `{rest}` (a cut template) becomes `/*`,
/// and a segment the language cannot write as it is (with `*`, `{` or `}`)
/// becomes `{id}`. `None` for `*`.
fn path_match(template: &str) -> Option<String> {
    if !template.starts_with('/') {
        return None;
    }
    let mut segs: Vec<&str> = template
        .split('/')
        .skip(1)
        .map(|s| match s {
            s if is_placeholder(s) || !s.contains(['*', '{', '}']) => s,
            _ => ID,
        })
        .collect();
    let cut = segs.last() == Some(&REST);
    if cut {
        segs.pop();
    }
    let mut out: String = segs.iter().flat_map(|s| ["/", s]).collect();
    if cut {
        out.push_str("/*");
    }
    Some(out)
}

/// The policy language takes uppercase letters only.
fn expressible_method(m: &str) -> bool {
    !m.is_empty() && m.chars().all(|c| c.is_ascii_uppercase())
}

/// A YAML double-quoted string. Characters YAML does not allow in a
/// document (controls, DEL, C1, surrogates, U+FFFE/U+FFFF) are escaped, as
/// are `"` and `\`.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. => {
                out.push(c)
            }
            // What is left is below U+10000.
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// A Kubernetes object name from free text: lowercase, `[a-z0-9-.]`,
/// starting and ending alphanumeric.
fn object_name(s: &str, fallback: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let s: String = s.chars().take(200).collect();
    let s = s.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if s.is_empty() {
        fallback.to_owned()
    } else {
        s.to_owned()
    }
}

fn peer_name(peer: &FlowPeer) -> String {
    match peer {
        FlowPeer::Identity(id) => {
            let last = id.path().rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
            object_name(last, "peer")
        }
        FlowPeer::Cidr(net) => object_name(&format!("net-{net}").replace(['/', ':'], "-"), "net"),
    }
}

fn seen(count: u64, first: u64, last: u64) -> String {
    format!(
        "{count} seen, first {}, last {}",
        rfc3339(first),
        rfc3339(last)
    )
}

fn totals<'a>(entries: impl IntoIterator<Item = &'a &'a Entry>) -> (u64, u64, u64) {
    entries.into_iter().fold((0, u64::MAX, 0), |(c, f, l), e| {
        (
            c.saturating_add(e.count),
            f.min(e.first_seen),
            l.max(e.last_seen),
        )
    })
}

/// The policy and cases for one workload's baseline.
pub fn export(snap: &Snapshot) -> Export {
    let mut groups: BTreeMap<(Direction, &FlowPeer, u16), Group> = BTreeMap::new();
    for e in &snap.entries {
        let g = groups
            .entry((e.flow.direction, &e.flow.peer, e.flow.port))
            .or_default();
        match &e.flow.route {
            Some(_) => g.routes.push(e),
            None => {
                g.opaque |= e.flow.protocol == Protocol::Opaque;
                g.connections.push(e);
            }
        }
    }
    let id = &snap.identity;
    let sa = id.service_account().unwrap_or(id.path());
    let name = object_name(&format!("baseline-{sa}"), "baseline");
    let namespace = object_name(id.namespace().unwrap_or("baseline"), "baseline");

    let mut p = String::new();
    let _ = writeln!(
        p,
        "# Learned by Palisade's baseline for {id}: {} flows, taken {}.",
        snap.entries.len(),
        rfc3339(snap.taken_at)
    );
    let _ = writeln!(
        p,
        "# Review before committing: it allows every learned flow and nothing else."
    );
    let _ = writeln!(p, "apiVersion: {API_VERSION}\nkind: {KIND}");
    // Quoted, like every value taken from the baseline: `77` or `1e3` are
    // names, not numbers.
    let _ = writeln!(
        p,
        "metadata:\n  name: {}\n  namespace: {}",
        q(&name),
        q(&namespace)
    );
    let _ = writeln!(p, "spec:\n  targets:\n    - identity: {}", q(id.as_str()));
    let mut cases = String::new();
    let _ = writeln!(
        cases,
        "# Cases for `palisadectl policy test` against the policy learned for {id}:"
    );
    let _ = writeln!(
        cases,
        "# every learned flow is allowed, and flows never seen are denied.\ncases:"
    );

    for direction in Direction::ALL {
        let mut used_names = BTreeSet::new();
        let in_dir: Vec<_> = groups
            .iter()
            .filter(|((d, _, _), _)| *d == direction)
            .collect();
        if in_dir.is_empty() {
            let _ = writeln!(p, "  {direction}: []   # none learned");
            continue;
        }
        let _ = writeln!(p, "  {direction}:");
        let peers_key = match direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        for ((_, peer, port), g) in in_dir {
            let base = format!("{}-{port}", peer_name(peer));
            let mut rule = base.clone();
            let mut n = 1;
            while !used_names.insert(rule.clone()) {
                n += 1;
                rule = format!("{base}-{n}");
            }
            let all: Vec<&Entry> = g.connections.iter().chain(&g.routes).copied().collect();
            let (c, f, l) = totals(&all);
            let _ = writeln!(
                p,
                "    # {peers_key} {peer} port {port}: {} flows, {}",
                all.len(),
                seen(c, f, l)
            );
            let _ = writeln!(p, "    - name: {}\n      action: allow", q(&rule));
            let _ = match peer {
                FlowPeer::Identity(pid) => writeln!(
                    p,
                    "      {peers_key}:\n        - identity: {}",
                    q(pid.as_str())
                ),
                FlowPeer::Cidr(net) => writeln!(
                    p,
                    "      {peers_key}:\n        - cidr: {}",
                    q(&net.to_string())
                ),
            };
            let _ = writeln!(p, "      ports: [{port}]");
            let http = g.http();
            match &http {
                None if !g.routes.is_empty() => {
                    let _ = writeln!(p, "      # no `http`: this port also carried opaque traffic, or requests the language cannot name");
                }
                None => {}
                Some(entries) => {
                    let _ = writeln!(p, "      http:");
                    for (path, (methods, seen_by)) in entries {
                        for e in seen_by {
                            let r = e.flow.route.as_ref().expect("routes have a route");
                            let _ = writeln!(
                                p,
                                "        # {} {}: {}, {:.1}/bucket",
                                r.method.escape_debug(),
                                r.template.escape_debug(),
                                seen(e.count, e.first_seen, e.last_seen),
                                e.rate.mean
                            );
                        }
                        let mut first = true;
                        let mut field = |p: &mut String, text: String| {
                            let lead = if first { "        - " } else { "          " };
                            first = false;
                            let _ = writeln!(p, "{lead}{text}");
                        };
                        if let Some(m) = methods {
                            field(
                                &mut p,
                                format!(
                                    "methods: [{}]",
                                    m.iter().copied().collect::<Vec<_>>().join(", ")
                                ),
                            );
                        }
                        if let Some(path) = path {
                            field(&mut p, format!("paths: [{}]", q(path)));
                        }
                    }
                }
            }
            write_cases(&mut cases, id, direction, peer, *port, g, http.as_ref());
        }
    }
    write_never_seen(&mut cases, snap, &groups);
    Export { policy: p, cases }
}

fn endpoint(peer: &FlowPeer) -> String {
    match peer {
        FlowPeer::Identity(id) => id.to_string(),
        FlowPeer::Cidr(net) => net.addr().to_string(),
    }
}

fn write_case(
    out: &mut String,
    name: &str,
    (from, to): (&str, &str),
    port: u16,
    request: Option<(&str, &str)>,
    direction: Direction,
    expect: &str,
) {
    let _ = writeln!(
        out,
        "  - name: {}\n    from: {}\n    to: {}\n    port: {port}",
        q(name),
        q(from),
        q(to)
    );
    if let Some((method, path)) = request {
        let _ = writeln!(out, "    method: {}\n    path: {}", q(method), q(path));
    }
    let _ = writeln!(out, "    direction: {direction}\n    expect: {expect}");
}

fn ends(local: &SpiffeId, direction: Direction, peer: &str) -> (String, String) {
    match direction {
        Direction::Ingress => (peer.to_owned(), local.to_string()),
        Direction::Egress => (local.to_string(), peer.to_owned()),
    }
}

fn write_cases(
    out: &mut String,
    local: &SpiffeId,
    direction: Direction,
    peer: &FlowPeer,
    port: u16,
    g: &Group,
    http: Option<&HttpEntries>,
) {
    let (from, to) = ends(local, direction, &endpoint(peer));
    // Behind an `http` restriction, opaque bytes are denied: the requests
    // are the cases.
    if http.is_none() {
        for e in &g.connections {
            let name = format!("learned: {}", e.flow);
            write_case(out, &name, (&from, &to), port, None, direction, "allow");
        }
    }
    for e in &g.routes {
        let r = e.flow.route.as_ref().expect("routes have a route");
        let name = format!("learned: {}", e.flow);
        let path = example(&r.template);
        write_case(
            out,
            &name,
            (&from, &to),
            port,
            Some((&r.method, &path)),
            direction,
            "allow",
        );
    }
    if let Some(http) = http {
        write_below_templates(out, (&from, &to), direction, port, g, http);
    }
}

/// A path no learned route is expected to have.
const NEVER_SEEN_PATH: &str = "/palisade-never-seen";

/// The paths of `http`, as the policy reads them; `None` if an entry takes
/// any path.
fn exported_paths(http: &HttpEntries) -> Option<Vec<PathMatch>> {
    http.keys()
        .map(|p| crate::values::path(p.as_deref()?).ok())
        .collect()
}

/// For each route exported with `{id}`: a request one segment below it,
/// which `{id}` does not reach (unless another exported path does).
fn write_below_templates(
    out: &mut String,
    ends: (&str, &str),
    direction: Direction,
    port: u16,
    g: &Group,
    http: &HttpEntries,
) {
    let Some(exported) = exported_paths(http) else {
        return;
    };
    for e in &g.routes {
        let r = e.flow.route.as_ref().expect("routes have a route");
        let Some(path) = path_match(&r.template) else {
            continue;
        };
        if path.ends_with("/*") || !path.split('/').any(is_placeholder) {
            continue;
        }
        let below = format!("{}{NEVER_SEEN_PATH}", example(&r.template));
        if exported.iter().any(|p| path_matches(p, &below)) {
            continue;
        }
        let name = format!("never seen: {} {below}, below {path}", r.method);
        write_case(
            out,
            &name,
            ends,
            port,
            Some((&r.method, &below)),
            direction,
            "deny",
        );
    }
}

/// A peer, a route and (per direction) a flow that no baseline holds.
fn write_never_seen(
    out: &mut String,
    snap: &Snapshot,
    groups: &BTreeMap<(Direction, &FlowPeer, u16), Group>,
) {
    let id = &snap.identity;
    let stranger = (1..)
        .map(|n| {
            let path = match id.namespace() {
                Some(ns) => format!("/ns/{ns}/sa/palisade-never-seen-{n}"),
                None => format!("/palisade-never-seen-{n}"),
            };
            SpiffeId::parse(&format!("spiffe://{}{path}", id.trust_domain_str()))
                .expect("a valid trust domain and path make a valid ID")
        })
        .find(|s| {
            !groups
                .keys()
                .any(|(_, p, _)| **p == FlowPeer::Identity(s.clone()))
        })
        .expect("some name is unused");
    for direction in Direction::ALL {
        let port = groups
            .keys()
            .find(|(d, _, _)| *d == direction)
            .map_or(8080, |(_, _, port)| *port);
        let (from, to) = ends(id, direction, stranger.as_str());
        let name = format!(
            "never seen: {direction} {} {stranger}",
            if direction == Direction::Ingress {
                "from"
            } else {
                "to"
            }
        );
        write_case(out, &name, (&from, &to), port, None, direction, "deny");
    }
    // A route never seen, on a port whose requests are restricted.
    let restricted = groups.iter().find_map(|(k, g)| {
        let exported = exported_paths(&g.http()?)?;
        (!exported.iter().any(|p| path_matches(p, NEVER_SEEN_PATH))).then_some(k)
    });
    if let Some((direction, peer, port)) = restricted {
        let (from, to) = ends(id, *direction, &endpoint(peer));
        let name =
            format!("never seen: route DELETE {NEVER_SEEN_PATH} {direction} {peer} port {port}");
        write_case(
            out,
            &name,
            (&from, &to),
            *port,
            Some(("DELETE", NEVER_SEEN_PATH)),
            *direction,
            "deny",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_written_as_they_are_and_only_a_cut_becomes_a_prefix() {
        for t in [
            "/v1/users",
            "/v1/users/{id}",
            "/v1/users/{id}/orders/{id}",
            "/{id}",
            "/",
        ] {
            assert_eq!(path_match(t).as_deref(), Some(t));
        }
        assert_eq!(path_match("/a*b/c").as_deref(), Some("/{id}/c"));
        assert_eq!(path_match("/a/x{y").as_deref(), Some("/a/{id}"));
        assert_eq!(path_match("/v1/{id}/{rest}").as_deref(), Some("/v1/{id}/*"));
        assert_eq!(path_match("/{rest}").as_deref(), Some("/*"));
        assert_eq!(path_match("*"), None);
    }

    #[test]
    fn quoted_strings_escape_what_yaml_does_not_allow() {
        assert_eq!(q("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(q("x\u{7f}\ny\u{85}é"), r#""x\u007f\u000ay\u0085é""#);
    }

    #[test]
    fn a_numeric_namespace_is_written_as_a_string() {
        let id = crate::SpiffeId::parse("spiffe://cluster.local/ns/77/sa/1e3").unwrap();
        let out = export(&Snapshot::empty(id, 10_000, 0));
        crate::parse_documents("baseline.yaml", &out.policy).expect("parses");
        assert!(out.policy.contains("namespace: \"77\""), "{}", out.policy);
    }

    #[test]
    fn object_names_are_cut_to_a_valid_name() {
        let long = format!("{}-x", "a".repeat(199));
        assert_eq!(object_name(&long, "f"), "a".repeat(199));
        assert_eq!(object_name("--Shop_API--", "f"), "shop-api");
        assert_eq!(object_name("__", "f"), "f");
    }
}
