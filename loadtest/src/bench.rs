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

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use ticketgate_sdk::ClientType;

use crate::host::{self, CpuMeter};
use crate::progress::status;
use crate::redis_stats::{RedisCost, RedisStats};
use crate::report::{fmt_us, BarRow, GrowthRow, Memory, NodeSettings, Report, Verdict};
use crate::rounds::{split_even, Drift, Interleaved, RatioSpread};
use crate::scenarios::conn_storm::{self, DrainOutcome};
use crate::scenarios::idle::{self, HeldSockets};
use crate::scenarios::kick::{self, KickSetup};
use crate::scenarios::mint_flood::{self, FloodOutcome, FloodPlan};
use crate::scenarios::push::{self, PushSetup};
use crate::scenarios::{admit, forged, handshake, replay, Plan};
use crate::spawn::{self, Baseline, Node, RedisServer};
use crate::stats::Figures;
use crate::target::{self, login, mint_many, Admin, Device, Minted, Users};
use crate::ws::Dialer;

/// Pool users (`lt0`..`lt50`), two devices (web + mobile) each.
const POOL_USERS: usize = 51;
/// Devices logged in once: 100 honest devices and one flooder for the mint flood;
/// the other scenarios use them too.
const POOL_DEVICES: usize = 102;
/// Honest devices of the mint flood.
const HONEST_DEVICES: usize = 100;
/// Workers of the rate runs, the same for ticketgate and the baseline.
const RUN_CONCURRENCY: usize = 32;
/// Workers opening idle sockets.
const OPEN_CONCURRENCY: usize = 64;
/// Operations of each kind in the `MONITOR` probe.
const PROBE_OPS: usize = 200;
/// Expired tickets presented.
const EXPIRED_TICKETS: usize = 300;
/// A rate that never limits anything here.
const UNLIMITED: &str = "1000000/s";
/// The mint flood's offered rate, fixed so the honest figures mean the same anywhere.
const FLOOD_RATE: u32 = 2_000;
/// A range of the baseline rates over the rounds (relative to their median) that is
/// worth a note.
const DRIFT_WARNING: f64 = 0.10;
/// Operations per second of a round that caps its runs: far above any rate seen here
/// (60,000/s at most), so that every run of a round ends on time, not on the count.
const ROUND_OPS_PER_SEC: f64 = 200_000.0;
/// Share of its time a run of a round must last for its rate to count as a full run.
const SHORT_ROUND: f64 = 0.9;
/// Ticket lifetime on node L, so that expired tickets are at hand quickly.
const SHORT_TICKET_TTL: &str = "1s";

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

/// How big and long each phase is.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Runs outside the rounds (replay; expired tickets run half of it).
    run: Duration,
    /// The count that caps those runs.
    max_ops: u64,
    /// Interleaved rounds of each rate of the bar.
    rounds: usize,
    /// Every run of a round, baseline and ticketgate alike.
    round: Duration,
    idle_levels: [usize; 3],
    idle_run: Duration,
    storm_clients: usize,
    kick: [(usize, usize); 3],
    push_sockets: usize,
    push_messages: u64,
    push_run: Duration,
    flood_phase: Duration,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            run: Duration::from_secs(5),
            max_ops: 60_000,
            // Five short rounds rather than three long ones: the baseline runs around a
            // ticketgate run are closer in time, and the median of five shrugs off a
            // round the machine's drift spoiled.
            rounds: 5,
            round: Duration::from_millis(1_500),
            idle_levels: [0, 5_000, 10_000],
            idle_run: Duration::from_secs(3),
            storm_clients: 1_000,
            kick: [(1, 10), (100, 3), (1_000, 1)],
            push_sockets: 60,
            push_messages: 100,
            push_run: Duration::from_secs(3),
            flood_phase: Duration::from_secs(6),
        }
    }

    fn quick() -> Sizes {
        Sizes {
            run: Duration::from_secs(3),
            max_ops: 30_000,
            rounds: 2,
            round: Duration::from_secs(2),
            idle_levels: [0, 1_000, 2_000],
            idle_run: Duration::from_secs(2),
            storm_clients: 500,
            kick: [(1, 5), (100, 2), (1_000, 1)],
            push_sockets: 30,
            push_messages: 50,
            push_run: Duration::from_secs(2),
            flood_phase: Duration::from_secs(4),
        }
    }

    fn plan(&self) -> Plan {
        Plan {
            duration: self.run,
            max_ops: self.max_ops,
            concurrency: RUN_CONCURRENCY,
        }
    }

    /// Each run of a round: bounded by time (the count is out of reach).
    fn round_plan(&self) -> Plan {
        Plan {
            duration: self.round,
            max_ops: (ROUND_OPS_PER_SEC * self.round.as_secs_f64()) as u64,
            concurrency: RUN_CONCURRENCY,
        }
    }

    /// The mint run: the tickets of every admit round. Minting is about as fast as
    /// admitting, so it gets the admit rounds' time and half as much again.
    fn mint_plan(&self) -> Plan {
        let rounds = u32::try_from(self.rounds).unwrap_or(u32::MAX);
        let round = self.round_plan();
        Plan {
            duration: self.round * rounds * 3 / 2,
            max_ops: round.max_ops.saturating_mul(self.rounds as u64),
            ..round
        }
    }
}

