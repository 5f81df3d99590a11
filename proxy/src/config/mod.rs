//! The proxy's configuration: a YAML file (`--config`), then `PALISADE_*`
//! environment overrides named after each setting's path, then validation.
//! Each default is written once, in its type's `Default`; every setting is
//! documented in proxy/README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_identity::client::ControlPlaneAddrs;
use palisade_identity::duration;
use palisade_policy::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod baseline;
mod env;
pub mod http;
mod interception;
pub mod policy;

pub use self::baseline::BaselineConfig;
pub use self::http::{AccessLogConfig, HttpConfig, Protocol};
pub use interception::{
    ExplicitInbound, ExplicitOutbound, ForwardTo, Interception, PortMapping, Route,
    TransparentInbound, TransparentOutbound, Unmeshed,
};
pub use policy::{PolicyConfig, SourceKind};

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
        var: String,
        value: String,
        message: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole proxy configuration. It serializes to the YAML it reads, so
/// tools write proxy configs by building one of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `mode`, with the listener settings only that mode has.
    #[serde(flatten)]
    pub interception: Interception,
    pub admin: AdminConfig,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    #[serde(with = "duration")]
    pub drain_grace_period: Duration,
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    pub http: HttpConfig,
    pub access_log: AccessLogConfig,
    /// Security events (OCSF JSON lines) and where they go.
    pub baseline: BaselineConfig,
    pub events: crate::events::EventsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interception: Interception::default(),
            admin: AdminConfig::default(),
            timeouts: Timeouts::default(),
            max_connections: 10_000,
            drain_grace_period: Duration::from_secs(30),
            identity: IdentityConfig::default(),
            policy: PolicyConfig::default(),
            http: HttpConfig::default(),
            access_log: AccessLogConfig::default(),
            baseline: BaselineConfig::default(),
            events: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 4191)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// How long inbound waits for a client's first byte.
    #[serde(with = "duration")]
    pub detect: Duration,
    #[serde(with = "duration")]
    pub connect: Duration,
    #[serde(with = "duration")]
    pub handshake: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    #[serde(with = "duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            detect: Duration::from_secs(5),
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The control plane's workload API: `host:port`, or several (a list,
    /// or comma-separated); a name may resolve to several replicas. Requests
    /// go to the one that answered last and move on when it is down.
    pub control_plane: ControlPlaneAddrs,
    /// The workload's own trust domain.
    pub trust_domain: TrustDomain,
    /// PEM bundle used to verify the control plane before the first SVID.
    pub bootstrap_bundle: PathBuf,
    pub join_token: Option<String>,
    pub join_token_file: Option<PathBuf>,
    pub k8s_sa_token_file: Option<PathBuf>,
    /// Trust domains whose peers are accepted; default `[trust_domain]`.
    pub accepted_trust_domains: Vec<TrustDomain>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            control_plane: ControlPlaneAddrs::parse("127.0.0.1:8443").expect("valid default"),
            trust_domain: TrustDomain::new("cluster.local").expect("valid default trust domain"),
            bootstrap_bundle: PathBuf::from("/var/run/palisade/bundle.pem"),
            join_token: None,
            join_token_file: None,
            k8s_sa_token_file: None,
            accepted_trust_domains: Vec::new(),
        }
    }
}

