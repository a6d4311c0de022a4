//! `flood bench`: one command that starts its own Redis, ticketgate nodes and the
//! baseline, runs the main scenarios against both, and prints the figures, the ratios
//! ticketgate / baseline, the bar and how cost grows with work.
//!
//! Order of the phases (each time- and count-boxed):
//! 1. setup: users file (argon2, via `ticketgate user add`), Redis, node A, baseline,
//!    one login per pool device;
//! 2. mint (the tickets of every admit round) → admit → replay on the same tickets; a
//!    `MONITOR` probe for round trips; full handshake; forged tickets. Admit, full
//!    handshake and forged tickets, the rates of the bar, are each measured in
//!    interleaved rounds with the baseline handshake ([`crate::rounds`]), because this
//!    machine's speed drifts within a minute;
//! 3. node L (the real mint quota, 1 s tickets): expired tickets, then the mint flood;
//! 4. conn-storm: cold, then two drains of a node started for the purpose;
//! 5. nodes B and C: kick across nodes, push over 1/2/3 nodes;
//! 6. idle sockets on processes started for it (node I, then a second baseline), so
//!    that their RSS holds nothing from the earlier phases: RSS per socket, then the
//!    handshake rate while holding 10,000 / 5,000 / 0 of them.
//!
//! Every child process is held by a guard that kills it on drop, so an error, a panic
//! or Ctrl-C leaves nothing running.
//!
//! # Layout
//! - this module: the options, what the phases share ([`Bench`]) and [`run`], the
//!   order of the phases and the report's last notes;
//! - `phases/`: one module per phase;
//! - `interleave`: a rate of the bar in interleaved rounds against the baseline;
//! - `nodes`: the nodes' environment and their settings as reported;
//! - `sizes`: how big and long each phase is (full and `--quick`);
//! - `bar`: the key figures and the verdict table made of them.

mod bar;
mod interleave;
pub(crate) mod nodes;
mod phases;
mod sizes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use self::bar::Findings;
use self::sizes::Sizes;
use crate::host;
use crate::progress::status;
use crate::redis_stats::RedisStats;
use crate::report::Report;
use crate::spawn::{self, Baseline, Node, RedisServer};
use crate::target::{Device, Users};
use crate::ws::Dialer;

/// `flood bench` options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Smaller and shorter (2,000 idle sockets instead of 10,000, shorter runs).
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the temp dir (node and Redis logs, users file) and print where it is.
    #[arg(long)]
    pub keep: bool,
}

/// Everything the phases share.
struct Bench {
    sizes: Sizes,
    dir: PathBuf,
    binary: PathBuf,
    users: Users,
    admin_key: String,
    env: Vec<(String, String)>,
    redis: RedisStats,
    node_a: Node,
    baseline: Baseline,
    a: Arc<Dialer>,
    base: Arc<Dialer>,
    devices: Vec<Device>,
    report: Report,
    found: Findings,
    /// Dropped last: the nodes go first.
    redis_server: RedisServer,
}

/// Runs the whole bench.
///
/// # Errors
/// When a child process cannot be started or a setup step fails; the scenarios'
/// own failures are counted in their figures instead.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let mode = if args.quick { "bench --quick" } else { "bench" };
    let idle_max = sizes.idle_levels[2] as u64;
    let fd = host::raise_fd_limit(idle_max + 2_000);
    let report = Report::new(mode, Some(fd));

    let temp = tempfile::Builder::new()
        .prefix("ticketgate-bench-")
        .tempdir()
        .context("create a temp dir")?;
    // Without --keep the guard removes the dir on every exit path.
    let (dir, _remove_on_drop) = if args.keep {
        let kept = temp.keep();
        status(format!("logs are kept in {}", kept.display()));
        (kept, None)
    } else {
        (temp.path().to_owned(), Some(temp))
    };
    let drops_before = host::listen_drops();
    let mut bench = Bench::setup(sizes, &dir, report).await?;
    bench.phase_rates().await?;
    bench.phase_limits().await?;
    bench.phase_storm().await?;
    bench.phase_cluster().await?;
    bench.phase_idle().await?;
    bench.found.compose_bar(&mut bench.report);
    // Business calls: a node of its own forwarding to the harness's upstream.
    let upstream_dir = dir.join("upstream");
    std::fs::create_dir_all(&upstream_dir).context("upstream phase dir")?;
    let upstream_plan = crate::scenarios::Plan {
        duration: std::time::Duration::from_secs(if args.quick { 6 } else { 12 }),
        max_ops: 10_000_000,
        concurrency: 32,
    };
    let upstream =
        crate::scenarios::upstream::compare(&bench.binary, &upstream_dir, upstream_plan).await?;
    bench
        .report
        .run("upstream", "direct", upstream.direct.clone());
    bench
        .report
        .run("upstream", "ticketgate", upstream.through.clone());
    bench.report.bar.extend(upstream.bar_rows());
    for (log, count, message) in spawn::panics_in_logs(&dir) {
        bench.report.note(format!(
            "{log}: the process panicked {count} time(s), first: {message}"
        ));
    }
    if let (Some(before), Some(after)) = (drops_before, host::listen_drops()) {
        if after > before {
            bench.report.note(format!(
                "the kernel dropped {} connection attempts (TcpExt ListenDrops: an accept queue \
                 was full); latencies near 1 s or 3 s are SYN retransmissions",
                after - before
            ));
        }
    }

    let Bench {
        mut report,
        node_a,
        baseline,
        ..
    } = bench;
    drop(node_a);
    drop(baseline);
    report.note(format!(
        "bench took {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    report.print();
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(())
}
