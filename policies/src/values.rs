//! Parsers for the leaf values of the language: identities, namespaces,
//! CIDRs, ports and HTTP matches, each reporting its own located errors.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{
    is_placeholder, HostMatch, HttpMatch, IdMatch, PathMatch, PeerMatch, PortRange,
};
use crate::normalize::{is_normal_path, path_of, Handling, Normalization};
use crate::parse::Cx;
use crate::spiffe::SpiffeId;
use crate::yaml::{Kind, Node};

pub(crate) const PEER_FIELDS: &[&str] = &["identity", "namespace", "cidr"];
pub(crate) const HTTP_FIELDS: &[&str] = &["methods", "paths", "hosts"];

/// Why a Kubernetes-style object name is invalid, if it is.
pub(crate) fn object_name(s: &str) -> Result<(), &'static str> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if s.is_empty() || s.len() > 253 {
        Err("must be 1 to 253 characters long")
    } else if !s.chars().all(ok_char) {
        Err("may hold only lowercase letters, digits, `-` and `.`")
    } else if !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        Err("must start and end with a letter or digit")
    } else {
        Ok(())
    }
}

/// `spiffe://td/ns/shop/sa/api`, or a glob ending in `/*`.
pub(crate) fn id_match(cx: &mut Cx, node: &Node) -> Option<IdMatch> {
    let s = cx.string(node, "`identity`")?;
    let (base, glob) = match s.strip_suffix("/*") {
        Some(base) => (base, true),
        None => (s.as_str(), false),
    };
    if base.contains('*') {
        cx.error(
            node.pos,
            format!("bad identity `{s}`: `*` is only allowed as a final `/*` segment"),
        );
        return None;
    }
    match SpiffeId::parse(base) {
        Ok(id) if glob => Some(IdMatch::Prefix(format!("{id}/"))),
        Ok(id) => Some(IdMatch::Exact(id)),
        Err(e) => {
            cx.error(node.pos, format!("bad SPIFFE ID `{s}`: {e}"));
            None
        }
    }
}

pub(crate) fn namespace(cx: &mut Cx, node: &Node) -> Option<String> {
    let s = cx.string(node, "`namespace`")?;
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        cx.error(
            node.pos,
            format!("bad namespace `{s}`: use letters, digits, `-`, `_` and `.` only"),
        );
        return None;
    }
    Some(s)
}

pub(crate) fn peers(cx: &mut Cx, node: &Node, key: &str) -> Option<Vec<PeerMatch>> {
    let items = cx.list(node, key)?;
    let before = cx.diags.len();
    let mut out = Vec::with_capacity(items.len());
    let what = format!("a `{key}` entry");
    for item in items {
        let Some(f) = cx.fields(item, &what, PEER_FIELDS) else {
            continue;
        };
        let Some((k, v)) = f.exactly_one(cx, &what, PEER_FIELDS) else {
            continue;
        };
        let peer = match k {
            "identity" => id_match(cx, v).map(PeerMatch::Identity),
            "namespace" => namespace(cx, v).map(PeerMatch::Namespace),
            _ => cidr(cx, v).map(PeerMatch::Cidr),
        };
        out.extend(peer);
    }
    (cx.diags.len() == before).then_some(out)
}

/// `10.1.0.0/16`, or a bare address meaning a single host.
fn cidr(cx: &mut Cx, node: &Node) -> Option<IpNet> {
    let s = cx.string(node, "`cidr`")?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    match s.parse::<IpNet>() {
        Ok(net) if net.trunc() != net => {
            cx.error(
                node.pos,
                format!(
                    "bad CIDR `{s}`: host bits are set after the prefix; did you mean `{}`?",
                    net.trunc()
                ),
            );
            None
        }
        Ok(net) => Some(net),
        Err(_) => {
            cx.error(
                node.pos,
                format!("bad CIDR `{s}`: expected an address and prefix length like `10.1.0.0/16`"),
            );
            None
        }
    }
}

pub(crate) fn ports(cx: &mut Cx, node: &Node) -> Option<Vec<PortRange>> {
    let items = cx.list(node, "ports")?;
    let before = cx.diags.len();
    let out: Vec<PortRange> = items
        .iter()
        .filter_map(|item| port_range(cx, item))
        .collect();
    (cx.diags.len() == before).then_some(out)
}

fn port_range(cx: &mut Cx, node: &Node) -> Option<PortRange> {
    let range = match &node.kind {
        Kind::Int(n) => port_number(*n).map(|p| PortRange { lo: p, hi: p }),
        Kind::Str(s) => match s.split_once('-') {
            Some((lo, hi)) => match (parse_port(lo), parse_port(hi)) {
                (Ok(lo), Ok(hi)) if lo <= hi => Ok(PortRange { lo, hi }),
                (Ok(lo), Ok(hi)) => Err(format!(
                    "port range `{s}` is backwards; did you mean `{hi}-{lo}`?"
                )),
                (Err(e), _) | (_, Err(e)) => Err(format!("bad port range `{s}`: {e}")),
            },
            None => parse_port(s).map(|p| PortRange { lo: p, hi: p }),
        },
        other => Err(format!(
            "a port must be a number or a range like \"9000-9010\", found {}",
            other.describe()
        )),
    };
    range.map_err(|e| cx.error(node.pos, e)).ok()
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<i128>() {
        Ok(n) => port_number(n),
        Err(_) => Err(format!("`{s}` is not a port number")),
    }
}

