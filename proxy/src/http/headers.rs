//! Header rewriting between hops: hop-by-hop headers are removed (RFC 9110
//! §7.6.1), `x-forwarded-client-cert` is only ever the proxy's own, and the
//! original protocol of a request is carried between sidecars when HTTP/1
//! rides the HTTP/2 hop.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

/// Envoy's caller-identity header, which the app may trust because the
/// proxy strips every copy that arrives from outside.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Set by the outbound sidecar when the app spoke HTTP/1.x, so the inbound
/// sidecar speaks HTTP/1.1 to its app although the hop between them is
/// HTTP/2. Removed from anything the app sends.
pub static ORIG_PROTO: HeaderName = HeaderName::from_static("palisade-orig-proto");

/// Names the policy and rule that denied a request.
pub static DENIED: HeaderName = HeaderName::from_static("x-palisade-denied");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether this HTTP/1.1 request asks to switch protocols (WebSocket).
pub fn wants_upgrade(headers: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Remove hop-by-hop headers, keeping `Upgrade`/`Connection: upgrade` when
/// an upgrade is being passed through, and `TE: trailers` (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Fields named in Connection are hop-by-hop too. Most requests have no
    // Connection header, so the common path allocates nothing.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    } else {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// `By=<own id>;URI=<peer id>`, built once per connection.
pub fn xfcc_value(own: &str, peer: &str) -> Option<HeaderValue> {
    HeaderValue::try_from(format!("By={own};URI={peer}")).ok()
}

/// Every copy from outside goes; the proxy's own (if any) is the only one.
pub fn set_xfcc(headers: &mut HeaderMap, value: Option<&HeaderValue>) {
    headers.remove(&XFCC);
    if let Some(v) = value {
        headers.insert(XFCC.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("x-app", "stays"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "stays");
    }

    #[test]
    fn upgrades_and_te_trailers_survive() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(wants_upgrade(&h, Version::HTTP_11));
        assert!(!wants_upgrade(&h, Version::HTTP_10));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn a_spoofed_xfcc_is_replaced_by_the_proxys_own() {
        let mut h = map(&[("x-forwarded-client-cert", "By=evil;URI=spiffe://x/admin")]);
        let own = xfcc_value("spiffe://td/b", "spiffe://td/a").unwrap();
        set_xfcc(&mut h, Some(&own));
        assert_eq!(
            h.get_all(&XFCC).iter().collect::<Vec<_>>(),
            vec!["By=spiffe://td/b;URI=spiffe://td/a"]
        );
        set_xfcc(&mut h, None);
        assert!(!h.contains_key(&XFCC));
    }
}
