//! Path templates: the normalized path that authorization matched, with each
//! segment that looks like an identifier collapsed to `{id}`, so
//! `/v1/users/123` and `/v1/users/456` are one route.

use std::borrow::Cow;

use crate::normalize::is_normal_path;

/// What a collapsed segment becomes.
pub const ID: &str = "{id}";

/// What ends a template cut at `MAX_TEMPLATE` bytes.
pub const REST: &str = "{rest}";

/// A template keeps at most this many bytes of segments (each counted with
/// one separator); the rest of a longer path becomes `/{rest}`, so a flow's
/// memory is bounded whatever the path.
pub const MAX_TEMPLATE: usize = 256;

/// The template of a normalized request path (a query, if any, is dropped).
/// Borrowed when no segment collapses.
pub fn template(path: &str) -> Cow<'_, str> {
    let path = strip_query(path);
    if path.len() < MAX_TEMPLATE && !path.split('/').any(is_id_segment) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in segments(path).enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg);
    }
    Cow::Owned(out)
}

/// The template's segments, `/`-separated (the first is empty), computed
/// without allocating: how the recorder hashes and compares a request's
/// route against learned ones.
pub(crate) fn segments(path: &str) -> Segments<'_> {
    Segments {
        inner: strip_query(path).split('/'),
        used: 0,
        done: false,
    }
}

#[derive(Clone)]
pub(crate) struct Segments<'a> {
    inner: std::str::Split<'a, char>,
    used: usize,
    done: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.done {
            return None;
        }
        let seg = self.inner.next()?;
        let seg = if is_id_segment(seg) { ID } else { seg };
        self.used += seg.len() + 1;
        if self.used > MAX_TEMPLATE {
            self.done = true;
            return Some(REST);
        }
        Some(seg)
    }
}

/// A concrete path a template stands for (`{id}` and `{rest}` become `1`):
/// what export's cases and `diff` ask `decide()` about.
pub(crate) fn example(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s == ID || s == REST { "1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The path a request is learned by: its own when in normal form (what the
/// proxy passes: the path authorization matched), else `/{rest}`, so a
/// caller's mistake cannot make a baseline that does not read back or
/// export.
pub(crate) fn learnable(path: &str) -> &str {
    if path == "*" || is_normal_path(strip_query(path)) {
        path
    } else {
        "/{rest}"
    }
}

fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// Whether a path segment is an identifier rather than a word: an integer,
/// a UUID, 8 or more hex digits, or a long random-looking token (16 or more
/// letters, digits, `-`, `_`, holding two digits or more, or with a quarter
/// or more of it upper case and a quarter lower case). Words such as `v1`,
/// `api`, `users`, `getUserById` or `authentication2fa` never are.
pub fn is_id_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    if b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    let token = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_');
    if b.len() >= 16 && b.iter().all(token) {
        let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
        let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
        let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
        let letters = upper + lower;
        // camelCase words have a few capitals; random tokens about half.
        let mixed_case = upper * 4 >= b.len() && lower * 4 >= b.len();
        return (digits >= 2 && letters > 0) || mixed_case;
    }
    false
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_without_identifiers_is_borrowed() {
        assert!(matches!(template("/v1/users"), Cow::Borrowed("/v1/users")));
        assert!(matches!(template("/"), Cow::Borrowed("/")));
        assert!(matches!(template("/a?id=123"), Cow::Borrowed("/a")));
    }

    #[test]
    fn a_long_path_is_cut_at_the_bound_and_stays_cut() {
        let long = format!("/files/{}", "abcdefg/".repeat(100));
        let t = template(&long);
        assert!(t.len() <= MAX_TEMPLATE + REST.len(), "{}", t.len());
        assert!(
            t.starts_with("/files/abcdefg/") && t.ends_with("/{rest}"),
            "{t}"
        );
        assert_eq!(template(&t), t, "templating a template changes nothing");
        let just_under = format!("/{}", "z".repeat(MAX_TEMPLATE - 2));
        assert!(matches!(template(&just_under), Cow::Borrowed(_)));
        assert_eq!(template(&format!("{just_under}b")), "/{rest}");
    }

    #[test]
    fn segments_agree_with_the_template() {
        let long = format!("/x/{}", "12345/abc/".repeat(60));
        for p in [
            "/v1/users/123/orders/9f86d081884c7d65",
            "/",
            "/x/",
            "*",
            &long,
        ] {
            let joined: Vec<&str> = segments(p).collect();
            assert_eq!(joined.join("/"), template(p));
        }
    }
}
