//! The `baseline:` settings: the model's `BaselineSettings` (mode, bucket,
//! caps, rate spikes) plus where and how often the sidecar persists it.

use std::path::PathBuf;
use std::time::Duration;

use palisade_identity::duration;
use palisade_policy::baseline::BaselineSettings;
use serde::{Deserialize, Serialize};

/// `baseline:` in the proxy config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineConfig {
    /// `mode`, `bucket`, `stable_after`, `max_entries`, `rate_spike`, ...
    #[serde(flatten)]
    pub settings: BaselineSettings,
    /// The learned baseline, written atomically (a temporary file renamed
    /// over it). Default: /var/lib/palisade/baseline.json.
    pub path: PathBuf,
    /// How often the baseline is written (and on drain). Default: 60s.
    #[serde(with = "duration")]
    pub persist_interval: Duration,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            settings: BaselineSettings::default(),
            path: PathBuf::from("/var/lib/palisade/baseline.json"),
            persist_interval: Duration::from_secs(60),
        }
    }
}

impl BaselineConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.settings.validate().map_err(|e| e.to_string())?;
        if self.persist_interval.is_zero() {
            return Err("baseline.persist_interval: must be more than 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use palisade_policy::baseline::BaselineMode;

    use super::*;
    use crate::config::tests::env_of;
    use crate::config::Config;

    #[test]
    fn the_section_reads_the_model_settings_and_the_file_settings() {
        let mut c = Config::from_yaml(
            "baseline: {mode: learn, bucket: 250ms, auto_promote: true, \
             path: /tmp/b.json, persist_interval: 2s, rate_spike: {warmup: 3}}\n",
        )
        .unwrap();
        c.validate().unwrap();
        let b = &c.baseline;
        assert_eq!(b.settings.mode, BaselineMode::Learn);
        assert_eq!(b.settings.bucket, Duration::from_millis(250));
        assert!(b.settings.auto_promote);
        assert_eq!(b.settings.rate_spike.warmup, 3);
        assert_eq!(b.path, PathBuf::from("/tmp/b.json"));
        assert_eq!(b.persist_interval, Duration::from_secs(2));
        assert_eq!(Config::default().baseline.settings.mode, BaselineMode::Off);
    }

    #[test]
    fn the_mode_comes_from_the_environment_and_bad_values_are_named() {
        let c = Config::default()
            .with_env(env_of(&[("PALISADE_BASELINE_MODE", "protect")]))
            .unwrap();
        assert_eq!(c.baseline.settings.mode, BaselineMode::Protect);
        let err = Config::default()
            .with_env(env_of(&[("PALISADE_BASELINE_MODE", "lern")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PALISADE_BASELINE_MODE") && err.contains("lern"),
            "{err}"
        );
        let err = Config::from_yaml("baseline: {mdoe: learn}\n").unwrap_err();
        assert!(err.contains("mdoe"), "{err}");
        let mut c = Config::from_yaml("baseline: {max_entries: 0}\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("baseline.max_entries"), "{err}");
    }
}
