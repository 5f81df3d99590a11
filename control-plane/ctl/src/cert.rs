//! `palisadectl cert inspect FILE [--bundle FILE|URL]`: SPIFFE ID, issuer and
//! validity of each certificate in a PEM file, every way it breaks the
//! X509-SVID spec, and with a bundle, whether its chain verifies and its
//! trust domain is the bundle's.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use palisade_policy::TrustDomain;
use rustls::pki_types::CertificateDer;

use palisade_identity::bundle::SpiffeBundle;
use palisade_identity::client::ApiClient;
use palisade_identity::svid::{
    certs_from_pem, check_x509_svid, check_x509_svid_ca, is_ca, parse_cert, spiffe_id_of,
    spiffe_id_of_parsed, verify_chain,
};

#[derive(Debug, clap::Subcommand)]
pub enum CertCmd {
    /// Print what a certificate (or chain) says and whether it is a valid X509-SVID.
    /// Exits 1 when any certificate breaks the spec, or fails the bundle checks.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// PEM file: a leaf SVID first, then its intermediates (or CA certificates).
    pub file: PathBuf,
    /// Verify the leaf's chain and trust domain against a trust bundle: a PEM
    /// file, a SPIFFE bundle JSON file (as served at GET /v1/bundle), or the
    /// control plane's https://HOST:PORT[/v1/bundle].
    #[arg(long, value_name = "FILE|URL")]
    pub bundle: Option<String>,
    /// The trust domain the leaf must belong to (default: the one the
    /// bundle's CA certificates name).
    #[arg(long, value_parser = parse_trust_domain)]
    pub trust_domain: Option<TrustDomain>,
    /// PEM trust anchors that verify the control plane when --bundle is a
    /// URL: the proxy's identity.bootstrap_bundle (e.g. <state-dir>/bundle.pem).
    #[arg(long, env = "PALISADE_BOOTSTRAP_BUNDLE")]
    pub bootstrap_bundle: Option<PathBuf>,
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| e.to_string())
}

pub async fn run(cmd: CertCmd) -> anyhow::Result<i32> {
    match cmd {
        CertCmd::Inspect(args) => {
            let certs = read_pem(&args.file)?;
            let mut clean = true;
            for (i, der) in certs.iter().enumerate() {
                let (report, ok) = inspect(der)?;
                if certs.len() > 1 {
                    println!("certificate {} of {}:", i + 1, certs.len());
                }
                print!("{report}");
                clean &= ok;
            }
            if let Some(source) = &args.bundle {
                let cas = load_bundle(source, &args).await?;
                let (report, ok) = check_against_bundle(&certs, &cas, args.trust_domain.as_ref());
                println!("bundle {source} ({} CA certificate(s)):", cas.len());
                print!("{report}");
                clean &= ok;
            }
            Ok(if clean { 0 } else { 1 })
        }
    }
}

fn read_pem(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    certs_from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// The CA certificates of a bundle file (PEM or SPIFFE JSON) or of the
/// control plane's `GET /v1/bundle`, fetched with the workload API client.
async fn load_bundle(
    source: &str,
    args: &InspectArgs,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    if source.contains("://") {
        let addr = bundle_url(source)?;
        let anchors_path = args.bootstrap_bundle.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--bundle {source} needs --bootstrap-bundle FILE: the PEM trust anchors that verify the control plane (the proxy's identity.bootstrap_bundle)")
        })?;
        let anchors = read_pem(anchors_path)?;
        // The control plane is spiffe://<td>/palisade/control-plane, in the
        // trust domain of the anchors; --trust-domain is what the leaf must be.
        let td = match (bundle_trust_domain(&anchors), &args.trust_domain) {
            (Ok(td), _) => td,
            (Err(_), Some(td)) => td.clone(),
            (Err(e), None) => {
                anyhow::bail!("{}: {e}; pass --trust-domain", anchors_path.display())
            }
        };
        let doc = ApiClient::new(&addr, &td, &anchors, None)?
            .bundle()
            .await
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        return doc
            .certificates()
            .map_err(|e| anyhow::anyhow!("{source}: {e}"));
    }
    let bytes = std::fs::read(source).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        let doc: SpiffeBundle = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{source}: not a SPIFFE bundle: {e}"))?;
        doc.certificates()
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))
    } else {
        certs_from_pem(&bytes).map_err(|e| anyhow::anyhow!("{source}: {e}"))
    }
}

/// `host:port` of `https://host:port[/v1/bundle]`.
fn bundle_url(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("--bundle {url}: {e}"))?;
    if uri.scheme_str() != Some("https") {
        anyhow::bail!("--bundle {url}: only https:// URLs are fetched");
    }
    if !matches!(uri.path(), "" | "/" | "/v1/bundle") || uri.query().is_some() {
        anyhow::bail!("--bundle {url}: expected https://HOST:PORT or https://HOST:PORT/v1/bundle");
    }
    let authority = uri.authority().expect("an https URI has an authority");
    let port = authority.port_u16().unwrap_or(443);
    Ok(format!("{}:{port}", authority.host()))
}