fn port_number(n: i128) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {n} is out of range 1-65535")),
    }
}

pub(crate) fn http(cx: &mut Cx, node: &Node) -> Option<Vec<HttpMatch>> {
    let items = cx.list(node, "http")?;
    let before = cx.diags.len();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Some(f) = cx.fields(item, "an `http` entry", HTTP_FIELDS) else {
            continue;
        };
        if f.is_empty() {
            cx.error(
                item.pos,
                "an `http` entry needs at least one of `methods`, `paths`, `hosts`",
            );
            continue;
        }
        let mut m = HttpMatch::default();
        for (key, value) in f.iter() {
            let Some(list) = cx.list(value, key) else {
                continue;
            };
            for v in list {
                let Some(s) = cx.string(v, &format!("an entry of `{key}`")) else {
                    continue;
                };
                let parsed = match key {
                    "methods" => method(&s).map(|x| m.methods.push(x)),
                    "paths" => path(&s).map(|x| m.paths.push(x)),
                    _ => host(&s).map(|x| m.hosts.push(x)),
                };
                if let Err(e) = parsed {
                    cx.error(v.pos, e);
                }
            }
        }
        out.push(m);
    }
    (cx.diags.len() == before).then_some(out)
}

fn method(s: &str) -> Result<String, String> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "bad HTTP method `{s}`: expected a method like `GET`"
        ));
    }
    if s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(format!(
            "HTTP method `{s}` must be uppercase: `{}`",
            s.to_ascii_uppercase()
        ));
    }
    Ok(s.to_owned())
}

pub(crate) fn path(s: &str) -> Result<PathMatch, String> {
    if !s.starts_with('/') {
        return Err(format!("bad HTTP path `{s}`: a path starts with `/`"));
    }
    let (base, prefix) = match s.strip_suffix("/*") {
        Some(base) => (base, true),
        None => (s, false),
    };
    if base.contains('*') {
        return Err(format!(
            "bad HTTP path `{s}`: `*` is only allowed as a final `/*` (a prefix match); \
             write `{{name}}` for one segment"
        ));
    }
    let mut template = false;
    for seg in base.split('/') {
        if is_placeholder(seg) {
            template = true;
        } else if seg.contains(['{', '}']) {
            return Err(format!(
                "bad HTTP path `{s}`: `{{` and `}}` only write a whole-segment placeholder \
                 such as `{{id}}` (letters, digits, `_`), which matches exactly one segment"
            ));
        }
    }
    if base.contains('?') || base.contains('#') {
        return Err(format!(
            "bad HTTP path `{s}`: paths are matched without query or fragment"
        ));
    }
    // Requests are normalized before matching: a path that is not in normal
    // form would never match, and a deny written that way would never apply.
    if !base.is_empty() && !is_normal_path(base) {
        let hint = match path_of(base, &LENIENT) {
            Ok(n) if prefix => format!("; did you mean `{}/*`?", n.trim_end_matches('/')),
            Ok(n) => format!("; did you mean `{n}`?"),
            Err(_) => String::new(),
        };
        return Err(format!(
            "bad HTTP path `{s}`: requests are matched in normal form (no `.`/`..` or empty \
             segments, `;`, `\\`, or escapes of unreserved characters), so this never matches{hint}"
        ));
    }
    Ok(match (template, prefix) {
        (true, _) => PathMatch::Template {
            path: base.to_owned(),
            prefix,
        },
        (false, true) => PathMatch::Prefix(base.to_owned()),
        (false, false) => PathMatch::Exact(s.to_owned()),
    })
}

/// Every class normalized: to suggest what a path rule should say.
const LENIENT: Normalization = Normalization {
    escaped_slashes: Handling::Normalize,
    backslash: Handling::Normalize,
    path_parameters: Handling::Normalize,
    fragment: Handling::Normalize,
};

fn host(s: &str) -> Result<HostMatch, String> {
    let (base, wildcard) = match s.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let ok_chars = !base.is_empty()
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok_chars && base.ends_with('.') && !base.trim_end_matches('.').is_empty() {
        return Err(format!(
            "bad host `{s}`: requests are matched without a trailing dot; write `{}`",
            s.trim_end_matches('.')
        ));
    }
    let ok = ok_chars && !base.split('.').any(str::is_empty);
    if !ok {
        return Err(format!(
            "bad host `{s}`: expected a DNS name like `api.shop.svc`, optionally `*.`-prefixed"
        ));
    }
    let base = base.to_ascii_lowercase();
    Ok(if wildcard {
        HostMatch::Suffix(format!(".{base}"))
    } else {
        HostMatch::Exact(base)
    })
}
