//! The `policy:` section: where segmentation policies come from, and what
//! applies to workloads no policy selects.

use std::path::PathBuf;
use std::time::Duration;

use palisade_policy::DefaultPolicy;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use palisade_identity::duration;

use super::ConfigError;

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// A policy file, or a directory of `*.yaml`/`*.yml`.
    pub path: Option<PathBuf>,
    /// What applies to a workload no policy selects in a direction.
    #[serde(serialize_with = "ser_default", deserialize_with = "de_default")]
    pub default: DefaultPolicy,
    pub source: SourceKind,
    /// File events closer together than this are one reload.
    #[serde(with = "duration")]
    pub debounce: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            path: None,
            default: DefaultPolicy::AllAuthenticated,
            source: SourceKind::File,
            debounce: Duration::from_millis(100),
        }
    }
}

fn ser_default<S: Serializer>(d: &DefaultPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

fn de_default<'de, D: Deserializer<'de>>(d: D) -> Result<DefaultPolicy, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl PolicyConfig {
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
    fn yaml_sets_path_default_and_source() {
        let c: PolicyConfig =
            serde_saphyr::from_str("path: /etc/p\ndefault: deny\nsource: both\n").unwrap();
        assert_eq!(c.default, DefaultPolicy::Deny);
        assert_eq!(c.source, SourceKind::Both);
        assert_eq!(c.path.as_deref(), Some(std::path::Path::new("/etc/p")));
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
