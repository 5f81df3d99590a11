//! The proxy's configuration: a YAML file (`--config`), then `PALISADE_*`
//! environment overrides named after each setting's path, then validation.
//! Each default is written once, in its type's `Default`; every setting is
//! documented in proxy/README.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_identity::duration;
use palisade_policy::{SpiffeId, TrustDomain};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub mod http;
pub mod policy;

pub use self::http::{AccessLogConfig, HttpConfig, Protocol};
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
        }
    }
}

/// How connections reach the proxy (`mode`), with the `inbound` and
/// `outbound` settings of that mode: the other mode's settings are unknown
/// fields, refused when the file is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Interception {
    /// iptables steers every TCP connection through the proxy; destinations
    /// come from SO_ORIGINAL_DST.
    Transparent {
        #[serde(default)]
        inbound: TransparentInbound,
        #[serde(default)]
        outbound: TransparentOutbound,
    },
    /// Fixed listeners: an inbound port map and outbound routes.
    Explicit {
        #[serde(default)]
        inbound: ExplicitInbound,
        #[serde(default)]
        outbound: ExplicitOutbound,
    },
}

impl Default for Interception {
    fn default() -> Self {
        Interception::Transparent {
            inbound: TransparentInbound::default(),
            outbound: TransparentOutbound::default(),
        }
    }
}

impl Interception {
    /// The `mode` value: `transparent` or `explicit`.
    pub fn mode(&self) -> &'static str {
        match self {
            Interception::Transparent { .. } => "transparent",
            Interception::Explicit { .. } => "explicit",
        }
    }
}

/// What the outbound side does with a destination the mesh does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmeshed {
    Passthrough,
    #[default]
    Deny,
}

/// Where transparent inbound traffic goes after the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundTarget {
    /// `127.0.0.1:<original port>`: works for apps bound to loopback or to
    /// all addresses, and loopback is never redirected by the init rules.
    #[default]
    Localhost,
    /// The original destination `ip:port` (the pod IP).
    Original,
}

/// Transparent mode's inbound side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparentInbound {
    /// The listener iptables redirects inbound TCP to.
    pub bind: SocketAddr,
    /// Original destination ports that also accept plaintext.
    pub permissive_ports: Vec<u16>,
    pub forward_to: InboundTarget,
    /// App port → protocol (default `detect`).
    #[serde(deserialize_with = "port_map")]
    pub protocols: BTreeMap<u16, Protocol>,
    /// App ports where GET, HEAD, OPTIONS, DELETE and TRACE may carry a body
    /// (elsewhere it gets 400).
    pub allow_get_body_ports: Vec<u16>,
}

impl Default for TransparentInbound {
    fn default() -> Self {
        TransparentInbound {
            bind: SocketAddr::from(([0, 0, 0, 0], 4143)),
            permissive_ports: Vec::new(),
            forward_to: InboundTarget::default(),
            protocols: BTreeMap::new(),
            allow_get_body_ports: Vec::new(),
        }
    }
}

/// Transparent mode's outbound side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparentOutbound {
    /// The listener iptables redirects outbound TCP to.
    pub bind: SocketAddr,
    pub unmeshed: Unmeshed,
    /// How often the endpoint → identity map is fetched.
    #[serde(with = "duration")]
    pub endpoints_refresh: Duration,
    /// Destination port → protocol (default `detect`).
    #[serde(deserialize_with = "port_map")]
    pub protocols: BTreeMap<u16, Protocol>,
}

impl Default for TransparentOutbound {
    fn default() -> Self {
        TransparentOutbound {
            bind: SocketAddr::from(([127, 0, 0, 1], 4140)),
            unmeshed: Unmeshed::default(),
            endpoints_refresh: Duration::from_secs(10),
            protocols: BTreeMap::new(),
        }
    }
}

/// Explicit mode's inbound side: one listener per local app port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplicitInbound {
    pub ports: Vec<PortMapping>,
}

/// Explicit mode's outbound side: one listener per destination sidecar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplicitOutbound {
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// `host:port` of the control plane's workload API.
    pub control_plane: String,
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
            control_plane: "127.0.0.1:8443".to_owned(),
            trust_domain: TrustDomain::new("cluster.local").expect("valid default trust domain"),
            bootstrap_bundle: PathBuf::from("/var/run/palisade/bundle.pem"),
            join_token: None,
            join_token_file: None,
            k8s_sa_token_file: None,
            accepted_trust_domains: Vec::new(),
        }
    }
}

