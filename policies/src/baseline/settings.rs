//! The baseline's settings (`baseline:` in the proxy's configuration), with
//! their defaults stated once, here, and the four modes.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the baseline does with traffic that policy allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineMode {
    /// Nothing is recorded or checked.
    #[default]
    Off,
    /// Every allowed flow is recorded; nothing is reported.
    Learn,
    /// Known flows are recorded; a deviation is reported and still passes.
    Monitor,
    /// Known flows are recorded and pass; a deviation is blocked, a rate
    /// spike throttled.
    Protect,
}

impl BaselineMode {
    pub const ALL: [BaselineMode; 4] = [
        BaselineMode::Off,
        BaselineMode::Learn,
        BaselineMode::Monitor,
        BaselineMode::Protect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BaselineMode::Off => "off",
            BaselineMode::Learn => "learn",
            BaselineMode::Monitor => "monitor",
            BaselineMode::Protect => "protect",
        }
    }
}

impl fmt::Display for BaselineMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word; YAML 1.1 readers turn an unquoted `off` into `false`, which is
/// read as `off` too.
impl<'de> Deserialize<'de> for BaselineMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Word(String),
            Bool(bool),
        }
        match Repr::deserialize(d) {
            Ok(Repr::Word(w)) => w.parse().map_err(serde::de::Error::custom),
            Ok(Repr::Bool(false)) => Ok(BaselineMode::Off),
            _ => Err(serde::de::Error::custom(
                "expected a baseline mode: one of `off`, `learn`, `monitor`, `protect`",
            )),
        }
    }
}

impl std::str::FromStr for BaselineMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BaselineMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown baseline mode `{s}`, expected one of `off`, `learn`, `monitor`, `protect`")
            })
    }
}

/// Flows a workload learns at most, unless `max_entries` says otherwise; the
/// control plane accepts reports of this size.
pub const DEFAULT_MAX_ENTRIES: usize = 20_000;

/// The baseline's settings. Durations are written `250ms`, `10s`, `10m`,
/// `1h` (a bare number is seconds), as everywhere in the proxy's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineSettings {
    /// `off` (default), `learn`, `monitor` or `protect`.
    pub mode: BaselineMode,
    /// Move from `learn` to `monitor` once the workload is `stable`.
    /// Default: false.
    pub auto_promote: bool,
    /// The rate profile's bucket: rates are requests (or connections) per
    /// bucket. A workload is `stabilizing` after two buckets without a new
    /// flow. Default: 10s.
    #[serde(with = "duration")]
    pub bucket: Duration,
    /// No new flow for this long makes the workload `stable`. Default: 10m.
    #[serde(with = "duration")]
    pub stable_after: Duration,
    /// At most this many flows are learned; further new flows are counted
    /// as overflow and not learned. Default: 20000.
    pub max_entries: usize,
    /// Address-only IPv4 peers are learned as this prefix. Default: 24.
    pub ipv4_prefix: u8,
    /// Address-only IPv6 peers are learned as this prefix. Default: 64.
    pub ipv6_prefix: u8,
    pub rate_spike: RateSpikeSettings,
}

/// When a flow's rate is a spike: after `warmup` buckets, its rate stays
/// above `max(mean + k·σ, floor)` for `window` buckets in a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateSpikeSettings {
    /// Standard deviations above the mean. Default: 3.
    pub k: f64,
    /// A rate at or under this many per bucket is never a spike. Default: 10.
    pub floor: u32,
    /// Buckets in a row above the ceiling (the current one included).
    /// Default: 3.
    pub window: u32,
    /// Buckets a flow must have been observed over before it can spike.
    /// Default: 30 (5 minutes of 10 s buckets).
    pub warmup: u32,
    /// The weight of the newest bucket in the exponentially weighted mean
    /// and variance, in (0, 1]. Default: 0.1 (about the last 10 buckets).
    pub alpha: f64,
}

