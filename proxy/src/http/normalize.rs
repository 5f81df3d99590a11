//! Rewrites a request into its normal form before it is authorized, so the
//! rule that decides it and the app that serves it see the same path and
//! the same single authority. The rules live in `palisade_policy::normalize`.

use std::borrow::Cow;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version};
use palisade_policy::normalize::{self, Normalization, Rejection};

/// Normalize `req` in place: path, one authority (`:authority` for
/// HTTP/2; `Host`, and the target's when absolute-form, for HTTP/1). A
/// request already in normal form is left untouched, without allocating.
pub fn apply<B>(req: &mut Request<B>, cfg: &Normalization) -> Result<(), Rejection> {
    let h2 = req.version() == Version::HTTP_2;
    let (target, authority) = {
        let uri = req.uri();
        let hosts = req.headers().get_all(HOST);
        let host_count = hosts.iter().count();
        let n = normalize::request(
            req.method().as_str(),
            uri.path_and_query().map_or("/", PathAndQuery::as_str),
            uri.authority().map(Authority::as_str),
            hosts.iter().map(HeaderValue::as_bytes),
            cfg,
        )?;
        let target = matches!(n.path, Cow::Owned(_)).then(|| n.target());
        // Exactly one copy, in the place this version carries it.
        let misplaced = match &n.authority {
            None => false,
            Some(_) if h2 => host_count > 0,
            Some(_) => host_count == 0,
        };
        let authority = n
            .authority
            .filter(|a| matches!(a, Cow::Owned(_)) || misplaced)
            .map(Cow::into_owned);
        (target, authority)
    };
    if target.is_none() && authority.is_none() {
        return Ok(());
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(t) = target {
        parts.path_and_query =
            Some(PathAndQuery::try_from(t).map_err(|_| Rejection::InvalidCharacter)?);
    }
    if let Some(a) = &authority {
        fn bad<E>(_: E) -> Rejection {
            Rejection::InvalidAuthority
        }
        if h2 || parts.authority.is_some() {
            parts.authority = Some(Authority::try_from(a.as_str()).map_err(bad)?);
            parts.scheme.get_or_insert(Scheme::HTTP);
        }
        let headers = req.headers_mut();
        headers.remove(HOST);
        if !h2 {
            headers.insert(HOST, HeaderValue::try_from(a.as_str()).map_err(bad)?);
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Rejection::InvalidCharacter)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    fn hosts(r: &Request<()>) -> Vec<&str> {
        r.headers()
            .get_all(HOST)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn http1_gets_the_normal_path_and_one_normal_host() {
        let mut r = req(
            Version::HTTP_11,
            "/public/../admin/%61.txt?q=%2f",
            &["ADMIN.demo."],
        );
        apply(&mut r, &Normalization::default()).unwrap();
        assert_eq!(r.uri().to_string(), "/admin/a.txt?q=%2f");
        assert_eq!(hosts(&r), ["admin.demo"]);
    }

    #[test]
    fn absolute_form_and_host_must_agree_and_end_up_the_same() {
        let mut r = req(
            Version::HTTP_11,
            "http://Public.demo:80/x",
            &["public.demo"],
        );
        apply(&mut r, &Normalization::default()).unwrap();
        assert_eq!(r.uri().to_string(), "http://public.demo/x");
        assert_eq!(hosts(&r), ["public.demo"]);
        let mut r = req(Version::HTTP_11, "http://public.demo/x", &["admin.demo"]);
        assert_eq!(
            apply(&mut r, &Normalization::default()),
            Err(Rejection::ConflictingAuthority)
        );
        let mut r = req(Version::HTTP_11, "http://public.demo/x", &[]);
        apply(&mut r, &Normalization::default()).unwrap();
        assert_eq!(hosts(&r), ["public.demo"]);
    }

    #[test]
    fn http2_keeps_only_the_authority() {
        let mut r = req(Version::HTTP_2, "http://public.demo/x", &["public.demo."]);
        apply(&mut r, &Normalization::default()).unwrap();
        assert_eq!(r.uri().to_string(), "http://public.demo/x");
        assert!(hosts(&r).is_empty());
        let mut r = req(Version::HTTP_2, "http://public.demo/x", &["admin.demo"]);
        assert_eq!(
            apply(&mut r, &Normalization::default()),
            Err(Rejection::ConflictingAuthority)
        );
    }

    #[test]
    fn a_normal_request_is_left_as_is() {
        let mut r = req(Version::HTTP_11, "/v1/a?b=c", &["a.demo:8080"]);
        apply(&mut r, &Normalization::default()).unwrap();
        assert_eq!(r.uri().to_string(), "/v1/a?b=c");
        assert_eq!(hosts(&r), ["a.demo:8080"]);
    }
}
