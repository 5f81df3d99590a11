//! The trust bundle in the SPIFFE bundle format (a JWKS whose keys have
//! `use: x509-svid` and carry their certificate in `x5c`), so SPIFFE tooling
//! elsewhere can federate with this trust domain.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::public_key::PublicKey;

use crate::svid::{parse_cert, SvidError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpiffeBundle {
    pub keys: Vec<BundleKey>,
    pub spiffe_sequence: u64,
    /// Seconds after which a consumer should fetch the bundle again.
    pub spiffe_refresh_hint: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleKey {
    #[serde(rename = "use")]
    pub use_: String,
    pub kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Exactly one certificate: the CA itself (standard base64 DER).
    pub x5c: Vec<String>,
}

impl SpiffeBundle {
    /// The CA certificates of the `x509-svid` keys, each checked to parse.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, SvidError> {
        let x509 = self.keys.iter().filter(|k| k.use_ == "x509-svid");
        x509.map(|k| match k.x5c.as_slice() {
            [one] => {
                let der = STANDARD
                    .decode(one)
                    .map_err(|e| SvidError::Parse(format!("x5c is not base64: {e}")))?;
                parse_cert(&der)?;
                Ok(CertificateDer::from(der))
            }
            other => Err(SvidError::Parse(format!(
                "an x509-svid key carries {} x5c certificates; exactly one is expected",
                other.len()
            ))),
        })
        .collect()
    }
}

/// Builds the SPIFFE bundle document for a set of CA certificates.
pub fn spiffe_bundle(
    cas: &[CertificateDer<'_>],
    sequence: u64,
    refresh_hint_secs: u64,
) -> Result<SpiffeBundle, SvidError> {
    let keys = cas
        .iter()
        .map(|c| bundle_key(c))
        .collect::<Result<_, _>>()?;
    Ok(SpiffeBundle {
        keys,
        spiffe_sequence: sequence,
        spiffe_refresh_hint: refresh_hint_secs,
    })
}

fn bundle_key(der: &CertificateDer<'_>) -> Result<BundleKey, SvidError> {
    let cert = parse_cert(der)?;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let mut key = BundleKey {
        use_: "x509-svid".into(),
        kty: String::new(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        x5c: vec![STANDARD.encode(der.as_ref())],
    };
    match cert
        .public_key()
        .parsed()
        .map_err(|e| SvidError::Parse(e.to_string()))?
    {
        PublicKey::EC(point) => {
            // Uncompressed SEC1 point: 0x04 || X || Y.
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                n => {
                    return Err(SvidError::Parse(format!(
                        "unsupported EC point of {n} bytes"
                    )))
                }
            };
            key.kty = "EC".into();
            key.crv = Some(crv.into());
            key.x = Some(b64(&data[1..1 + len]));
            key.y = Some(b64(&data[1 + len..]));
        }
        PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| {
                b.iter()
                    .skip_while(|x| **x == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            key.kty = "RSA".into();
            key.n = Some(b64(&strip(rsa.modulus)));
            key.e = Some(b64(&strip(rsa.exponent)));
        }
        other => {
            return Err(SvidError::Parse(format!(
                "unsupported CA key type {other:?}"
            )))
        }
    }
    Ok(key)
}
