//! A real `palisade-proxy` as a sidecar: what it should do (a small spec),
//! the one place that spec becomes the proxy's `Config`, written out by
//! serializing it, and the running process with its admin listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use palisade_identity::client::ControlPlaneAddrs;
use palisade_policy::{SpiffeId, TrustDomain};
use palisade_proxy::config::{
    self, Config, ExplicitInbound, ExplicitOutbound, PortMapping, Protocol, Route,
};

use super::{free_addr, http_request, Process};

/// How traffic reaches the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interception {
    /// Fixed listeners: [`SidecarSpec::inbound`] and [`SidecarSpec::routes`].
    #[default]
    Explicit,
    /// iptables redirection inside a pod.
    Transparent,
}

/// What a sidecar does; see proxy/README.md for every setting.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// Names its process, `<dir>/<name>.yaml` and `<dir>/<name>.log`.
    pub name: String,
    pub interception: Interception,
    pub inbound: Vec<PortMapping>,
    pub routes: Vec<Route>,
    pub admin: SocketAddr,
    /// The control plane's workload API: one replica's address or several,
    /// tried in this order.
    pub control_plane: Vec<SocketAddr>,
    pub trust_domain: String,
    pub bootstrap_bundle: PathBuf,
    pub join_token: String,
    /// A policy file or directory to enforce.
    pub policy: Option<PathBuf>,
    pub drain_grace_period: Option<Duration>,
    /// `PALISADE_LOG` (default: the proxy's own).
    pub log_filter: Option<String>,
    /// Further settings as YAML keyed like the config file, laid over the
    /// rest (e.g. `http:\n  request_timeout: 10s\n`).
    pub extra_yaml: String,
}

impl SidecarSpec {
    /// An explicit-mode sidecar with no listeners yet, its admin listener on
    /// a free loopback port.
    pub fn new(
        name: &str,
        control_plane: SocketAddr,
        bootstrap_bundle: &Path,
        join_token: &str,
    ) -> std::io::Result<SidecarSpec> {
        Ok(SidecarSpec {
            name: name.to_owned(),
            interception: Interception::Explicit,
            inbound: Vec::new(),
            routes: Vec::new(),
            admin: free_addr()?,
            control_plane: vec![control_plane],
            trust_domain: "cluster.local".to_owned(),
            bootstrap_bundle: bootstrap_bundle.to_owned(),
            join_token: join_token.to_owned(),
            policy: None,
            drain_grace_period: None,
            log_filter: None,
            extra_yaml: String::new(),
        })
    }

    /// Add an inbound listener on a free loopback port forwarding to `app`;
    /// returns the listener's address.
    pub fn inbound(&mut self, app: SocketAddr, permissive: bool) -> std::io::Result<SocketAddr> {
        let listen = free_addr()?;
        self.inbound.push(PortMapping {
            listen,
            app,
            permissive,
            protocol: Protocol::Detect,
            allow_get_body: false,
        });
        Ok(listen)
    }

    /// Add an outbound route on a free loopback port; returns its address.
    pub fn route(&mut self, destination: SocketAddr, identity: &str) -> anyhow::Result<SocketAddr> {
        let identity = SpiffeId::parse(identity).with_context(|| format!("route to {identity}"))?;
        let listen = free_addr()?;
        self.routes.push(Route {
            listen,
            destination,
            identity,
            protocol: Protocol::Detect,
        });
        Ok(listen)
    }

    /// The proxy's configuration for this spec: the one place a sidecar's
    /// `Config` is built.
    pub fn config(&self) -> anyhow::Result<Config> {
        let interception = match self.interception {
            Interception::Transparent => config::Interception::default(),
            Interception::Explicit => config::Interception::Explicit {
                inbound: ExplicitInbound {
                    ports: self.inbound.clone(),
                },
                outbound: ExplicitOutbound {
                    routes: self.routes.clone(),
                },
            },
        };
        let mut c = Config {
            interception,
            ..Config::default()
        };
        c.admin.bind = self.admin;
        c.identity.control_plane =
            ControlPlaneAddrs::new(self.control_plane.iter().map(ToString::to_string))
                .map_err(anyhow::Error::msg)?;
        c.identity.trust_domain = TrustDomain::new(&self.trust_domain)?;
        c.identity.bootstrap_bundle = self.bootstrap_bundle.clone();
        c.identity.join_token = Some(self.join_token.clone());
        c.policy.path = self.policy.clone();
        if let Some(grace) = self.drain_grace_period {
            c.drain_grace_period = grace;
        }
        lay_over(&c, &self.extra_yaml).with_context(|| format!("{}: extra settings", self.name))
    }

    /// Serialize [`config`](Self::config) to `<dir>/<name>.yaml`, readable by
    /// a sidecar running as another user (in a pod); returns the path.
    pub fn write_config(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let yaml = serde_saphyr::to_string(&self.config()?)?;
        let path = dir.join(format!("{}.yaml", self.name));
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }
}

