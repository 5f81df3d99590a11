//! The proxy's configuration: a YAML file (`--config`), then `PALISADE_*`
//! environment overrides, then validation. Every setting and its default is
//! documented in proxy/README.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_policy::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// iptables steers every TCP connection through the proxy; destinations
    /// come from SO_ORIGINAL_DST.
    Transparent,
    /// Fixed listeners: an inbound port map and outbound routes.
    Explicit,
}

/// What the outbound side does with a destination the mesh does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmeshed {
    Passthrough,
    Deny,
}

/// Where transparent inbound traffic goes after the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundTarget {
    /// `127.0.0.1:<original port>`: works for apps bound to loopback or to
    /// all addresses, and loopback is never redirected by the init rules.
    Localhost,
    /// The original destination `ip:port` (the pod IP).
    Original,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub inbound: InboundConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_drain_grace", with = "duration")]
    pub drain_grace_period: Duration,
    #[serde(default)]
    pub identity: IdentityConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Transparent mode's listener.
    #[serde(default = "default_inbound_bind")]
    pub bind: SocketAddr,
    /// Transparent mode: original destination ports that also accept plaintext.
    #[serde(default)]
    pub permissive_ports: Vec<u16>,
    #[serde(default = "default_inbound_target")]
    pub forward_to: InboundTarget,
    /// Explicit mode: one listener per local app port.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Transparent mode: app port → protocol (default `detect`).
    #[serde(default)]
    pub protocols: BTreeMap<u16, Protocol>,
    /// Transparent mode: app ports where GET, HEAD, OPTIONS, DELETE and
    /// TRACE may carry a body (elsewhere it gets 400).
    #[serde(default)]
    pub allow_get_body_ports: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub listen: SocketAddr,
    pub app: SocketAddr,
    #[serde(default)]
    pub permissive: bool,
    #[serde(default)]
    pub protocol: Protocol,
    /// GET, HEAD, OPTIONS, DELETE and TRACE may carry a body to this app
    /// (by default it gets 400: an app may not read one).
    #[serde(default)]
    pub allow_get_body: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Transparent mode's listener.
    #[serde(default = "default_outbound_bind")]
    pub bind: SocketAddr,
    #[serde(default = "default_unmeshed")]
    pub unmeshed: Unmeshed,
    /// Transparent mode: how often the endpoint → identity map is fetched.
    #[serde(default = "default_endpoints_refresh", with = "duration")]
    pub endpoints_refresh: Duration,
    /// Explicit mode: one listener per destination sidecar.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Transparent mode: destination port → protocol (default `detect`).
    #[serde(default)]
    pub protocols: BTreeMap<u16, Protocol>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub listen: SocketAddr,
    /// The destination sidecar's inbound listener.
    pub destination: SocketAddr,
    /// The SPIFFE ID the destination must present.
    pub identity: SpiffeId,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_bind")]
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// How long inbound waits for a client's first byte.
    #[serde(default = "d_detect", with = "duration")]
    pub detect: Duration,
    #[serde(default = "d_connect", with = "duration")]
    pub connect: Duration,
    #[serde(default = "d_handshake", with = "duration")]
    pub handshake: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    #[serde(default = "d_idle", with = "duration")]
    pub idle: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `host:port` of the control plane's workload API.
    #[serde(default = "default_control_plane")]
    pub control_plane: String,
    /// The workload's own trust domain.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: TrustDomain,
    /// PEM bundle used to verify the control plane before the first SVID.
    #[serde(default = "default_bundle")]
    pub bootstrap_bundle: PathBuf,
    #[serde(default)]
    pub join_token: Option<String>,
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    #[serde(default)]
    pub k8s_sa_token_file: Option<PathBuf>,
    /// Trust domains whose peers are accepted; default `[trust_domain]`.
    #[serde(default)]
    pub accepted_trust_domains: Vec<TrustDomain>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            bind: default_inbound_bind(),
            permissive_ports: Vec::new(),
            forward_to: default_inbound_target(),
            ports: Vec::new(),
            protocols: BTreeMap::new(),
            allow_get_body_ports: Vec::new(),
        }
    }
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            bind: default_outbound_bind(),
            unmeshed: default_unmeshed(),
            endpoints_refresh: default_endpoints_refresh(),
            routes: Vec::new(),
            protocols: BTreeMap::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: default_admin_bind(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            detect: d_detect(),
            connect: d_connect(),
            handshake: d_handshake(),
            idle: d_idle(),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            control_plane: default_control_plane(),
            trust_domain: default_trust_domain(),
            bootstrap_bundle: default_bundle(),
            join_token: None,
            join_token_file: None,
            k8s_sa_token_file: None,
            accepted_trust_domains: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: default_mode(),
            inbound: InboundConfig::default(),
            outbound: OutboundConfig::default(),
            admin: AdminConfig::default(),
            timeouts: Timeouts::default(),
            max_connections: default_max_connections(),
            drain_grace_period: default_drain_grace(),
            identity: IdentityConfig::default(),
            policy: PolicyConfig::default(),
            http: HttpConfig::default(),
            access_log: AccessLogConfig::default(),
        }
    }
}

