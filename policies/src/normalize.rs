//! One HTTP request, normalized once before any rule sees it: the path, the
//! authority and the method that `decide()` is asked about are exactly what
//! the proxy forwards. Pure; the proxy and `palisadectl policy explain` both
//! call it, so they agree.
//!
//! The path: percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`)
//! are decoded, once; other escapes are kept, in upper-case hex; `.` and `..`
//! segments are resolved (never above the root); repeated slashes merged.
//! Classes an app may read differently from the proxy each have a
//! `Handling` (see `Normalization`); `%00` and broken escapes are always
//! refused. The authority: one of `Host` / `:authority` / absolute-form,
//! lower-cased, trailing dot and port 80 removed.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use crate::decision::HttpInfo;

/// What to do with one class of ambiguous path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handling {
    /// Answer 400 before any rule is matched.
    #[default]
    Reject,
    /// Rewrite it (see each class), then match and forward the result.
    Normalize,
}

/// The per-class handling; every class defaults to `reject`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Normalization {
    /// `%2F` and `%5C`; normalize decodes them to `/` (then merged).
    pub escaped_slashes: Handling,
    /// A raw `\`; normalize turns it into `/`.
    pub backslash: Handling,
    /// `;` (or `%3B`) in a segment; normalize strips it and what follows up
    /// to the next `/` (`/a;x=1/b` becomes `/a/b`).
    pub path_parameters: Handling,
    /// `#...` in the request target; normalize drops it.
    pub fragment: Handling,
}

/// Why a request is answered 400 before any rule is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    InvalidEncoding,
    EncodedNul,
    InvalidCharacter,
    NotAbsolutePath,
    EscapedSlash,
    Backslash,
    PathParameters,
    Fragment,
    InvalidAuthority,
    DuplicateHost,
    ConflictingAuthority,
}

impl Rejection {
    /// The metrics `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::InvalidEncoding => "invalid_percent_encoding",
            Rejection::EncodedNul => "encoded_nul",
            Rejection::InvalidCharacter => "invalid_path_character",
            Rejection::NotAbsolutePath => "invalid_path",
            Rejection::EscapedSlash => "escaped_slash",
            Rejection::Backslash => "backslash",
            Rejection::PathParameters => "path_parameters",
            Rejection::Fragment => "fragment",
            Rejection::InvalidAuthority => "invalid_authority",
            Rejection::DuplicateHost => "duplicate_host",
            Rejection::ConflictingAuthority => "conflicting_authority",
        }
    }

    /// A one-line explanation, also the 400's body.
    pub fn text(self) -> &'static str {
        match self {
            Rejection::InvalidEncoding => "the path has a `%` not followed by two hex digits",
            Rejection::EncodedNul => "the path has an encoded NUL (`%00`)",
            Rejection::InvalidCharacter => "the path has a control character or a space",
            Rejection::NotAbsolutePath => "the path does not start with `/`",
            Rejection::EscapedSlash => {
                "the path has an encoded slash or backslash (`%2F`, `%5C`); see http.normalization.escaped_slashes"
            }
            Rejection::Backslash => {
                "the path has a backslash; see http.normalization.backslash"
            }
            Rejection::PathParameters => {
                "the path has `;` parameters; see http.normalization.path_parameters"
            }
            Rejection::Fragment => {
                "the request target has a `#` fragment; see http.normalization.fragment"
            }
            Rejection::InvalidAuthority => "the Host or :authority is not a valid host[:port]",
            Rejection::DuplicateHost => "the request has more than one Host header",
            Rejection::ConflictingAuthority => {
                "the Host header and the request target (or :authority) name different hosts"
            }
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl std::error::Error for Rejection {}

/// A request as it is decided and forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    pub method: &'a str,
    /// Borrowed when the request's path was already normal.
    pub path: Cow<'a, str>,
    /// Kept as is (queries are not authorized); re-attached when forwarding.
    pub query: Option<&'a str>,
    /// `None` when the request names no host (HTTP/1.0 without `Host`).
    pub authority: Option<Cow<'a, str>>,
}

impl Normalized<'_> {
    /// What `decide()` matches.
    pub fn info(&self) -> HttpInfo<'_> {
        HttpInfo {
            method: self.method,
            path: &self.path,
            host: self.authority.as_deref(),
        }
    }

    /// The path and query, as forwarded.
    pub fn target(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        }
    }
}