impl Default for BaselineSettings {
    fn default() -> Self {
        BaselineSettings {
            mode: BaselineMode::Off,
            auto_promote: false,
            bucket: Duration::from_secs(10),
            stable_after: Duration::from_secs(600),
            max_entries: DEFAULT_MAX_ENTRIES,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            rate_spike: RateSpikeSettings::default(),
        }
    }
}

impl Default for RateSpikeSettings {
    fn default() -> Self {
        RateSpikeSettings {
            k: 3.0,
            floor: 10,
            window: 3,
            warmup: 30,
            alpha: 0.1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("baseline.{field}: {reason}")]
pub struct SettingsError {
    pub field: &'static str,
    pub reason: String,
}

impl BaselineSettings {
    /// Every setting in range, or the first one that is not.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |field, reason: &str| {
            Err(SettingsError {
                field,
                reason: reason.to_owned(),
            })
        };
        let r = &self.rate_spike;
        if self.bucket.as_millis() == 0 {
            return err("bucket", "must be at least 1ms");
        }
        if self.max_entries == 0 {
            return err("max_entries", "must be at least 1");
        }
        if self.ipv4_prefix > 32 {
            return err("ipv4_prefix", "must be 0-32");
        }
        if self.ipv6_prefix > 128 {
            return err("ipv6_prefix", "must be 0-128");
        }
        if !(r.k.is_finite() && r.k >= 0.0) {
            return err("rate_spike.k", "must be a number >= 0");
        }
        if r.window == 0 {
            return err("rate_spike.window", "must be at least 1 bucket");
        }
        if !(r.alpha > 0.0 && r.alpha <= 1.0) {
            return err("rate_spike.alpha", "must be in (0, 1]");
        }
        Ok(())
    }

    /// The bucket in milliseconds, at least 1.
    pub(crate) fn bucket_ms(&self) -> u64 {
        (self.bucket.as_millis() as u64).max(1)
    }

    pub(crate) fn stable_after_ms(&self) -> u64 {
        self.stable_after.as_millis().min(u64::MAX as u128) as u64
    }
}

/// Durations in the grammar every Palisade binary shares.
pub(crate) use palisade_identity::duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values_and_valid() {
        let s = BaselineSettings::default();
        assert_eq!(s.bucket, Duration::from_secs(10));
        assert_eq!(s.stable_after, Duration::from_secs(600));
        assert_eq!(s.mode, BaselineMode::Off);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn settings_read_durations_and_lowercase_modes() {
        let s: BaselineSettings = serde_json::from_str(
            r#"{"mode":"monitor","bucket":"250ms","stable_after":"2m","rate_spike":{"k":2.5}}"#,
        )
        .unwrap();
        assert_eq!(s.mode, BaselineMode::Monitor);
        assert_eq!(s.bucket, Duration::from_millis(250));
        assert_eq!(s.stable_after, Duration::from_secs(120));
        assert_eq!(s.rate_spike.k, 2.5);
        assert_eq!(s.rate_spike.window, 3);
        let back: BaselineSettings =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn an_unquoted_yaml_off_read_as_false_is_off() {
        let s: BaselineSettings = serde_json::from_str(r#"{"mode":false}"#).unwrap();
        assert_eq!(s.mode, BaselineMode::Off);
        let e = serde_json::from_str::<BaselineSettings>(r#"{"mode":true}"#).unwrap_err();
        assert!(e.to_string().contains("`protect`"), "{e}");
    }

    #[test]
    fn bad_settings_name_the_field() {
        let e = serde_json::from_str::<BaselineSettings>(r#"{"mode":"lern"}"#).unwrap_err();
        assert!(e.to_string().contains("lern"), "{e}");
        let e = serde_json::from_str::<BaselineSettings>(r#"{"bucket":"10 parsecs"}"#).unwrap_err();
        assert!(e.to_string().contains("parsecs"), "{e}");
        let s = BaselineSettings {
            ipv4_prefix: 33,
            ..Default::default()
        };
        assert_eq!(s.validate().unwrap_err().field, "ipv4_prefix");
    }
}
