//! Measurements: latency histograms (HDR, microseconds), outcome counters, and the
//! [`Budget`] that bounds every run in time and in count.
//!
//! Every worker records into its own [`Recorder`] (no sharing on the hot path); the
//! scenario merges them when the workers are done and turns the sum into [`Figures`],
//! the serializable result that the report prints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::progress;

/// Largest latency a histogram records, in microseconds (two minutes); longer values
/// are clamped to it.
const MAX_LATENCY_US: u64 = 120_000_000;
/// Longest error example kept, characters.
const MAX_EXAMPLE: usize = 160;

/// One worker's (or a merged) record: latencies of successful operations and counts of
/// failures by kind.
#[derive(Clone)]
pub struct Recorder {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty record: 1 µs to two minutes at 3 significant digits.
    pub fn new() -> Recorder {
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Recorder {
            latency,
            ok: 0,
            errors: BTreeMap::new(),
            examples: BTreeMap::new(),
        }
    }

    /// Counts a success that took `took`.
    pub fn ok(&mut self, took: Duration) {
        self.ok += 1;
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Counts a failure of the given kind (`"refused 429"`, `"timeout"`, ...).
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    /// Counts a failure of the given kind and keeps the first `detail` of each kind
    /// as an example for the report.
    pub fn error_with(&mut self, kind: impl Into<String>, detail: impl std::fmt::Display) {
        let kind = kind.into();
        if !self.examples.contains_key(&kind) {
            let detail: String = detail.to_string().chars().take(MAX_EXAMPLE).collect();
            self.examples.insert(kind.clone(), detail);
        }
        self.error(kind);
    }

    /// Successes so far.
    pub fn ok_count(&self) -> u64 {
        self.ok
    }

    /// Failures so far, all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another record into this one.
    pub fn merge(&mut self, other: &Recorder) {
        self.ok += other.ok;
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        for (kind, detail) in &other.examples {
            self.examples
                .entry(kind.clone())
                .or_insert_with(|| detail.clone());
        }
    }

    /// The record as figures: `rate` is successes per second of `elapsed`.
    pub fn figures(&self, label: impl Into<String>, elapsed: Duration) -> Figures {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Figures {
            label: label.into(),
            ok: self.ok,
            errors: self.errors.clone(),
            examples: self.examples.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            rate: self.ok as f64 / secs,
            latency: Latency::of(&self.latency),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest value.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
    /// How many values.
    pub samples: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
            samples: h.len(),
        })
    }
}

/// The result of one measured run, as printed and written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// What was measured, e.g. `admit` or `mint (unloaded)`.
    pub label: String,
    /// Successful operations.
    pub ok: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first failure of each kind, in words.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub examples: BTreeMap<String, String>,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Successes per second.
    pub rate: f64,
    /// Latency of the successes, when timed.
    pub latency: Option<Latency>,
}

impl Figures {
    /// Failures, all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successes as a share of all attempts, 0..=1 (1 when nothing was attempted).
    pub fn success_ratio(&self) -> f64 {
        let all = self.ok + self.error_count();
        if all == 0 {
            1.0
        } else {
            self.ok as f64 / all as f64
        }
    }

    /// p99 latency in milliseconds, when timed.
    pub fn p99_ms(&self) -> Option<f64> {
        self.latency.map(|l| l.p99_us as f64 / 1000.0)
    }
}

/// The bounds of a run: it stops at `duration` or after `max_ops` operations, whichever
/// comes first. Shared by the run's workers; shows a progress bar on a terminal.
pub struct Budget {
    started: Instant,
    deadline: Instant,
    max_ops: u64,
    issued: AtomicU64,
    bar: ProgressBar,
}

impl Budget {
    /// A budget starting now.
    pub fn new(label: &str, duration: Duration, max_ops: u64) -> Arc<Budget> {
        let started = Instant::now();
        Arc::new(Budget {
            started,
            deadline: started + duration,
            max_ops,
            issued: AtomicU64::new(0),
            bar: progress::timed(label, duration),
        })
    }

    /// Takes one operation from the budget; `false` once time or count is used up.
    pub fn take(&self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if n >= self.max_ops {
            return false;
        }
        if n % 64 == 0 {
            progress::advance(&self.bar, self.started, n);
        }
        true
    }

    /// Clears the progress bar and returns the run's elapsed time.
    pub fn finish(&self) -> Duration {
        self.bar.finish_and_clear();
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_records_add_counts_latencies_and_keep_the_first_example() {
        let mut a = Recorder::new();
        a.ok(Duration::from_millis(1));
        a.error_with("refused 429", "first");
        let mut b = Recorder::new();
        b.ok(Duration::from_millis(3));
        b.error_with("refused 429", "second");
        b.error("timeout");
        a.merge(&b);
        let f = a.figures("run", Duration::from_secs(2));
        assert_eq!((f.ok, f.error_count()), (2, 3));
        assert!((f.rate - 1.0).abs() < 1e-9);
        assert_eq!(
            f.examples.get("refused 429").map(String::as_str),
            Some("first")
        );
        let l = f.latency.expect("timed");
        assert_eq!(l.samples, 2);
        assert!(l.max_us >= 2_990 && l.max_us <= 3_010, "{}", l.max_us);
        assert!((f.success_ratio() - 0.4).abs() < 1e-9);
    }

    #[test]
    fn a_budget_stops_at_its_count() {
        let budget = Budget::new("test", Duration::from_secs(60), 3);
        let taken = (0..10).filter(|_| budget.take()).count();
        assert_eq!(taken, 3);
        budget.finish();
    }
}
