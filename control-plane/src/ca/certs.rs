//! Certificate templates: signing CAs and leaf SVIDs per the X509-SVID spec.
//! These are the only places that decide what goes into a certificate; nothing
//! from a CSR except its public key ever reaches them.

use std::time::Duration;

use palisade_policy::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::CaError;

/// Leaves are backdated this much so a peer whose clock runs a little behind
/// still accepts them (the spec allows at most one minute).
pub const LEAF_BACKDATE: Duration = Duration::from_secs(30);
/// CAs are backdated the full minute, so the leaves they sign (backdated
/// less) always fall inside the CA's validity.
pub const CA_BACKDATE: Duration = Duration::from_secs(60);

/// A random, positive, 16-byte serial with a non-zero first byte, so its DER
/// encoding is exactly 16 bytes.
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn uri_san(id: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(id.try_into().map_err(CaError::Rcgen)?))
}

/// A signing CA for `td`: CA=true, keyCertSign and cRLSign, URI SAN
/// `spiffe://<td>` with no path. `path_len` 0 when it signs only leaves.
pub fn signing_ca_params(
    td: &TrustDomain,
    seq: u64,
    now: OffsetDateTime,
    ttl: Duration,
    cap: Option<OffsetDateTime>,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    dn.push(DnType::CommonName, format!("Palisade CA {td} #{seq}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![uri_san(&td.id_string())?];
    p.serial_number = Some(random_serial());
    p.not_before = now - CA_BACKDATE;
    let not_after = now + ttl;
    p.not_after = cap.map_or(not_after, |c| c.min(not_after));
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// A leaf SVID for `id`: exactly one URI SAN (plus `dns_names`, used only for
/// the control plane's own serving certificate), CA=false, critical
/// keyUsage digitalSignature, EKU serverAuth+clientAuth, random serial,
/// backdated 30 s, and never valid past `ca_not_after`.
pub fn leaf_params(
    id: &SpiffeId,
    dns_names: &[&str],
    now: OffsetDateTime,
    ttl: Duration,
    ca_not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Palisade");
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.subject_alt_names = vec![uri_san(id.as_str())?];
    for dns in dns_names {
        p.subject_alt_names
            .push(SanType::DnsName((*dns).try_into().map_err(CaError::Rcgen)?));
    }
    p.serial_number = Some(random_serial());
    p.not_before = now - LEAF_BACKDATE;
    p.not_after = (now + ttl).min(ca_not_after);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}
