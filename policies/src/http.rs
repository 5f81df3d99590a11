//! Matching one HTTP request against a rule's `http` conditions, without
//! allocating.

use crate::decision::HttpInfo;
use crate::model::{HostMatch, HttpMatch, PathMatch};

/// Whether the request matches any of the entries (they are OR-ed; the
/// fields inside one entry are AND-ed; an empty field matches anything).
pub(crate) fn matches_any(entries: &[HttpMatch], req: &HttpInfo<'_>) -> bool {
    entries.iter().any(|m| matches(m, req))
}

fn matches(m: &HttpMatch, req: &HttpInfo<'_>) -> bool {
    (m.methods.is_empty() || m.methods.iter().any(|x| x == req.method))
        && (m.paths.is_empty() || path_matches(&m.paths, req.path))
        && (m.hosts.is_empty() || req.host.is_some_and(|h| host_matches(&m.hosts, h)))
}

fn path_matches(paths: &[PathMatch], raw: &str) -> bool {
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    // A path the proxy did not normalize could climb out of a prefix
    // (`/v1/refunds/../admin`): fail closed rather than guess.
    if is_ambiguous(path) {
        return false;
    }
    paths.iter().any(|p| match p {
        PathMatch::Exact(e) => e == path,
        PathMatch::Prefix(pre) => under_prefix(pre, path),
    })
}

/// `path` is `prefix` itself or below it (`/v1/refunds/*` stored as `/v1/refunds`).
pub(crate) fn under_prefix(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.is_empty()
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Dot segments, encoded separators or dots, and backslashes.
fn is_ambiguous(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return true;
    }
    let b = path.as_bytes();
    let encoded = b.windows(3).any(|w| {
        w[0] == b'%'
            && (w[1] == b'2' && matches!(w[2], b'e' | b'E' | b'f' | b'F')
                || w[1] == b'5' && matches!(w[2], b'c' | b'C'))
    });
    encoded || path.split('/').any(|seg| seg == "." || seg == "..")
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
    fn root_prefix_matches_every_path() {
        let m = [entry(&[], &[PathMatch::Prefix(String::new())], &[])];
        assert!(matches_any(&m, &req("GET", "/", None)));
        assert!(matches_any(&m, &req("GET", "/anything/at/all", None)));
    }

    #[test]
    fn dot_segments_and_encoded_separators_never_match_a_path_rule() {
        let m = [entry(&[], &[PathMatch::Prefix("/v1/refunds".into())], &[])];
        for p in [
            "/v1/refunds/../admin",
            "/v1/refunds/%2e%2e/admin",
            "/v1/refunds%2Fx",
            "/v1/refunds/./x",
            "/v1/refunds\\x",
        ] {
            assert!(!matches_any(&m, &req("GET", p, None)), "{p}");
        }
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
            &req("POST", "/v1/charge", Some("API.example.com"))
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
