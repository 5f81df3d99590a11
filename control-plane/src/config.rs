//! Command-line configuration of `palisade-control-plane`, and the short
//! duration syntax (`30s`, `10m`, `1h`, `7d`) shared with `palisadectl`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use palisade_policy::TrustDomain;

/// Parses `90`, `30s`, `10m`, `1h`, `7d` or a sum such as `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "bad duration {s:?}: unknown unit {c:?} (use s, m, h or d, e.g. 10m)"
                ))
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("bad duration {s:?}: expected a number before {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!(
            "bad duration {s:?}: trailing number without a unit"
        ));
    }
    Ok(Duration::from_secs(total))
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| e.to_string())
}

/// Settings of the control-plane server.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "palisade-control-plane",
    version,
    about = "Palisade's SPIFFE CA and workload identity API"
)]
pub struct Config {
    /// Directory holding the CA keys, certificates and the bootstrap bundle
    /// (created mode 0700; files mode 0600).
    #[arg(long, env = "PALISADE_STATE_DIR")]
    pub state_dir: PathBuf,
    /// SPIFFE trust domain this control plane issues identities in.
    #[arg(long, default_value = "cluster.local", value_parser = parse_trust_domain)]
    pub trust_domain: TrustDomain,
    /// Address of the HTTPS workload API.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Unix socket of the admin API (default: <state-dir>/admin.sock).
    #[arg(long)]
    pub admin_socket: Option<PathBuf>,
    /// Plain-HTTP address serving /metrics (it is also served on the API port).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Lifetime of issued SVIDs (never past the signing CA's notAfter).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub svid_ttl: Duration,
    /// Lifetime of each signing CA; the CA rotates at half of it.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub ca_ttl: Duration,
    /// JWKS file of the Kubernetes service-account token issuer (enables
    /// `k8s_sa_token` attestation; requires --k8s-issuer).
    #[arg(long, requires = "k8s_issuer")]
    pub jwks: Option<PathBuf>,
    /// Expected `iss` of Kubernetes service-account tokens.
    #[arg(long, requires = "jwks")]
    pub k8s_issuer: Option<String>,
    /// Upstream CA certificate (PEM; may be followed by its chain up to the
    /// root). Signing CAs are then intermediates under it.
    #[arg(long, requires = "upstream_key")]
    pub upstream_cert: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) of --upstream-cert.
    #[arg(long, requires = "upstream_cert")]
    pub upstream_key: Option<PathBuf>,
    /// YAML list of `{address, identity}` served at GET /v1/endpoints;
    /// reloaded when it changes.
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    /// Directory of segmentation policies served at GET /v1/policies (each
    /// proxy gets the documents that select it); reloaded when it changes.
    #[arg(long, env = "PALISADE_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Most concurrent connections on the API port; further ones are closed.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Time a client gets to finish the TLS handshake, to send each request's
    /// headers (so also the longest idle keep-alive) and to send a body.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
}

impl Config {
    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("admin.sock"))
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.state_dir.join("bundle.pem")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_accept_units_and_sums() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn durations_reject_unknown_units_and_dangling_numbers() {
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("1h30")
            .unwrap_err()
            .contains("trailing number"));
        assert!(parse_duration("").is_err());
    }
}