/// `config` with the settings in `yaml` laid over it, key by key; a key the
/// proxy does not know is an error here rather than in the child.
fn lay_over(config: &Config, yaml: &str) -> anyhow::Result<Config> {
    if yaml.trim().is_empty() {
        return Ok(config.clone());
    }
    let over: serde_json::Value = serde_saphyr::from_str(yaml)?;
    let mut merged = serde_json::to_value(config)?;
    merge(&mut merged, over);
    Ok(serde_json::from_value(merged)?)
}

fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (base, over) => *base = over,
    }
}

/// A running sidecar, killed when dropped.
pub struct Sidecar {
    pub child: Process,
    pub admin: SocketAddr,
    pub spec: SidecarSpec,
}

impl Sidecar {
    /// Write its config under `dir`, start `proxy` with it and wait until the
    /// admin listener accepts (not for readiness: see [`wait_ready`](Self::wait_ready)).
    pub fn start(proxy: &Path, spec: SidecarSpec, dir: &Path) -> anyhow::Result<Sidecar> {
        let mut sidecar = Sidecar::spawn(Command::new(proxy), spec, dir)?;
        let admin = sidecar.admin;
        sidecar
            .child
            .wait_listening(&[admin], Duration::from_secs(30))?;
        Ok(sidecar)
    }

    /// Write its config under `dir` and run `proxy`, a prepared command for
    /// the proxy binary (e.g. one that enters a pod), with it; no waiting.
    pub fn spawn(mut proxy: Command, spec: SidecarSpec, dir: &Path) -> anyhow::Result<Sidecar> {
        let config = spec.write_config(dir)?;
        proxy.arg("--config").arg(&config);
        if let Some(filter) = &spec.log_filter {
            proxy.env("PALISADE_LOG", filter);
        }
        let log = dir.join(format!("{}.log", spec.name));
        Ok(Sidecar {
            child: Process::spawn_logged(&spec.name, &mut proxy, &log)?,
            admin: spec.admin,
            spec,
        })
    }

    /// Wait until `/ready` answers 200: it holds an SVID.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let admin = self.admin;
        self.child.wait_until("/ready", timeout, || {
            matches!(http_request(admin, "GET", "/ready"), Ok((200, _))).then_some(())
        })
    }

    /// One request to the admin listener: status and body.
    pub fn admin_request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        http_request(self.admin, method, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SidecarSpec {
        let mut s = SidecarSpec::new(
            "a",
            "127.0.0.1:8443".parse().unwrap(),
            Path::new("/b.pem"),
            "tok",
        )
        .unwrap();
        s.inbound("127.0.0.1:8080".parse().unwrap(), true).unwrap();
        s.route(
            "127.0.0.1:9000".parse().unwrap(),
            "spiffe://cluster.local/ns/demo/sa/api",
        )
        .unwrap();
        s
    }

    #[test]
    fn a_written_config_reads_back_as_the_same_settings() {
        let mut s = spec();
        s.policy = Some("/policies".into());
        s.drain_grace_period = Some(Duration::from_millis(1500));
        let yaml = serde_saphyr::to_string(&s.config().unwrap()).unwrap();
        let mut c = Config::from_yaml(&yaml).unwrap();
        c.validate().unwrap();
        let config::Interception::Explicit { inbound, outbound } = &c.interception else {
            panic!("not explicit: {:?}", c.interception);
        };
        assert_eq!(c.admin.bind, s.admin);
        assert_eq!(inbound.ports, s.inbound);
        assert!(inbound.ports[0].permissive);
        assert_eq!(outbound.routes, s.routes);
        assert_eq!(c.identity.join_token.as_deref(), Some("tok"));
        assert_eq!(c.identity.control_plane.to_string(), "127.0.0.1:8443");
        assert_eq!(c.policy.path.as_deref(), Some(Path::new("/policies")));
        assert_eq!(c.drain_grace_period, Duration::from_millis(1500));
    }

    #[test]
    fn extra_yaml_overrides_one_key_and_keeps_its_siblings() {
        let mut s = spec();
        s.policy = Some("/policies".into());
        s.extra_yaml = "policy:\n  debounce: 10ms\nhttp:\n  request_timeout: 10s\n".into();
        let c = s.config().unwrap();
        assert_eq!(c.policy.debounce, Duration::from_millis(10));
        assert_eq!(c.policy.path.as_deref(), Some(Path::new("/policies")));
        assert_eq!(c.http.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn an_unknown_extra_key_is_refused_with_its_name() {
        let mut s = spec();
        s.extra_yaml = "http:\n  request_timout: 10s\n".into();
        let e = format!("{:#}", s.config().unwrap_err());
        assert!(e.contains("request_timout"), "{e}");
    }
}
