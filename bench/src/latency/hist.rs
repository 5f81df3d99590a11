//! Latency histograms (HDR, microseconds) and the percentile summary every
//! report uses.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked; slower samples are clamped here, and a request
/// that slow has long since timed out anyway.
const MAX_MICROS: u64 = 60_000_000;

/// A histogram of latencies in microseconds, 3 significant digits.
#[derive(Clone)]
pub struct LatencyHistogram(Histogram<u64>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(
            Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid"),
        )
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_MICROS)
            .max(1);
        self.0.saturating_record(micros);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.0.add(&other.0).expect("histograms share bounds");
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn quantile_micros(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// How many samples are at least `latency`.
    #[cfg(test)]
    pub fn count_at_least(&self, latency: Duration) -> u64 {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.0.count_between(micros, MAX_MICROS)
    }

    pub fn summary(&self) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p99: ms(self.0.value_at_quantile(0.99)),
            p999: ms(self.0.value_at_quantile(0.999)),
            max: ms(self.0.max()),
        }
    }
}

/// p50, p90, p99, p99.9 and max, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn values(&self) -> [f64; 5] {
        [self.p50, self.p90, self.p99, self.p999, self.max]
    }

    pub fn from_values(v: [f64; 5]) -> Percentiles {
        Percentiles {
            p50: v[0],
            p90: v[1],
            p99: v[2],
            p999: v[3],
            max: v[4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_percentiles_of_recorded_samples_in_ms() {
        let mut h = LatencyHistogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert!((s.p50 - 500.0).abs() < 1.0, "p50 {}", s.p50);
        assert!((s.p99 - 990.0).abs() < 1.0, "p99 {}", s.p99);
        assert!((s.max - 1000.0).abs() < 1.0, "max {}", s.max);
        assert_eq!(h.count_at_least(Duration::from_millis(901)), 100);
    }

    #[test]
    fn merged_histograms_hold_both_sets_of_samples() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_secs(2));
        a.merge(&b);
        assert_eq!(a.len(), 2);
        assert!(a.summary().max >= 2000.0);
    }
}
