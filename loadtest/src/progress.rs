//! Progress bars (indicatif) on standard error. They draw only on a terminal, so piped
//! or CI output holds just the status lines and the results.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Redraws per second at most.
const TICK: Duration = Duration::from_millis(100);

/// A bar that fills with time: `label [elapsed/total] ops so far`.
pub fn timed(label: &str, total: Duration) -> ProgressBar {
    let len = u64::try_from(total.as_millis()).unwrap_or(u64::MAX).max(1);
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("  {prefix:<28} [{bar:30}] {elapsed:>3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(TICK);
    bar
}

/// Moves a [`timed`] bar to the time elapsed since `started` and shows `ops`.
pub fn advance(bar: &ProgressBar, started: Instant, ops: u64) {
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    bar.set_position(ms);
    bar.set_message(format!("{ops} ops"));
}

/// A bar that fills with a count: `label [done/total]`.
pub fn counted(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("  {prefix:<28} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(TICK);
    bar
}

/// Prints a status line on standard error (above any bar).
pub fn status(line: impl AsRef<str>) {
    eprintln!("==> {}", line.as_ref());
}
