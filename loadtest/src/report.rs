//! Results: what a run measured, printed as tables on the terminal and written as JSON
//! (`--json FILE`). The JSON holds the same figures as the tables, with raw numbers.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::host::{CpuMeter, CpuPerOp, FdLimit};
use crate::redis_stats::RedisCost;
use crate::rounds::RatioSpread;
use crate::stats::{Figures, Latency};

/// Everything one invocation measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `bench`, `bench --quick`, or the scenario's name.
    pub mode: String,
    /// The machine the figures come from.
    pub machine: Machine,
    /// The settings every node was started with (bench only).
    pub nodes: Vec<NodeSettings>,
    /// Every measured run.
    pub runs: Vec<Run>,
    /// Redis commands per operation.
    pub redis: Vec<RedisCost>,
    /// Server memory per idle socket.
    pub memory: Vec<Memory>,
    /// The bar: ticketgate against the baseline (bench only).
    pub bar: Vec<BarRow>,
    /// How cost grows with work (bench only).
    pub growth: Vec<GrowthRow>,
    /// Things worth knowing: endpoints that are not there, capped figures.
    pub notes: Vec<String>,
}

/// The machine the figures come from.
#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// Cores available.
    pub cores: usize,
    /// The file-descriptor limit the harness ran with.
    pub fd_limit: Option<FdLimit>,
    /// `uname -sr`-like text.
    pub os: String,
}

/// The settings a node was started with.
#[derive(Debug, Serialize)]
pub struct NodeSettings {
    /// The node's name.
    pub node: String,
    /// What it is for.
    pub role: String,
    /// `(variable, value)` pairs, the admin key masked.
    pub env: Vec<(String, String)>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The scenario.
    pub scenario: String,
    /// `ticketgate` or `baseline`.
    pub target: String,
    /// What was measured.
    #[serde(flatten)]
    pub figures: Figures,
    /// CPU per operation (successes and failures), when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPerOp>,
}

/// Server memory per idle socket.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// `ticketgate` or `baseline`.
    pub target: String,
    /// Sockets held open.
    pub sockets: u64,
    /// Server RSS before opening them, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with them open, KiB.
    pub rss_after_kib: u64,
    /// The difference per socket, KiB.
    pub per_socket_kib: f64,
}

/// Whether a figure meets its bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Meets it.
    Pass,
    /// Misses it.
    Miss,
    /// Not measured (e.g. the server has no such endpoint yet).
    NotAvailable,
}

impl Verdict {
    /// `pass` when `ok`, else `MISS`.
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn shown(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "MISS",
            Verdict::NotAvailable => "n/a",
        }
    }
}

/// One row of the bar table.
#[derive(Debug, Clone, Serialize)]
pub struct BarRow {
    /// The figure, as the issue names it.
    pub figure: String,
    /// ticketgate's value, as shown.
    pub ticketgate: String,
    /// The baseline's value, as shown (`-` when there is none).
    pub baseline: String,
    /// ticketgate / baseline, as shown (`-` when not a ratio figure); for a figure
    /// measured in interleaved rounds, the median round and the spread of the rounds.
    pub ratio: String,
    /// The bar, as the issue states it.
    pub bar: String,
    /// Met or not.
    pub verdict: Verdict,
    /// The number the verdict is about (a ratio, a count, milliseconds...).
    pub value: Option<f64>,
    /// The ratios of the interleaved rounds, for the figures measured in rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounds: Option<RatioSpread>,
}

/// One row of the "cost grows with work" table.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthRow {
    /// What grows: `idle sockets held`, `sockets of the kicked user`, `nodes`.
    pub work: String,
    /// How much of it.
    pub level: String,
    /// What is measured.
    pub figure: String,
    /// The value, as shown (`n/a` when not measured).
    pub shown: String,
    /// The raw value.
    pub value: Option<f64>,
}

