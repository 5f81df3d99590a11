//! Matching one HTTP request against a rule's `http` conditions, without
//! allocating. A value that is not in normal form never slips past a deny.

use std::cell::Cell;

use crate::decision::HttpInfo;
use crate::model::{is_placeholder, HostMatch, HttpMatch, PathMatch};
use crate::normalize::{is_normal_authority, is_normal_path};

/// How a request relates to a rule's `http` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    Match,
    NoMatch,
    /// The path or host is not in normal form (the proxy normalizes before
    /// deciding; a raw value could mean something else to the app), and
    /// nothing else rules the entry out. A deny rule applies; an allow
    /// rule does not.
    Ambiguous,
}

impl Fit {
    fn and(self, other: Fit) -> Fit {
        match (self, other) {
            (Fit::NoMatch, _) | (_, Fit::NoMatch) => Fit::NoMatch,
            (Fit::Ambiguous, _) | (_, Fit::Ambiguous) => Fit::Ambiguous,
            _ => Fit::Match,
        }
    }

    fn or(self, other: Fit) -> Fit {
        match (self, other) {
            (Fit::Match, _) | (_, Fit::Match) => Fit::Match,
            (Fit::Ambiguous, _) | (_, Fit::Ambiguous) => Fit::Ambiguous,
            _ => Fit::NoMatch,
        }
    }

    fn of(b: bool) -> Fit {
        if b {
            Fit::Match
        } else {
            Fit::NoMatch
        }
    }
}

/// One request as matched against every rule of a decision: whether its
/// path and host are in normal form is found at most once, when a rule
/// first asks, not again for each rule.
pub(crate) struct Checked<'a> {
    req: HttpInfo<'a>,
    /// The path without its query.
    path: &'a str,
    normal_path: Cell<Option<bool>>,
    normal_host: Cell<Option<bool>>,
}

impl<'a> Checked<'a> {
    pub(crate) fn new(req: HttpInfo<'a>) -> Self {
        Checked {
            path: req.path.split_once('?').map_or(req.path, |(p, _)| p),
            req,
            normal_path: Cell::new(None),
            normal_host: Cell::new(None),
        }
    }

    fn normal_path(&self) -> bool {
        once(&self.normal_path, || is_normal_path(self.path))
    }

    fn normal_host(&self, host: &str) -> bool {
        once(&self.normal_host, || is_normal_authority(host))
    }
}

fn once(cell: &Cell<Option<bool>>, f: impl FnOnce() -> bool) -> bool {
    cell.get().unwrap_or_else(|| {
        let v = f();
        cell.set(Some(v));
        v
    })
}

/// How the request fits the entries (they are OR-ed; the fields inside one
/// entry are AND-ed; an empty field matches anything).
pub(crate) fn fit_any(entries: &[HttpMatch], req: &Checked<'_>) -> Fit {
    entries
        .iter()
        .fold(Fit::NoMatch, |acc, m| acc.or(fit(m, req)))
}

fn fit(m: &HttpMatch, req: &Checked<'_>) -> Fit {
    let method = Fit::of(m.methods.is_empty() || m.methods.iter().any(|x| x == req.req.method));
    let path = if m.paths.is_empty() {
        Fit::Match
    } else {
        path_fit(&m.paths, req)
    };
    let host = match (m.hosts.is_empty(), req.req.host) {
        (true, _) => Fit::Match,
        (false, None) => Fit::NoMatch,
        (false, Some(h)) if !req.normal_host(h) => Fit::Ambiguous,
        (false, Some(h)) => Fit::of(host_matches(&m.hosts, h)),
    };
    method.and(path).and(host)
}

fn path_fit(paths: &[PathMatch], req: &Checked<'_>) -> Fit {
    // A path the proxy did not normalize could climb out of a prefix
    // (`/v1/refunds/../admin`) or mean another to the app: never guess.
    if !req.normal_path() {
        return Fit::Ambiguous;
    }
    Fit::of(paths.iter().any(|p| path_matches(p, req.path)))
}

/// Whether a normalized `path` (without query) fits `p`.
pub(crate) fn path_matches(p: &PathMatch, path: &str) -> bool {
    match p {
        PathMatch::Exact(e) => e == path,
        PathMatch::Prefix(pre) => under_prefix(pre, path),
        PathMatch::Template { path: t, prefix } => fits_template(t, *prefix, path),
    }
}

