//! SPIFFE credentials for the proxies under test: a trust bundle and one
//! X.509-SVID each for the client side and the server side, written as PEM files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use palisade_identity::api::{Attestation, SvidRequest};
use palisade_identity::client::ApiClient;
use palisade_identity::csr::new_key_and_csr;
use palisade_identity::svid::certs_from_pem;
use palisade_policy::TrustDomain;
use palisadectl::local::{ControlPlane, ControlPlaneSpec};

use super::tools::Tools;

pub const TRUST_DOMAIN: &str = "spiffe://cluster.local";
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";

/// Where the SVIDs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertSource {
    /// The control plane when its binaries are built, else minted.
    Auto,
    /// A throwaway CA minted in-process with rcgen.
    Minted,
    /// The real Palisade control plane: join tokens from `palisadectl token create`,
    /// then `POST /v1/svid` (docs/control-plane-api.md).
    ControlPlane,
}

/// One workload's X.509-SVID as PEM files.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    pub spiffe_id: &'static str,
    /// Leaf first, then any intermediates.
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// Everything a pair of sidecars needs to speak mTLS with each other.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Minted or ControlPlane, never Auto.
    pub source: CertSource,
    pub bundle: PathBuf,
    pub client: SvidFiles,
    pub server: SvidFiles,
}

/// An SVID in memory, for in-process TLS (the handshake microbench).
pub struct MintedSvid {
    pub chain_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

/// A throwaway SPIFFE CA that signs SVIDs.
pub struct MintedCa {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl MintedCa {
    pub fn new() -> anyhow::Result<MintedCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "palisade-bench CA");
        params.subject_alt_names = vec![SanType::URI(TRUST_DOMAIN.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(MintedCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An SVID with exactly one URI SAN, usable as client and server certificate.
    /// `dns_name` is only for plain WebPKI verifiers that insist on a server name.
    pub fn svid(&self, spiffe_id: &str, dns_name: Option<&str>) -> anyhow::Result<MintedSvid> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        if let Some(dns) = dns_name {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into()?));
        }
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(MintedSvid {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

/// Obtain credentials from `source` and write them under `dir`. With the
/// control plane, it is returned too: it must outlive the run, because
/// Palisade's proxies fetch (and renew) their own SVIDs from it.
pub(crate) async fn obtain(
    source: CertSource,
    tools: &Tools,
    dir: &Path,
) -> anyhow::Result<(Credentials, Option<ControlPlane>)> {
    let binaries = tools
        .control_plane
        .as_deref()
        .zip(tools.palisadectl.as_deref());
    match (source, binaries) {
        (CertSource::Minted, _) | (CertSource::Auto, None) => Ok((mint(dir)?, None)),
        (_, Some((server, ctl))) => {
            let cp = ControlPlane::start(server, ctl, dir, ControlPlaneSpec::default())?;
            let credentials = Credentials {
                source: CertSource::ControlPlane,
                bundle: cp.bundle_path(),
                client: issue(&cp, CLIENT_ID, dir, "client").await?,
                server: issue(&cp, SERVER_ID, dir, "server").await?,
            };
            Ok((credentials, Some(cp)))
        }
        (CertSource::ControlPlane, None) => bail!(
            "--certs control-plane needs the palisade-control-plane and palisadectl binaries: \
             cargo build --release -p palisade-control-plane, or pass --control-plane-bin \
             and --palisadectl-bin"
        ),
    }
}

/// Issue an SVID for `spiffe_id` with a fresh key through a join token, as a
/// workload gets one, and write chain and key as `<dir>/<name>.pem` and
/// `<dir>/<name>-key.pem`.
async fn issue(
    cp: &ControlPlane,
    spiffe_id: &'static str,
    dir: &Path,
    name: &str,
) -> anyhow::Result<SvidFiles> {
    let bundle = certs_from_pem(&std::fs::read(cp.bundle_path())?)?;
    let td = TrustDomain::new(cp.trust_domain())?;
    let client = ApiClient::new(&cp.addr().to_string(), &td, &bundle, None)?;
    let (key, csr) = new_key_and_csr()?;
    let request = SvidRequest {
        csr,
        attestation: Attestation::JoinToken(cp.join_token(spiffe_id, "10m")?),
    };
    let svid = client.issue(&request).await.context("POST /v1/svid")?;
    if svid.spiffe_id != spiffe_id {
        bail!(
            "asked for {spiffe_id}, the control plane issued {}",
            svid.spiffe_id
        );
    }
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok(SvidFiles {
        spiffe_id,
        chain: write(dir, &format!("{name}.pem"), &svid.svid_chain)?,
        key: key_path,
    })
}

fn mint(dir: &Path) -> anyhow::Result<Credentials> {
    let ca = MintedCa::new()?;
    let bundle = write(dir, "bundle.pem", &ca.cert_pem)?;
    let client = write_svid(dir, "client", CLIENT_ID, &ca.svid(CLIENT_ID, None)?)?;
    let server = write_svid(dir, "server", SERVER_ID, &ca.svid(SERVER_ID, None)?)?;
    Ok(Credentials {
        source: CertSource::Minted,
        bundle,
        client,
        server,
    })
}

fn write_svid(
    dir: &Path,
    name: &str,
    spiffe_id: &'static str,
    svid: &MintedSvid,
) -> anyhow::Result<SvidFiles> {
    Ok(SvidFiles {
        spiffe_id,
        chain: write(dir, &format!("{name}.pem"), &svid.chain_pem)?,
        key: write(dir, &format!("{name}-key.pem"), &svid.key_pem)?,
    })
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn minted_credentials_are_written_as_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let (creds, cp) = obtain(CertSource::Minted, &Tools::default(), dir.path())
            .await
            .unwrap();
        assert!(cp.is_none());
        for path in [&creds.bundle, &creds.client.chain, &creds.server.key] {
            let pem = std::fs::read_to_string(path).unwrap();
            assert!(
                pem.starts_with("-----BEGIN"),
                "{} is not PEM",
                path.display()
            );
        }
        assert_eq!(creds.client.spiffe_id, CLIENT_ID);
    }
}
