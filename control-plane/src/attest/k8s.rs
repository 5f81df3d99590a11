//! Kubernetes projected service-account tokens, verified offline against the
//! cluster issuer's JWKS file: RS256 or ES256 only, `iss`, `aud: palisade`,
//! `exp` and `nbf` checked, `system:serviceaccount:<ns>:<sa>` (two valid
//! Kubernetes names) mapped to `spiffe://<td>/ns/<ns>/sa/<sa>`.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use palisade_policy::{SpiffeId, TrustDomain};
use serde::Deserialize;

use super::AttestError;

/// The audience a token must carry to be accepted here.
pub const AUDIENCE: &str = "palisade";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew tolerated on `exp`/`nbf`.
pub(crate) const LEEWAY_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: not a JWKS document: {1}")]
    Parse(String, serde_json::Error),
    #[error("{0}: no RS256 or ES256 (P-256) key in the JWKS")]
    NoUsableKey(String),
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct K8sVerifier {
    td: TrustDomain,
    issuer: String,
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

impl K8sVerifier {
    /// Loads the issuer's JWKS; keys that are neither RSA nor EC P-256 are skipped.
    pub fn load(jwks_path: &Path, issuer: &str, td: TrustDomain) -> Result<K8sVerifier, JwksError> {
        let name = jwks_path.display().to_string();
        let bytes = std::fs::read(jwks_path).map_err(|e| JwksError::Io(name.clone(), e))?;
        let set: JwkSet =
            serde_json::from_slice(&bytes).map_err(|e| JwksError::Parse(name.clone(), e))?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let alg = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                        Algorithm::ES256
                    }
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(name));
        }
        Ok(K8sVerifier {
            td,
            issuer: issuer.to_owned(),
            keys,
        })
    }

    /// Verifies a token and returns the SPIFFE ID of its service account.
    pub fn verify(&self, token: &str) -> Result<SpiffeId, AttestError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AttestError::JwtMalformed("token is too long".into()));
        }
        let header = raw_header(token)?;
        // Checked by hand before jsonwebtoken sees the token, so `none` and
        // HMAC get their own clear refusal instead of a parse error.
        let alg = match header.alg.as_deref() {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            Some(other) => {
                return Err(AttestError::JwtAlgRefused(other.chars().take(16).collect()))
            }
            None => return Err(AttestError::JwtMalformed("header has no `alg`".into())),
        };
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| {
                k.alg == alg && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            })
            .collect();
        if candidates.is_empty() {
            return Err(AttestError::JwtUnknownKey(
                header.kid.unwrap_or_default().chars().take(64).collect(),
            ));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        // Off by default in jsonwebtoken; a token minted for later is refused
        // with the same leeway as an expired one.
        validation.validate_nbf = true;
        let mut last = AttestError::JwtBadSignature;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                Ok(data) => return self.map_subject(&data.claims.sub),
                Err(e) => {
                    last = map_error(e.kind());
                    // Only a signature mismatch is worth trying the next key for.
                    if last != AttestError::JwtBadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn map_subject(&self, sub: &str) -> Result<SpiffeId, AttestError> {
        let (ns, sa) = service_account(sub).map_err(|why| AttestError::JwtBadSubject {
            sub: sub.chars().take(128).collect(),
            why,
        })?;
        self.td
            .workload(ns, sa)
            .map_err(|e| AttestError::JwtBadSubject {
                sub: sub.chars().take(128).collect(),
                why: e.to_string(),
            })
    }
}

/// The namespace and service account of `system:serviceaccount:<ns>:<sa>`:
/// exactly two names, each valid in Kubernetes, so neither can add a path
/// segment to the SPIFFE ID.
fn service_account(sub: &str) -> Result<(&str, &str), String> {
    let rest = sub
        .strip_prefix("system:serviceaccount:")
        .ok_or("it does not start with `system:serviceaccount:`")?;
    let (ns, sa) = rest
        .split_once(':')
        .ok_or("it names no service account after the namespace")?;
    dns1123_label(ns).map_err(|e| format!("namespace {ns:?} {e}"))?;
    dns1123_subdomain(sa).map_err(|e| format!("service account {sa:?} {e}"))?;
    Ok((ns, sa))
}

/// A Kubernetes namespace name: an RFC 1123 label.
fn dns1123_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters long");
    }
    label_chars(s)
}

/// A Kubernetes service-account name: an RFC 1123 subdomain, dot-separated
/// labels.
fn dns1123_subdomain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters long");
    }
    s.split('.').try_for_each(label_chars)
}

fn label_chars(s: &str) -> Result<(), &'static str> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Err("may hold only lowercase letters, digits, `-` (and `.` between labels)")
    } else if !edge(s.chars().next()) || !edge(s.chars().last()) {
        Err("must start and end with a lowercase letter or digit")
    } else {
        Ok(())
    }
}

fn raw_header(token: &str) -> Result<RawHeader, AttestError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AttestError::JwtMalformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .map_err(|_| AttestError::JwtMalformed("header is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|e| AttestError::JwtMalformed(format!("header: {e}")))
}

fn map_error(kind: &ErrorKind) -> AttestError {
    match kind {
        ErrorKind::InvalidSignature => AttestError::JwtBadSignature,
        ErrorKind::ExpiredSignature => AttestError::JwtExpired,
        ErrorKind::ImmatureSignature => AttestError::JwtNotYetValid,
        ErrorKind::InvalidIssuer => AttestError::JwtWrongIssuer,
        ErrorKind::InvalidAudience => AttestError::JwtWrongAudience,
        ErrorKind::InvalidAlgorithm => AttestError::JwtAlgRefused("mismatch".into()),
        other => AttestError::JwtMalformed(format!("{other:?}").chars().take(80).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_with_alg_none_is_refused_by_name() {
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let raw = raw_header(&format!("{h}.e30.")).unwrap();
        assert_eq!(raw.alg.as_deref(), Some("none"));
        assert!(raw_header("a.b").is_err());
    }

    #[test]
    fn a_subject_names_exactly_two_valid_kubernetes_names() {
        assert_eq!(
            service_account("system:serviceaccount:shop:api.v2"),
            Ok(("shop", "api.v2"))
        );
        for bad in [
            "system:serviceaccount:demo:client/x/y",
            "system:serviceaccount:a/b:c",
            "system:serviceaccount:demo:a:b",
            "system:serviceaccount:Demo:api",
            "system:serviceaccount:demo:API",
            "system:serviceaccount::api",
            "system:serviceaccount:demo:",
            "system:serviceaccount:-demo:api",
            "system:serviceaccount:demo:api..x",
            "system:serviceaccount:demo",
            "system:node:worker-1",
        ] {
            assert!(service_account(bad).is_err(), "{bad} must be refused");
        }
        let long_ns = format!("system:serviceaccount:{}:api", "a".repeat(64));
        assert!(service_account(&long_ns).is_err());
        let ok_ns = format!("system:serviceaccount:{}:api", "a".repeat(63));
        assert!(service_account(&ok_ns).is_ok());
        let long_sa = format!("system:serviceaccount:demo:{}", "a".repeat(254));
        assert!(service_account(&long_sa).is_err());
    }
}