/// Normalizes one request: `target` is the request target's path and query
/// (and, from a CLI, maybe a fragment); `target_authority` the absolute
/// form's or HTTP/2's `:authority`; `hosts` every `Host` header line.
pub fn request<'a, I>(
    method: &'a str,
    target: &'a str,
    target_authority: Option<&'a str>,
    hosts: I,
    cfg: &Normalization,
) -> Result<Normalized<'a>, Rejection>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let (path, query) = split_target(target, cfg)?;
    Ok(Normalized {
        method,
        path: path_of(path, cfg)?,
        query,
        authority: authority(target_authority, hosts)?,
    })
}

/// Path and query, with a fragment handled per `cfg.fragment`.
fn split_target<'a>(
    target: &'a str,
    cfg: &Normalization,
) -> Result<(&'a str, Option<&'a str>), Rejection> {
    let target = match target.split_once('#') {
        Some(_) if cfg.fragment == Handling::Reject => return Err(Rejection::Fragment),
        Some((before, _)) => before,
        None => target,
    };
    Ok(match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    })
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn control(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

/// Whether `path` is its own normal form (what `path_of` returns borrowed).
pub fn is_normal_path(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let dot_segment = |s: &[u8]| s == b"." || s == b"..";
    let mut seg_start = 1;
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'/' => {
                let seg = &b[seg_start..i];
                if seg.is_empty() || dot_segment(seg) {
                    return false;
                }
                seg_start = i + 1;
            }
            b'%' => {
                let upper_hex =
                    |c: Option<&u8>| c.is_some_and(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'));
                if !upper_hex(b.get(i + 1)) || !upper_hex(b.get(i + 2)) {
                    return false;
                }
                let v = hex_value(b[i + 1]).unwrap_or(0) * 16 + hex_value(b[i + 2]).unwrap_or(0);
                if v == 0 || unreserved(v) || matches!(v, b'/' | b'\\' | b';') {
                    return false;
                }
                i += 2;
            }
            b'\\' | b';' | b'#' | b'?' => return false,
            c if control(c) => return false,
            _ => {}
        }
        i += 1;
    }
    !dot_segment(&b[seg_start..])
}

/// The normal form of a path (no query). `*` (`OPTIONS *`) is kept.
pub fn path_of<'a>(path: &'a str, cfg: &Normalization) -> Result<Cow<'a, str>, Rejection> {
    if path == "*" || is_normal_path(path) {
        return Ok(Cow::Borrowed(path));
    }
    let s = decode(path, cfg)?;
    if !s.starts_with('/') {
        return Err(Rejection::NotAbsolutePath);
    }
    Ok(Cow::Owned(resolve(&s)))
}

/// Pass 1: escapes decoded or re-cased, classes applied. `;` survives only
/// when parameters are to be stripped.
fn decode(path: &str, cfg: &Normalization) -> Result<String, Rejection> {
    let b = path.as_bytes();
    let mut s = String::with_capacity(path.len());
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        let width = match b[i] {
            b'%' => 3,
            b'\\' | b';' => 1,
            // `split_target` already took query and fragment off.
            b'#' | b'?' => return Err(Rejection::InvalidCharacter),
            c if control(c) => return Err(Rejection::InvalidCharacter),
            _ => {
                i += 1;
                continue;
            }
        };
        s.push_str(&path[run..i]);
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex_value),
                    b.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(Rejection::InvalidEncoding);
                };
                match h * 16 + l {
                    0 => return Err(Rejection::EncodedNul),
                    b'/' | b'\\' => {
                        s.push_str(slash(cfg.escaped_slashes, Rejection::EscapedSlash)?)
                    }
                    b';' => s.push_str(semicolon(cfg)?),
                    v if unreserved(v) => s.push(v as char),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        s.push('%');
                        s.push(HEX[usize::from(v >> 4)] as char);
                        s.push(HEX[usize::from(v & 0xf)] as char);
                    }
                }
            }
            b'\\' => s.push_str(slash(cfg.backslash, Rejection::Backslash)?),
            _ => s.push_str(semicolon(cfg)?),
        }
        i += width;
        run = i;
    }
    s.push_str(&path[run..]);
    Ok(s)
}

fn slash(h: Handling, why: Rejection) -> Result<&'static str, Rejection> {
    match h {
        Handling::Reject => Err(why),
        Handling::Normalize => Ok("/"),
    }
}