fn default_mode() -> Mode {
    Mode::Transparent
}
fn default_inbound_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4143))
}
fn default_outbound_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4140))
}
fn default_admin_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4191))
}
fn default_inbound_target() -> InboundTarget {
    InboundTarget::Localhost
}
fn default_unmeshed() -> Unmeshed {
    Unmeshed::Deny
}
fn default_endpoints_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_drain_grace() -> Duration {
    Duration::from_secs(30)
}
fn d_detect() -> Duration {
    Duration::from_secs(5)
}
fn d_connect() -> Duration {
    Duration::from_secs(5)
}
fn d_handshake() -> Duration {
    Duration::from_secs(10)
}
fn d_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_control_plane() -> String {
    "127.0.0.1:8443".to_owned()
}
fn default_trust_domain() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("valid default trust domain")
}
fn default_bundle() -> PathBuf {
    PathBuf::from("/var/run/palisade/bundle.pem")
}

impl Config {
    /// Read `path` (if any), apply `PALISADE_*` overrides from `env`, validate.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => Config::from_yaml_file(p)?,
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_yaml_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Environment overrides, for sidecar injection. See proxy/README.md.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.trim().parse::<T>().map_err(|e| ConfigError::Env {
                var,
                value: value.to_owned(),
                message: e.to_string(),
            })
        }
        fn list<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<Vec<T>, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse(var, s))
                .collect()
        }
        fn dur(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
            duration::parse(value).map_err(|message| ConfigError::Env {
                var,
                value: value.to_owned(),
                message,
            })
        }
        fn enumerated<T: serde::de::DeserializeOwned>(
            var: &'static str,
            value: &str,
        ) -> Result<T, ConfigError> {
            serde_json::from_value(serde_json::Value::String(value.trim().to_owned())).map_err(
                |e| ConfigError::Env {
                    var,
                    value: value.to_owned(),
                    message: e.to_string(),
                },
            )
        }

        macro_rules! set {
            ($var:literal, $v:ident => $apply:expr) => {
                if let Some($v) = env($var) {
                    #[allow(clippy::redundant_closure_call)]
                    (|$v: String| -> Result<(), ConfigError> {
                        $apply;
                        Ok(())
                    })($v)?;
                }
            };
        }
        let c = self;
        set!("PALISADE_MODE", v => c.mode = enumerated("PALISADE_MODE", &v)?);
        set!("PALISADE_INBOUND_BIND", v => c.inbound.bind = parse("PALISADE_INBOUND_BIND", &v)?);
        set!("PALISADE_INBOUND_PERMISSIVE_PORTS", v =>
            c.inbound.permissive_ports = list("PALISADE_INBOUND_PERMISSIVE_PORTS", &v)?);
        set!("PALISADE_INBOUND_ALLOW_GET_BODY_PORTS", v =>
            c.inbound.allow_get_body_ports = list("PALISADE_INBOUND_ALLOW_GET_BODY_PORTS", &v)?);
        set!("PALISADE_INBOUND_FORWARD_TO", v =>
            c.inbound.forward_to = enumerated("PALISADE_INBOUND_FORWARD_TO", &v)?);
        set!("PALISADE_OUTBOUND_BIND", v => c.outbound.bind = parse("PALISADE_OUTBOUND_BIND", &v)?);
        set!("PALISADE_OUTBOUND_UNMESHED", v =>
            c.outbound.unmeshed = enumerated("PALISADE_OUTBOUND_UNMESHED", &v)?);
        set!("PALISADE_OUTBOUND_ENDPOINTS_REFRESH", v =>
            c.outbound.endpoints_refresh = dur("PALISADE_OUTBOUND_ENDPOINTS_REFRESH", &v)?);
        set!("PALISADE_ADMIN_BIND", v => c.admin.bind = parse("PALISADE_ADMIN_BIND", &v)?);
        set!("PALISADE_TIMEOUT_DETECT", v => c.timeouts.detect = dur("PALISADE_TIMEOUT_DETECT", &v)?);
        set!("PALISADE_TIMEOUT_CONNECT", v =>
            c.timeouts.connect = dur("PALISADE_TIMEOUT_CONNECT", &v)?);
        set!("PALISADE_TIMEOUT_HANDSHAKE", v =>
            c.timeouts.handshake = dur("PALISADE_TIMEOUT_HANDSHAKE", &v)?);
        set!("PALISADE_TIMEOUT_IDLE", v => c.timeouts.idle = dur("PALISADE_TIMEOUT_IDLE", &v)?);
        set!("PALISADE_MAX_CONNECTIONS", v =>
            c.max_connections = parse("PALISADE_MAX_CONNECTIONS", &v)?);
        set!("PALISADE_DRAIN_GRACE_PERIOD", v =>
            c.drain_grace_period = dur("PALISADE_DRAIN_GRACE_PERIOD", &v)?);
        set!("PALISADE_CONTROL_PLANE", v => c.identity.control_plane = v.trim().to_owned());
        set!("PALISADE_TRUST_DOMAIN", v =>
            c.identity.trust_domain = parse("PALISADE_TRUST_DOMAIN", &v)?);
        set!("PALISADE_BOOTSTRAP_BUNDLE", v => c.identity.bootstrap_bundle = PathBuf::from(v));
        set!("PALISADE_JOIN_TOKEN", v => c.identity.join_token = Some(v.trim().to_owned()));
        set!("PALISADE_JOIN_TOKEN_FILE", v => c.identity.join_token_file = Some(PathBuf::from(v)));
        set!("PALISADE_K8S_SA_TOKEN_FILE", v =>
            c.identity.k8s_sa_token_file = Some(PathBuf::from(v)));
        set!("PALISADE_ACCEPTED_TRUST_DOMAINS", v =>
            c.identity.accepted_trust_domains = list("PALISADE_ACCEPTED_TRUST_DOMAINS", &v)?);
        c.policy.apply_env(&env)?;
        Ok(())
    }

    /// Reject settings that cannot work, and fill in derived defaults.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.policy.validate()?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        self.access_log.validate().map_err(ConfigError::Invalid)?;
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        let attestations = [
            self.identity.join_token.is_some(),
            self.identity.join_token_file.is_some(),
            self.identity.k8s_sa_token_file.is_some(),
        ];
        if attestations.iter().filter(|x| **x).count() > 1 {
            return bad(
                "identity: set only one of join_token, join_token_file, k8s_sa_token_file".into(),
            );
        }
        if self.identity.accepted_trust_domains.is_empty() {
            self.identity
                .accepted_trust_domains
                .push(self.identity.trust_domain.clone());
        }
        if self.mode == Mode::Explicit
            && self.inbound.ports.is_empty()
            && self.outbound.routes.is_empty()
        {
            return bad(
                "explicit mode needs at least one inbound.ports or outbound.routes entry".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        let listeners = self.listeners();
        for (_, addr) in &listeners {
            if addr.port() != 0 && !seen.insert(*addr) {
                return bad(format!("listen address {addr} is used twice"));
            }
        }
        Ok(())
    }

    /// Every listener this configuration opens, named, for logs and /config_dump.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut out = vec![("admin".to_owned(), self.admin.bind)];
        match self.mode {
            Mode::Transparent => {
                out.push(("inbound".to_owned(), self.inbound.bind));
                out.push(("outbound".to_owned(), self.outbound.bind));
            }
            Mode::Explicit => {
                for p in &self.inbound.ports {
                    out.push((format!("inbound -> {}", p.app), p.listen));
                }
                for r in &self.outbound.routes {
                    out.push((
                        format!("outbound -> {} ({})", r.destination, r.identity),
                        r.listen,
                    ));
                }
            }
        }
        out
    }

    /// The SPIFFE ID the control plane must present:
    /// `spiffe://<trust_domain>/palisade/control-plane`.
    pub fn control_plane_id(&self) -> SpiffeId {
        self.identity
            .trust_domain
            .id(palisade_identity::api::CONTROL_PLANE_PATH)
            .expect("the control-plane path is a valid SPIFFE path")
    }
}