impl Config {
    /// Read `path` (if any), apply `PALISADE_*` overrides from `env`, validate.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let cfg = match path {
            Some(p) => Config::from_yaml_file(p)?,
            None => Config::default(),
        };
        let mut cfg = cfg.with_env(env)?;
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

    /// Parse a YAML file's text; a file without `mode` is transparent.
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        let mut tree: Value = match text.trim() {
            "" => Value::Null,
            _ => serde_saphyr::from_str(text).map_err(|e| e.to_string())?,
        };
        if tree.is_null() {
            tree = serde_json::json!({});
        }
        if let Value::Object(map) = &mut tree {
            let mode = Interception::default().mode();
            map.entry("mode").or_insert_with(|| mode.into());
        }
        serde_path_to_error::deserialize(&tree).map_err(|e| {
            let path = e.path().to_string();
            // serde reads the tagged `mode` sections from a buffer that
            // loses the path; read them alone to name the setting.
            match path.as_str() {
                "." => interception::locate_in_mode_sections(&tree)
                    .or_else(|| unknown_top_level(&tree))
                    .unwrap_or_else(|| e.inner().to_string()),
                _ => format!("{path}: {}", e.inner()),
            }
        })
    }

    /// Reject settings that cannot work, and fill in derived defaults.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.policy.validate()?;
        self.http.validate().map_err(ConfigError::Invalid)?;
        self.access_log.validate().map_err(ConfigError::Invalid)?;
        self.baseline.validate().map_err(ConfigError::Invalid)?;
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
        if let Interception::Explicit { inbound, outbound } = &self.interception {
            if inbound.ports.is_empty() && outbound.routes.is_empty() {
                return bad(
                    "explicit mode needs at least one inbound.ports or outbound.routes entry"
                        .into(),
                );
            }
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
        match &self.interception {
            Interception::Transparent { inbound, outbound } => {
                out.push(("inbound".to_owned(), inbound.bind));
                out.push(("outbound".to_owned(), outbound.bind));
            }
            Interception::Explicit { inbound, outbound } => {
                for p in &inbound.ports {
                    out.push((format!("inbound -> {}", p.app), p.listen));
                }
                for r in &outbound.routes {
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

/// A top-level key that is no setting: it reaches the `mode` sections last,
/// which would name only `inbound` and `outbound` as expected.
fn unknown_top_level(tree: &Value) -> Option<String> {
    let settings = serde_json::to_value(Config::default()).ok()?;
    let settings = settings.as_object()?;
    let key = tree
        .as_object()?
        .keys()
        .find(|k| !settings.contains_key(*k))?;
    let expected: Vec<String> = settings.keys().map(|k| format!("`{k}`")).collect();
    Some(format!(
        "unknown field `{key}`, expected one of {}",
        expected.join(", ")
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    pub(super) fn env_of<'a>(
        vars: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let mut c = Config::from_yaml("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        let Interception::Transparent { inbound, outbound } = &c.interception else {
            panic!("the default mode is transparent");
        };
        assert_eq!(inbound.bind, "0.0.0.0:4143".parse().unwrap());
        assert!(inbound.permissive_ports.is_empty());
        assert_eq!(inbound.forward_to, ForwardTo::Localhost);
        assert_eq!(outbound.bind, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(outbound.unmeshed, Unmeshed::Deny);
        assert_eq!(outbound.endpoints_refresh, Duration::from_secs(10));
        assert_eq!(c.admin.bind, "127.0.0.1:4191".parse().unwrap());
        let t = &c.timeouts;
        assert_eq!(
            [t.detect, t.connect, t.handshake, t.idle],
            [5, 5, 10, 3600].map(Duration::from_secs)
        );
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.drain_grace_period, Duration::from_secs(30));
        assert_eq!(c.identity.control_plane.to_string(), "127.0.0.1:8443");
        assert_eq!(
            c.identity.bootstrap_bundle,
            Path::new("/var/run/palisade/bundle.pem")
        );
        assert_eq!(
            c.control_plane_id().as_str(),
            "spiffe://cluster.local/palisade/control-plane"
        );
        assert_eq!(
            c.identity.accepted_trust_domains,
            vec![TrustDomain::new("cluster.local").unwrap()]
        );
        let h = &c.http;
        assert_eq!((h.max_header_bytes, h.max_headers), (61_440, 100));
        assert_eq!(
            [
                h.header_read_timeout,
                h.request_timeout,
                h.pool_idle_timeout
            ],
            [10, 60, 90].map(Duration::from_secs)
        );
        assert_eq!((h.max_concurrent_streams, h.max_pending_resets), (100, 20));
        assert_eq!(h.stream_window_bytes, 65_536);
        assert_eq!(
            [h.ping_interval, h.ping_timeout],
            [30, 20].map(Duration::from_secs)
        );
        let a = &c.access_log;
        assert!(!a.enabled);
        assert_eq!(
            (a.path.to_str(), a.sample, a.buffer),
            (Some("stdout"), 1.0, 8192)
        );
        assert_eq!(c.policy.source, SourceKind::File);
        assert_eq!(c.policy.debounce, Duration::from_millis(100));
    }

    #[test]
    fn a_section_given_in_part_keeps_the_defaults_of_the_rest() {
        let c = Config::from_yaml("timeouts: {idle: 90s}\nhttp: {max_headers: 7}\n").unwrap();
        assert_eq!(c.timeouts.idle, Duration::from_secs(90));
        assert_eq!(c.timeouts.handshake, Timeouts::default().handshake);
        assert_eq!(c.http.max_headers, 7);
        assert_eq!(
            c.http.max_header_bytes,
            HttpConfig::default().max_header_bytes
        );
    }

    pub(super) const EXPLICIT: &str = r#"
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

    #[test]
    fn explicit_mode_file_parses_routes_and_port_map() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.interception.mode(), "transparent");
        let mut c = Config::from_yaml(EXPLICIT).unwrap();
        c.validate().unwrap();
        let Interception::Explicit { inbound, outbound } = &c.interception else {
            panic!("explicit");
        };
        assert!(inbound.ports[0].permissive);
        assert_eq!(
            outbound.routes[0].identity.as_str(),
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
    fn a_setting_of_the_other_mode_is_refused_with_its_path() {
        let err =
            Config::from_yaml("inbound:\n  ports: [{listen: 127.0.0.1:1, app: 127.0.0.1:2}]\n")
                .unwrap_err();
        assert!(err.contains("inbound") && err.contains("`ports`"), "{err}");
        assert!(err.contains("mode: transparent"), "{err}");
        let err = Config::from_yaml("mode: explicit\noutbound: {unmeshed: deny}\n").unwrap_err();
        assert!(
            err.contains("outbound") && err.contains("`unmeshed`"),
            "{err}"
        );
        assert!(err.contains("mode: explicit"), "{err}");
        let err = Config::from_yaml("mode: sideways\n").unwrap_err();
        assert!(
            err.contains("sideways") && err.contains("explicit"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_value_names_its_setting() {
        let err = Config::from_yaml("admin: {bind: nowhere}\n").unwrap_err();
        assert!(err.starts_with("admin.bind:"), "{err}");
        let err = Config::from_yaml("inbound: {bind: nowhere}\n").unwrap_err();
        assert!(err.starts_with("inbound.bind:"), "{err}");
        let err = Config::from_yaml("timeouts: {idle: forever}\n").unwrap_err();
        assert!(
            err.starts_with("timeouts.idle:") && err.contains("forever"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_reported_with_its_name() {
        let err = Config::from_yaml("inbound:\n  bnd: 0.0.0.0:1\n").unwrap_err();
        assert!(err.contains("bnd"), "{err}");
        let err = Config::from_yaml("max_conections: 1\n").unwrap_err();
        assert!(err.contains("`max_conections`"), "{err}");
        assert!(err.contains("`max_connections`"), "{err}");
    }

    fn every_setting_set() -> Vec<Config> {
        let mut transparent = Config::from_yaml(
            "inbound: {permissive_ports: [8080], forward_to: original, \
             protocols: {8080: http1, 9090: opaque}, allow_get_body_ports: [9200]}\n\
             outbound: {unmeshed: passthrough, endpoints_refresh: 1.5s, protocols: {443: opaque}}\n\
             policy: {path: /etc/p, default: audit, source: both}\n\
             identity: {k8s_sa_token_file: /t, accepted_trust_domains: [a.org, b.org]}\n\
             access_log: {enabled: true, sample: 0.25}\n\
             http: {normalization: {backslash: normalize}}\n\
             drain_grace_period: 1h 30m\n",
        )
        .unwrap();
        transparent.timeouts.idle = Duration::from_nanos(1_000_000_001);
        let explicit = Config::from_yaml(EXPLICIT).unwrap();
        vec![Config::default(), transparent, explicit]
    }

    #[test]
    fn a_serialized_config_parses_back_to_the_same_config() {
        for c in every_setting_set() {
            let yaml = serde_saphyr::to_string(&c).unwrap();
            assert_eq!(Config::from_yaml(&yaml).unwrap(), c, "{yaml}");
            let json = serde_json::to_value(&c).unwrap();
            assert_eq!(serde_json::from_value::<Config>(json).unwrap(), c);
        }
    }

    #[test]
    fn get_bodies_are_refused_unless_a_port_allows_them() {
        let mut c = Config::from_yaml(
            "mode: explicit\ninbound:\n  ports:\n    - {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n    \
             - {listen: 127.0.0.1:3, app: 127.0.0.1:4, allow_get_body: true}\n",
        )
        .unwrap();
        c.validate().unwrap();
        let Interception::Explicit { inbound, .. } = &c.interception else {
            panic!("explicit");
        };
        let allowed: Vec<_> = inbound.ports.iter().map(|p| p.allow_get_body).collect();
        assert_eq!(allowed, vec![false, true]);
        let c = Config::default()
            .with_env(env_of(&[("PALISADE_INBOUND_ALLOW_GET_BODY_PORTS", "9200")]))
            .unwrap();
        let Interception::Transparent { inbound, .. } = &c.interception else {
            panic!("transparent");
        };
        assert_eq!(inbound.allow_get_body_ports, vec![9200]);
    }

    #[test]
    fn two_attestation_methods_are_refused() {
        let mut c = Config::from_yaml("identity: {join_token: a, k8s_sa_token_file: /t}").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn explicit_mode_without_listeners_is_refused() {
        let mut c = Config::from_yaml("mode: explicit\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("inbound.ports"), "{err}");
    }
}