/// The key figures the bar is made of.
#[derive(Default)]
struct Findings {
    admit: Option<Interleaved>,
    /// The admit rounds on node-e (embedded store): for reading, not a bar.
    admit_embedded: Option<Interleaved>,
    handshake: Option<Interleaved>,
    forged: Option<Interleaved>,
    mint_round_trips: Option<f64>,
    admit_round_trips: Option<f64>,
    forged_commands: Option<f64>,
    expired_commands: Option<f64>,
    flood: Option<FloodOutcome>,
    rss_ticketgate: Option<Memory>,
    rss_baseline: Option<Memory>,
    kick: Option<Figures>,
}

/// The process a round's CPU is measured on, and its Redis when it has one.
#[derive(Debug, Clone, Copy)]
struct Measured {
    pid: u32,
    redis_pid: Option<u32>,
}

/// What the ticketgate run of one interleaved round gives back.
struct RoundRun<T> {
    /// The run the round's ratio is about (recorded with node-a's CPU).
    figures: Figures,
    /// The same run broken down (recorded without CPU), e.g. forged tickets by kind.
    parts: Vec<Figures>,
    /// What the caller keeps of it, e.g. the tickets an admit round consumed.
    kept: T,
}

impl RoundRun<()> {
    /// A run with nothing more to it.
    fn of(figures: Figures) -> RoundRun<()> {
        RoundRun {
            figures,
            parts: Vec::new(),
            kept: (),
        }
    }
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
    bench.compose_bar();
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

fn random_text(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `(variable, value)` pairs for a node, `TICKETGATE_RATE_*` raised.
fn main_env(redis_url: &str, dir: &Path, admin_key: &str) -> Vec<(String, String)> {
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        ("TICKETGATE_REDIS_URL".into(), redis_url.into()),
        ("TICKETGATE_DATA_DIR".into(), path("data")),
        ("TICKETGATE_USERS_FILE".into(), path("users.toml")),
        ("TICKETGATE_ADMIN_KEY".into(), admin_key.into()),
        ("TICKETGATE_LOG_FORMAT".into(), "text".into()),
    ];
    for rate in [
        "LOGIN_IP",
        "LOGIN_USER",
        "LOGIN_DEVICE",
        "FAIL_IP",
        "MINT_DEVICE",
        "CONNECT_DEVICE",
        "CONNECT_IP",
    ] {
        env.push((format!("TICKETGATE_RATE_{rate}"), UNLIMITED.into()));
    }
    env
}

/// A node's settings for the report, the admin key masked.
fn settings(node: &Node, role: &str) -> NodeSettings {
    let env = node
        .env
        .iter()
        .map(|(k, v)| {
            let v = if k == "TICKETGATE_ADMIN_KEY" {
                format!("<random, {} characters>", v.len())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect::<Vec<_>>();
    let mut env = env;
    for var in spawn::REMOVED_VARS {
        env.push((var.to_owned(), "(removed from the environment)".to_owned()));
    }
    NodeSettings {
        node: node.name.clone(),
        role: role.to_owned(),
        env,
    }
}

impl Bench {
    async fn setup(sizes: Sizes, dir: &Path, mut report: Report) -> anyhow::Result<Bench> {
        let binary = spawn::ticketgate_binary()?;
        let users = Users {
            prefix: "lt".into(),
            count: POOL_USERS,
            password: random_text(24),
        };
        let mut names: Vec<String> = (0..users.count).map(|i| users.name(i)).collect();
        names.push(users.kick_user());
        names.push(users.push_user());
        status(format!(
            "writing {} users with {} user add",
            names.len(),
            binary.display()
        ));
        let users_file = dir.join("users.toml");
        {
            let (binary, users_file, password) =
                (binary.clone(), users_file.clone(), users.password.clone());
            tokio::task::spawn_blocking(move || {
                spawn::add_users(&binary, &users_file, &names, &password)
            })
            .await
            .context("users task")??;
        }

        status("starting redis-server");
        let redis_server = RedisServer::start(dir).await?;
        let redis = RedisStats::at(redis_server.addr);
        let admin_key = random_text(32);
        let env = main_env(&redis_server.url(), dir, &admin_key);
        status("starting ticketgate node-a and the baseline");
        let node_a = Node::start(&binary, dir, "node-a", &env).await?;
        report
            .nodes
            .push(settings(&node_a, "every scenario; rates raised"));
        let baseline = Baseline::start(dir, "baseline").await?;
        let a = Arc::new(Dialer::new(node_a.public));
        let base = Arc::new(Dialer::new(baseline.addr));

        status(format!(
            "logging in {POOL_DEVICES} devices (argon2, on purpose slow)"
        ));
        let devices = target::login_devices(&node_a.public_url(), &users, POOL_DEVICES).await?;

        Ok(Bench {
            sizes,
            dir: dir.to_owned(),
            binary,
            users,
            admin_key,
            env,
            redis,
            node_a,
            baseline,
            a,
            base,
            devices,
            report,
            found: Findings::default(),
            redis_server,
        })
    }
}

impl Bench {
    /// Mint → admit → replay on the same tickets; round-trip probe; full handshake;
    /// forged tickets. The rates of the bar (admit, full handshake, forged) are each
    /// measured in interleaved rounds with the baseline handshake.
    async fn phase_rates(&mut self) -> anyhow::Result<()> {
        let (mint_cost, admit_cost, consumed) = self.mint_then_admit().await?;
        let replay_cost = self.replay(consumed).await?;
        let (mint_cost, admit_cost) = self.with_round_trips(mint_cost, admit_cost).await?;
        self.report
            .redis
            .extend([mint_cost, admit_cost, replay_cost]);
        self.full_handshakes().await?;
        self.forged_tickets().await?;
        self.embedded_admit().await?;
        self.note_drift();
        Ok(())
    }

    /// Mints the tickets of every admit round, then admits them in interleaved rounds,
    /// each round its own share, the oldest tickets first. Returns the Redis cost of a
    /// mint and of an admission (the baseline runs between the rounds send no Redis
    /// command), and the tickets the last round consumed: the freshest, so that they
    /// are replayed well within their lifetime.
    async fn mint_then_admit(&mut self) -> anyhow::Result<(RedisCost, RedisCost, Vec<Minted>)> {
        let rounds = self.sizes.rounds;
        status(format!(
            "ticketgate: mint the tickets of {rounds} admit rounds"
        ));
        let plan = self.sizes.mint_plan();
        let snap = self.redis.snapshot()?;
        let cpu = self.node_a_cpu();
        let (tickets, mint) = mint_many(
            "mint (keep-alive)",
            &self.devices,
            usize::try_from(plan.max_ops).unwrap_or(usize::MAX),
            RUN_CONCURRENCY,
            plan.duration,
        )
        .await;
        let mint_cost = snap.cost("mint", mint.ok)?;
        self.report.run_cpu("mint", "ticketgate", mint, &cpu);

        let mut shares = split_even(tickets, rounds).into_iter();
        let a = self.a.clone();
        let snap = self.redis.snapshot()?;
        let (admitted, mut consumed) = self
            .interleaved("admit", "socket + welcome + close", move |label, plan| {
                let (tickets, a) = (Arc::new(shares.next().unwrap_or_default()), a.clone());
                async move {
                    let (figures, consumed) = admit::run(&label, tickets, a, &plan).await;
                    RoundRun {
                        figures,
                        parts: Vec::new(),
                        kept: consumed,
                    }
                }
            })
            .await;
        let admit_cost = snap.cost("admit", admitted.ok())?;
        self.found.admit = Some(admitted);
        Ok((mint_cost, admit_cost, consumed.pop().unwrap_or_default()))
    }

    /// Presents `consumed` tickets again (each must be refused); returns the Redis cost
    /// of a replay.
    async fn replay(&mut self, consumed: Vec<Minted>) -> anyhow::Result<RedisCost> {
        status("ticketgate: replay the tickets of the last admit round");
        let snap = self.redis.snapshot()?;
        let cpu = self.node_a_cpu();
        let replayed = replay::run(
            "consumed tickets again",
            Arc::new(consumed),
            self.a.clone(),
            &self.sizes.plan(),
        )
        .await;
        let cost = snap.cost("replay", replayed.ok + replayed.error_count())?;
        self.report.run_cpu("replay", "ticketgate", replayed, &cpu);
        Ok(cost)
    }

    /// The `MONITOR` probe: round trips per mint and per admit, added to their costs.
    async fn with_round_trips(
        &mut self,
        mint: RedisCost,
        admit: RedisCost,
    ) -> anyhow::Result<(RedisCost, RedisCost)> {
        status("MONITOR probe: round trips per mint and per admit");
        let probe =
            admit::probe_round_trips(&self.redis, &self.devices, self.a.clone(), PROBE_OPS).await?;
        let background = &probe.background;
        let names: Vec<&str> = background.top_level.keys().map(String::as_str).collect();
        self.report.note(format!(
            "Redis background: {:.1} commands/s that the idle nodes send themselves ({}); \
             left out of the round trips per operation",
            background.top_level_rate(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ));
        let mint = mint.with_round_trips(&probe.mint.0, probe.mint.1, background);
        let admit = admit.with_round_trips(&probe.admit.0, probe.admit.1, background);
        self.found.mint_round_trips = mint.round_trips_per_op;
        self.found.admit_round_trips = admit.round_trips_per_op;
        Ok((mint, admit))
    }

    /// Full handshakes (mint over keep-alive + admit) in interleaved rounds.
    async fn full_handshakes(&mut self) -> anyhow::Result<()> {
        let (devices, a) = (Arc::new(self.devices.clone()), self.a.clone());
        let snap = self.redis.snapshot()?;
        let (full, _) = self
            .interleaved(
                "handshake",
                "mint + socket + welcome + close",
                move |label, plan| {
                    let (devices, a) = (devices.clone(), a.clone());
                    async move {
                        RoundRun::of(handshake::ticketgate(&label, &devices, a, &plan).await)
                    }
                },
            )
            .await;
        self.report
            .redis
            .push(snap.cost("handshake (mint + admit)", full.ok())?);
        self.found.handshake = Some(full);
        Ok(())
    }

    /// Forged tickets at the upgrade in interleaved rounds; none may cost a Redis
    /// command.
    async fn forged_tickets(&mut self) -> anyhow::Result<()> {
        let sample_device = &self.devices[0];
        let sample = sample_device
            .client
            .mint_ticket(&sample_device.session)
            .await
            .context("mint the forger's sample ticket")?;
        let sample = forged::Sample {
            ticket: sample.ticket,
            device_id: sample_device.id().to_owned(),
        };
        let a = self.a.clone();
        let snap = self.redis.snapshot()?;
        let (refused, _) = self
            .interleaved("forged", "forged", move |label, plan| {
                let (sample, a) = (sample.clone(), a.clone());
                async move {
                    let run = forged::run(&label, sample, a, &plan).await;
                    RoundRun {
                        figures: run.all,
                        parts: run.by_kind.into(),
                        kept: (),
                    }
                }
            })
            .await;
        let cost = snap.cost("forged", refused.ok() + refused.error_count())?;
        self.found.forged_commands = Some(cost.commands_per_op);
        self.report.redis.push(cost);
        self.found.forged = Some(refused);
        Ok(())
    }

    /// Measures one rate of the bar in interleaved rounds ([`crate::rounds`]): for each
    /// round a baseline handshake run, then `run(label, plan)` against node-a; then one
    /// more baseline run. Records every run (the ticketgate ones under `scenario`) and
    /// a note for any that ended early. Returns the runs and what each round kept.
    async fn interleaved<T, F, Fut>(
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
    async fn interleaved_on<T, F, Fut>(
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

    /// The admit rounds again on node-e, a node on the embedded store (same settings
    /// as node-a but no Redis URL): what the Redis round trip, and Redis's own CPU on
    /// these cores, cost the admit rate. For reading; not a bar.
    async fn embedded_admit(&mut self) -> anyhow::Result<()> {
        status("starting node-e (embedded store): the admit rounds without Redis");
        let env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != "TICKETGATE_REDIS_URL")
            .cloned()
            .collect();
        let node_e = Node::start(&self.binary, &self.dir, "node-e", &env).await?;
        self.report.nodes.push(settings(
            &node_e,
            "admit rounds on the embedded store; same settings as node-a without a Redis URL",
        ));
        let devices =
            target::login_devices(&node_e.public_url(), &self.users, RUN_CONCURRENCY).await?;
        let plan = self.sizes.mint_plan();
        let (tickets, mint) = mint_many(
            "embedded store: mint (keep-alive)",
            &devices,
            usize::try_from(plan.max_ops).unwrap_or(usize::MAX),
            RUN_CONCURRENCY,
            plan.duration,
        )
        .await;
        self.report.run("mint", "ticketgate", mint);
        let mut shares = split_even(tickets, self.sizes.rounds).into_iter();
        let e = Arc::new(Dialer::new(node_e.public));
        let on = Measured {
            pid: node_e.pid(),
            redis_pid: None,
        };
        let (admitted, _) = self
            .interleaved_on(
                on,
                "admit",
                "embedded store: socket + welcome + close",
                move |label, plan| {
                    let (tickets, e) = (Arc::new(shares.next().unwrap_or_default()), e.clone());
                    async move {
                        let (figures, _) = admit::run(&label, tickets, e, &plan).await;
                        RoundRun::of(figures)
                    }
                },
            )
            .await;
        self.found.admit_embedded = Some(admitted);
        Ok(())
    }

    /// A CPU meter on node A and its Redis (the ticketgate rate runs).
    fn node_a_cpu(&self) -> CpuMeter {
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
    fn note_drift(&mut self) {
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

    /// Node L: the real mint quota and 1 s tickets. Expired tickets, then the flood.
    async fn phase_limits(&mut self) -> anyhow::Result<()> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != "TICKETGATE_RATE_MINT_DEVICE")
            .cloned()
            .collect();
        env.push(("TICKETGATE_TICKET_TTL".into(), SHORT_TICKET_TTL.into()));
        status("starting node-l (default mint quota, 1 s tickets)");
        let node_l = Node::start(&self.binary, &self.dir, "node-l", &env).await?;
        self.report.nodes.push(settings(
            &node_l,
            "mint flood and expired tickets; TICKETGATE_RATE_MINT_DEVICE left at its default (30/min)",
        ));
        let on_l = self
            .devices
            .iter()
            .map(|d| d.on(&node_l.public_url()))
            .collect::<anyhow::Result<Vec<Device>>>()?;
        let honest = &on_l[..HONEST_DEVICES];

        status("expired tickets: mint on node-l, wait for them to expire, present them on node-a");
        let (expired, _) = mint_many(
            "expired: mint",
            honest,
            EXPIRED_TICKETS,
            16,
            Duration::from_secs(20),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let plan = Plan {
            duration: self.sizes.run / 2,
            ..self.sizes.plan()
        };
        let snap = self.redis.snapshot()?;
        let cpu = self.node_a_cpu();
        let figures = forged::expired(
            &format!("expired tickets ({} tickets, cycled)", EXPIRED_TICKETS),
            Arc::new(expired),
            self.a.clone(),
            &plan,
        )
        .await;
        let cost = snap.cost("expired", figures.ok + figures.error_count())?;
        self.found.expired_commands = Some(cost.commands_per_op);
        self.report.redis.push(cost);
        self.report.run_cpu("forged", "ticketgate", figures, &cpu);

        status(format!(
            "mint flood: 1 device at {FLOOD_RATE}/s, {HONEST_DEVICES} honest devices minting every 2 s"
        ));
        let outcome = mint_flood::run(
            honest,
            &on_l[HONEST_DEVICES],
            &FloodPlan {
                honest_interval: Duration::from_secs(2),
                flood_rate: FLOOD_RATE,
                phase: self.sizes.flood_phase,
            },
        )
        .await;
        for figures in [&outcome.unloaded, &outcome.loaded, &outcome.flood] {
            self.report.run("mint-flood", "ticketgate", figures.clone());
        }
        self.found.flood = Some(outcome);
        drop(node_l);
        Ok(())
    }

    /// conn-storm: cold, then drains of a node started for the purpose.
    async fn phase_storm(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.storm_clients;
        status(format!("conn-storm: {n} clients mint and connect at once"));
        let cold = conn_storm::cold(
            "cold: mint + connect at once",
            &self.devices,
            self.a.clone(),
            n,
        )
        .await;
        self.report.run("conn-storm", "ticketgate", cold);

        status(format!(
            "conn-storm: {n} clients on a node that is stopped; they move to node-a with resume tickets"
        ));
        let with_resume = self.drain_storm("node-drain-1", n, true).await?;
        if with_resume.resumes_received == 0 {
            self.report.note(
                "conn-storm with resume tickets: not available on this server (no resume frame \
                 came before the 1001 close); every client minted a fresh ticket",
            );
            let mut figures = with_resume.figures;
            figures.label = "drain: reconnect with a fresh mint (no resume frames)".into();
            self.report.run("conn-storm", "ticketgate", figures);
            return Ok(());
        }
        let mut figures = with_resume.figures;
        figures.label = format!(
            "drain: reconnect with resume ({} of {n} resumed)",
            with_resume.resumes_used
        );
        self.report.run("conn-storm", "ticketgate", figures);

        status(format!(
            "conn-storm: {n} clients on a stopped node, reconnecting with fresh mints"
        ));
        let without = self.drain_storm("node-drain-2", n, false).await?;
        let mut figures = without.figures;
        figures.label = "drain: reconnect with a fresh mint".into();
        self.report.run("conn-storm", "ticketgate", figures);
        Ok(())
    }

    async fn drain_storm(
        &mut self,
        name: &str,
        n: usize,
        use_resume: bool,
    ) -> anyhow::Result<DrainOutcome> {
        let mut node = Node::start(&self.binary, &self.dir, name, &self.env).await?;
        let draining = Arc::new(Dialer::new(node.public));
        let outcome = conn_storm::after_drain(
            &format!("drain {name}"),
            &self.devices,
            draining,
            self.a.clone(),
            n,
            use_resume,
            || node.terminate(),
        )
        .await?;
        if !node.wait_exit(Duration::from_secs(15)).await {
            self.report
                .note(format!("{name} did not exit within 15 s of SIGTERM"));
        }
        Ok(outcome)
    }

    /// Nodes B and C: kick across nodes, push over 1/2/3 nodes.
    async fn phase_cluster(&mut self) -> anyhow::Result<()> {
        status("starting node-b and node-c");
        let node_b = Node::start(&self.binary, &self.dir, "node-b", &self.env).await?;
        let node_c = Node::start(&self.binary, &self.dir, "node-c", &self.env).await?;
        self.report
            .nodes
            .push(settings(&node_b, "kick and push; same settings as node-a"));
        self.report
            .nodes
            .push(settings(&node_c, "push; same settings as node-a"));
        let b = Arc::new(Dialer::new(node_b.public));
        let c = Arc::new(Dialer::new(node_c.public));
        let admin = Admin::new(&self.node_a.admin_url(), &self.admin_key)?;

        self.kick(&admin, b.clone()).await?;
        self.push(&admin, &[self.a.clone(), b, c]).await?;
        drop(node_b);
        drop(node_c);
        Ok(())
    }

    async fn kick(&mut self, admin: &Admin, sockets_on: Arc<Dialer>) -> anyhow::Result<()> {
        let public_url = self.node_a.public_url();
        let user = self.users.kick_user();
        let setup = KickSetup {
            public_url: &public_url,
            user: &user,
            password: &self.users.password,
            admin,
            socket_nodes: std::slice::from_ref(&sockets_on),
        };
        let mut available = true;
        for (size, reps) in self.sizes.kick {
            let level = size.to_string();
            if !available {
                self.report.growth.push(na_row(
                    "sockets of the kicked user",
                    &level,
                    "kick-to-close p50 / p99",
                ));
                continue;
            }
            status(format!(
                "kick: {reps} × a user with {size} sockets on node-b, kicked through node-a"
            ));
            let label = format!("{size} sockets on node-b, kick via node-a");
            match kick::run(&label, &setup, size, reps).await? {
                None => {
                    available = false;
                    self.report.note(
                        "kick: not available on this server (POST /admin/v1/users/{user_id}/kick answered 404)",
                    );
                    self.report.growth.push(na_row(
                        "sockets of the kicked user",
                        &level,
                        "kick-to-close p50 / p99",
                    ));
                }
                Some(figures) => {
                    self.report.growth.push(latency_row(
                        "sockets of the kicked user",
                        &level,
                        "kick-to-close p50 / p99",
                        &figures,
                    ));
                    if size == 100 {
                        self.found.kick = Some(figures.clone());
                    }
                    self.report.run("kick", "ticketgate", figures);
                }
            }
        }
        Ok(())
    }

    async fn push(&mut self, admin: &Admin, nodes: &[Arc<Dialer>]) -> anyhow::Result<()> {
        let user = self.users.push_user();
        let device = login(
            &self.node_a.public_url(),
            &user,
            &self.users.password,
            ClientType::Web,
        )
        .await?;
        let setup = PushSetup {
            device: &device,
            user: &user,
            admin,
        };
        let sockets = self.sizes.push_sockets;
        for count in 1..=nodes.len() {
            let level = count.to_string();
            status(format!(
                "push: {} messages to {sockets} sockets on {count} node(s), published via node-a",
                self.sizes.push_messages
            ));
            let label = format!("latency: {sockets} sockets on {count} node(s)");
            let figures = push::latency(
                &label,
                &setup,
                &nodes[..count],
                sockets,
                self.sizes.push_messages,
                Duration::from_millis(10),
            )
            .await?;
            let Some(figures) = figures else {
                self.report.note(
                    "push: not available on this server (POST /admin/v1/publish answered 404)",
                );
                for n in count..=nodes.len() {
                    self.report.growth.push(na_row(
                        "nodes",
                        &n.to_string(),
                        "push latency p50 / p99",
                    ));
                }
                self.report.growth.push(na_row(
                    "nodes",
                    &nodes.len().to_string(),
                    "push deliveries/s",
                ));
                return Ok(());
            };
            self.report.growth.push(latency_row(
                "nodes",
                &level,
                "push latency p50 / p99",
                &figures,
            ));
            self.report.run("push", "ticketgate", figures);
        }
        status("push: publishers as fast as they can, sockets on every node");
        let plan = Plan {
            duration: self.sizes.push_run,
            max_ops: self.sizes.max_ops,
            concurrency: 8,
        };
        let label = format!("throughput: {sockets} sockets on {} nodes", nodes.len());
        if let Some((deliveries, publishes)) =
            push::throughput(&label, &setup, nodes, sockets, &plan).await?
        {
            self.report.growth.push(GrowthRow {
                work: "nodes".into(),
                level: nodes.len().to_string(),
                figure: "push deliveries/s".into(),
                shown: format!("{:.0}/s", deliveries.rate),
                value: Some(deliveries.rate),
            });
            self.report.run("push", "ticketgate", deliveries);
            self.report.run("push", "ticketgate", publishes);
        }
        Ok(())
    }

    /// Idle sockets, on processes started for it (their heap holds nothing from the
    /// earlier phases, in particular no argon2 blocks from logins): RSS per socket,
    /// then the handshake rate while holding them.
    async fn phase_idle(&mut self) -> anyhow::Result<()> {
        let [low, mid, max] = self.sizes.idle_levels;
        status("starting node-i (fresh heap) for the idle sockets");
        let node_i = Node::start(&self.binary, &self.dir, "node-i", &self.env).await?;
        self.report.nodes.push(settings(
            &node_i,
            "idle sockets and handshakes while holding them; a fresh process, same settings as node-a",
        ));
        let i = Arc::new(Dialer::new(node_i.public));
        let pid = node_i.pid();

        // Tickets are minted on node-a and admitted on node-i, so node-i's RSS grows
        // by admissions only.
        let mut held = HeldSockets::default();
        let before = host::settled_rss_kib(pid, Duration::from_millis(500)).await?;
        status(format!("idle: {max} sockets on node-i"));
        let figures = idle::hold_ticketgate(
            &format!("hold {max} sockets"),
            &self.devices,
            i.clone(),
            max,
            OPEN_CONCURRENCY,
            &mut held,
        )
        .await;
        self.report.run("idle", "ticketgate", figures);
        let after = host::settled_rss_kib(pid, Duration::from_secs(1)).await?;
        let memory = memory_row("ticketgate", held.still_open(), before, after);
        self.report.memory.push(memory.clone());
        self.found.rss_ticketgate = Some(memory);

        // Handshakes on node-i (mint there too) while holding max, mid, then low sockets.
        let on_i = self
            .devices
            .iter()
            .map(|d| d.on(&node_i.public_url()))
            .collect::<anyhow::Result<Vec<Device>>>()?;
        let plan = Plan {
            duration: self.sizes.idle_run,
            ..self.sizes.plan()
        };
        let mut rows = Vec::new();
        for level in [max, mid, low] {
            held.truncate(level).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            status(format!(
                "handshake on node-i while holding {} idle sockets",
                held.still_open()
            ));
            let cpu = CpuMeter::start(Some(pid));
            let figures = handshake::ticketgate(
                &format!("handshake with {level} idle"),
                &on_i,
                i.clone(),
                &plan,
            )
            .await;
            rows.push(GrowthRow {
                work: "idle sockets held".into(),
                level: level.to_string(),
                figure: "handshake rate".into(),
                shown: format!("{:.0}/s", figures.rate),
                value: Some(figures.rate),
            });
            self.report.run_cpu("idle", "ticketgate", figures, &cpu);
        }
        rows.reverse();
        self.report.growth.extend(rows);
        if held.still_open() < low {
            self.report.note(format!(
                "idle: node-i closed {} of the held sockets",
                low - held.still_open()
            ));
        }
        held.release().await;
        drop(node_i);

        status(format!("idle: {max} sockets on a fresh baseline"));
        let baseline = Baseline::start(&self.dir, "baseline-idle").await?;
        let pid = baseline.pid();
        let dialer = Arc::new(Dialer::new(baseline.addr));
        let mut held = HeldSockets::default();
        let before = host::settled_rss_kib(pid, Duration::from_millis(500)).await?;
        let figures = idle::hold_baseline(
            &format!("hold {max} sockets"),
            dialer,
            max,
            OPEN_CONCURRENCY,
            &mut held,
        )
        .await;
        self.report.run("idle", "baseline", figures);
        let after = host::settled_rss_kib(pid, Duration::from_secs(1)).await?;
        let memory = memory_row("baseline", held.still_open(), before, after);
        held.release().await;
        self.report.memory.push(memory.clone());
        self.found.rss_baseline = Some(memory);
        Ok(())
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

fn memory_row(target: &str, sockets: usize, before: u64, after: u64) -> Memory {
    let per_socket = if sockets == 0 {
        0.0
    } else {
        after.saturating_sub(before) as f64 / sockets as f64
    };
    Memory {
        target: target.to_owned(),
        sockets: sockets as u64,
        rss_before_kib: before,
        rss_after_kib: after,
        per_socket_kib: per_socket,
    }
}

fn na_row(work: &str, level: &str, figure: &str) -> GrowthRow {
    GrowthRow {
        work: work.to_owned(),
        level: level.to_owned(),
        figure: figure.to_owned(),
        shown: "n/a".into(),
        value: None,
    }
}

fn latency_row(work: &str, level: &str, figure: &str, figures: &Figures) -> GrowthRow {
    match figures.latency {
        Some(l) => GrowthRow {
            work: work.to_owned(),
            level: level.to_owned(),
            figure: figure.to_owned(),
            shown: format!("{} / {}", fmt_us(l.p50_us), fmt_us(l.p99_us)),
            value: Some(l.p99_us as f64 / 1000.0),
        },
        None => na_row(work, level, figure),
    }
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

impl Bench {
    fn compose_bar(&mut self) {
        let f = &self.found;
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
        self.report.bar = rows;

        // The store behind admission, as cost growing with work: the same admit rounds
        // with a Redis round trip (node-a) and without one (node-e).
        for (level, measured) in [
            ("embedded", self.found.admit_embedded.as_ref()),
            ("Redis", self.found.admit.as_ref()),
        ] {
            let spread = measured.and_then(Interleaved::spread);
            self.report.growth.push(GrowthRow {
                work: "store behind admission".into(),
                level: level.into(),
                figure: "admit rate / baseline".into(),
                shown: spread.as_ref().map_or("n/a".to_owned(), RatioSpread::shown),
                value: spread.map(|s| s.median),
            });
        }
    }
}