/// Port-keyed maps: YAML writes the keys as numbers, a JSON dump as strings.
fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, Protocol>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Port(u16);
    impl<'de> Deserialize<'de> for Port {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Port, D::Error> {
            struct Visitor;
            impl serde::de::Visitor<'_> for Visitor {
                type Value = Port;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a port number")
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                    u16::try_from(v)
                        .map(Port)
                        .map_err(|_| E::custom(format!("{v} is not a port number")))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                    v.parse()
                        .map(Port)
                        .map_err(|_| E::custom(format!("`{v}` is not a port number")))
                }
            }
            d.deserialize_any(Visitor)
        }
    }
    let map = BTreeMap::<Port, Protocol>::deserialize(d)?;
    Ok(map.into_iter().map(|(Port(p), v)| (p, v)).collect())
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
        let mut tree: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        if tree.is_null() {
            tree = Value::Object(Default::default());
        }
        let mode = Interception::default().mode();
        if let Value::Object(map) = &mut tree {
            map.entry("mode").or_insert_with(|| mode.into());
        }
        serde_path_to_error::deserialize(&tree).map_err(|e| {
            let path = e.path().to_string();
            // serde reads the tagged `mode` sections from a buffer that
            // loses the path; read them alone to name the setting.
            match path.as_str() {
                "." => locate_in_mode_sections(&tree)
                    .or_else(|| unknown_top_level(&tree))
                    .unwrap_or_else(|| e.inner().to_string()),
                _ => format!("{path}: {}", e.inner()),
            }
        })
    }

    /// Environment overrides, for sidecar injection: each setting's variable
    /// is `PALISADE_` and its path in capitals (see [`env_var`]). A list is
    /// comma-separated; an empty value unsets an optional setting.
    pub fn with_env(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let bad = |var: &str, value: String, message: String| ConfigError::Env {
            var: var.to_owned(),
            value,
            message,
        };
        let mut cfg = self;
        // A different mode starts from that mode's default listeners.
        if let Some(value) = env(MODE_VAR) {
            let tagged = serde_json::json!({ "mode": value.trim() });
            let interception = Interception::deserialize(&tagged)
                .map_err(|e| bad(MODE_VAR, value.clone(), e.to_string()))?;
            if interception.mode() != cfg.interception.mode() {
                cfg.interception = interception;
            }
        }
        let mut tree = serde_json::to_value(&cfg).expect("a config serializes");
        for (pointer, var) in env_settings(&tree) {
            let Some(value) = env(&var) else { continue };
            let leaf = tree.pointer_mut(&pointer).expect("a setting's own path");
            *leaf = env_value(leaf, &value);
            cfg = Config::deserialize(&tree).map_err(|e| bad(&var, value, e.to_string()))?;
        }
        Ok(cfg)
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

const MODE_VAR: &str = "PALISADE_MODE";

/// The variable that overrides the setting at `path`: `PALISADE_` and the
/// path in capitals joined by `_` (`http.max_headers` is
/// `PALISADE_HTTP_MAX_HEADERS`). Two sections keep their older names:
/// `timeouts.*` is `PALISADE_TIMEOUT_*`, and `identity.*` drops the section
/// (`identity.join_token` is `PALISADE_JOIN_TOKEN`).
pub fn env_var(path: &[&str]) -> String {
    let path: Vec<&str> = match path {
        ["timeouts", rest @ ..] => std::iter::once("timeout")
            .chain(rest.iter().copied())
            .collect(),
        ["identity", rest @ ..] => rest.to_vec(),
        all => all.to_vec(),
    };
    format!("PALISADE_{}", path.join("_").to_ascii_uppercase())
}

/// Every setting a variable can override, as (JSON pointer, variable):
/// scalars and lists of scalars, not `mode` (read first) nor port maps.
fn env_settings(tree: &Value) -> Vec<(String, String)> {
    fn walk<'a>(v: &'a Value, path: &mut Vec<&'a str>, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (key, v) in map {
                    if key.parse::<u16>().is_err() {
                        path.push(key);
                        walk(v, path, out);
                        path.pop();
                    }
                }
            }
            Value::Array(items) if items.iter().any(|i| i.is_object()) => {}
            _ if path.as_slice() == ["mode"] => {}
            _ => out.push((format!("/{}", path.join("/")), env_var(path))),
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

