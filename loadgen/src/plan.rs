//! `loadgen plan`: capacity planning against a latency objective.
//!
//! The offered rate starts at `--start-rate` and is multiplied by
//! `--step-factor` each step (open loop, `--step-duration` per step), until
//! a step breaks the objective. Two bisection steps between the last
//! passing and the first failing rate then sharpen the answer. A step
//! *passes* when the objective's percentile is within the limit, no
//! request failed, and the server kept up (achieved at least 90% of the
//! offered rate: below that, requests queue and latency only grows with a
//! longer step).
//!
//! Reported: the highest sustainable throughput (the best passing step),
//! the *knee* (the last step whose objective percentile is within twice
//! its value at the lightest load: beyond it latency is dominated by
//! queueing rather than service time), every step's percentiles, a
//! markdown table and an SVG chart of latency against throughput.

mod chart;

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{GlobalOptions, PlanArgs, Slo};
use crate::progress::Progress;
use crate::report::RunReport;
use crate::workload::{self, RunError};

/// Fraction of the offered rate a step must achieve to count as kept up.
const KEPT_UP_FRACTION: f64 = 0.9;
/// Bisection steps after the first failure.
const REFINEMENT_STEPS: usize = 2;
/// The knee is the last step within this factor of the lightest step's
/// objective percentile.
const KNEE_FACTOR: f64 = 2.0;

/// One step's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub offered_rate: f64,
    pub achieved_rate: f64,
    /// Seconds, worst over the workload's sections.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    /// The objective's percentile, seconds.
    pub objective_value: f64,
    pub failures: u64,
    pub passed: bool,
}

/// What `plan` found.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub workload: String,
    pub objective: String,
    /// Steps in order of offered rate.
    pub steps: Vec<Step>,
    /// Achieved throughput of the best passing step; `None` if even the
    /// first step failed.
    pub max_sustainable_rate: Option<f64>,
    /// Achieved throughput at the knee.
    pub knee_rate: Option<f64>,
}

pub fn run(global: &GlobalOptions, args: &PlanArgs) -> Result<u64, RunError> {
    if !(args.start_rate > 0.0 && args.step_factor > 1.0 && args.max_rate >= args.start_rate) {
        return Err(RunError::Usage(
            "plan needs --start-rate > 0, --step-factor > 1 and --max-rate >= --start-rate".into(),
        ));
    }
    let mut steps = Vec::new();
    let mut workload_name = String::new();
    let mut measure = |rate: f64, steps: &mut Vec<Step>| -> Result<bool, RunError> {
        let step_options = GlobalOptions {
            rate,
            duration: Some(args.step_duration),
            ..global.clone()
        };
        let report = workload::run(&step_options, &args.workload, &Progress::hidden())?;
        workload_name.clone_from(&report.workload);
        let step = summarize(rate, &report, args.slo, args.step_duration);
        eprintln!(
            "offered {:>10.0}/s  achieved {:>10.0}/s  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  {}",
            step.offered_rate,
            step.achieved_rate,
            millis(step.p50),
            millis(step.p99),
            millis(step.p999),
            if step.passed {
                "ok"
            } else {
                "objective broken"
            }
        );
        let passed = step.passed;
        steps.push(step);
        Ok(passed)
    };

    let mut rate = args.start_rate;
    let mut last_pass = None;
    let mut first_fail = None;
    while rate <= args.max_rate {
        if measure(rate, &mut steps)? {
            last_pass = Some(rate);
            rate *= args.step_factor;
        } else {
            first_fail = Some(rate);
            break;
        }
    }
    if let (Some(mut low), Some(mut high)) = (last_pass, first_fail) {
        for _ in 0..REFINEMENT_STEPS {
            let middle = (low * high).sqrt();
            if measure(middle, &mut steps)? {
                low = middle;
            } else {
                high = middle;
            }
        }
    }
    steps.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    let report = PlanReport {
        workload: workload_name,
        objective: format!("p{}<={:?}", args.slo.percentile, args.slo.limit),
        max_sustainable_rate: best_passing(&steps),
        knee_rate: knee(&steps),
        steps,
    };
    std::fs::write(&args.table, markdown_table(&report))
        .map_err(|error| RunError::Usage(format!("write {}: {error}", args.table.display())))?;
    chart::write_svg(&report, args.slo, &args.chart)
        .map_err(|error| RunError::Usage(format!("write {}: {error}", args.chart.display())))?;
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        );
    } else {
        print!("{}", summary_text(&report));
        println!(
            "Table: {}\nChart: {}",
            args.table.display(),
            args.chart.display()
        );
    }
    Ok(0)
}

