//! An operator-supplied upstream CA (root or intermediate). Palisade's signing
//! CAs become intermediates under it, so rotation works the same and the
//! upstream key is only used to sign them.

use std::path::Path;

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::CaError;
use palisade_identity::svid::{certs_from_pem, is_ca, parse_cert};

pub struct Upstream {
    pub(super) issuer: Issuer<'static, KeyPair>,
    /// The upstream certificate and any intermediates after it, excluding the
    /// trust anchor: appended to every SVID chain after the signing CA.
    pub(super) chain_tail: Vec<CertificateDer<'static>>,
    /// The last certificate of the upstream file: what peers trust.
    pub(super) anchor: CertificateDer<'static>,
    pub(super) not_after: OffsetDateTime,
    /// SHA-256 of the upstream certificate, to notice when it changes.
    pub(super) fingerprint: String,
}

impl Upstream {
    /// Loads `cert_path` (the upstream CA certificate first, optionally
    /// followed by its chain up to a root) and its PKCS#8 key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Upstream, CaError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| CaError::Io(p.display().to_string(), e))
        };
        let certs = certs_from_pem(read(cert_path)?.as_bytes())
            .map_err(|e| CaError::Upstream(e.to_string()))?;
        let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| {
            CaError::Upstream(format!(
                "{}: {e} (a PKCS#8 PEM key is expected)",
                key_path.display()
            ))
        })?;
        let first = parse_cert(&certs[0]).map_err(|e| CaError::Upstream(e.to_string()))?;
        if !is_ca(&first) {
            return Err(CaError::Upstream(format!(
                "{} is not a CA certificate (basicConstraints cA=false)",
                cert_path.display()
            )));
        }
        if first.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Upstream(format!(
                "{} does not belong to {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        let not_after = first.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CaError::Upstream(format!(
                "{} has expired",
                cert_path.display()
            )));
        }
        let fingerprint = hex::encode(Sha256::digest(certs[0].as_ref()));
        drop(first);
        let issuer = Issuer::from_ca_cert_der(&certs[0], key)
            .map_err(|e| CaError::Upstream(e.to_string()))?;
        let anchor = certs.last().expect("non-empty").clone();
        let chain_tail = certs[..certs.len() - 1].to_vec();
        Ok(Upstream {
            issuer,
            chain_tail,
            anchor,
            not_after,
            fingerprint,
        })
    }
}
