//! The SVG plot: latency against percentile for each path, on the usual HDR
//! axes (x in "nines": 0 = p0, 1 = p90, 2 = p99, 3 = p99.9, ...; y logarithmic).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::hist::LatencyHistogram;

/// Deepest percentile drawn: p99.99.
const MAX_NINES: f64 = 4.0;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
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
}
