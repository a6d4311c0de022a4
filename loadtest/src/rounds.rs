//! Interleaved rounds: how `bench` sets a ticketgate rate against the baseline's on a
//! machine whose speed drifts (a shared machine can run 50 % faster or slower within a
//! minute, so a baseline measured once before and once after every ticketgate run says
//! little about the speed during each of them).
//!
//! A figure is measured in rounds: each round is a short baseline run followed at once
//! by a short ticketgate run, and one more baseline run follows the last round
//! (baseline, ticketgate, baseline, ticketgate, ..., baseline). Every ticketgate run so
//! has a baseline run right before and right after it. A round's ratio is the
//! ticketgate rate over the mean of those two; the figure is the median of the rounds'
//! ratios, shown with their spread (min–max).

use serde::Serialize;

use crate::stats::Figures;

/// The runs of one figure measured in interleaved rounds.
#[derive(Debug, Clone, Default)]
pub struct Interleaved {
    /// The baseline runs: one before each round and one after the last.
    pub baselines: Vec<Figures>,
    /// The ticketgate run of each round.
    pub runs: Vec<Figures>,
}

impl Interleaved {
    /// Each round's ratio: its ticketgate rate over the mean rate of the baseline runs
    /// right before and after it. A round whose baselines measured nothing is left out.
    pub fn ratios(&self) -> Vec<f64> {
        self.runs
            .iter()
            .zip(self.baselines.windows(2))
            .filter_map(|(run, around)| {
                let baseline = (around[0].rate + around[1].rate) / 2.0;
                (baseline > 0.0).then(|| run.rate / baseline)
            })
            .collect()
    }

    /// The median of the rounds' ratios and their spread, when any round has one.
    pub fn spread(&self) -> Option<RatioSpread> {
        RatioSpread::of(&self.ratios())
    }

    /// The median ticketgate rate of the rounds.
    pub fn ticketgate_rate(&self) -> Option<f64> {
        median(&rates(&self.runs))
    }

    /// The median rate of the baseline runs.
    pub fn baseline_rate(&self) -> Option<f64> {
        median(&rates(&self.baselines))
    }

    /// Successful operations of all the ticketgate runs.
    pub fn ok(&self) -> u64 {
        self.runs.iter().map(|r| r.ok).sum()
    }

    /// Failed operations of all the ticketgate runs.
    pub fn error_count(&self) -> u64 {
        self.runs.iter().map(Figures::error_count).sum()
    }
}

/// The ratios of a figure's rounds: what the bar shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioSpread {
    /// Each round's ratio, in the order of the rounds.
    pub ratios: Vec<f64>,
    /// Their median: the figure's ratio.
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl RatioSpread {
    /// The spread of `ratios`; `None` when there is none.
    pub fn of(ratios: &[f64]) -> Option<RatioSpread> {
        Some(RatioSpread {
            ratios: ratios.to_vec(),
            median: median(ratios)?,
            min: ratios.iter().copied().reduce(f64::min)?,
            max: ratios.iter().copied().reduce(f64::max)?,
        })
    }

    /// `0.62× (0.58–0.65)`.
    pub fn shown(&self) -> String {
        format!("{:.2}× ({:.2}–{:.2})", self.median, self.min, self.max)
    }
}

/// How much the baseline rate moved over the baseline runs of several figures: the
/// machine's drift during the rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// Baseline runs looked at.
    pub runs: usize,
    /// The slowest baseline rate.
    pub min: f64,
    /// The fastest.
    pub max: f64,
    /// The median.
    pub median: f64,
    /// The largest change between the two baseline runs around one round, relative to
    /// their mean.
    pub largest_in_round: f64,
}

impl Drift {
    /// The drift over the baseline runs of `figures`; `None` without any.
    pub fn of(figures: &[&Interleaved]) -> Option<Drift> {
        let all: Vec<f64> = figures.iter().flat_map(|f| rates(&f.baselines)).collect();
        let largest_in_round = figures
            .iter()
            .flat_map(|f| f.baselines.windows(2))
            .map(|around| relative_change(around[0].rate, around[1].rate))
            .fold(0.0, f64::max);
        Some(Drift {
            runs: all.len(),
            min: all.iter().copied().reduce(f64::min)?,
            max: all.iter().copied().reduce(f64::max)?,
            median: median(&all)?,
            largest_in_round,
        })
    }