/// A variable's text as the kind of value the setting holds now.
fn env_value(current: &Value, text: &str) -> Value {
    let text = text.trim();
    let scalar = |s: &str| match serde_json::from_str::<Value>(s) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(s.to_owned()),
    };
    match current {
        Value::Array(_) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(scalar)
            .collect(),
        Value::Null if text.is_empty() => Value::Null,
        Value::String(_) | Value::Null => Value::String(text.to_owned()),
        _ => scalar(text),
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

/// The first error in `inbound` or `outbound`, read as `mode` says, with
/// its path.
fn locate_in_mode_sections(tree: &Value) -> Option<String> {
    fn first<T: serde::de::DeserializeOwned>(tree: &Value, section: &str) -> Option<String> {
        let v = tree.get(section)?;
        serde_path_to_error::deserialize::<_, T>(v).err().map(|e| {
            match e.path().to_string().as_str() {
                "." => format!("{section}: {}", e.inner()),
                path => format!("{section}.{path}: {}", e.inner()),
            }
        })
    }
    match tree.get("mode")?.as_str()? {
        "transparent" => first::<TransparentInbound>(tree, "inbound")
            .or_else(|| first::<TransparentOutbound>(tree, "outbound")),
        "explicit" => first::<ExplicitInbound>(tree, "inbound")
            .or_else(|| first::<ExplicitOutbound>(tree, "outbound")),
        _ => None,
    }
    .map(|e| format!("{e} (mode: {})", tree["mode"].as_str().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
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
        assert_eq!(inbound.forward_to, InboundTarget::Localhost);
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
        assert_eq!(c.identity.control_plane, "127.0.0.1:8443");
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

    const EXPLICIT: &str = r#"
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
    fn env_overrides_win_over_the_file_and_bad_values_name_the_variable() {
        let c = Config::from_yaml("admin: {bind: 127.0.0.1:1}").unwrap();
        let c = c
            .with_env(env_of(&[
                ("PALISADE_ADMIN_BIND", "0.0.0.0:4191"),
                ("PALISADE_OUTBOUND_UNMESHED", "passthrough"),
                ("PALISADE_INBOUND_PERMISSIVE_PORTS", "80, 8080"),
                ("PALISADE_TIMEOUT_IDLE", "2m"),
                ("PALISADE_JOIN_TOKEN", "12345"),
                ("PALISADE_ACCEPTED_TRUST_DOMAINS", "a.org,b.org"),
                ("PALISADE_POLICY_PATH", ""),
            ]))
            .unwrap();
        assert_eq!(c.admin.bind, "0.0.0.0:4191".parse().unwrap());
        let Interception::Transparent { inbound, outbound } = &c.interception else {
            panic!("transparent");
        };
        assert_eq!(outbound.unmeshed, Unmeshed::Passthrough);
        assert_eq!(inbound.permissive_ports, vec![80, 8080]);
        assert_eq!(c.timeouts.idle, Duration::from_secs(120));
        assert_eq!(c.identity.join_token.as_deref(), Some("12345"));
        assert_eq!(c.identity.accepted_trust_domains.len(), 2);
        assert_eq!(c.policy.path, None);

        for (var, value) in [
            ("PALISADE_MAX_CONNECTIONS", "lots"),
            ("PALISADE_TIMEOUT_IDLE", "forever"),
            ("PALISADE_POLICY_DEFAULT", "open"),
            ("PALISADE_MODE", "sideways"),
        ] {
            let err = c.clone().with_env(env_of(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = c
            .with_env(env_of(&[("PALISADE_POLICY_DEFAULT", "open")]))
            .unwrap_err();
        assert!(err.to_string().contains("all-authenticated"), "{err}");
    }

    #[test]
    fn every_setting_has_a_variable_named_after_its_path() {
        let c = Config::default();
        let c = c
            .with_env(env_of(&[
                ("PALISADE_HTTP_MAX_HEADERS", "7"),
                ("PALISADE_HTTP_NORMALIZATION_FRAGMENT", "normalize"),
                ("PALISADE_ACCESS_LOG_ENABLED", "true"),
                ("PALISADE_ACCESS_LOG_SAMPLE", "0.5"),
                ("PALISADE_POLICY_DEBOUNCE", "1s"),
            ]))
            .unwrap();
        assert_eq!(c.http.max_headers, 7);
        assert_eq!(
            c.http.normalization.fragment,
            palisade_policy::normalize::Handling::Normalize
        );
        assert!(c.access_log.enabled);
        assert_eq!(c.access_log.sample, 0.5);
        assert_eq!(c.policy.debounce, Duration::from_secs(1));
    }

    /// The variables proxy/README.md documents, each with its setting: the
    /// `timeouts` and `identity` sections are the only ones not named
    /// `PALISADE_<SECTION>_<FIELD>`.
    #[test]
    fn documented_variables_keep_their_names() {
        let documented = [
            ("PALISADE_INBOUND_BIND", "inbound.bind"),
            (
                "PALISADE_INBOUND_PERMISSIVE_PORTS",
                "inbound.permissive_ports",
            ),
            ("PALISADE_INBOUND_FORWARD_TO", "inbound.forward_to"),
            (
                "PALISADE_INBOUND_ALLOW_GET_BODY_PORTS",
                "inbound.allow_get_body_ports",
            ),
            ("PALISADE_OUTBOUND_BIND", "outbound.bind"),
            ("PALISADE_OUTBOUND_UNMESHED", "outbound.unmeshed"),
            (
                "PALISADE_OUTBOUND_ENDPOINTS_REFRESH",
                "outbound.endpoints_refresh",
            ),
            ("PALISADE_ADMIN_BIND", "admin.bind"),
            ("PALISADE_TIMEOUT_DETECT", "timeouts.detect"),
            ("PALISADE_TIMEOUT_CONNECT", "timeouts.connect"),
            ("PALISADE_TIMEOUT_HANDSHAKE", "timeouts.handshake"),
            ("PALISADE_TIMEOUT_IDLE", "timeouts.idle"),
            ("PALISADE_MAX_CONNECTIONS", "max_connections"),
            ("PALISADE_DRAIN_GRACE_PERIOD", "drain_grace_period"),
            ("PALISADE_CONTROL_PLANE", "identity.control_plane"),
            ("PALISADE_TRUST_DOMAIN", "identity.trust_domain"),
            ("PALISADE_BOOTSTRAP_BUNDLE", "identity.bootstrap_bundle"),
            ("PALISADE_JOIN_TOKEN", "identity.join_token"),
            ("PALISADE_JOIN_TOKEN_FILE", "identity.join_token_file"),
            ("PALISADE_K8S_SA_TOKEN_FILE", "identity.k8s_sa_token_file"),
            (
                "PALISADE_ACCEPTED_TRUST_DOMAINS",
                "identity.accepted_trust_domains",
            ),
            ("PALISADE_POLICY_PATH", "policy.path"),
            ("PALISADE_POLICY_DEFAULT", "policy.default"),
            ("PALISADE_POLICY_SOURCE", "policy.source"),
        ];
        let tree = serde_json::to_value(Config::default()).unwrap();
        let settable = env_settings(&tree);
        for (var, path) in documented {
            let path: Vec<&str> = path.split('.').collect();
            assert_eq!(env_var(&path), var);
            let pointer = format!("/{}", path.join("/"));
            assert!(settable.contains(&(pointer, var.to_owned())), "{var}");
        }
    }

    #[test]
    fn env_mode_switches_to_that_modes_listeners() {
        let c = Config::from_yaml(EXPLICIT).unwrap();
        let c = c
            .with_env(env_of(&[
                ("PALISADE_MODE", "transparent"),
                ("PALISADE_INBOUND_BIND", "0.0.0.0:5143"),
            ]))
            .unwrap();
        let Interception::Transparent { inbound, .. } = &c.interception else {
            panic!("transparent");
        };
        assert_eq!(inbound.bind, "0.0.0.0:5143".parse().unwrap());
        let c = Config::from_yaml(EXPLICIT).unwrap();
        let same = c
            .clone()
            .with_env(env_of(&[("PALISADE_MODE", "explicit")]))
            .unwrap();
        assert_eq!(same, c);
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
