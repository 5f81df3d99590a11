//! Flood control for security events: per-flow dedup within a window and a
//! global cap per second, both lock-free and allocation-free, with a fixed
//! memory footprint whatever the attacker sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why an event was not emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// The same flow raised the same kind within the dedup window.
    Duplicate,
    /// The global events-per-second cap was reached.
    RateLimit,
}

impl Suppressed {
    pub fn as_str(self) -> &'static str {
        match self {
            Suppressed::Duplicate => "duplicate",
            Suppressed::RateLimit => "rate_limit",
        }
    }
}

/// A direct-mapped table of recently emitted flows plus a per-second budget.
///
/// Each slot packs a 32-bit tag of the flow hash with the emission time in
/// milliseconds (32 bits, so it wraps after ~49 days: a slot idle that long
/// can at worst hide one event for one window). Two flows that share a slot
/// evict each other, which can only cause an extra event, never a lost one;
/// the global cap bounds the total either way.
pub struct Limiter {
    slots: Box<[AtomicU64]>,
    window_ms: u64,
    /// (second since start) << 32 | events emitted in that second.
    second: AtomicU64,
    per_second: u32,
    start: Instant,
}

impl Limiter {
    /// `flows` slots (rounded up to a power of two, at least 1).
    pub fn new(flows: usize, window: Duration, per_second: u32) -> Limiter {
        let n = flows.max(1).next_power_of_two();
        Limiter {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            window_ms: window.as_millis().min(u32::MAX as u128) as u64,
            second: AtomicU64::new(0),
            per_second,
            start: Instant::now(),
        }
    }

    /// Whether an event for flow `hash` may be emitted now.
    pub fn admit(&self, hash: u64) -> Result<(), Suppressed> {
        let elapsed = self.start.elapsed();
        self.admit_at(hash, elapsed.as_millis() as u64)
    }

    fn admit_at(&self, hash: u64, now_ms: u64) -> Result<(), Suppressed> {
        let slot = &self.slots[(hash as usize) & (self.slots.len() - 1)];
        // Tag 0 marks an empty slot, so a real tag is never 0.
        let tag = (hash >> 32).max(1);
        let now = now_ms & 0xffff_ffff;
        let mut seen = slot.load(Ordering::Relaxed);
        let recent = |v: u64| {
            v >> 32 == tag && now.wrapping_sub(v & 0xffff_ffff) & 0xffff_ffff < self.window_ms
        };
        if recent(seen) {
            return Err(Suppressed::Duplicate);
        }
        // The budget is taken before the slot is marked, so a flow held back
        // by the cap is not also hidden for the rest of its window.
        self.take_budget(now_ms / 1000)?;
        while let Err(current) =
            slot.compare_exchange_weak(seen, tag << 32 | now, Ordering::Relaxed, Ordering::Relaxed)
        {
            if recent(current) {
                // Another thread emitted this flow meanwhile.
                return Err(Suppressed::Duplicate);
            }
            seen = current;
        }
        Ok(())
    }

    fn take_budget(&self, sec: u64) -> Result<(), Suppressed> {
        let sec = sec & 0xffff_ffff;
        let mut cur = self.second.load(Ordering::Relaxed);
        loop {
            let (s, n) = (cur >> 32, cur & 0xffff_ffff);
            let next = if s == sec {
                if n >= self.per_second as u64 {
                    return Err(Suppressed::RateLimit);
                }
                cur + 1
            } else {
                sec << 32 | 1
            };
            match self
                .second
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(c) => cur = c,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_flow_is_admitted_once_per_window() {
        let l = Limiter::new(16, Duration::from_secs(10), 1000);
        assert_eq!(l.admit_at(0xabcd_0000_0001, 0), Ok(()));
        assert_eq!(
            l.admit_at(0xabcd_0000_0001, 9_999),
            Err(Suppressed::Duplicate)
        );
        assert_eq!(l.admit_at(0xabcd_0000_0001, 10_000), Ok(()));
    }

    #[test]
    fn distinct_flows_are_capped_per_second() {
        let l = Limiter::new(1024, Duration::from_secs(60), 3);
        let admitted = (0..100u64)
            .filter(|i| l.admit_at(i << 32 | i, 500).is_ok())
            .count();
        assert_eq!(admitted, 3);
        // A new second brings a new budget.
        assert_eq!(l.admit_at(999 << 32 | 999, 1_500), Ok(()));
    }

    #[test]
    fn a_flow_evicted_by_a_colliding_one_is_emitted_again_not_lost() {
        let l = Limiter::new(1, Duration::from_secs(60), 1000);
        assert_eq!(l.admit_at(1 << 32, 0), Ok(()));
        assert_eq!(l.admit_at(2 << 32, 1), Ok(()));
        assert_eq!(l.admit_at(1 << 32, 2), Ok(()));
    }
}
