//! The bar: the key figures the phases find ([`Findings`]) and the verdict table made
//! of them (figure, ticketgate, baseline, ratio, threshold, pass / MISS), plus the
//! "store behind admission" rows of the growth table, which come from the same admit
//! rounds.

use crate::report::{BarRow, GrowthRow, Memory, Report, Verdict};
use crate::rounds::{Interleaved, RatioSpread};
use crate::scenarios::mint_flood::FloodOutcome;
use crate::stats::Figures;

/// The key figures the bar is made of.
#[derive(Default)]
pub(super) struct Findings {
    pub(super) admit: Option<Interleaved>,
    /// The admit rounds on node-e (embedded store): for reading, not a bar.
    pub(super) admit_embedded: Option<Interleaved>,
    pub(super) handshake: Option<Interleaved>,
    pub(super) forged: Option<Interleaved>,
    pub(super) mint_round_trips: Option<f64>,
    pub(super) admit_round_trips: Option<f64>,
    pub(super) forged_commands: Option<f64>,
    pub(super) expired_commands: Option<f64>,
    pub(super) flood: Option<FloodOutcome>,
    pub(super) rss_ticketgate: Option<Memory>,
    pub(super) rss_baseline: Option<Memory>,
    pub(super) kick: Option<Figures>,
}

/// `x.xx×` of two rates.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn shown_ratio(r: Option<f64>) -> String {
    r.map_or("-".to_owned(), |r| format!("{r:.2}×"))
}

fn shown_rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_owned(), |r| format!("{r:.0}/s"))
}

/// The row of a rate measured in interleaved rounds: the median rates, the median
/// round's ratio with the spread of the rounds; a miss when any run failed an
/// operation.
fn rate_row(figure: &str, measured: Option<&Interleaved>, at_least: f64) -> BarRow {
    let bar = format!("≥ {at_least:.1} × baseline");
    let Some(measured) = measured else {
        return missing_row(figure, &bar);
    };
    let spread = measured.spread();
    let median = spread.as_ref().map(|s| s.median);
    BarRow {
        figure: figure.to_owned(),
        ticketgate: shown_rate(measured.ticketgate_rate()),
        baseline: shown_rate(measured.baseline_rate()),
        ratio: spread.as_ref().map_or("-".to_owned(), RatioSpread::shown),
        bar,
        verdict: Verdict::of(median.is_some_and(|r| r >= at_least) && measured.error_count() == 0),
        value: median,
        rounds: spread,
    }
}

fn missing_row(figure: &str, bar: &str) -> BarRow {
    BarRow {
        figure: figure.to_owned(),
        ticketgate: "n/a".into(),
        baseline: "-".into(),
        ratio: "-".into(),
        bar: bar.to_owned(),
        verdict: Verdict::NotAvailable,
        value: None,
        rounds: None,
    }
}

