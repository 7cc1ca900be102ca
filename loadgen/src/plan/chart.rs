//! The latency-vs-throughput chart of a capacity plan, as SVG (plotters'
//! SVG backend writes text as `<text>` elements, so no font files are
//! needed).

use std::path::Path;

use plotters::prelude::*;

use super::PlanReport;
use crate::cli::Slo;

const SIZE: (u32, u32) = (900, 560);

/// A plotted line: its legend, colour and the step value it plots.
type Series = (&'static str, RGBColor, fn(&super::Step) -> f64);

pub fn write_svg(report: &PlanReport, slo: Slo, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    draw(&root, report, slo).map_err(|error| error.to_string())?;
    root.present().map_err(|error| error.to_string())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    report: &PlanReport,
    slo: Slo,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let slo_ms = slo.limit.as_secs_f64() * 1e3;
    let max_x = report
        .steps
        .iter()
        .map(|step| step.achieved_rate)
        .fold(1.0, f64::max)
        * 1.05;
    let max_y = report
        .steps
        .iter()
        .map(|step| step.p999 * 1e3)
        .fold(slo_ms, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{}: latency vs throughput (objective {})",
                report.workload, report.objective
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("achieved throughput (requests/s)")
        .y_desc("latency (ms)")
        .draw()?;
    let series: [Series; 3] = [
        ("p50", BLUE, |step| step.p50),
        ("p99", RED, |step| step.p99),
        ("p99.9", MAGENTA, |step| step.p999),
    ];
    for (label, color, value) in series {
        let points: Vec<(f64, f64)> = report
            .steps
            .iter()
            .map(|step| (step.achieved_rate, value(step) * 1e3))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|point| Circle::new(point, 3, color.filled())),
        )?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, slo_ms), (max_x, slo_ms)],
            BLACK.stroke_width(1),
        ))?
        .label(format!("objective p{} = {slo_ms} ms", slo.percentile))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
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
    use std::time::Duration;

    use super::super::Step;
    use super::*;

    #[test]
    fn writes_an_svg_with_the_series_and_labels() {
        let step = |rate: f64, p99: f64| Step {
            offered_rate: rate,
            achieved_rate: rate,
            p50: p99 / 3.0,
            p90: p99 / 2.0,
            p99,
            p999: p99 * 1.5,
            objective_value: p99,
            failures: 0,
            passed: p99 <= 0.01,
        };
        let report = PlanReport {
            workload: "put".into(),
            objective: "p99<=10ms".into(),
            steps: vec![step(1000.0, 0.001), step(2000.0, 0.004), step(3000.0, 0.02)],
            max_sustainable_rate: Some(2000.0),
            knee_rate: Some(1000.0),
        };
        let directory = std::env::temp_dir().join(format!("loadgen-chart-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("plan.svg");
        let slo = Slo {
            percentile: 99.0,
            limit: Duration::from_millis(10),
        };
        write_svg(&report, slo, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in [
            "achieved throughput",
            "latency (ms)",
            "p99.9",
            "objective p99",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
