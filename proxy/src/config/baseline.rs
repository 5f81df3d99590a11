//! The `baseline:` settings: the model's `BaselineSettings` (mode, bucket,
//! caps, rate spikes) plus where and how often the sidecar persists it,
//! reports it to the control plane, and which baselines it merges in.

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
    /// How often the cumulative baseline is reported to the control plane
    /// (and once on drain); `off` (or 0) never reports. Default: 60s.
    #[serde(with = "every_or_off")]
    pub report_interval: Duration,
    /// The name reported as (the pod). Default: `POD_NAME`, else the host
    /// name.
    pub instance: Option<String>,
    /// Baseline files learned elsewhere (other pods of the service), merged
    /// in when the sidecar starts without a baseline file of its own.
    pub merge_from: Vec<PathBuf>,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            settings: BaselineSettings::default(),
            path: PathBuf::from("/var/lib/palisade/baseline.json"),
            persist_interval: Duration::from_secs(60),
            report_interval: Duration::from_secs(60),
            instance: None,
            merge_from: Vec::new(),
        }
    }
}

impl BaselineConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.settings.validate().map_err(|e| e.to_string())?;
        if self.persist_interval.is_zero() {
            return Err("baseline.persist_interval: must be more than 0".into());
        }
        if self.instance.as_deref() == Some("") {
            return Err(
                "baseline.instance: must not be empty (unset it for POD_NAME or the host name)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A duration where `off`, `false` or 0 mean never (`Duration::ZERO`).
mod every_or_off {
    use std::fmt;
    use std::time::Duration;

    use super::duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        match d.is_zero() {
            true => s.serialize_str("off"),
            false => duration::serialize(d, s),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 30s, 5m or 1h, or `off`")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Duration, E> {
                match v {
                    false => Ok(Duration::ZERO),
                    true => Err(E::custom(
                        "`true` is not a duration; write e.g. 60s, or `off`",
                    )),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                duration::deserialize(serde::de::value::U64Deserializer::new(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                duration::deserialize(serde::de::value::I64Deserializer::new(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                duration::deserialize(serde::de::value::F64Deserializer::new(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                match v.trim() {
                    "off" => Ok(Duration::ZERO),
                    v => duration::parse(v).map_err(E::custom),
                }
            }
        }
        d.deserialize_any(Visitor)
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
    fn reporting_reads_an_interval_or_off_and_merge_from_a_list() {
        let d = Config::default().baseline;
        assert_eq!(d.report_interval, Duration::from_secs(60));
        assert_eq!((d.instance, d.merge_from.len()), (None, 0));
        for (text, want) in [("off", 0), ("0", 0), ("90s", 90), ("2m", 120), ("false", 0)] {
            let c = Config::from_yaml(&format!("baseline: {{report_interval: {text}}}\n"))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                c.baseline.report_interval,
                Duration::from_secs(want),
                "{text}"
            );
            // `off` is written back as `off`.
            let yaml = serde_saphyr::to_string(&c).unwrap();
            assert_eq!(Config::from_yaml(&yaml).unwrap(), c, "{yaml}");
        }
        let err = Config::from_yaml("baseline: {report_interval: often}\n").unwrap_err();
        assert!(
            err.contains("baseline.report_interval") && err.contains("often"),
            "{err}"
        );
        let c = Config::default()
            .with_env(env_of(&[
                ("PALISADE_BASELINE_REPORT_INTERVAL", "off"),
                ("PALISADE_BASELINE_INSTANCE", "api-7d9f"),
                ("PALISADE_BASELINE_MERGE_FROM", "/seed/a.json, /seed/b.json"),
            ]))
            .unwrap();
        let b = &c.baseline;
        assert!(b.report_interval.is_zero());
        assert_eq!(b.instance.as_deref(), Some("api-7d9f"));
        assert_eq!(
            b.merge_from,
            vec![PathBuf::from("/seed/a.json"), PathBuf::from("/seed/b.json")]
        );
        let mut c = Config::from_yaml("baseline: {instance: \"\"}\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("baseline.instance"), "{err}");
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