impl Findings {
    /// Sets the report's bar from these figures, and adds the growth rows of the store
    /// behind admission.
    pub(super) fn compose_bar(&self, report: &mut Report) {
        let f = self;
        let mut rows = vec![
            rate_row(
                "admit rate (pre-minted ticket → socket → welcome → close)",
                f.admit.as_ref(),
                0.8,
            ),
            rate_row(
                "full handshake rate (mint over keep-alive + admit)",
                f.handshake.as_ref(),
                0.5,
            ),
        ];

        rows.push(match (f.mint_round_trips, f.admit_round_trips) {
            (Some(m), Some(a)) => BarRow {
                figure: "Redis round trips per mint / per admit".into(),
                ticketgate: format!("{m:.2} / {a:.2}"),
                baseline: "-".into(),
                ratio: "-".into(),
                bar: "exactly 1 / 1".into(),
                verdict: Verdict::of((m - 1.0).abs() <= 0.02 && (a - 1.0).abs() <= 0.02),
                value: Some(m.max(a)),
                rounds: None,
            },
            _ => missing_row("Redis round trips per mint / per admit", "exactly 1 / 1"),
        });

        rows.push(match (f.forged_commands, f.expired_commands) {
            (Some(fc), Some(ec)) => BarRow {
                figure: "Redis commands per forged / expired ticket".into(),
                ticketgate: format!("{fc:.3} / {ec:.3}"),
                baseline: "-".into(),
                ratio: "-".into(),
                bar: "0".into(),
                verdict: Verdict::of(fc < 0.005 && ec < 0.005),
                value: Some(fc.max(ec)),
                rounds: None,
            },
            _ => missing_row("Redis commands per forged / expired ticket", "0"),
        });

        rows.push(rate_row(
            "forged-ticket rejection rate",
            f.forged.as_ref(),
            1.0,
        ));

        let flood_figure = "honest devices during a mint flood from one device";
        let flood_bar = "≥ 99 % succeed, p99 ≤ 2 × unloaded";
        rows.push(match &f.flood {
            Some(flood) => match (flood.loaded.p99_ms(), flood.unloaded.p99_ms()) {
                (Some(loaded), Some(unloaded)) => {
                    let share = flood.loaded.success_ratio();
                    let r = ratio(loaded, unloaded);
                    BarRow {
                        figure: flood_figure.into(),
                        ticketgate: format!(
                            "{:.1} % ok, p99 {loaded:.2} ms (unloaded {unloaded:.2} ms)",
                            share * 100.0
                        ),
                        baseline: "-".into(),
                        ratio: r.map_or("-".into(), |r| format!("{r:.2}× unloaded")),
                        bar: flood_bar.into(),
                        verdict: Verdict::of(share >= 0.99 && r.is_some_and(|r| r <= 2.0)),
                        value: r,
                        rounds: None,
                    }
                }
                _ => missing_row(flood_figure, flood_bar),
            },
            None => missing_row(flood_figure, flood_bar),
        });

        rows.push(match (&f.rss_ticketgate, &f.rss_baseline) {
            (Some(tg), Some(base)) => BarRow {
                figure: format!("RSS per idle admitted socket at {} sockets", tg.sockets),
                ticketgate: format!("{:.2} KiB", tg.per_socket_kib),
                baseline: format!("{:.2} KiB", base.per_socket_kib),
                ratio: shown_ratio(ratio(tg.per_socket_kib, base.per_socket_kib)),
                bar: "≤ 8 KiB".into(),
                verdict: Verdict::of(tg.per_socket_kib <= 8.0),
                value: Some(tg.per_socket_kib),
                rounds: None,
            },
            _ => missing_row("RSS per idle admitted socket", "≤ 8 KiB"),
        });

        let kick_figure = "kick-to-close across two nodes (100 sockets)";
        rows.push(match f.kick.as_ref().and_then(Figures::p99_ms) {
            Some(p99) => BarRow {
                figure: kick_figure.into(),
                ticketgate: format!("p99 {p99:.2} ms"),
                baseline: "-".into(),
                ratio: "-".into(),
                bar: "p99 ≤ 10 ms".into(),
                verdict: Verdict::of(
                    p99 <= 10.0 && f.kick.as_ref().is_some_and(|k| k.error_count() == 0),
                ),
                value: Some(p99),
                rounds: None,
            },
            None => missing_row(kick_figure, "p99 ≤ 10 ms"),
        });
        report.bar = rows;

        // The store behind admission, as cost growing with work: the same admit rounds
        // with a Redis round trip (node-a) and without one (node-e).
        for (level, measured) in [
            ("embedded", self.admit_embedded.as_ref()),
            ("Redis", self.admit.as_ref()),
        ] {
            let spread = measured.and_then(Interleaved::spread);
            report.growth.push(GrowthRow {
                work: "store behind admission".into(),
                level: level.into(),
                figure: "admit rate / baseline".into(),
                shown: spread.as_ref().map_or("n/a".to_owned(), RatioSpread::shown),
                value: spread.map(|s| s.median),
            });
        }
    }
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

    #[test]
    fn without_findings_every_row_is_not_available() {
        let mut report = Report::default();
        Findings::default().compose_bar(&mut report);
        assert_eq!(report.bar.len(), 8);
        assert!(report
            .bar
            .iter()
            .all(|row| row.verdict == Verdict::NotAvailable && row.ticketgate == "n/a"));
        assert_eq!(report.bar[0].bar, "≥ 0.8 × baseline");
        let growth: Vec<&str> = report.growth.iter().map(|g| g.shown.as_str()).collect();
        assert_eq!(growth, ["n/a", "n/a"]);
    }

    #[test]
    fn a_rate_passes_on_the_median_round() {
        let measured = Interleaved {
            baselines: [100.0, 100.0, 100.0].map(run).to_vec(),
            runs: [90.0, 80.0].map(run).to_vec(),
        };
        let row = rate_row("admit", Some(&measured), 0.8);
        assert_eq!(row.verdict, Verdict::Pass);
        assert_eq!(row.ratio, "0.85× (0.80–0.90)");
        assert_eq!(
            (row.ticketgate.as_str(), row.baseline.as_str()),
            ("85/s", "100/s")
        );
        assert_eq!(
            rate_row("admit", Some(&measured), 0.9).verdict,
            Verdict::Miss
        );
    }
}