impl Report {
    /// A report for `mode` on this machine.
    pub fn new(mode: &str, fd_limit: Option<FdLimit>) -> Report {
        Report {
            mode: mode.to_owned(),
            machine: Machine {
                cores: crate::host::cores(),
                fd_limit,
                os: os_text(),
            },
            ..Report::default()
        }
    }

    /// Adds a run's figures.
    pub fn run(&mut self, scenario: &str, target: &str, figures: Figures) {
        self.runs.push(Run {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            figures,
            cpu: None,
        });
    }

    /// Adds a run's figures with the CPU it cost (per attempted operation).
    pub fn run_cpu(&mut self, scenario: &str, target: &str, figures: Figures, cpu: &CpuMeter) {
        let per_op = cpu.per_op(figures.ok + figures.error_count());
        self.runs.push(Run {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            figures,
            cpu: Some(per_op),
        });
    }

    /// Adds a note (and says it on standard error at once).
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        crate::progress::status(&note);
        self.notes.push(note);
    }

    /// Prints every table that has rows.
    pub fn print(&self) {
        println!();
        println!(
            "ticketgate flood: {} on {} cores ({}), file descriptors {}",
            self.mode,
            self.machine.cores,
            self.machine.os,
            self.machine
                .fd_limit
                .map_or("unknown".to_owned(), |l| l.now.to_string())
        );
        self.print_settings();
        self.print_runs();
        self.print_redis();
        self.print_memory();
        self.print_bar();
        self.print_growth();
        if !self.notes.is_empty() {
            println!("\nNotes");
            for note in &self.notes {
                println!("  - {note}");
            }
        }
    }

    /// Writes the report as pretty JSON.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self).context("encode the report")?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
        crate::progress::status(format!("JSON written to {}", path.display()));
        Ok(())
    }

    fn print_settings(&self) {
        for node in &self.nodes {
            println!("\nSettings of {} ({})", node.node, node.role);
            for (k, v) in &node.env {
                println!("  {k}={v}");
            }
        }
    }

    fn print_runs(&self) {
        if self.runs.is_empty() {
            return;
        }
        let rows = self
            .runs
            .iter()
            .map(|r| {
                let f = &r.figures;
                let l = f.latency;
                vec![
                    r.scenario.clone(),
                    r.target.clone(),
                    f.label.clone(),
                    f.ok.to_string(),
                    f.error_count().to_string(),
                    format!("{:.0}", f.rate),
                    latency_cell(l, |l| l.p50_us),
                    latency_cell(l, |l| l.p99_us),
                    latency_cell(l, |l| l.p999_us),
                    latency_cell(l, |l| l.max_us),
                    cpu_cell(r.cpu.and_then(|c| c.server_us)),
                    cpu_cell(r.cpu.and_then(|c| c.redis_us)),
                    cpu_cell(r.cpu.and_then(|c| c.harness_us)),
                ]
            })
            .collect();
        table(
            "Runs (rate = successes per second; latency of successes; CPU µs per attempt: \
             the server, its Redis, this harness, all on the same cores)",
            &[
                "scenario",
                "target",
                "run",
                "ok",
                "errors",
                "rate/s",
                "p50",
                "p99",
                "p99.9",
                "max",
                "srv CPU",
                "Redis CPU",
                "harness CPU",
            ],
            rows,
        );
        let failed: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.figures.error_count() > 0)
            .collect();
        if !failed.is_empty() {
            println!("  errors by kind:");
            for r in failed {
                println!("    {} / {} / {}:", r.scenario, r.target, r.figures.label);
                for (kind, n) in &r.figures.errors {
                    match r.figures.examples.get(kind) {
                        Some(example) => println!("      {kind} × {n} (e.g. {example})"),
                        None => println!("      {kind} × {n}"),
                    }
                }
            }
        }
    }

    fn print_redis(&self) {
        if self.redis.is_empty() {
            return;
        }
        let rows = self
            .redis
            .iter()
            .map(|c| {
                let breakdown: Vec<String> = c
                    .breakdown
                    .iter()
                    .map(|(k, v)| format!("{k} {}", per_op(*v)))
                    .collect();
                let round_trips: Vec<String> = c
                    .round_trips_by_command
                    .iter()
                    .map(|(k, v)| format!("{k} {}", per_op(*v)))
                    .collect();
                vec![
                    c.op.clone(),
                    c.ops.to_string(),
                    c.round_trips_per_op
                        .map_or("-".to_owned(), |v| format!("{v:.2}")),
                    round_trips.join(", "),
                    per_op(c.commands_per_op),
                    breakdown.join(", "),
                ]
            })
            .collect();
        table(
            "Redis per operation (round trips: MONITOR probe; commands: INFO commandstats, script-internal included)",
            &[
                "operation",
                "ops",
                "round trips/op",
                "round trips by command",
                "commands/op",
                "commands by command",
            ],
            rows,
        );
    }

    fn print_memory(&self) {
        if self.memory.is_empty() {
            return;
        }
        let rows = self
            .memory
            .iter()
            .map(|m| {
                vec![
                    m.target.clone(),
                    m.sockets.to_string(),
                    format!("{:.1} MiB", m.rss_before_kib as f64 / 1024.0),
                    format!("{:.1} MiB", m.rss_after_kib as f64 / 1024.0),
                    format!("{:.2} KiB", m.per_socket_kib),
                ]
            })
            .collect();
        table(
            "Server memory per idle admitted socket (VmRSS delta / sockets)",
            &["server", "sockets", "RSS before", "RSS after", "per socket"],
            rows,
        );
    }

    fn print_bar(&self) {
        if self.bar.is_empty() {
            return;
        }
        let rows = self
            .bar
            .iter()
            .map(|b| {
                vec![
                    b.figure.clone(),
                    b.ticketgate.clone(),
                    b.baseline.clone(),
                    b.ratio.clone(),
                    b.bar.clone(),
                    b.verdict.shown().to_owned(),
                ]
            })
            .collect();
        table(
            "The bar (ratio = ticketgate / baseline, same machine, same run; rate figures: \
             interleaved rounds, the median round's ratio (min–max of the rounds), \
             medians of the rates)",
            &[
                "figure",
                "ticketgate",
                "baseline",
                "ratio",
                "bar",
                "verdict",
            ],
            rows,
        );
    }

    fn print_growth(&self) {
        if self.growth.is_empty() {
            return;
        }
        let rows = self
            .growth
            .iter()
            .map(|g| {
                vec![
                    g.work.clone(),
                    g.level.clone(),
                    g.figure.clone(),
                    g.shown.clone(),
                ]
            })
            .collect();
        table(
            "How cost grows with work",
            &["work", "level", "figure", "value"],
            rows,
        );
    }
}

/// A latency in microseconds as `0.42 ms`, `12.3 ms` or `1.20 s`.
pub fn fmt_us(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// A per-operation count: two decimals, more when it is small but not zero (so that
/// background noise does not read as 0.00 or as a real cost).
fn per_op(v: f64) -> String {
    if v > 0.0 && v < 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    }
}

fn cpu_cell(us: Option<f64>) -> String {
    us.map_or("-".to_owned(), |us| format!("{us:.0} µs"))
}

fn latency_cell(latency: Option<Latency>, pick: impl Fn(&Latency) -> u64) -> String {
    latency.map_or("-".to_owned(), |l| fmt_us(pick(&l)))
}

/// Prints a table: a title, a header row and aligned columns (the first left-aligned,
/// the others right-aligned, except the last when it is free text).
pub fn table(title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                if i == 0 || i + 1 == cells.len() && w > 24 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("  {}", parts.join("  ").trim_end())
    };
    println!("\n{title}");
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    println!("{}", line(&header));
    let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    println!("  {}", "-".repeat(total));
    for row in rows {
        println!("{}", line(&row));
    }
}

fn os_text() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{} {}", std::env::consts::OS, release.trim())
        .trim()
        .to_owned()
}
