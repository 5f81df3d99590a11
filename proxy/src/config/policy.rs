//! The `policy:` section: where segmentation policies come from, what
//! applies to workloads no policy selects, and its `PALISADE_POLICY_*`
//! overrides.

use std::path::PathBuf;
use std::time::Duration;

use palisade_policy::DefaultPolicy;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{duration, ConfigError};

/// Where policy documents come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `policy.path`, watched for changes.
    File,
    /// The control plane's `GET /v1/policies` (long-poll).
    ControlPlane,
    /// Both, merged; the file's copy of a `namespace/name` wins.
    Both,
}

impl SourceKind {
    pub fn uses_file(self) -> bool {
        matches!(self, SourceKind::File | SourceKind::Both)
    }

    pub fn uses_control_plane(self) -> bool {
        matches!(self, SourceKind::ControlPlane | SourceKind::Both)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A policy file, or a directory of `*.yaml`/`*.yml`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// What applies to a workload no policy selects in a direction.
    #[serde(
        default = "default_default",
        serialize_with = "ser_default",
        deserialize_with = "de_default"
    )]
    pub default: DefaultPolicy,
    #[serde(default = "default_source")]
    pub source: SourceKind,
    /// File events closer together than this are one reload.
    #[serde(default = "default_debounce", with = "duration")]
    pub debounce: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            path: None,
            default: default_default(),
            source: default_source(),
            debounce: default_debounce(),
        }
    }
}

fn default_default() -> DefaultPolicy {
    DefaultPolicy::AllAuthenticated
}
fn default_source() -> SourceKind {
    SourceKind::File
}
fn default_debounce() -> Duration {
    Duration::from_millis(100)
}

fn ser_default<S: Serializer>(d: &DefaultPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

fn de_default<'de, D: Deserializer<'de>>(d: D) -> Result<DefaultPolicy, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl PolicyConfig {
    pub fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let bad = |var: &'static str, value: &str, message: String| ConfigError::Env {
            var,
            value: value.to_owned(),
            message,
        };
        if let Some(v) = env("PALISADE_POLICY_PATH") {
            let v = v.trim();
            self.path = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        if let Some(v) = env("PALISADE_POLICY_DEFAULT") {
            self.default =
                v.trim()
                    .parse()
                    .map_err(|e: palisade_policy::UnknownDefaultPolicy| {
                        bad("PALISADE_POLICY_DEFAULT", &v, e.to_string())
                    })?;
        }
        if let Some(v) = env("PALISADE_POLICY_SOURCE") {
            self.source = serde_json::from_value(serde_json::Value::String(v.trim().to_owned()))
                .map_err(|e| bad("PALISADE_POLICY_SOURCE", &v, e.to_string()))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.source == SourceKind::Both && self.path.is_none() {
            return Err(ConfigError::Invalid(
                "policy.source `both` needs policy.path (or PALISADE_POLICY_PATH)".into(),
            ));
        }
        if self.source == SourceKind::ControlPlane && self.path.is_some() {
            return Err(ConfigError::Invalid(
                "policy.path is set but policy.source is `control-plane`, which ignores it; use `both` or `file`".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_file_source_and_all_authenticated() {
        let c = PolicyConfig::default();
        assert_eq!(c.default, DefaultPolicy::AllAuthenticated);
        assert_eq!(c.source, SourceKind::File);
        assert!(c.path.is_none());
        c.validate().unwrap();
    }

    #[test]
    fn yaml_and_env_set_path_default_and_source() {
        let mut c: PolicyConfig =
            serde_saphyr::from_str("path: /etc/p\ndefault: deny\nsource: both\n").unwrap();
        assert_eq!(c.default, DefaultPolicy::Deny);
        assert_eq!(c.source, SourceKind::Both);
        let env = |k: &str| match k {
            "PALISADE_POLICY_DEFAULT" => Some("audit".to_owned()),
            "PALISADE_POLICY_PATH" => Some("/run/p".to_owned()),
            _ => None,
        };
        c.apply_env(&env).unwrap();
        assert_eq!(c.default, DefaultPolicy::Audit);
        assert_eq!(c.path.as_deref(), Some(std::path::Path::new("/run/p")));
        let err = c
            .apply_env(&|k: &str| (k == "PALISADE_POLICY_DEFAULT").then(|| "open".to_owned()))
            .unwrap_err();
        assert!(err.to_string().contains("all-authenticated"), "{err}");
    }

    #[test]
    fn unknown_default_in_yaml_names_the_choices() {
        let err = serde_saphyr::from_str::<PolicyConfig>("default: allow\n").unwrap_err();
        assert!(err.to_string().contains("all-unauthenticated"), "{err}");
    }

    #[test]
    fn both_without_a_path_is_refused() {
        let c = PolicyConfig {
            source: SourceKind::Both,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