fn summarize(offered_rate: f64, report: &RunReport, slo: Slo, step_duration: Duration) -> Step {
    let worst = |percentile: f64| worst_percentile(report, percentile);
    // The schedule offers `rate` per second for the step's duration; what
    // completed in the step (plus its drain) is the achieved rate.
    let elapsed = report
        .sections
        .iter()
        .map(|section| section.elapsed_seconds)
        .fold(step_duration.as_secs_f64(), f64::max);
    let achieved_rate = report.requests() as f64 / elapsed;
    let objective_value = worst(slo.percentile);
    let failures = report.failures();
    let passed = failures == 0
        && report.requests() > 0
        && objective_value <= slo.limit.as_secs_f64()
        && achieved_rate >= KEPT_UP_FRACTION * offered_rate;
    Step {
        offered_rate,
        achieved_rate,
        p50: worst(50.0),
        p90: worst(90.0),
        p99: worst(99.0),
        p999: worst(99.9),
        objective_value,
        failures,
        passed,
    }
}

/// A latency percentile in seconds, worst over the report's sections;
/// computed from the recorded histograms, so any percentile works (the
/// objective's need not be one of the printed ones).
fn worst_percentile(report: &RunReport, percentile: f64) -> f64 {
    report
        .sections
        .iter()
        .filter_map(|section| section.percentile_seconds(percentile))
        .fold(0.0, f64::max)
}

fn best_passing(steps: &[Step]) -> Option<f64> {
    steps
        .iter()
        .filter(|step| step.passed)
        .map(|step| step.achieved_rate)
        .max_by(f64::total_cmp)
}

fn knee(steps: &[Step]) -> Option<f64> {
    let baseline = steps.first()?.objective_value;
    steps
        .iter()
        .take_while(|step| step.passed && step.objective_value <= baseline * KNEE_FACTOR)
        .last()
        .map(|step| step.achieved_rate)
}

fn millis(seconds: f64) -> String {
    format!("{:.3}ms", seconds * 1e3)
}

fn summary_text(report: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nCapacity plan for {} with objective {}:",
        report.workload, report.objective
    );
    match report.max_sustainable_rate {
        Some(rate) => {
            let _ = writeln!(
                out,
                "  Highest sustainable throughput:\t{rate:.0} requests/sec"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  The objective was not met even at the first step; lower --start-rate."
            );
        }
    }
    if let Some(rate) = report.knee_rate {
        let _ = writeln!(
            out,
            "  Knee (latency still within {KNEE_FACTOR}x of unloaded):\t{rate:.0} requests/sec"
        );
    }
    out
}

pub fn markdown_table(report: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Capacity plan: {} ({})\n",
        report.workload, report.objective
    );
    let _ = writeln!(
        out,
        "| offered (req/s) | achieved (req/s) | p50 | p90 | p99 | p99.9 | failures | objective |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|:---|");
    for step in &report.steps {
        let _ = writeln!(
            out,
            "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
            step.offered_rate,
            step.achieved_rate,
            millis(step.p50),
            millis(step.p90),
            millis(step.p99),
            millis(step.p999),
            step.failures,
            if step.passed { "met" } else { "broken" }
        );
    }
    let _ = writeln!(out);
    match report.max_sustainable_rate {
        Some(rate) => {
            let _ = writeln!(out, "Highest sustainable throughput: **{rate:.0} req/s**.");
        }
        None => {
            let _ = writeln!(out, "The objective was not met at any step.");
        }
    }
    if let Some(rate) = report.knee_rate {
        let _ = writeln!(
            out,
            "Knee: **{rate:.0} req/s** (objective percentile within {KNEE_FACTOR}x of the lightest step)."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, objective_ms: f64, passed: bool) -> Step {
        Step {
            offered_rate: offered,
            achieved_rate: offered,
            p50: objective_ms / 2e3,
            p90: objective_ms / 1.5e3,
            p99: objective_ms / 1e3,
            p999: objective_ms / 1e3,
            objective_value: objective_ms / 1e3,
            failures: 0,
            passed,
        }
    }

    #[test]
    fn best_and_knee() {
        let steps = vec![
            step(100.0, 1.0, true),
            step(200.0, 1.5, true),
            step(400.0, 3.0, true),
            step(800.0, 20.0, false),
        ];
        assert_eq!(best_passing(&steps), Some(400.0));
        assert_eq!(knee(&steps), Some(200.0));
        assert_eq!(best_passing(&[step(100.0, 50.0, false)]), None);
        assert_eq!(knee(&[step(100.0, 50.0, false)]), None);
    }

    #[test]
    fn table_lists_every_step_and_the_answer() {
        let report = PlanReport {
            workload: "put".into(),
            objective: "p99<=10ms".into(),
            steps: vec![step(100.0, 1.0, true), step(150.0, 12.0, false)],
            max_sustainable_rate: Some(100.0),
            knee_rate: Some(100.0),
        };
        let table = markdown_table(&report);
        assert_eq!(table.matches("\n| ").count(), 3, "{table}");
        assert!(table.contains("| 150 | 150 |"));
        assert!(table.contains("broken"));
        assert!(table.contains("**100 req/s**"));
    }
}
