//! SPIFFE identities (`spiffe://<trust-domain>/<path>`), parsed and validated
//! per the SPIFFE ID specification. Parse at the edge, then trust the type.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID must start with `spiffe://`")]
    WrongScheme,
    #[error("SPIFFE ID is {0} bytes; the maximum is 2048")]
    TooLong(usize),
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is {0} bytes; the maximum is 255")]
    TrustDomainTooLong(usize),
    #[error(
        "trust domain may hold only lowercase letters, digits, `.`, `-` and `_` (found {0:?})"
    )]
    BadTrustDomainChar(char),
    #[error("a port is not allowed in a SPIFFE ID")]
    Port,
    #[error("userinfo is not allowed in a SPIFFE ID")]
    UserInfo,
    #[error("a query is not allowed in a SPIFFE ID")]
    Query,
    #[error("a fragment is not allowed in a SPIFFE ID")]
    Fragment,
    #[error("path segments may not be empty (no `//` and no trailing `/`)")]
    EmptySegment,
    #[error("path segments may not be `.` or `..`")]
    DotSegment,
    #[error("path may hold only letters, digits, `.`, `-` and `_` (found {0:?})")]
    BadPathChar(char),
}

/// A validated SPIFFE trust domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let s = s.strip_prefix(SCHEME).unwrap_or(s);
        validate_trust_domain(s)?;
        Ok(TrustDomain(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<td>`, as carried by a CA's URI SAN.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// An ID in this trust domain with the given path (which must start with `/`).
    pub fn id(&self, path: &str) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::parse(&format!("{SCHEME}{}{}", self.0, path))
    }

    /// `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn workload(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        self.id(&format!("/ns/{namespace}/sa/{service_account}"))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(s)
    }
}

/// A validated SPIFFE ID. Cheap to compare; the trust domain and path are
/// slices of one string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (== id.len() when the path is empty).
    path_start: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                validate_segment(seg)?;
            }
        }
        Ok(SpiffeId {
            id: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path, including its leading `/`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }

    /// `(namespace, service_account)` for IDs of the form `/ns/<ns>/sa/<sa>`.
    pub fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SpiffeId::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("bad SPIFFE ID {s:?}: {e}")))
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TrustDomain::new(&s)
            .map_err(|e| serde::de::Error::custom(format!("bad trust domain {s:?}: {e}")))
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    match td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_segment(seg: &str) -> Result<(), SpiffeIdError> {
    if seg.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(SpiffeIdError::DotSegment);
    }
    match seg
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::BadPathChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_id_and_exposes_namespace_and_service_account() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/payments").unwrap();
        assert_eq!(id.trust_domain_str(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/payments");
        assert_eq!(id.ns_sa(), Some(("shop", "payments")));
        assert_eq!(id.namespace(), Some("shop"));
        assert_eq!(id.service_account(), Some("payments"));
        assert!(id.is_member_of(&TrustDomain::new("cluster.local").unwrap()));
    }

    #[test]
    fn trust_domain_id_has_no_path() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.path(), "");
        assert_eq!(id.ns_sa(), None);
        assert_eq!(
            TrustDomain::new("example.org").unwrap().id_string(),
            "spiffe://example.org"
        );
    }

    #[test]
    fn non_workload_paths_have_no_ns_sa() {
        for s in [
            "spiffe://td/ns/shop",
            "spiffe://td/ns/shop/sa/x/extra",
            "spiffe://td/palisade/control-plane",
        ] {
            assert_eq!(SpiffeId::parse(s).unwrap().ns_sa(), None, "{s}");
        }
    }

    #[test]
    fn rejects_each_spec_violation_with_its_reason() {
        use SpiffeIdError::*;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("http://td/x", WrongScheme),
            ("SPIFFE://td/x", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://Cluster.local/x", BadTrustDomainChar('C')),
            ("spiffe://td:8080/x", Port),
            ("spiffe://user@td/x", UserInfo),
            ("spiffe://td/x?q=1", Query),
            ("spiffe://td/x#frag", Fragment),
            ("spiffe://td/a//b", EmptySegment),
            ("spiffe://td/a/", EmptySegment),
            ("spiffe://td/", EmptySegment),
            ("spiffe://td/a/./b", DotSegment),
            ("spiffe://td/a/../b", DotSegment),
            ("spiffe://td/a b", BadPathChar(' ')),
            ("spiffe://td/a%20b", BadPathChar('%')),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(s).unwrap_err(), *want, "{s}");
        }
    }

    #[test]
    fn enforces_length_limits() {
        let td = "a".repeat(256);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{td}/x")).unwrap_err(),
            SpiffeIdError::TrustDomainTooLong(256)
        );
        assert!(SpiffeId::parse(&format!("spiffe://{}/x", "a".repeat(255))).is_ok());
        let long = format!("spiffe://td/{}", "p".repeat(2048));
        assert!(matches!(
            SpiffeId::parse(&long).unwrap_err(),
            SpiffeIdError::TooLong(_)
        ));
        let max = format!("spiffe://td/{}", "p".repeat(2048 - "spiffe://td/".len()));
        assert!(SpiffeId::parse(&max).is_ok());
    }

    #[test]
    fn path_allows_mixed_case_and_punctuation() {
        assert!(SpiffeId::parse("spiffe://td/Ns/A-b_c.d").is_ok());
    }

    #[test]
    fn trust_domain_builds_workload_ids() {
        let td = TrustDomain::new("cluster.local").unwrap();
        assert_eq!(
            td.workload("shop", "api").unwrap().as_str(),
            "spiffe://cluster.local/ns/shop/sa/api"
        );
        assert!(td.workload("bad ns", "api").is_err());
        assert_eq!(
            TrustDomain::new("spiffe://cluster.local").unwrap().as_str(),
            "cluster.local"
        );
    }
}