fn semicolon(cfg: &Normalization) -> Result<&'static str, Rejection> {
    match cfg.path_parameters {
        Handling::Reject => Err(Rejection::PathParameters),
        Handling::Normalize => Ok(";"),
    }
}

/// Pass 2: parameters stripped per segment, then empty and dot segments
/// resolved, as RFC 3986 §5.2.4 does, never above the root.
fn resolve(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut trailing = false;
    for seg in s.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => trailing = true,
            ".." => {
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut);
                trailing = true;
            }
            seg => {
                out.push('/');
                out.push_str(seg);
                trailing = false;
            }
        }
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether `authority` is its own normal form.
pub fn is_normal_authority(authority: &str) -> bool {
    matches!(authority_of(authority), Ok(Cow::Borrowed(_)))
}

/// The normal form of one `host[:port]`: lower case, no trailing dot, no
/// port 80, IPv6 literals in canonical form.
pub fn authority_of(raw: &str) -> Result<Cow<'_, str>, Rejection> {
    let bad = Rejection::InvalidAuthority;
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(bad)?),
        };
        (&raw[..inner.len() + 2], port)
    } else {
        match raw.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let mut changed = false;
    let host: Cow<str> = if let Some(inner) = host.strip_prefix('[') {
        let ip: Ipv6Addr = inner.trim_end_matches(']').parse().map_err(|_| bad)?;
        if is_canonical_v6(&ip, host) {
            Cow::Borrowed(host)
        } else {
            changed = true;
            Cow::Owned(format!("[{ip}]"))
        }
    } else {
        let name = match host.strip_suffix('.') {
            Some(n) => {
                changed = true;
                n
            }
            None => host,
        };
        let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
        if name.is_empty() || !name.bytes().all(ok_char) || name.split('.').any(str::is_empty) {
            return Err(bad);
        }
        if name.bytes().any(|c| c.is_ascii_uppercase()) {
            changed = true;
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        }
    };
    let port = match port {
        None => None,
        Some("") => {
            changed = true;
            None
        }
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad);
            }
            let n: u16 = p.parse().map_err(|_| bad)?;
            if n == 0 {
                return Err(bad);
            }
            if n == 80 || p.starts_with('0') {
                changed = true;
            }
            (n != 80).then_some(n)
        }
    };
    if !changed {
        return Ok(Cow::Borrowed(raw));
    }
    Ok(Cow::Owned(match port {
        Some(p) => format!("{host}:{p}"),
        None => host.into_owned(),
    }))
}

/// Whether `bracketed` is `[ip]` as `ip` writes itself, found without
/// allocating: a normal IPv6 host is checked on every request.
fn is_canonical_v6(ip: &Ipv6Addr, bracketed: &str) -> bool {
    use std::io::Write;
    // `[`, at most 45 characters of address, `]`.
    let mut buf = [0u8; 48];
    let left = {
        let mut w = &mut buf[..];
        if write!(w, "[{ip}]").is_err() {
            return false;
        }
        w.len()
    };
    &buf[..buf.len() - left] == bracketed.as_bytes()
}

