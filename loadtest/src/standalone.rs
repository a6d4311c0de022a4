//! One scenario against a deployment that is already running (`flood <scenario>
//! --target URL ...`). The users must exist: `<prefix>0`, `<prefix>1`, ... (two devices
//! each: web and mobile), plus `<prefix>kick` and `<prefix>push` for those scenarios,
//! all with the same password. The deployment's own limits apply: raise
//! `TICKETGATE_RATE_*` for rate runs, or expect `rate_limited` in the errors.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use ticketgate_sdk::ClientType;

use crate::host;
use crate::progress::status;
use crate::redis_stats::RedisStats;
use crate::report::{Memory, Report};
use crate::scenarios::idle::{self, HeldSockets};
use crate::scenarios::kick::{self, KickSetup};
use crate::scenarios::mint_flood::{self, FloodPlan};
use crate::scenarios::push::{self, PushSetup};
use crate::scenarios::{admit, conn_storm, forged, handshake, replay, Plan};
use crate::target::{self, login, mint_many, Admin, Device, Users};
use crate::ws::Dialer;

/// The bounds and output of a run, shared by every single-scenario command.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// How long each run lasts at most (`500ms`, `10s`, `2m`).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Workers of a rate run.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Operations per run at most.
    #[arg(long, default_value_t = 100_000)]
    max_ops: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl RunArgs {
    fn plan(&self) -> Plan {
        Plan {
            duration: self.duration,
            max_ops: self.max_ops,
            concurrency: self.concurrency,
        }
    }

    /// Prints `report`, and writes it as JSON when `--json` asked for it.
    fn finish(&self, report: &Report) -> anyhow::Result<()> {
        report.print();
        if let Some(path) = &self.json {
            report.write_json(path)?;
        }
        Ok(())
    }
}

/// Options shared by the single-scenario commands.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Public URL of a ticketgate node (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Admin URL of a node (kick, push).
    #[arg(long)]
    admin: Option<String>,
    /// Admin bearer key.
    #[arg(long, env = "FLOOD_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Another node of the same deployment (public URL), repeatable: kick puts the
    /// sockets there, push spreads them over the target and the peers.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Users are `<prefix>0`, `<prefix>1`, ...
    #[arg(long, default_value = "u")]
    users_prefix: String,
    /// How many `<prefix>N` users exist (each gives two devices: web and mobile).
    #[arg(long, default_value_t = 51)]
    users: usize,
    /// Their password.
    #[arg(long, env = "FLOOD_PASSWORD", hide_env_values = true)]
    password: String,
    #[command(flatten)]
    run: RunArgs,
    /// The deployment's Redis (`redis://IP:PORT`), to count commands per operation.
    #[arg(long)]
    redis: Option<String>,
    /// The server's process id (same machine), to measure its RSS per idle socket.
    #[arg(long)]
    server_pid: Option<u32>,
    /// idle: sockets to hold.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// conn-storm: clients connecting at once.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// mint-flood: requests per second from the flooding device.
    #[arg(long, default_value_t = 2_000)]
    flood_rate: u32,
    /// mint-flood: honest devices.
    #[arg(long, default_value_t = 100)]
    honest: usize,
    /// kick: how many kicks of a user with one socket (then 3 × 100 and 1 × 1000
    /// sockets).
    #[arg(long, default_value_t = 10)]
    kick_reps: usize,
}

/// Options of `flood plain`: no users, no Redis, just a server address.
#[derive(Args, Debug, Clone)]
pub struct PlainArgs {
    /// URL of a plain WebSocket server that sends a welcome frame (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:9099")]
    target: String,
    #[command(flatten)]
    run: RunArgs,
}

/// `flood plain`: the baseline's handshake loop against `--target`.
pub async fn plain(args: PlainArgs) -> anyhow::Result<()> {
    let fd = host::raise_fd_limit(0);
    let dialer = Arc::new(Dialer::new(target::socket_addr(&args.target)?));
    let mut report = Report::new("plain", Some(fd));
    let figures = handshake::baseline("connect + welcome + close", dialer, &args.run.plan()).await;
    report.run("handshake", "plain", figures);
    args.run.finish(&report)
}

/// What every single-scenario command sets up.
struct Ctx {
    args: TargetArgs,
    report: Report,
    dialer: Arc<Dialer>,
    redis: Option<RedisStats>,
    users: Users,
}

