//! `palisadectl cert inspect FILE`: SPIFFE ID, issuer and validity of each
//! certificate in a PEM file, and every way it breaks the X509-SVID spec.

use std::fmt::Write;
use std::path::PathBuf;

use crate::svid::{
    certs_from_pem, check_x509_svid, check_x509_svid_ca, is_ca, parse_cert, spiffe_id_of_parsed,
};

#[derive(Debug, clap::Subcommand)]
pub enum CertCmd {
    /// Print what a certificate (or chain) says and whether it is a valid X509-SVID.
    /// Exits 1 when any certificate breaks the spec.
    Inspect { file: PathBuf },
}

pub fn run(cmd: CertCmd) -> anyhow::Result<i32> {
    match cmd {
        CertCmd::Inspect { file } => {
            let pem =
                std::fs::read(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let certs =
                certs_from_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let mut clean = true;
            for (i, der) in certs.iter().enumerate() {
                let (report, ok) = inspect(der)?;
                if certs.len() > 1 {
                    println!("certificate {} of {}:", i + 1, certs.len());
                }
                print!("{report}");
                clean &= ok;
            }
            Ok(if clean { 0 } else { 1 })
        }
    }
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