/// The one trust domain the CA certificates of a bundle name in their URI SAN.
fn bundle_trust_domain(cas: &[CertificateDer<'_>]) -> Result<TrustDomain, String> {
    let named: BTreeSet<TrustDomain> = cas
        .iter()
        .filter_map(|c| spiffe_id_of(c).ok())
        .map(|id| id.trust_domain())
        .collect();
    match named.len() {
        1 => Ok(named.into_iter().next().expect("one")),
        0 => Err("the bundle's CA certificates name no trust domain".into()),
        _ => Err(format!(
            "the bundle's CA certificates name several trust domains ({})",
            named
                .iter()
                .map(TrustDomain::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The leaf's chain verified against `cas`, and its trust domain compared
/// with `expected` (or the bundle's). A report, and whether all passed.
fn check_against_bundle(
    certs: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
    expected: Option<&TrustDomain>,
) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let mut line = |good: bool, text: String| {
        ok &= good;
        let _ = writeln!(
            out,
            "  {} {text}",
            if good { "ok:     " } else { "finding:" }
        );
    };
    let first_is_ca = parse_cert(&certs[0]).map(|c| is_ca(&c)).unwrap_or(false);
    if first_is_ca {
        let member = cas.iter().any(|ca| ca.as_ref() == certs[0].as_ref());
        line(
            member,
            if member {
                "the certificate is one of the bundle's CAs".into()
            } else {
                "the CA certificate is not in the bundle".into()
            },
        );
        return (out, ok);
    }
    match verify_chain(certs, cas) {
        Ok(()) => line(true, "the chain verifies against the bundle".into()),
        Err(e) => line(
            false,
            format!("the chain does not verify against the bundle: {e}"),
        ),
    }
    let expected = match expected {
        Some(td) => Ok(td.clone()),
        None => bundle_trust_domain(cas).map_err(|e| format!("{e}; pass --trust-domain")),
    };
    match (spiffe_id_of(&certs[0]), expected) {
        (Ok(id), Ok(td)) if id.is_member_of(&td) => {
            line(true, format!("trust domain {td}, as expected"))
        }
        (Ok(id), Ok(td)) => line(
            false,
            format!(
                "the leaf is in trust domain {}, not {td}",
                id.trust_domain_str()
            ),
        ),
        (Err(e), _) => line(false, format!("the leaf names no trust domain: {e}")),
        (_, Err(e)) => line(false, format!("cannot check the trust domain: {e}")),
    }
    (out, ok)
}

/// A human report for one DER certificate, and whether it conforms.
pub fn inspect(der: &[u8]) -> anyhow::Result<(String, bool)> {
    let cert = parse_cert(der)?;
    let ca = is_ca(&cert);
    let mut out = String::new();
    let id = match spiffe_id_of_parsed(&cert) {
        Ok(id) => id.to_string(),
        Err(e) => format!("(none: {e})"),
    };
    let v = cert.validity();
    let now = time::OffsetDateTime::now_utc();
    let left = v.not_after.to_datetime() - now;
    let state = if left.is_negative() {
        format!("expired {} ago", human(-left))
    } else {
        format!("expires in {}", human(left))
    };
    writeln!(
        out,
        "  kind:        {}",
        if ca {
            "signing certificate (CA)"
        } else {
            "leaf SVID"
        }
    )?;
    writeln!(out, "  spiffe id:   {id}")?;
    writeln!(out, "  subject:     {}", cert.subject())?;
    writeln!(out, "  issuer:      {}", cert.issuer())?;
    writeln!(out, "  serial:      {}", hex::encode(cert.raw_serial()))?;
    writeln!(out, "  not before:  {}", v.not_before)?;
    writeln!(out, "  not after:   {} ({state})", v.not_after)?;
    let violations = if ca {
        check_x509_svid_ca(der)
    } else {
        check_x509_svid(der)
    };
    if violations.is_empty() {
        writeln!(out, "  X509-SVID:   conforms")?;
    } else {
        writeln!(out, "  X509-SVID:   {} violation(s)", violations.len())?;
        for s in &violations {
            writeln!(out, "    - {s}")?;
        }
    }
    Ok((out, violations.is_empty()))
}

fn human(d: time::Duration) -> String {
    let s = d.whole_seconds();
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_url_is_the_control_planes_https_address() {
        assert_eq!(
            bundle_url("https://cp.example:8443/v1/bundle").unwrap(),
            "cp.example:8443"
        );
        assert_eq!(bundle_url("https://127.0.0.1:9/").unwrap(), "127.0.0.1:9");
        assert_eq!(bundle_url("https://cp").unwrap(), "cp:443");
        assert!(bundle_url("http://cp:8443").is_err());
        assert!(bundle_url("https://cp:8443/v1/svid").is_err());
    }
}
