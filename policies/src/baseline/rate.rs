//! A flow's rate profile: requests (or connections) per bucket, as an
//! exponentially weighted mean and variance, updated in O(1) per request
//! with no history kept, and the rate-spike rule read from it.

use serde::{Deserialize, Serialize};

use super::settings::RateSpikeSettings;

/// The learned rate of one flow, per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateProfile {
    /// Exponentially weighted mean of closed buckets' counts.
    pub mean: f64,
    /// Exponentially weighted variance of the same.
    pub variance: f64,
    /// Closed buckets folded in since the flow was first seen, idle ones
    /// included (the warm-up counts these).
    pub buckets: u32,
    /// The open bucket (time / bucket length) and its count so far.
    pub bucket: u64,
    pub open: u32,
    /// Closed buckets in a row whose count was above the ceiling.
    pub over: u32,
}

/// A count above the learned ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateExcess {
    /// This bucket's count so far.
    pub observed: u32,
    /// `max(mean + k·σ, floor)`: the counts up to it pass.
    pub ceiling: f64,
}

impl RateProfile {
    pub(crate) fn new(bucket: u64) -> Self {
        RateProfile {
            mean: 0.0,
            variance: 0.0,
            buckets: 0,
            bucket,
            open: 0,
            over: 0,
        }
    }

    pub fn stddev(&self) -> f64 {
        self.variance.max(0.0).sqrt()
    }

    /// `max(mean + k·σ, floor)`.
    pub fn ceiling(&self, rs: &RateSpikeSettings) -> f64 {
        (self.mean + rs.k * self.stddev()).max(f64::from(rs.floor))
    }

    pub fn warmed_up(&self, rs: &RateSpikeSettings) -> bool {
        self.buckets >= rs.warmup
    }

    /// Counts one request in bucket `b`. `Some` when it makes a spike: the
    /// flow is warmed up, this bucket's count is above the ceiling, and so
    /// were the `window - 1` buckets before it. With `clamp`, a closed
    /// bucket above the ceiling teaches the profile nothing, so bursts that
    /// come back bucket after bucket never raise their own ceiling.
    pub(crate) fn record(
        &mut self,
        b: u64,
        rs: &RateSpikeSettings,
        clamp: bool,
    ) -> Option<RateExcess> {
        // A clock that steps back counts in the open bucket.
        if b > self.bucket {
            self.roll(b, rs, clamp);
        }
        self.open = self.open.saturating_add(1);
        if !self.warmed_up(rs) {
            return None;
        }
        let ceiling = self.ceiling(rs);
        let above = f64::from(self.open) > ceiling;
        (above && self.over.saturating_add(1) >= rs.window).then_some(RateExcess {
            observed: self.open,
            ceiling,
        })
    }

    /// Closes the open bucket and the idle ones up to `b`.
    fn roll(&mut self, b: u64, rs: &RateSpikeSettings, clamp: bool) {
        let x = f64::from(self.open);
        let mut learn = true;
        if self.warmed_up(rs) {
            if x > self.ceiling(rs) {
                self.over = self.over.saturating_add(1);
                learn = !clamp;
            } else {
                self.over = 0;
            }
        }
        if learn {
            self.fold(x, rs.alpha);
        }
        let idle = b - self.bucket - 1;
        if idle > 0 {
            self.fold_zeros(idle, rs.alpha);
            self.over = 0;
        }
        self.bucket = b;
        self.open = 0;
    }

    /// One bucket's count into the weighted mean and variance (the
    /// incremental form of West's weighted variance); the first bucket
    /// seeds the mean.
    fn fold(&mut self, x: f64, alpha: f64) {
        if self.buckets == 0 {
            self.mean = x;
            self.variance = 0.0;
        } else {
            let diff = x - self.mean;
            let incr = alpha * diff;
            self.mean += incr;
            self.variance = (1.0 - alpha) * (self.variance + diff * incr);
        }
        self.buckets = self.buckets.saturating_add(1);
    }