impl Ctx {
    fn new(args: TargetArgs, mode: &str, sockets: u64) -> anyhow::Result<Ctx> {
        let fd = host::raise_fd_limit(sockets);
        let addr = target::socket_addr(&args.target)?;
        let redis = args
            .redis
            .as_deref()
            .map(RedisStats::from_url)
            .transpose()?;
        let users = Users {
            prefix: args.users_prefix.clone(),
            count: args.users,
            password: args.password.clone(),
        };
        Ok(Ctx {
            report: Report::new(mode, Some(fd)),
            dialer: Arc::new(Dialer::new(addr)),
            redis,
            users,
            args,
        })
    }

    fn plan(&self) -> Plan {
        self.args.run.plan()
    }

    async fn devices(&self, wanted: usize) -> anyhow::Result<Vec<Device>> {
        let n = wanted.clamp(1, self.users.count * 2);
        status(format!("logging in {n} devices"));
        target::login_devices(&self.args.target, &self.users, n).await
    }

    fn admin(&self) -> anyhow::Result<Admin> {
        let (Some(url), Some(key)) = (&self.args.admin, &self.args.admin_key) else {
            bail!("this scenario needs --admin URL and --admin-key KEY");
        };
        target::socket_addr(url)?;
        Admin::new(url, key)
    }

    fn snapshot(&self) -> Option<crate::redis_stats::Snapshot> {
        self.redis.as_ref().and_then(|r| r.snapshot().ok())
    }