/// The request's one authority: from the target (absolute form, HTTP/2
/// `:authority`) and the `Host` lines, which must agree once normalized.
pub fn authority<'a, I>(
    target: Option<&'a str>,
    hosts: I,
) -> Result<Option<Cow<'a, str>>, Rejection>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut hosts = hosts.into_iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::DuplicateHost);
    }
    let host = match host {
        Some(h) => Some(authority_of(
            std::str::from_utf8(h).map_err(|_| Rejection::InvalidAuthority)?,
        )?),
        None => None,
    };
    let target = target.map(authority_of).transpose()?;
    match (target, host) {
        (Some(t), Some(h)) if t != h => Err(Rejection::ConflictingAuthority),
        (Some(t), _) => Ok(Some(t)),
        (None, h) => Ok(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Normalization = Normalization {
        escaped_slashes: Handling::Reject,
        backslash: Handling::Reject,
        path_parameters: Handling::Reject,
        fragment: Handling::Reject,
    };
    const LOOSE: Normalization = Normalization {
        escaped_slashes: Handling::Normalize,
        backslash: Handling::Normalize,
        path_parameters: Handling::Normalize,
        fragment: Handling::Normalize,
    };

    fn norm(target: &str, cfg: &Normalization) -> Result<String, Rejection> {
        let (p, q) = split_target(target, cfg)?;
        let p = path_of(p, cfg)?;
        Ok(match q {
            Some(q) => format!("{p}?{q}"),
            None => p.into_owned(),
        })
    }

    #[test]
    fn every_path_class_under_the_default_and_under_normalize() {
        use Rejection::*;
        // (target, default (all reject), all normalize)
        type Want = Result<&'static str, Rejection>;
        let table: &[(&str, Want, Want)] = &[
            ("/public/ok.txt", Ok("/public/ok.txt"), Ok("/public/ok.txt")),
            ("/", Ok("/"), Ok("/")),
            ("/a/", Ok("/a/"), Ok("/a/")),
            (
                "/public/../admin/secret.txt",
                Ok("/admin/secret.txt"),
                Ok("/admin/secret.txt"),
            ),
            (
                "/%61dmin/secret.txt",
                Ok("/admin/secret.txt"),
                Ok("/admin/secret.txt"),
            ),
            (
                "//admin/secret.txt",
                Ok("/admin/secret.txt"),
                Ok("/admin/secret.txt"),
            ),
            (
                "/admin/./secret.txt",
                Ok("/admin/secret.txt"),
                Ok("/admin/secret.txt"),
            ),
            ("/%2e%2e/admin/x", Ok("/admin/x"), Ok("/admin/x")),
            ("/public/%2E%2e/admin/x", Ok("/admin/x"), Ok("/admin/x")),
            ("/../../../etc/passwd", Ok("/etc/passwd"), Ok("/etc/passwd")),
            ("/a/b/..", Ok("/a/"), Ok("/a/")),
            ("/a/.", Ok("/a/"), Ok("/a/")),
            ("/a//b///c", Ok("/a/b/c"), Ok("/a/b/c")),
            ("/a%7eb%5fc", Ok("/a~b_c"), Ok("/a~b_c")),
            ("/a%20b", Ok("/a%20b"), Ok("/a%20b")),
            ("/a%c3%a9", Ok("/a%C3%A9"), Ok("/a%C3%A9")),
            ("/a%252e%252e", Ok("/a%252e%252e"), Ok("/a%252e%252e")),
            (
                "/ADMIN/secret.txt",
                Ok("/ADMIN/secret.txt"),
                Ok("/ADMIN/secret.txt"),
            ),
            (
                "/admin%2fsecret.txt",
                Err(EscapedSlash),
                Ok("/admin/secret.txt"),
            ),
            ("/admin%2F..%2Fx", Err(EscapedSlash), Ok("/x")),
            (
                "/admin%5csecret.txt",
                Err(EscapedSlash),
                Ok("/admin/secret.txt"),
            ),
            (
                "/admin\\secret.txt",
                Err(Backslash),
                Ok("/admin/secret.txt"),
            ),
            (
                "\\admin\\secret.txt",
                Err(Backslash),
                Ok("/admin/secret.txt"),
            ),
            (
                "/admin;x=1/secret.txt",
                Err(PathParameters),
                Ok("/admin/secret.txt"),
            ),
            ("/admin/..;/x", Err(PathParameters), Ok("/x")),
            (
                "/admin%3bx/secret.txt",
                Err(PathParameters),
                Ok("/admin/secret.txt"),
            ),
            (
                "/admin/secret.txt#x",
                Err(Fragment),
                Ok("/admin/secret.txt"),
            ),
            ("/a?x=1#f", Err(Fragment), Ok("/a?x=1")),
            (
                "/a/../b?x=/../y&z=%2f",
                Ok("/b?x=/../y&z=%2f"),
                Ok("/b?x=/../y&z=%2f"),
            ),
            ("/a%00b", Err(EncodedNul), Err(EncodedNul)),
            ("/a%2", Err(InvalidEncoding), Err(InvalidEncoding)),
            ("/a%zzb", Err(InvalidEncoding), Err(InvalidEncoding)),
            ("/a%%32%65", Err(InvalidEncoding), Err(InvalidEncoding)),
            ("/a b", Err(InvalidCharacter), Err(InvalidCharacter)),
            ("admin", Err(NotAbsolutePath), Err(NotAbsolutePath)),
            ("*", Ok("*"), Ok("*")),
        ];
        for (target, strict, loose) in table {
            let want = |r: &Result<&str, Rejection>| r.map(str::to_owned);
            assert_eq!(norm(target, &STRICT), want(strict), "default: {target}");
            assert_eq!(norm(target, &LOOSE), want(loose), "normalize: {target}");
        }
    }

    #[test]
    fn a_normal_path_is_borrowed_and_any_output_is_normal() {
        for p in ["/", "/a", "/a/b/", "/a%20b", "/v1/refunds/42"] {
            assert!(matches!(path_of(p, &STRICT), Ok(Cow::Borrowed(_))), "{p}");
        }
        for p in ["/a/../b", "/%61", "/a;b", "/a%2fb", "//x", "/a\\b"] {
            let once = path_of(p, &LOOSE).unwrap();
            assert!(is_normal_path(&once), "{p} -> {once}");
            assert_eq!(path_of(&once, &STRICT).unwrap(), once);
        }
    }

    #[test]
    fn authorities_are_lower_cased_without_trailing_dot_or_port_80() {
        use Rejection::*;
        for (raw, want) in [
            ("public.demo", Ok("public.demo")),
            ("ADMIN.DEMO.", Ok("admin.demo")),
            ("admin.demo:80", Ok("admin.demo")),
            ("admin.demo:080", Ok("admin.demo")),
            ("admin.demo:8080", Ok("admin.demo:8080")),
            ("admin.demo:", Ok("admin.demo")),
            ("[::1]:80", Ok("[::1]")),
            ("[0:0::1]:8080", Ok("[::1]:8080")),
            ("10.0.0.1:9000", Ok("10.0.0.1:9000")),
            ("", Err(InvalidAuthority)),
            (".", Err(InvalidAuthority)),
            ("a..b", Err(InvalidAuthority)),
            ("a.demo..", Err(InvalidAuthority)),
            ("user@admin.demo", Err(InvalidAuthority)),
            ("admin.demo:99999", Err(InvalidAuthority)),
            ("admin.demo:0", Err(InvalidAuthority)),
            ("a.demo:1:2", Err(InvalidAuthority)),
            ("adm%69n.demo", Err(InvalidAuthority)),
            ("[::1", Err(InvalidAuthority)),
        ] {
            assert_eq!(
                authority_of(raw).map(|c| c.into_owned()),
                want.map(str::to_owned),
                "{raw}"
            );
        }
        assert!(matches!(authority_of("a.demo:8080"), Ok(Cow::Borrowed(_))));
        for v6 in ["[::1]:8080", "[fd00::1]", "[::ffff:10.0.0.1]"] {
            assert!(matches!(authority_of(v6), Ok(Cow::Borrowed(_))), "{v6}");
        }
    }

    #[test]
    fn one_authority_from_target_and_host_which_must_agree() {
        use Rejection::*;
        let one = |t: Option<&'static str>, hosts: &[&'static str]| {
            authority(t, hosts.iter().map(|h| h.as_bytes())).map(|a| a.map(|c| c.into_owned()))
        };
        assert_eq!(one(None, &["a.demo"]), Ok(Some("a.demo".into())));
        assert_eq!(one(Some("a.demo"), &[]), Ok(Some("a.demo".into())));
        assert_eq!(one(None, &[]), Ok(None));
        assert_eq!(
            one(Some("A.demo:80"), &["a.demo."]),
            Ok(Some("a.demo".into()))
        );
        assert_eq!(
            one(Some("public.demo"), &["admin.demo"]),
            Err(ConflictingAuthority)
        );
        assert_eq!(one(None, &["a.demo", "a.demo"]), Err(DuplicateHost));
        assert_eq!(one(None, &["a demo"]), Err(InvalidAuthority));
        assert_eq!(
            authority(None, [&b"\xffa"[..]]).map(|a| a.map(|c| c.into_owned())),
            Err(InvalidAuthority)
        );
    }

    #[test]
    fn a_request_keeps_its_method_and_query() {
        let n = request(
            "GET",
            "/a/../b?q=1",
            Some("X.demo"),
            std::iter::empty(),
            &STRICT,
        )
        .unwrap();
        assert_eq!(n.info().path, "/b");
        assert_eq!(n.info().host, Some("x.demo"));
        assert_eq!(n.info().method, "GET");
        assert_eq!(n.target(), "/b?q=1");
    }
}
