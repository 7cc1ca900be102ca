//! The progress bar: shown on stderr only for runs longer than a second
//! and only when stderr is a terminal, so piped or `--json` output and
//! short test runs stay clean.

use std::io::IsTerminal;
use std::thread;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pacing::{Budget, Schedule};

/// A run shorter than this never shows a bar.
const SHOW_AFTER: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub struct Progress {
    /// False when stderr is not a terminal or the user asked for quiet.
    enabled: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// Never draws; for runs nested inside another display (`plan`).
    pub fn hidden() -> Self {
        Self { enabled: false }
    }

    /// Polls `schedule` until `finished()` says the run is over, drawing a
    /// bar once the run has lasted [`SHOW_AFTER`].
    pub fn follow(&self, schedule: &Schedule, finished: impl Fn() -> bool) {
        let (length, unit) = match schedule.budget() {
            Budget::Total(total) => (total, "requests"),
            Budget::Duration(duration) => (duration.as_secs().max(1), "seconds"),
        };
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let mut shown = false;
        while !finished() {
            thread::sleep(POLL_INTERVAL);
            if !self.enabled {
                continue;
            }
            if !shown && started.elapsed() >= SHOW_AFTER {
                bar.set_draw_target(ProgressDrawTarget::stderr());
                shown = true;
            }
            let position = match schedule.budget() {
                Budget::Total(_) => schedule.issued(),
                Budget::Duration(_) => schedule.started().elapsed().as_secs().min(length),
            };
            bar.set_position(position);
        }
        bar.finish_and_clear();
    }
}