pub mod duration;
pub mod http;
pub mod policy;

pub use self::http::{AccessLogConfig, HttpConfig, Protocol};
pub use policy::{PolicyConfig, SourceKind};

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let mut c = Config::from_yaml("").unwrap();
        c.validate().unwrap();
        assert_eq!(c.inbound.bind.port(), 4143);
        assert_eq!(c.outbound.bind.port(), 4140);
        assert_eq!(c.admin.bind, "127.0.0.1:4191".parse().unwrap());
        assert_eq!(c.outbound.unmeshed, Unmeshed::Deny);
        assert_eq!(
            c.control_plane_id().as_str(),
            "spiffe://cluster.local/palisade/control-plane"
        );
        assert_eq!(
            c.identity.accepted_trust_domains,
            vec![TrustDomain::new("cluster.local").unwrap()]
        );
    }

    #[test]
    fn explicit_mode_file_parses_routes_and_port_map() {
        let yaml = r#"
mode: explicit
inbound:
  ports:
    - {listen: "127.0.0.1:15001", app: "127.0.0.1:8080", permissive: true}
outbound:
  routes:
    - listen: 127.0.0.1:15002
      destination: 127.0.0.1:16001
      identity: spiffe://example.org/ns/demo/sa/api
timeouts: {idle: 90s, detect: 250ms}
identity:
  trust_domain: example.org
  join_token: abc
"#;
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.mode, Mode::Transparent);
        let mut c = Config::from_yaml(yaml).unwrap();
        c.validate().unwrap();
        assert_eq!(c.mode, Mode::Explicit);
        assert!(c.inbound.ports[0].permissive);
        assert_eq!(
            c.outbound.routes[0].identity.as_str(),
            "spiffe://example.org/ns/demo/sa/api"
        );
        assert_eq!(c.timeouts.idle, Duration::from_secs(90));
        assert_eq!(c.timeouts.detect, Duration::from_millis(250));
        assert_eq!(
            c.control_plane_id().as_str(),
            "spiffe://example.org/palisade/control-plane"
        );
    }

    #[test]
    fn unknown_field_is_reported_with_its_name() {
        let err = Config::from_yaml("inbound:\n  bnd: 0.0.0.0:1\n").unwrap_err();
        assert!(err.contains("bnd"), "{err}");
    }

    #[test]
    fn env_overrides_win_over_the_file_and_bad_values_name_the_variable() {
        let mut c = Config::from_yaml("admin: {bind: 127.0.0.1:1}").unwrap();
        let env = |k: &str| match k {
            "PALISADE_ADMIN_BIND" => Some("0.0.0.0:4191".to_owned()),
            "PALISADE_OUTBOUND_UNMESHED" => Some("passthrough".to_owned()),
            "PALISADE_INBOUND_PERMISSIVE_PORTS" => Some("80, 8080".to_owned()),
            "PALISADE_TIMEOUT_IDLE" => Some("2m".to_owned()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.admin.bind, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(c.outbound.unmeshed, Unmeshed::Passthrough);
        assert_eq!(c.inbound.permissive_ports, vec![80, 8080]);
        assert_eq!(c.timeouts.idle, Duration::from_secs(120));

        let err = c
            .apply_env(|k| (k == "PALISADE_MAX_CONNECTIONS").then(|| "lots".to_owned()))
            .unwrap_err();
        assert!(
            err.to_string().contains("PALISADE_MAX_CONNECTIONS"),
            "{err}"
        );
    }

    #[test]
    fn get_bodies_are_refused_unless_a_port_allows_them() {
        let mut c = Config::from_yaml(
            "mode: explicit\ninbound:\n  ports:\n    - {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n    \
             - {listen: 127.0.0.1:3, app: 127.0.0.1:4, allow_get_body: true}\n",
        )
        .unwrap();
        c.validate().unwrap();
        let allowed: Vec<_> = c.inbound.ports.iter().map(|p| p.allow_get_body).collect();
        assert_eq!(allowed, vec![false, true]);
        assert!(c.inbound.allow_get_body_ports.is_empty());
        c.apply_env(|k| (k == "PALISADE_INBOUND_ALLOW_GET_BODY_PORTS").then(|| "9200".into()))
            .unwrap();
        assert_eq!(c.inbound.allow_get_body_ports, vec![9200]);
    }

    #[test]
    fn two_attestation_methods_are_refused() {
        let mut c = Config::from_yaml("identity: {join_token: a, k8s_sa_token_file: /t}").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn duration_parser_accepts_units_and_rejects_nonsense() {
        assert_eq!(duration::parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            duration::parse("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(duration::parse("5 parsecs").is_err());
    }
}
