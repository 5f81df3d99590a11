//! When to renew an SVID and how long to wait after a failed request: at
//! half-life with jitter, retried with capped exponential backoff.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

/// Retry delays while the control plane is unreachable or refusing.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_CAP: Duration = Duration::from_secs(15);

/// Seconds since the Unix epoch, the unit of SVID expiry times.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When to renew an SVID that expires in `remaining`: at half of it, less up
/// to a tenth as jitter so a fleet started together does not renew together.
pub fn renew_after(remaining: Duration, rng: &mut impl Rng) -> Duration {
    let half = remaining / 2;
    let jitter = remaining.mul_f64(rng.random_range(0.0..0.1));
    half.saturating_sub(jitter).max(Duration::from_millis(100))
}

/// Capped exponential backoff with full jitter.
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    exp.mul_f64(rng.random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_happens_around_half_life_never_after_it() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let d = renew_after(Duration::from_secs(3600), &mut rng);
            assert!(
                d <= Duration::from_secs(1800) && d >= Duration::from_secs(1440),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut rng = rand::rng();
        assert!(backoff(0, &mut rng) <= BACKOFF_BASE);
        assert!(backoff(3, &mut rng) >= BACKOFF_BASE * 4);
        for a in [10, 40, u32::MAX] {
            assert!(backoff(a, &mut rng) <= BACKOFF_CAP);
        }
    }
}
