//! Summaries across repeated trials: the median and its spread (min..max), and
//! a proxy's added latency over direct, from trials paired by round.

use serde::Serialize;

use super::hist::Percentiles;

/// A value's median across trials, with the lowest and highest seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no samples.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// Each percentile's spread across trials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PercentileSpread {
    pub median: Percentiles,
    pub min: Percentiles,
    pub max: Percentiles,
}

impl PercentileSpread {
    pub fn of(trials: &[Percentiles]) -> Option<PercentileSpread> {
        if trials.is_empty() {
            return None;
        }
        let (mut median, mut min, mut max) = ([0.0; 5], [0.0; 5], [0.0; 5]);
        for i in 0..5 {
            let values: Vec<f64> = trials.iter().map(|t| t.values()[i]).collect();
            let s = Spread::of(&values)?;
            (median[i], min[i], max[i]) = (s.median, s.min, s.max);
        }
        Some(PercentileSpread {
            median: Percentiles::from_values(median),
            min: Percentiles::from_values(min),
            max: Percentiles::from_values(max),
        })
    }
}

/// Latency a path adds over direct: per round, path minus the direct trial of
/// the same round (they ran back to back, so drift hits both), then the spread
/// of those differences.
pub fn added_over(path: &[Percentiles], direct: &[Percentiles]) -> Option<PercentileSpread> {
    let diffs: Vec<Percentiles> = path
        .iter()
        .zip(direct)
        .map(|(p, d)| {
            let (p, d) = (p.values(), d.values());
            Percentiles::from_values(std::array::from_fn(|i| p[i] - d[i]))
        })
        .collect();
    PercentileSpread::of(&diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_with_min_and_max() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn added_latency_pairs_trials_of_the_same_round() {
        let p = |v: f64| Percentiles::from_values([v; 5]);
        let direct = [p(1.0), p(2.0), p(3.0)];
        let proxy = [p(1.5), p(2.5), p(4.0)];
        let added = added_over(&proxy, &direct).unwrap();
        assert_eq!(added.median.p99, 0.5);
        assert_eq!(added.max.p99, 1.0);
    }
}
