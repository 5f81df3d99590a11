//! `PALISADE_*` environment overrides, for sidecar injection: every setting
//! has a variable named after its path, applied over the file.

use serde::Deserialize;
use serde_json::Value;

use super::{Config, ConfigError, Interception};

impl Config {
    /// Apply `env` over this config: each setting's variable is `PALISADE_`
    /// and its path in capitals (see `env_var`). A list is comma-separated;
    /// an empty value unsets an optional setting.
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
}

const MODE_VAR: &str = "PALISADE_MODE";

/// The variable that overrides the setting at `path`: `PALISADE_` and the
/// path in capitals joined by `_` (`http.max_headers` is
/// `PALISADE_HTTP_MAX_HEADERS`). Two sections keep their older names:
/// `timeouts.*` is `PALISADE_TIMEOUT_*`, and `identity.*` drops the section
/// (`identity.join_token` is `PALISADE_JOIN_TOKEN`).
fn env_var(path: &[&str]) -> String {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::tests::{env_of, EXPLICIT};
    use crate::config::Unmeshed;

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
                ("PALISADE_CONTROL_PLANE", "cp-0:8443, cp-1:8443"),
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
        assert_eq!(c.identity.control_plane.to_string(), "cp-0:8443,cp-1:8443");

        for (var, value) in [
            ("PALISADE_MAX_CONNECTIONS", "lots"),
            ("PALISADE_TIMEOUT_IDLE", "forever"),
            ("PALISADE_POLICY_DEFAULT", "open"),
            ("PALISADE_MODE", "sideways"),
            ("PALISADE_CONTROL_PLANE", "cp-0"),
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
            ("PALISADE_EVENTS_QUEUE", "events.queue"),
            ("PALISADE_EVENTS_DEDUP_WINDOW", "events.dedup_window"),
            ("PALISADE_EVENTS_DEDUP_FLOWS", "events.dedup_flows"),
            ("PALISADE_EVENTS_MAX_PER_SECOND", "events.max_per_second"),
            ("PALISADE_BASELINE_MODE", "baseline.mode"),
            ("PALISADE_BASELINE_AUTO_PROMOTE", "baseline.auto_promote"),
            ("PALISADE_BASELINE_PATH", "baseline.path"),
            (
                "PALISADE_BASELINE_PERSIST_INTERVAL",
                "baseline.persist_interval",
            ),
            (
                "PALISADE_BASELINE_REPORT_INTERVAL",
                "baseline.report_interval",
            ),
            ("PALISADE_BASELINE_INSTANCE", "baseline.instance"),
            ("PALISADE_BASELINE_MERGE_FROM", "baseline.merge_from"),
            (
                "PALISADE_BASELINE_RATE_SPIKE_WARMUP",
                "baseline.rate_spike.warmup",
            ),
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
}
