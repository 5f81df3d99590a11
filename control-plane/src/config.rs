//! Command-line configuration of `palisade-control-plane`. Durations take
//! the grammar every Palisade binary shares (`palisade_identity::duration`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use palisade_identity::duration;
use palisade_policy::TrustDomain;

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
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub svid_ttl: Duration,
    /// Lifetime of each signing CA; the CA rotates at half of it.
    #[arg(long, default_value = "7d", value_parser = duration::parse)]
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
    /// Most concurrent connections on the API port (a parked long poll is
    /// one per sidecar); further ones are reset and logged once a second.
    #[arg(long, default_value_t = 16_384)]
    pub max_connections: usize,
    /// Time a client gets to finish the TLS handshake, to send each request's
    /// headers (so also the longest idle keep-alive) and to send a body.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
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
    use super::Config;
    use clap::Parser;
    use std::time::Duration;

    #[test]
    fn duration_flags_take_the_shared_grammar() {
        let c = Config::try_parse_from([
            "palisade-control-plane",
            "--state-dir=/s",
            "--svid-ttl=1h 30m",
            "--ca-ttl=7d",
            "--handshake-timeout=500ms",
        ])
        .unwrap();
        assert_eq!(c.svid_ttl, Duration::from_secs(5400));
        assert_eq!(c.ca_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
    }

    #[test]
    fn a_bad_duration_flag_is_named() {
        let err =
            Config::try_parse_from(["palisade-control-plane", "--state-dir=/s", "--ca-ttl=1h30"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("--ca-ttl"), "{err}");
    }
}