    /// The range of the baseline rates relative to their median.
    pub fn range(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median
        } else {
            0.0
        }
    }
}

/// `|a - b|` relative to their mean (0 when both are 0).
fn relative_change(a: f64, b: f64) -> f64 {
    let mean = (a + b) / 2.0;
    if mean > 0.0 {
        (a - b).abs() / mean
    } else {
        0.0
    }
}

fn rates(runs: &[Figures]) -> Vec<f64> {
    runs.iter().map(|r| r.rate).collect()
}

/// The median of `values` (the mean of the middle two when their number is even);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// Splits `items` into `parts` runs of consecutive items whose lengths differ by at
/// most one (the first ones are the longer); always `parts` of them, some empty when
/// there are fewer items than parts.
pub fn split_even<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let parts = parts.max(1);
    let (each, longer) = (items.len() / parts, items.len() % parts);
    let mut items = items.into_iter();
    (0..parts)
        .map(|i| {
            items
                .by_ref()
                .take(each + usize::from(i < longer))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Recorder;

    fn run(rate: f64) -> Figures {
        let mut figures = Recorder::new().figures("run", Duration::from_secs(1));
        figures.rate = rate;
        figures
    }

    fn interleaved(baselines: &[f64], runs: &[f64]) -> Interleaved {
        Interleaved {
            baselines: baselines.iter().copied().map(run).collect(),
            runs: runs.iter().copied().map(run).collect(),
        }
    }

    #[test]
    fn each_round_is_set_against_the_baselines_around_it() {
        // The machine doubles its speed: the plain ratio of the means would say 0.67.
        let measured = interleaved(&[100.0, 200.0, 200.0, 400.0], &[75.0, 100.0, 150.0]);
        assert_eq!(measured.ratios(), vec![0.5, 0.5, 0.5]);
        let spread = measured.spread().expect("three rounds");
        assert_eq!((spread.median, spread.min, spread.max), (0.5, 0.5, 0.5));
        assert_eq!(spread.shown(), "0.50× (0.50–0.50)");
        assert_eq!(measured.ticketgate_rate(), Some(100.0));
        assert_eq!(measured.baseline_rate(), Some(200.0));
    }

    #[test]
    fn the_ratio_is_the_median_round_and_the_spread_its_extremes() {
        let measured = interleaved(&[100.0, 100.0, 100.0, 100.0], &[90.0, 50.0, 60.0]);
        let spread = measured.spread().expect("three rounds");
        assert_eq!(spread.ratios, vec![0.9, 0.5, 0.6]);
        assert_eq!((spread.median, spread.min, spread.max), (0.6, 0.5, 0.9));
        assert!(median(&[0.8, 0.4]).is_some_and(|m| (m - 0.6).abs() < 1e-9));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn rounds_without_a_baseline_rate_have_no_ratio() {
        assert!(interleaved(&[0.0, 0.0], &[50.0]).spread().is_none());
        assert!(Interleaved::default().spread().is_none());
    }

    #[test]
    fn drift_spans_every_baseline_run_and_the_largest_step_within_a_round() {
        let admit = interleaved(&[100.0, 150.0, 100.0], &[80.0, 80.0]);
        let forged = interleaved(&[50.0, 50.0], &[60.0]);
        let drift = Drift::of(&[&admit, &forged]).expect("baseline runs");
        assert_eq!(drift.runs, 5);
        assert_eq!((drift.min, drift.max, drift.median), (50.0, 150.0, 100.0));
        assert!((drift.range() - 1.0).abs() < 1e-9);
        assert!((drift.largest_in_round - 0.4).abs() < 1e-9);
        assert!(Drift::of(&[]).is_none());
    }

    #[test]
    fn split_even_keeps_order_and_always_gives_every_part() {
        assert_eq!(
            split_even((1..=7).collect(), 3),
            vec![vec![1, 2, 3], vec![4, 5], vec![6, 7]]
        );
        assert_eq!(
            split_even(vec![1], 3),
            vec![vec![1], Vec::new(), Vec::new()]
        );
        assert_eq!(split_even(Vec::<u8>::new(), 0), vec![Vec::<u8>::new()]);
    }
}