    /// `n` idle buckets at once, in closed form: with `β = 1 - α`,
    /// `mean ← β^n·mean` and `var ← β^n·(var + mean²·(1 - β^n))`.
    fn fold_zeros(&mut self, n: u64, alpha: f64) {
        let bn = (1.0 - alpha).powi(n.min(i32::MAX as u64) as i32);
        self.variance = bn * (self.variance + self.mean * self.mean * (1.0 - bn));
        self.mean *= bn;
        self.buckets = self.buckets.saturating_add(n.min(u32::MAX as u64) as u32);
    }

    /// Another pod's profile of the same flow: the mixture of the two,
    /// weighted by the buckets each has seen (pooled mean, and variance
    /// within plus between), so the result is a typical pod's rate, not
    /// the sum. The warm-up counts both pods' buckets. This side's open
    /// bucket and streak are kept.
    pub(crate) fn merge(&mut self, other: &RateProfile) {
        let (w1, w2) = (f64::from(self.buckets), f64::from(other.buckets));
        if w2 == 0.0 {
            return;
        }
        if w1 == 0.0 {
            self.mean = other.mean;
            self.variance = other.variance;
            self.buckets = other.buckets;
            return;
        }
        let mean = (w1 * self.mean + w2 * other.mean) / (w1 + w2);
        let within = w1 * self.variance + w2 * other.variance;
        let between = w1 * (self.mean - mean).powi(2) + w2 * (other.mean - mean).powi(2);
        self.mean = mean;
        self.variance = (within + between) / (w1 + w2);
        self.buckets = self.buckets.saturating_add(other.buckets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs() -> RateSpikeSettings {
        RateSpikeSettings {
            warmup: 0,
            floor: 0,
            ..Default::default()
        }
    }

    fn feed(p: &mut RateProfile, b: u64, n: u32) {
        for _ in 0..n {
            p.record(b, &rs(), false);
        }
    }

    #[test]
    fn idle_buckets_in_closed_form_match_one_at_a_time() {
        let mut a = RateProfile::new(0);
        for (i, n) in [5, 9, 7, 6].into_iter().enumerate() {
            feed(&mut a, i as u64, n);
        }
        // `a` jumps over buckets 4..=9; `c` closes each of them empty.
        a.record(10, &rs(), false);
        let mut c = RateProfile::new(0);
        for (i, n) in [5, 9, 7, 6].into_iter().enumerate() {
            feed(&mut c, i as u64, n);
        }
        c.roll(4, &rs(), false);
        for i in 5..=10 {
            c.roll(i, &rs(), false);
        }
        c.open = 1;
        assert!((a.mean - c.mean).abs() < 1e-9, "{} {}", a.mean, c.mean);
        assert!((a.variance - c.variance).abs() < 1e-9);
        assert_eq!(a.buckets, c.buckets);
    }

    #[test]
    fn a_constant_rate_has_its_mean_and_no_variance() {
        let mut p = RateProfile::new(0);
        for b in 0..50 {
            feed(&mut p, b, 20);
        }
        p.record(50, &rs(), false);
        assert!((p.mean - 20.0).abs() < 1e-9);
        assert!(p.variance.abs() < 1e-9);
        assert_eq!(p.buckets, 50);
    }

    #[test]
    fn merge_pools_mean_and_variance_by_buckets() {
        let a = RateProfile {
            mean: 10.0,
            variance: 4.0,
            buckets: 30,
            ..RateProfile::new(0)
        };
        let b = RateProfile {
            mean: 20.0,
            variance: 4.0,
            buckets: 10,
            ..RateProfile::new(0)
        };
        let mut m = a;
        m.merge(&b);
        assert!((m.mean - 12.5).abs() < 1e-9);
        // within 4, between (30·2.5² + 10·7.5²)/40 = 18.75
        assert!((m.variance - 22.75).abs() < 1e-9);
        assert_eq!(m.buckets, 40);
    }
}
