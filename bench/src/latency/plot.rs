//! The SVG plots: latency against percentile for each path, on the usual HDR
//! axes (x in "nines": 0 = p0, 1 = p90, 2 = p99, 3 = p99.9, ...; y
//! logarithmic), and the sweep's p50 and p99 against achieved rate.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::hist::LatencyHistogram;

/// Deepest percentile drawn: p99.99.
const MAX_NINES: f64 = 4.0;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draw one line per `(path, merged histogram of all its trials)`.
pub fn latency_by_percentile(
    out: &Path,
    title: &str,
    series: &[(&str, &LatencyHistogram)],
) -> anyhow::Result<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| (*name, curve(h)))
        .collect();
    let all = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi {
        (lo * 0.8, hi * 1.25)
    } else {
        (0.01, 1.0)
    };

    let root = SVGBackend::new(out, (900, 540)).into_drawing_area();
    let draw = |e| anyhow!("drawing {}: {e:?}", out.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..MAX_NINES, (lo.max(0.001)..hi).log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(MAX_NINES as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(draw)?;
    for (i, (name, points)) in curves.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(draw)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

/// One line pair of the sweep plot: `(achieved RPS, p50 ms, p99 ms)` per step.
pub struct RateCurve {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// p99 (thick, with dots) and p50 (thin) against achieved rate, both axes
/// logarithmic, with the p99 limit drawn across in grey.
pub fn latency_by_rate(
    out: &Path,
    title: &str,
    curves: &[RateCurve],
    limit_ms: f64,
) -> anyhow::Result<()> {
    let all = curves.iter().flat_map(|c| c.points.iter());
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, limit_ms, limit_ms);
    for &(x, p50, p99) in all {
        (x_lo, x_hi) = (x_lo.min(x), x_hi.max(x));
        (y_lo, y_hi) = (y_lo.min(p50), y_hi.max(p99));
    }
    if x_lo > x_hi {
        (x_lo, x_hi) = (1.0, 10.0);
    }
    let x = (x_lo * 0.8).max(0.1)..x_hi * 1.25;
    let y = (y_lo * 0.8).max(0.001)..y_hi * 1.25;

    let root = SVGBackend::new(out, (900, 540)).into_drawing_area();
    let draw = |e| anyhow!("drawing {}: {e:?}", out.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone().log_scale(), y.log_scale())
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("achieved requests per second")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(draw)?;
    let grey = RGBColor(150, 150, 150);
    chart
        .draw_series(LineSeries::new(
            [(x.start, limit_ms), (x.end, limit_ms)],
            grey.stroke_width(1),
        ))
        .map_err(draw)?
        .label(format!("p99 limit {limit_ms} ms"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
    for (i, curve) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let p99: Vec<(f64, f64)> = curve.points.iter().map(|p| (p.0, p.2)).collect();
        let p50: Vec<(f64, f64)> = curve.points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(p99.clone(), color.stroke_width(3)))
            .map_err(draw)?
            .label(&curve.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(p99.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(draw)?;
        chart
            .draw_series(LineSeries::new(p50, color.stroke_width(1)))
            .map_err(draw)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

/// (nines, latency ms) at 20 steps per decade of tail.
fn curve(h: &LatencyHistogram) -> Vec<(f64, f64)> {
    let steps = (MAX_NINES * 20.0) as usize;
    (0..=steps)
        .map(|i| {
            let nines = i as f64 / 20.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.quantile_micros(q) as f64 / 1000.0)
        })
        .collect()
}

fn nines_label(x: f64) -> String {
    match x.round() as i32 {
        0 => "0%".into(),
        n => {
            let decimals = (n - 2).max(0) as usize;
            format!("{:.decimals$}%", 100.0 - 100.0 * 10f64.powi(-n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentile_axis_is_labelled_in_nines() {
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
    }

    #[test]
    fn plot_is_written_as_svg_with_a_line_per_path() {
        let mut h = LatencyHistogram::default();
        for us in 100..2000 {
            h.record(Duration::from_micros(us));
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plot.svg");
        latency_by_percentile(&out, "test", &[("direct", &h), ("envoy", &h)]).unwrap();
        let svg = std::fs::read_to_string(out).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("direct") && svg.contains("envoy"));
    }

    #[test]
    fn sweep_plot_names_every_curve_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sweep.svg");
        let curves = [
            RateCurve {
                name: "direct http1".into(),
                points: vec![(500.0, 0.2, 0.5), (1000.0, 0.3, 0.9)],
            },
            RateCurve {
                name: "palisade http2".into(),
                points: vec![(480.0, 0.6, 2.0), (700.0, 4.0, 40.0)],
            },
        ];
        latency_by_rate(&out, "sweep", &curves, 10.0).unwrap();
        let svg = std::fs::read_to_string(out).unwrap();
        assert!(svg.contains("direct http1") && svg.contains("palisade http2"));
        assert!(svg.contains("p99 limit 10 ms"));
    }
}