    fn cost(&mut self, snap: Option<crate::redis_stats::Snapshot>, op: &str, ops: u64) {
        if let Some(cost) = snap.and_then(|s| s.cost(op, ops).ok()) {
            self.report.redis.push(cost);
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        self.args.run.finish(&self.report)
    }
}

/// `flood handshake`.
pub async fn handshake(args: TargetArgs) -> anyhow::Result<()> {
    let mut ctx = Ctx::new(args, "handshake", 0)?;
    let devices = ctx.devices(ctx.args.run.concurrency).await?;
    let snap = ctx.snapshot();
    let figures = handshake::ticketgate(
        "mint + socket + welcome + close",
        &devices,
        ctx.dialer.clone(),
        &ctx.plan(),
    )
    .await;
    ctx.cost(snap, "handshake (mint + admit)", figures.ok);
    ctx.report.run("handshake", "ticketgate", figures);
    ctx.finish()
}

/// Mints for a run's length, then admits: the shared start of `admit` and `replay`.
async fn mint_then_admit(ctx: &mut Ctx) -> anyhow::Result<Vec<target::Minted>> {
    let devices = ctx.devices(ctx.args.run.concurrency).await?;
    let plan = ctx.plan();
    let snap = ctx.snapshot();
    let (tickets, mint) = mint_many(
        "mint (keep-alive)",
        &devices,
        usize::try_from(plan.max_ops).unwrap_or(usize::MAX),
        plan.concurrency,
        plan.duration,
    )
    .await;
    ctx.cost(snap, "mint", mint.ok);
    ctx.report.run("mint", "ticketgate", mint);
    let snap = ctx.snapshot();
    let (figures, consumed) = admit::run(
        "socket + welcome + close",
        Arc::new(tickets),
        ctx.dialer.clone(),
        &plan,
    )
    .await;
    ctx.cost(snap, "admit", figures.ok);
    ctx.report.run("admit", "ticketgate", figures);
    if let Some(redis) = ctx.redis {
        let probe = admit::probe_round_trips(&redis, &devices, ctx.dialer.clone(), 100).await?;
        for cost in &mut ctx.report.redis {
            match cost.op.as_str() {
                "mint" => {
                    *cost = cost.clone().with_round_trips(
                        &probe.mint.0,
                        probe.mint.1,
                        &probe.background,
                    )
                }
                "admit" => {
                    *cost = cost.clone().with_round_trips(
                        &probe.admit.0,
                        probe.admit.1,
                        &probe.background,
                    )
                }
                _ => {}
            }
        }
    }
    Ok(consumed)
}

/// `flood admit`.
pub async fn admit(args: TargetArgs) -> anyhow::Result<()> {
    let mut ctx = Ctx::new(args, "admit", 0)?;
    mint_then_admit(&mut ctx).await?;
    ctx.finish()
}

/// `flood replay`.
pub async fn replay(args: TargetArgs) -> anyhow::Result<()> {
    let mut ctx = Ctx::new(args, "replay", 0)?;
    let consumed = mint_then_admit(&mut ctx).await?;
    let snap = ctx.snapshot();
    let figures = replay::run(
        "consumed tickets again",
        Arc::new(consumed),
        ctx.dialer.clone(),
        &ctx.plan(),
    )
    .await;
    ctx.cost(snap, "replay", figures.ok + figures.error_count());
    ctx.report.run("replay", "ticketgate", figures);
    ctx.finish()
}

/// `flood forged`.
pub async fn forged(args: TargetArgs) -> anyhow::Result<()> {
    let mut ctx = Ctx::new(args, "forged", 0)?;
    let devices = ctx.devices(1).await?;
    let sample = forged::Sample::mint(&devices[0]).await?;
    let snap = ctx.snapshot();
    let forged = forged::run("forged", sample, ctx.dialer.clone(), &ctx.plan()).await;
    ctx.cost(snap, "forged", forged.all.ok + forged.all.error_count());
    ctx.report.run("forged", "ticketgate", forged.all);
    for figures in forged.by_kind {
        ctx.report.run("forged", "ticketgate", figures);
    }
    ctx.finish()
}

/// `flood mint-flood`.
pub async fn mint_flood(args: TargetArgs) -> anyhow::Result<()> {
    let mut ctx = Ctx::new(args, "mint-flood", 0)?;
    let honest = ctx.args.honest;
    let devices = ctx.devices(honest + 1).await?;
    if devices.len() < 2 {
        bail!("mint-flood needs at least 2 devices (one user)");
    }
    let (flooder, honest) = devices.split_last().context("no devices")?;
    let plan = FloodPlan {
        honest_interval: Duration::from_secs(2),
        flood_rate: ctx.args.flood_rate,
        phase: ctx.args.run.duration,
    };
    let outcome = mint_flood::run(honest, flooder, &plan).await;
    for figures in [outcome.unloaded, outcome.loaded, outcome.flood] {
        ctx.report.run("mint-flood", "ticketgate", figures);
    }
    ctx.finish()
}

/// `flood conn-storm` (cold; the drain variants need `bench`, which owns the nodes).
pub async fn conn_storm(args: TargetArgs) -> anyhow::Result<()> {
    let clients = args.clients;
    let mut ctx = Ctx::new(args, "conn-storm", clients as u64 * 2)?;
    let devices = ctx.devices(ctx.users.count * 2).await?;
    let figures = conn_storm::cold(
        "cold: mint + connect at once",
        &devices,
        ctx.dialer.clone(),
        clients,
    )
    .await;
    ctx.report.run("conn-storm", "ticketgate", figures);
    ctx.report.note(
        "the drain variants (with and without resume tickets) stop a node: run `flood bench`",
    );
    ctx.finish()
}

/// `flood idle`.
pub async fn idle(args: TargetArgs) -> anyhow::Result<()> {
    let sockets = args.sockets;
    let mut ctx = Ctx::new(args, "idle", sockets as u64)?;
    let devices = ctx.devices(ctx.users.count * 2).await?;
    let rss_before = match ctx.args.server_pid {
        Some(pid) => Some(host::settled_rss_kib(pid, Duration::from_millis(500)).await?),
        None => None,
    };
    let mut held = HeldSockets::default();
    let figures = idle::hold_ticketgate(
        &format!("hold {sockets} sockets"),
        &devices,
        ctx.dialer.clone(),
        sockets,
        ctx.args.run.concurrency,
        &mut held,
    )
    .await;
    ctx.report.run("idle", "ticketgate", figures);
    if let (Some(pid), Some(before)) = (ctx.args.server_pid, rss_before) {
        let after = host::settled_rss_kib(pid, Duration::from_secs(1)).await?;
        let per_socket = after.saturating_sub(before) as f64 / held.len().max(1) as f64;
        ctx.report.memory.push(Memory {
            target: "ticketgate".into(),
            sockets: held.len() as u64,
            rss_before_kib: before,
            rss_after_kib: after,
            per_socket_kib: per_socket,
        });
    } else {
        ctx.report
            .note("pass --server-pid PID to measure the server's RSS per socket");
    }
    status(format!(
        "holding {} sockets for {:?}",
        held.len(),
        ctx.args.run.duration
    ));
    tokio::time::sleep(ctx.args.run.duration).await;
    if held.still_open() < held.len() {
        ctx.report.note(format!(
            "the server closed {} of {} held sockets",
            held.len() - held.still_open(),
            held.len()
        ));
    }
    held.release().await;
    ctx.finish()
}

/// `flood kick`.
pub async fn kick(args: TargetArgs) -> anyhow::Result<()> {
    let mut ctx = Ctx::new(args, "kick", 2_000)?;
    let admin = ctx.admin()?;
    let nodes = peer_dialers(&ctx.args.peers)?;
    let socket_nodes = if nodes.is_empty() {
        vec![ctx.dialer.clone()]
    } else {
        nodes
    };
    let user = ctx.users.kick_user();
    let setup = KickSetup {
        public_url: &ctx.args.target,
        user: &user,
        password: &ctx.users.password,
        admin: &admin,
        socket_nodes: &socket_nodes,
    };
    for (size, reps) in [(1, ctx.args.kick_reps.max(1)), (100, 3), (1_000, 1)] {
        status(format!("kick: {reps} × a user with {size} sockets"));
        let label = format!("{size} sockets");
        match kick::run(&label, &setup, size, reps).await? {
            Some(figures) => ctx.report.run("kick", "ticketgate", figures),
            None => {
                ctx.report.note(
                    "kick: not available on this server (POST /admin/v1/users/{user_id}/kick answered 404)",
                );
                break;
            }
        }
    }
    ctx.finish()
}

/// `flood push`.
pub async fn push(args: TargetArgs) -> anyhow::Result<()> {
    let mut ctx = Ctx::new(args, "push", 1_000)?;
    let admin = ctx.admin()?;
    let mut nodes = vec![ctx.dialer.clone()];
    nodes.extend(peer_dialers(&ctx.args.peers)?);
    let user = ctx.users.push_user();
    let device = login(
        &ctx.args.target,
        &user,
        &ctx.users.password,
        ClientType::Web,
    )
    .await?;
    let setup = PushSetup {
        device: &device,
        user: &user,
        admin: &admin,
    };
    let sockets = 60;
    for count in 1..=nodes.len() {
        let label = format!("latency: {sockets} sockets on {count} node(s)");
        match push::latency(
            &label,
            &setup,
            &nodes[..count],
            sockets,
            100,
            Duration::from_millis(10),
        )
        .await?
        {
            Some(figures) => ctx.report.run("push", "ticketgate", figures),
            None => {
                ctx.report.note(
                    "push: not available on this server (POST /admin/v1/publish answered 404)",
                );
                return ctx.finish();
            }
        }
    }
    let plan = Plan {
        concurrency: 8,
        ..ctx.plan()
    };
    let label = format!("throughput: {sockets} sockets on {} node(s)", nodes.len());
    if let Some((deliveries, publishes)) =
        push::throughput(&label, &setup, &nodes, sockets, &plan).await?
    {
        ctx.report.run("push", "ticketgate", deliveries);
        ctx.report.run("push", "ticketgate", publishes);
    }
    ctx.finish()
}

fn peer_dialers(peers: &[String]) -> anyhow::Result<Vec<Arc<Dialer>>> {
    peers
        .iter()
        .map(|url| Ok(Arc::new(Dialer::new(target::socket_addr(url)?))))
        .collect()
}

/// Options of `flood upstream`: it starts its own upstream and node (release binary
/// next to `flood`), so it needs no deployment.
#[derive(Args, Debug, Clone)]
pub struct UpstreamArgs {
    /// How long the whole comparison lasts (split over alternating rounds).
    #[arg(long, default_value = "12s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Concurrent callers on each path (sockets through ticketgate, pooled
    /// connections direct).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Calls per path at most.
    #[arg(long, default_value_t = 10_000_000)]
    max_ops: u64,
}

/// `flood upstream`: see [`crate::scenarios::upstream`].
///
/// # Errors
/// When the node does not start or the sockets cannot be opened; the bar failing is
/// an error too, so scripts can rely on the exit code.
pub async fn upstream(args: UpstreamArgs) -> anyhow::Result<()> {
    let binary = crate::spawn::ticketgate_binary()?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let plan = Plan {
        duration: args.duration,
        max_ops: args.max_ops,
        concurrency: args.concurrency,
    };
    let comparison = crate::scenarios::upstream::compare(&binary, dir.path(), plan).await?;
    comparison.print();
    if !comparison.passes() {
        bail!("the upstream bar is not met");
    }
    Ok(())
}
