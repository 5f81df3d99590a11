//! The SVG: how long a push takes to reach 50%, 99% and 100% of the mesh,
//! and the control plane's resident memory, against the number of sidecars.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::SizeResult;

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// A named line of `(sidecars, value)` points.
type Series = (&'static str, Vec<(f64, f64)>);

pub fn against_size(out: &Path, sizes: &[SizeResult]) -> anyhow::Result<()> {
    let draw = |e| anyhow!("drawing {}: {e:?}", out.display());
    let root = SVGBackend::new(out, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let panels = root.split_evenly((1, 2));
    let points = |at: &dyn Fn(&SizeResult) -> Option<f64>| -> Vec<(f64, f64)> {
        sizes
            .iter()
            .filter_map(|s| at(s).map(|v| (s.sidecars as f64, v)))
            .collect()
    };
    let push: Vec<Series> = vec![
        ("50%", points(&|s| s.worst(|p| p.p50_ms))),
        ("99%", points(&|s| s.worst(|p| p.p99_ms))),
        ("100%", points(&|s| s.worst(|p| p.all_ms))),
    ];
    let rss: Vec<Series> = vec![
        ("parked", points(&|s| Some(s.control_plane.rss_mib_steady))),
        ("peak", points(&|s| Some(s.control_plane.rss_mib_peak))),
    ];
    panel(
        &panels[0],
        "Policy push reaches the mesh (slowest push)",
        "time (ms)",
        &push,
    )
    .map_err(draw)?;
    let memory = match sizes.first().map_or(1, |s| s.replicas) {
        1 => "Control-plane memory".to_owned(),
        n => format!("Control-plane memory, {n} replicas summed"),
    };
    panel(&panels[1], &memory, "RSS (MiB)", &rss).map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let y_max = all.map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("simulated sidecars")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_run_still_draws_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mesh.svg");
        against_size(&out, &[]).unwrap();
        let svg = std::fs::read_to_string(out).unwrap();
        assert!(svg.contains("Policy push") && svg.contains("Control-plane memory"));
    }
}