/// `path` is `prefix` itself or below it (`/v1/refunds/*` stored as `/v1/refunds`).
pub(crate) fn under_prefix(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.is_empty()
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// `path` fits `template` segment by segment: a `{name}` takes any one
/// non-empty segment; with `prefix`, `path` may go on below.
fn fits_template(template: &str, prefix: bool, path: &str) -> bool {
    let mut got = path.split('/');
    for want in template.split('/') {
        match got.next() {
            Some(seg) if is_placeholder(want) && !seg.is_empty() => {}
            Some(seg) if seg == want => {}
            _ => return false,
        }
    }
    prefix || got.next().is_none()
}

fn host_matches(hosts: &[HostMatch], raw: &str) -> bool {
    let host = strip_port(raw);
    hosts.iter().any(|h| match h {
        HostMatch::Exact(e) => e.eq_ignore_ascii_case(host),
        HostMatch::Suffix(s) => {
            host.len() > s.len()
                && host.is_char_boundary(host.len() - s.len())
                && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
        }
    })
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit_any(entries: &[HttpMatch], req: &HttpInfo<'_>) -> Fit {
        super::fit_any(entries, &Checked::new(*req))
    }

    fn matches_any(entries: &[HttpMatch], req: &HttpInfo<'_>) -> bool {
        fit_any(entries, req) == Fit::Match
    }

    fn req<'a>(method: &'a str, path: &'a str, host: Option<&'a str>) -> HttpInfo<'a> {
        HttpInfo { method, path, host }
    }

    fn entry(methods: &[&str], paths: &[PathMatch], hosts: &[HostMatch]) -> HttpMatch {
        HttpMatch {
            methods: methods.iter().map(|s| s.to_string()).collect(),
            paths: paths.to_vec(),
            hosts: hosts.to_vec(),
        }
    }

    #[test]
    fn prefix_path_matches_itself_and_below_but_not_siblings() {
        let m = [entry(&[], &[PathMatch::Prefix("/v1/refunds".into())], &[])];
        assert!(matches_any(&m, &req("GET", "/v1/refunds", None)));
        assert!(matches_any(&m, &req("GET", "/v1/refunds/42?x=1", None)));
        assert!(!matches_any(&m, &req("GET", "/v1/refundsX", None)));
        assert!(!matches_any(&m, &req("GET", "/v1", None)));
    }

    #[test]
    fn a_placeholder_matches_exactly_one_non_empty_segment() {
        let t = |path: &str, prefix| PathMatch::Template {
            path: path.into(),
            prefix,
        };
        let m = [entry(&[], &[t("/v1/users/{id}", false)], &[])];
        assert!(matches_any(&m, &req("GET", "/v1/users/42", None)));
        assert!(matches_any(&m, &req("GET", "/v1/users/42?full=1", None)));
        for no in [
            "/v1/users",
            "/v1/users/",
            "/v1/users/42/admin",
            "/v1/users/42/",
            "/v1/user/42",
        ] {
            assert!(!matches_any(&m, &req("GET", no, None)), "{no}");
        }
        let m = [entry(&[], &[t("/v1/{org}/orders", false)], &[])];
        assert!(matches_any(&m, &req("GET", "/v1/acme/orders", None)));
        assert!(!matches_any(&m, &req("GET", "/v1/acme/x/orders", None)));
        assert!(!matches_any(&m, &req("GET", "/v1/acme/orders/1", None)));
        let m = [entry(&[], &[t("/v1/users/{id}", true)], &[])];
        for yes in ["/v1/users/42", "/v1/users/42/", "/v1/users/42/orders/7"] {
            assert!(matches_any(&m, &req("GET", yes, None)), "{yes}");
        }
        assert!(!matches_any(&m, &req("GET", "/v1/users", None)));
        assert_eq!(
            fit_any(&m, &req("GET", "/v1/users/1/../../admin", None)),
            Fit::Ambiguous
        );
    }

    #[test]
    fn root_prefix_matches_every_path() {
        let m = [entry(&[], &[PathMatch::Prefix(String::new())], &[])];
        assert!(matches_any(&m, &req("GET", "/", None)));
        assert!(matches_any(&m, &req("GET", "/anything/at/all", None)));
    }

    #[test]
    fn a_path_not_in_normal_form_is_ambiguous_to_a_path_rule() {
        let m = [entry(&[], &[PathMatch::Prefix("/v1/refunds".into())], &[])];
        for p in [
            "/v1/refunds/../admin",
            "/v1/refunds/%2e%2e/admin",
            "/v1/refunds%2Fx",
            "/v1/refunds/./x",
            "/v1/refunds\\x",
            "//v1/refunds",
            "/v1/refunds;x",
            "/%761/refunds",
            "*",
        ] {
            assert_eq!(fit_any(&m, &req("GET", p, None)), Fit::Ambiguous, "{p}");
        }
    }

    #[test]
    fn a_definite_mismatch_elsewhere_beats_an_ambiguous_path() {
        let m = [entry(&["POST"], &[PathMatch::Prefix("/admin".into())], &[])];
        assert_eq!(fit_any(&m, &req("GET", "/x/../admin", None)), Fit::NoMatch);
        assert_eq!(
            fit_any(&m, &req("POST", "/x/../admin", None)),
            Fit::Ambiguous
        );
        let hosts = [entry(&[], &[], &[HostMatch::Exact("admin.demo".into())])];
        assert_eq!(
            fit_any(&hosts, &req("GET", "/", Some("ADMIN.demo."))),
            Fit::Ambiguous
        );
        assert_eq!(
            fit_any(&hosts, &req("GET", "/", Some("admin.demo"))),
            Fit::Match
        );
        assert_eq!(
            fit_any(&hosts, &req("GET", "/", Some("public.demo"))),
            Fit::NoMatch
        );
    }

    #[test]
    fn methods_and_hosts_are_and_ed_with_paths() {
        let m = [entry(
            &["POST"],
            &[PathMatch::Exact("/v1/charge".into())],
            &[
                HostMatch::Exact("payments.shop".into()),
                HostMatch::Suffix(".example.com".into()),
            ],
        )];
        assert!(matches_any(
            &m,
            &req("POST", "/v1/charge", Some("payments.shop:8080"))
        ));
        assert!(matches_any(
            &m,
            &req("POST", "/v1/charge", Some("api.example.com"))
        ));
        assert!(!matches_any(
            &m,
            &req("GET", "/v1/charge", Some("payments.shop"))
        ));
        assert!(!matches_any(&m, &req("POST", "/v1/charge", None)));
        assert!(!matches_any(
            &m,
            &req("POST", "/v1/charge", Some("example.com"))
        ));
    }

    #[test]
    fn strips_ports_from_hosts_including_ipv6_literals() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
