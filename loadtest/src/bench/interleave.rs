//! Running a rate of the bar in interleaved rounds on the bench's processes (the
//! arithmetic of the rounds is [`crate::rounds`]): the baseline handshake runs between
//! the ticketgate runs, the CPU meters, and the notes on runs that ended early and on
//! the machine's drift.

use std::future::Future;
use std::time::Duration;

use super::Bench;
use crate::host::CpuMeter;
use crate::progress::status;
use crate::rounds::{Drift, Interleaved};
use crate::scenarios::{handshake, Plan};
use crate::stats::Figures;

/// A range of the baseline rates over the rounds (relative to their median) that is
/// worth a note.
const DRIFT_WARNING: f64 = 0.10;
/// Share of its time a run of a round must last for its rate to count as a full run.
const SHORT_ROUND: f64 = 0.9;

/// The process a round's CPU is measured on, and its Redis when it has one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    pub(super) pid: u32,
    pub(super) redis_pid: Option<u32>,
}

/// What the ticketgate run of one interleaved round gives back.
pub(super) struct RoundRun<T> {
    /// The run the round's ratio is about (recorded with node-a's CPU).
    pub(super) figures: Figures,
    /// The same run broken down (recorded without CPU), e.g. forged tickets by kind.
    pub(super) parts: Vec<Figures>,
    /// What the caller keeps of it, e.g. the tickets an admit round consumed.
    pub(super) kept: T,
}

impl RoundRun<()> {
    /// A run with nothing more to it.
    pub(super) fn of(figures: Figures) -> RoundRun<()> {
        RoundRun {
            figures,
            parts: Vec::new(),
            kept: (),
        }
    }
}

impl Bench {
    /// Measures one rate of the bar in interleaved rounds ([`crate::rounds`]): for each
    /// round a baseline handshake run, then `run(label, plan)` against node-a; then one
    /// more baseline run. Records every run (the ticketgate ones under `scenario`) and
    /// a note for any that ended early. Returns the runs and what each round kept.
    pub(super) async fn interleaved<T, F, Fut>(
        &mut self,
        scenario: &str,
        label: &str,
        run: F,
    ) -> (Interleaved, Vec<T>)
    where
        F: FnMut(String, Plan) -> Fut,
        Fut: Future<Output = RoundRun<T>>,
    {
        let measured = Measured {
            pid: self.node_a.pid(),
            redis_pid: Some(self.redis_server.pid()),
        };
        self.interleaved_on(measured, scenario, label, run).await
    }

    /// [`Bench::interleaved`] with the CPU measured on `measured`.
    pub(super) async fn interleaved_on<T, F, Fut>(
        &mut self,
        measured_on: Measured,
        scenario: &str,
        label: &str,
        mut run: F,
    ) -> (Interleaved, Vec<T>)
    where
        F: FnMut(String, Plan) -> Fut,
        Fut: Future<Output = RoundRun<T>>,
    {
        let (rounds, plan) = (self.sizes.rounds, self.sizes.round_plan());
        let mut measured = Interleaved::default();
        let mut kept = Vec::with_capacity(rounds);
        for round in 1..=rounds {
            let before = self.baseline_run(scenario, round - 1).await;
            measured.baselines.push(before);
            let label = format!("{label} (round {round})");
            status(format!("ticketgate: {scenario}: {label}"));
            let cpu = CpuMeter::start(Some(measured_on.pid)).with_redis(measured_on.redis_pid);
            let done = run(label, plan).await;
            self.report
                .run_cpu(scenario, "ticketgate", done.figures.clone(), &cpu);
            for part in done.parts {
                self.report.run(scenario, "ticketgate", part);
            }
            measured.runs.push(done.figures);
            kept.push(done.kept);
        }
        let last = self.baseline_run(scenario, rounds).await;
        measured.baselines.push(last);
        self.note_short_runs(scenario, &measured, plan.duration);
        (measured, kept)
    }

    /// A CPU meter on node A and its Redis (the ticketgate rate runs).
    pub(super) fn node_a_cpu(&self) -> CpuMeter {
        CpuMeter::start(Some(self.node_a.pid())).with_redis(Some(self.redis_server.pid()))
    }

    /// The baseline handshake run (connect + welcome + close) at `place` among the
    /// rounds of `scenario`: 0 before the first round, `rounds` after the last.
    async fn baseline_run(&mut self, scenario: &str, place: usize) -> Figures {
        let label = format!(
            "connect + welcome + close ({})",
            around_round(scenario, place, self.sizes.rounds)
        );
        status(format!("baseline: {label}"));
        let cpu = CpuMeter::start(Some(self.baseline.pid()));
        let figures =
            handshake::baseline(&label, self.base.clone(), &self.sizes.round_plan()).await;
        self.report
            .run_cpu("handshake", "baseline", figures.clone(), &cpu);
        figures
    }

    /// A note for each run of a round that ended well before its time (out of tickets
    /// or of its count): its rate covers a shorter time than its neighbours'.
    fn note_short_runs(&mut self, scenario: &str, measured: &Interleaved, round: Duration) {
        let round = round.as_secs_f64();
        for run in measured.baselines.iter().chain(&measured.runs) {
            if run.elapsed_s < round * SHORT_ROUND {
                self.report.note(format!(
                    "{scenario}: the run `{}` ended after {:.1} s of {round:.1} s ({} \
                     operations: out of tickets or of its count), so its rate covers a \
                     shorter time than the runs next to it",
                    run.label,
                    run.elapsed_s,
                    run.ok + run.error_count()
                ));
            }
        }
    }

    /// A note when the baseline rate moved over the rounds: this machine's speed
    /// drifted (the rounds are there to make the ratios hold up to it).
    pub(super) fn note_drift(&mut self) {
        let f = &self.found;
        let figures: Vec<&Interleaved> = [&f.admit, &f.handshake, &f.forged, &f.admit_embedded]
            .into_iter()
            .flatten()
            .collect();
        let Some(drift) = Drift::of(&figures) else {
            return;
        };
        if drift.range() > DRIFT_WARNING {
            self.report.note(format!(
                "the baseline handshake rate ranged from {:.0}/s to {:.0}/s over its {} runs \
                 ({:.0} % of their median), and moved by up to {:.0} % between the two runs \
                 around one round: this machine's speed drifted. Each ratio of the bar sets \
                 a ticketgate run against the baseline runs right before and after it; the \
                 bar shows the median round and the spread of the rounds",
                drift.min,
                drift.max,
                drift.runs,
                drift.range() * 100.0,
                drift.largest_in_round * 100.0
            ));
        }
    }
}

/// Where a baseline run stands among the rounds of `scenario`: `place` 0 is before the
/// first round, `rounds` after the last.
fn around_round(scenario: &str, place: usize, rounds: usize) -> String {
    if place == 0 {
        format!("before {scenario} round 1")
    } else if place >= rounds {
        format!("after {scenario} round {rounds}")
    } else {
        format!("between {scenario} rounds {place} and {}", place + 1)
    }
}
