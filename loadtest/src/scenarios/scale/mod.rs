//! `flood scale`: about 100,000 admitted sockets on one machine, over several node
//! processes and several harness processes (each process may hold only ~20,000 file
//! descriptors here).
//!
//! The coordinator (this module) starts Redis (or uses `--redis-url`, e.g. a Redis
//! Cluster), a **front** node that serves every login and mint and holds no socket,
//! `--nodes` socket nodes, and `--workers` copies of this executable as
//! `flood scale-worker` ([`worker`]); it speaks to them in JSON lines ([`wire`]).
//! Sockets are spread evenly over the socket nodes (every ticket is minted on the
//! front node and admitted on a socket node: any node admits any node's ticket), from
//! source addresses spread over 127.0.0.2..250 (ephemeral ports are per source
//! address), and the users over the workers (one login per user).
//!
//! Then, in order, it measures:
//! - **memory**: each socket node's `VmRSS` before its first socket and with all of
//!   them, divided by its sockets (the nodes served no login: argon2's blocks are not
//!   in their heap);
//! - **push to every user**: one `POST /admin/v1/publish` per user (through the socket
//!   nodes' admin APIs in turn, 8 at a time), each push carrying its send time; the
//!   fan-out rate is pushes delivered per second from the first publish to the last
//!   delivery, and the latency is per delivered push (`--push-rounds` rounds);
//! - **kick**: a user with `--kick-per-node` sockets on every node is kicked through
//!   one node's admin API: time until every socket saw 4503;
//! - **drain**: the last socket node gets SIGTERM; its sockets get a resume ticket and
//!   1001 and reconnect, spread over the other nodes, with the resume ticket. Time until
//!   all of them are welcomed again, the mint calls (the harness's own count and
//!   `ticketgate_mints_total` of every node) and the Redis commands of the storm
//!   (`INFO commandstats` of every Redis address).
//!
//! The bar of issue 16: `--sockets` (100,000) open, a drained node's sockets all back
//! within 10 s, and no mint call.

pub mod wire;
pub mod worker;

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::host;
use crate::progress::status;
use crate::redis_stats::{delta, CommandCounts, RedisStats};
use crate::report::{fmt_us, table};
use crate::spawn::{self, Node, RedisServer};
use crate::target::Admin;
use wire::{now_us, Answer, Command, Opened, Plan, Report, TOPIC};

/// Everyone's password (a benchmark value).
const PASSWORD: &str = "flood scale password";
/// Sockets one worker holds at most: below the ~20,000 descriptors a process may
/// hold here, with room for its HTTP pools.
const SOCKETS_PER_WORKER: usize = 16_000;
/// Sockets one node may hold after a drain at most (same reason).
const SOCKETS_PER_NODE: usize = 18_500;
/// How long the workers may take to log in and open their sockets.
const OPEN_LIMIT: Duration = Duration::from_secs(900);
/// How long a push round, a kick or a drain may take before it counts as incomplete.
const PHASE_LIMIT: Duration = Duration::from_secs(60);
/// How often the coordinator asks the workers for their counters while it waits.
const POLL: Duration = Duration::from_millis(100);
/// Publish calls in flight at once in a push round.
const PUBLISHERS: usize = 8;
/// The drain bar: every socket of the drained node back within this.
const DRAIN_BAR: Duration = Duration::from_secs(10);

/// Options of `flood scale` (it starts its own nodes and workers).
#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Admitted sockets to hold in all (the kick user's come on top).
    #[arg(long, default_value_t = 100_000)]
    sockets: usize,
    /// Socket nodes (a front node for logins and mints comes on top). Default: enough
    /// that each holds at most 18,500 sockets after one of them is drained.
    #[arg(long)]
    nodes: Option<usize>,
    /// Harness worker processes. Default: enough that each holds at most 16,000.
    #[arg(long)]
    workers: Option<usize>,
    /// Users (one device each, argon2 at login): the sockets are spread over them, and
    /// "a push to every user" is one publish per user.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Sockets of the kicked user on every node.
    #[arg(long, default_value_t = 20)]
    kick_per_node: usize,
    /// Opens in flight at once, per worker.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rounds of "a push to every user".
    #[arg(long, default_value_t = 3)]
    push_rounds: usize,
    /// Use this Redis instead of starting one: `redis://IP:PORT`, or
    /// `redis-cluster://IP:PORT?node=IP:PORT&...` (commands are counted on every
    /// address named; name the primaries).
    #[arg(long)]
    redis_url: Option<String>,
    /// Keep the temp dir (node, worker and Redis logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

/// A worker process and its pipes, killed and reaped on drop. Its answers are read
/// by a thread (std pipes: the harness's tokio has no process feature) into a channel.
struct WorkerProc {
    index: usize,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    log: PathBuf,
}

impl WorkerProc {
    fn start(dir: &Path, plan: &Plan) -> anyhow::Result<WorkerProc> {
        let exe = std::env::current_exe().context("locate the flood executable")?;
        let log = dir.join(format!("scale-worker-{}.log", plan.index));
        let log_file = std::fs::File::create(&log).context("create a worker log")?;
        let mut child = spawn::clean_command(&exe)
            .arg("scale-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .context("start a scale worker")?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => (stdin, stdout),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("a scale worker has no pipes");
            }
        };
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut worker = WorkerProc {
            index: plan.index,
            child,
            stdin,
            lines,
            log,
        };
        worker.write_line(&serde_json::to_string(plan)?)?;
        Ok(worker)
    }

    fn write_line(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("write to worker {}", self.index))
    }

    fn send(&mut self, command: Command) -> anyhow::Result<()> {
        self.write_line(&serde_json::to_string(&command)?)
    }

    async fn recv(&mut self, limit: Duration) -> anyhow::Result<Answer> {
        let line = tokio::time::timeout(limit, self.lines.recv())
            .await
            .with_context(|| format!("worker {} did not answer within {limit:?}", self.index))?;
        let Some(line) = line else {
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            bail!(
                "worker {} exited; the end of {}:\n    {}",
                self.index,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            );
        };
        serde_json::from_str(&line)
            .with_context(|| format!("worker {} answered {line:?}", self.index))
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every worker's counters, added up.
#[derive(Default)]
struct Totals {
    open_per_node: Vec<u64>,
    pushes: u64,
    push_latencies_us: Vec<u64>,
    last_push_at_us: u64,
    kicked_at_us: Vec<u64>,
    closes_1001: u64,
    resumes_received: u64,
    resumes_used: u64,
    mints: u64,
    back: u64,
    back_at_us: Vec<u64>,
    reconnect_failures: BTreeMap<String, u64>,
    other_closes: BTreeMap<String, u64>,
}

impl Totals {
    fn add(&mut self, r: Report) {
        if self.open_per_node.len() < r.open_per_node.len() {
            self.open_per_node.resize(r.open_per_node.len(), 0);
        }
        for (sum, n) in self.open_per_node.iter_mut().zip(&r.open_per_node) {
            *sum += n;
        }
        self.pushes += r.pushes;
        self.push_latencies_us.extend(r.push_latencies_us);
        self.last_push_at_us = self.last_push_at_us.max(r.last_push_at_us);
        self.kicked_at_us.extend(r.kicked_at_us);
        self.closes_1001 += r.closes_1001;
        self.resumes_received += r.resumes_received;
        self.resumes_used += r.resumes_used;
        self.mints += r.mints;
        self.back += r.back;
        self.back_at_us.extend(r.back_at_us);
        for (k, v) in r.reconnect_failures {
            *self.reconnect_failures.entry(k).or_default() += v;
        }
        for (k, v) in r.other_closes {
            *self.other_closes.entry(k).or_default() += v;
        }
    }

    fn open(&self) -> u64 {
        self.open_per_node.iter().sum()
    }
}

/// Asks every worker for its counters.
async fn poll(workers: &mut [WorkerProc]) -> anyhow::Result<Totals> {
    for w in workers.iter_mut() {
        w.send(Command::Report)?;
    }
    let mut totals = Totals::default();
    for w in workers.iter_mut() {
        match w.recv(Duration::from_secs(30)).await? {
            Answer::Report(r) => totals.add(r),
            other => bail!("worker {} answered {other:?} to report", w.index),
        }
    }
    Ok(totals)
}

/// Polls until `done` holds for the events gathered so far (lists accumulate across
/// polls) or `limit` passes; the gathered totals (counts are the latest).
async fn poll_until(
    workers: &mut [WorkerProc],
    limit: Duration,
    done: impl Fn(&Totals) -> bool,
) -> anyhow::Result<(Totals, bool)> {
    let deadline = Instant::now() + limit;
    let mut gathered = Totals::default();
    loop {
        let mut now = poll(workers).await?;
        now.push_latencies_us
            .splice(0..0, std::mem::take(&mut gathered.push_latencies_us));
        now.kicked_at_us
            .splice(0..0, std::mem::take(&mut gathered.kicked_at_us));
        now.back_at_us
            .splice(0..0, std::mem::take(&mut gathered.back_at_us));
        gathered = now;
        if done(&gathered) {
            return Ok((gathered, true));
        }
        if Instant::now() > deadline {
            return Ok((gathered, false));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The Redis addresses whose commands are counted: every `IP:PORT` of the URL.
fn redis_addresses(url: &str) -> Vec<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
    let first = first.split('/').next().unwrap_or(first);
    let first = first.rsplit_once('@').map_or(first, |(_, host)| host);
    let mut found: Vec<SocketAddr> = first.parse().ok().into_iter().collect();
    for pair in query.split('&') {
        if let Some(addr) = pair.strip_prefix("node=").and_then(|a| a.parse().ok()) {
            found.push(addr);
        }
    }
    found
}

/// `INFO commandstats` added up over `servers`.
fn command_counts(servers: &[RedisStats]) -> CommandCounts {
    let mut sum = CommandCounts::new();
    for s in servers {
        if let Ok(counts) = s.command_counts() {
            for (k, v) in counts {
                *sum.entry(k).or_default() += v;
            }
        }
    }
    sum
}

/// `ticketgate_mints_total` (every outcome) of the nodes whose admin APIs are given;
/// a node that does not answer counts 0.
async fn mints_total(http: &reqwest::Client, admins: &[String], key: &str) -> u64 {
    let mut total = 0.0;
    for admin in admins {
        let Ok(response) = http
            .get(format!("{admin}/metrics"))
            .bearer_auth(key)
            .send()
            .await
        else {
            continue;
        };
        let text = response.text().await.unwrap_or_default();
        total += text
            .lines()
            .filter(|l| l.starts_with("ticketgate_mints_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total as u64
}

/// `p50 / p99 / max` of latencies in µs.
fn spread(values: &[u64]) -> String {
    let Ok(mut h) = Histogram::<u64>::new(3) else {
        return "-".into();
    };
    for v in values {
        let _ = h.record(*v);
    }
    if h.is_empty() {
        return "-".into();
    }
    format!(
        "{} / {} / {}",
        fmt_us(h.value_at_quantile(0.5)),
        fmt_us(h.value_at_quantile(0.99)),
        fmt_us(h.max())
    )
}

/// The commands of a delta, most first, as `name N` (at most `top`), and their sum.
fn commands_cell(d: &CommandCounts, per: u64, top: usize) -> (u64, String) {
    let mut items: Vec<(&String, &u64)> = d.iter().filter(|(_, n)| **n > 0).collect();
    items.sort_by(|a, b| b.1.cmp(a.1));
    let total: u64 = items.iter().map(|(_, n)| **n).sum();
    let per = per.max(1) as f64;
    let text = items
        .iter()
        .take(top)
        .map(|(k, n)| format!("{k} {:.2}", **n as f64 / per))
        .collect::<Vec<_>>()
        .join(", ");
    (total, text)
}

/// `flood scale`: see the module docs.
///
/// # Errors
/// When Redis, a node or a worker does not start, a worker fails, or the bar is not
/// met (so scripts can rely on the exit code).
pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.sockets == 0 || args.users == 0 {
        bail!("--sockets and --users must be at least 1");
    }
    let nodes = args
        .nodes
        .unwrap_or_else(|| args.sockets.div_ceil(SOCKETS_PER_NODE) + 1)
        .max(2);
    let workers = args
        .workers
        .unwrap_or_else(|| args.sockets.div_ceil(SOCKETS_PER_WORKER))
        .clamp(1, args.users);
    let fd = host::raise_fd_limit(0);
    let per_node_after_drain = (args.sockets + args.kick_per_node * nodes) / (nodes - 1);
    if per_node_after_drain as u64 > fd.socket_room() {
        bail!(
            "{nodes} socket nodes would hold {per_node_after_drain} sockets each after a drain, \
             over this machine's {} file descriptors per process: pass more --nodes",
            fd.now
        );
    }
    if (args.sockets / workers) as u64 > fd.socket_room() {
        bail!(
            "{workers} workers would hold {} sockets each, over the {} file descriptors a \
             process may have here: pass more --workers",
            args.sockets / workers,
            fd.now
        );
    }
    let binary = spawn::ticketgate_binary()?;
    let temp = tempfile::tempdir().context("temporary directory")?;
    // Without --keep, `_temp` removes the directory when the run ends (and not before).
    let (dir, kept, _temp) = if args.keep {
        let dir = temp.keep();
        (dir.clone(), Some(dir), None)
    } else {
        (temp.path().to_path_buf(), None, Some(temp))
    };

    let (redis, redis_url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let r = RedisServer::start(&dir).await?;
            let url = r.url();
            (Some(r), url)
        }
    };
    let redis_stats: Vec<RedisStats> = redis_addresses(&redis_url)
        .into_iter()
        .map(RedisStats::at)
        .collect();
    if redis_stats.is_empty() {
        status(format!(
            "{redis_url}: no IP:PORT in it, so Redis commands are not counted"
        ));
    }
    let names: Vec<String> = (0..args.users).map(|i| format!("scale{i}")).collect();
    let kick_user = "scalekick".to_owned();
    let mut all_names = names.clone();
    all_names.push(kick_user.clone());
    status(format!("users file: {} users (argon2)", all_names.len()));
    spawn::add_users(&binary, &dir.join("users.toml"), &all_names, PASSWORD)?;
    let admin_key = format!("flood-{}", uuid::Uuid::new_v4().simple());
    let env = crate::bench::nodes::main_env(&redis_url, &dir, &admin_key);
    status(format!("starting the front node and {nodes} socket nodes"));
    let front = Node::start(&binary, &dir, "node-front", &env).await?;
    let mut socket_nodes = Vec::with_capacity(nodes);
    for n in 0..nodes {
        socket_nodes.push(Node::start(&binary, &dir, &format!("node-{n}"), &env).await?);
    }
    let mut rss_before = Vec::with_capacity(nodes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in &socket_nodes {
        rss_before.push(host::rss_kib(node.pid())?);
    }

    // Workers: users dealt round-robin; sockets in proportion to their users.
    status(format!(
        "{workers} workers open {} sockets ({} users; kick user: {} per node)",
        args.sockets, args.users, args.kick_per_node
    ));
    let public: Vec<SocketAddr> = socket_nodes.iter().map(|n| n.public).collect();
    let mut procs = Vec::with_capacity(workers);
    let mut planned = 0;
    for w in 0..workers {
        let users: Vec<String> = names.iter().skip(w).step_by(workers).cloned().collect();
        let sockets = args.sockets * users.len() / args.users;
        planned += sockets;
        let plan = Plan {
            index: w,
            front: front.public_url(),
            nodes: public.clone(),
            users,
            password: PASSWORD.into(),
            sockets: if w + 1 == workers {
                sockets + args.sockets - (planned)
            } else {
                sockets
            },
            concurrency: args.concurrency,
            kick_user: (w == 0).then(|| kick_user.clone()),
            kick_per_node: args.kick_per_node,
        };
        procs.push(WorkerProc::start(&dir, &plan)?);
    }
    let opening = Instant::now();
    let before_open = command_counts(&redis_stats);
    let mut opened = Opened::default();
    for w in procs.iter_mut() {
        match w.recv(OPEN_LIMIT).await? {
            Answer::Opened(o) => {
                opened.ok += o.ok;
                opened.mints += o.mints;
                opened.took_secs = opened.took_secs.max(o.took_secs);
                for (k, v) in o.errors {
                    *opened.errors.entry(k).or_default() += v;
                }
            }
            Answer::Failed { error } => bail!("worker {} failed: {error}", w.index),
            other => bail!("worker {} answered {other:?}", w.index),
        }
    }
    let open_wall = opening.elapsed();
    let open_commands = delta(&before_open, &command_counts(&redis_stats));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rss_after = Vec::with_capacity(nodes);
    for node in &socket_nodes {
        rss_after.push(host::rss_kib(node.pid())?);
    }
    let held = poll(&mut procs).await?;
    let kick_sockets = (args.kick_per_node * nodes) as u64;
    let pool_open = held.open().saturating_sub(kick_sockets);

    let (open_total, open_text) = commands_cell(&open_commands, opened.ok, 6);
    let errors_text = if opened.errors.is_empty() {
        "0".to_owned()
    } else {
        format!("{:?}", opened.errors)
    };
    table(
        &format!(
            "scale: {} sockets over {nodes} nodes, {workers} workers",
            held.open()
        ),
        &["figure", "value"],
        vec![
            vec![
                "sockets open / planned (+ kick user's)".into(),
                format!("{} / {} (+ {kick_sockets})", pool_open, args.sockets),
            ],
            vec![
                "open: wall time, rate (mint + admit each)".into(),
                format!(
                    "{:.1} s with logins, {:.1} s without, {:.0}/s",
                    open_wall.as_secs_f64(),
                    opened.took_secs,
                    opened.ok as f64 / opened.took_secs.max(1e-9)
                ),
            ],
            vec!["open failures (retried)".into(), errors_text],
            vec![
                "Redis commands per socket opened".into(),
                format!(
                    "{:.2} ({open_text})",
                    open_total as f64 / opened.ok.max(1) as f64
                ),
            ],
            vec![
                "file descriptors per process".into(),
                format!("{} (hard {})", fd.now, fd.hard),
            ],
        ],
    );

    // Memory per socket, per node and in all.
    let mut rows = Vec::new();
    let (mut sum_before, mut sum_after, mut sum_sockets) = (0, 0, 0);
    for (n, node) in socket_nodes.iter().enumerate() {
        let sockets = held.open_per_node.get(n).copied().unwrap_or(0);
        let grew = rss_after[n].saturating_sub(rss_before[n]);
        sum_before += rss_before[n];
        sum_after += rss_after[n];
        sum_sockets += sockets;
        rows.push(vec![
            node.name.clone(),
            sockets.to_string(),
            format!("{} MiB", rss_before[n] / 1024),
            format!("{} MiB", rss_after[n] / 1024),
            format!("{:.2}", grew as f64 / sockets.max(1) as f64),
        ]);
    }
    rows.push(vec![
        "all".into(),
        sum_sockets.to_string(),
        format!("{} MiB", sum_before / 1024),
        format!("{} MiB", sum_after / 1024),
        format!(
            "{:.2}",
            sum_after.saturating_sub(sum_before) as f64 / sum_sockets.max(1) as f64
        ),
    ]);
    table(
        "scale: memory per socket (VmRSS delta / sockets)",
        &["node", "sockets", "RSS before", "RSS after", "KiB/socket"],
        rows,
    );

    // A push to every user.
    let admins: Vec<Admin> = socket_nodes
        .iter()
        .map(|n| Admin::new(&n.admin_url(), &admin_key))
        .collect::<anyhow::Result<_>>()?;
    let mut rows = Vec::new();
    let mut pushed_ok = true;
    for round in 1..=args.push_rounds {
        let before = poll(&mut procs).await?;
        let expected = before.pushes + pool_open;
        let counts_before = command_counts(&redis_stats);
        let started_us = now_us();
        let started = Instant::now();
        let results: Vec<anyhow::Result<Option<u64>>> =
            futures_util::stream::iter(names.iter().enumerate())
                .map(|(u, name)| {
                    let admin = admins[u % admins.len()].clone();
                    async move {
                        let data = serde_json::json!({ "sent_us": now_us(), "round": round });
                        admin.publish(name, TOPIC, data).await
                    }
                })
                .buffer_unordered(PUBLISHERS)
                .collect()
                .await;
        let publish_wall = started.elapsed();
        let failed = results.iter().filter(|r| !matches!(r, Ok(Some(_)))).count();
        let (got, complete) = poll_until(&mut procs, PHASE_LIMIT, |t| t.pushes >= expected).await?;
        let counts = delta(&counts_before, &command_counts(&redis_stats));
        let delivered = got.pushes - before.pushes;
        let span_us = got.last_push_at_us.saturating_sub(started_us).max(1);
        let (total, text) = commands_cell(&counts, names.len() as u64, 4);
        pushed_ok &= complete && failed == 0;
        rows.push(vec![
            round.to_string(),
            format!("{delivered} / {pool_open}"),
            format!("{:.0}/s", delivered as f64 * 1e6 / span_us as f64),
            spread(&got.push_latencies_us),
            format!("{} ms ({failed} failed)", publish_wall.as_millis()),
            format!("{:.1} ({text})", total as f64 / names.len() as f64),
        ]);
    }
    table(
        &format!(
            "scale: a push to every user ({} users, one publish each)",
            names.len()
        ),
        &[
            "round",
            "delivered / sockets",
            "fan-out rate",
            "latency p50 / p99 / max",
            "publish calls took",
            "Redis commands per publish",
        ],
        rows,
    );

    // A kick of a user with sockets on every node.
    let counts_before = command_counts(&redis_stats);
    let kicked_us = now_us();
    let kick = admins[0].kick(&kick_user).await?;
    let (got, kick_complete) = poll_until(&mut procs, PHASE_LIMIT, |t| {
        t.kicked_at_us.len() as u64 >= kick_sockets
    })
    .await?;
    let counts = delta(&counts_before, &command_counts(&redis_stats));
    let kick_latencies: Vec<u64> = got
        .kicked_at_us
        .iter()
        .map(|t| t.saturating_sub(kicked_us))
        .collect();
    let (total, text) = commands_cell(&counts, 1, 6);
    table(
        "scale: kick of a user with sockets on every node",
        &["figure", "value"],
        vec![
            vec![
                "sockets closed with 4503 / held".into(),
                format!(
                    "{} / {kick_sockets} on {nodes} nodes",
                    got.kicked_at_us.len()
                ),
            ],
            vec![
                "time until every socket saw 4503".into(),
                fmt_us(kick_latencies.iter().copied().max().unwrap_or(0)),
            ],
            vec!["per socket p50 / p99 / max".into(), spread(&kick_latencies)],
            vec![
                "kick answer (sessions, connections)".into(),
                kick.map_or("404".into(), |k| {
                    format!("{}, {}", k.sessions, k.connections)
                }),
            ],
            vec!["Redis commands".into(), format!("{total} ({text})")],
        ],
    );

    // A drain of one node.
    let drained = nodes - 1;
    let before = poll(&mut procs).await?;
    let on_drained = before.open_per_node.get(drained).copied().unwrap_or(0);
    let all_admins: Vec<String> = std::iter::once(front.admin_url())
        .chain(socket_nodes.iter().map(Node::admin_url))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    // Mints are counted on the nodes that stay up (the front node and the other socket
    // nodes), before and after: the drained node takes its counter with it.
    let survivors: Vec<String> = all_admins
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != drained + 1)
        .map(|(_, a)| a.clone())
        .collect();
    let mints_before = mints_total(&http, &survivors, &admin_key).await;
    let counts_before = command_counts(&redis_stats);
    let drain_us = now_us();
    let drain_started = Instant::now();
    socket_nodes[drained].terminate()?;
    let target_back = before.back + on_drained;
    let (got, drain_complete) =
        poll_until(&mut procs, PHASE_LIMIT, |t| t.back >= target_back).await?;
    let exited = socket_nodes[drained]
        .wait_exit(Duration::from_secs(30))
        .await;
    let exit_took = drain_started.elapsed();
    let storm = delta(&counts_before, &command_counts(&redis_stats));
    let mints_after = mints_total(&http, &survivors, &admin_key).await;
    let back = got.back - before.back;
    let back_latencies: Vec<u64> = got
        .back_at_us
        .iter()
        .map(|t| t.saturating_sub(drain_us))
        .collect();
    let all_back = back_latencies.iter().copied().max().unwrap_or(0);
    let harness_mints = got.mints - before.mints;
    let server_mints = mints_after.saturating_sub(mints_before);
    let (storm_total, storm_text) = commands_cell(&storm, back, 8);
    let mut per_node = got.open_per_node.clone();
    per_node.remove(drained);
    table(
        &format!("scale: drain of {} (SIGTERM)", socket_nodes[drained].name),
        &["figure", "value"],
        vec![
            vec!["sockets on the node".into(), on_drained.to_string()],
            vec![
                "back on other nodes".into(),
                format!("{back} (now per node: {per_node:?})"),
            ],
            vec!["time until all were back".into(), fmt_us(all_back)],
            vec!["per socket p50 / p99 / max".into(), spread(&back_latencies)],
            vec![
                "resume frames received / used".into(),
                format!(
                    "{} / {}",
                    got.resumes_received - before.resumes_received,
                    got.resumes_used - before.resumes_used
                ),
            ],
            vec![
                "mint calls (harness / ticketgate_mints_total)".into(),
                format!("{harness_mints} / {server_mints} (the counter stood at {mints_before})"),
            ],
            vec![
                "reconnects failed".into(),
                format!("{:?}", got.reconnect_failures),
            ],
            vec![
                "node exited after".into(),
                if exited {
                    format!("{} ms", exit_took.as_millis())
                } else {
                    "not within 30 s".into()
                },
            ],
            vec![
                "Redis commands of the storm (per socket)".into(),
                format!(
                    "{storm_total} ({:.2} per socket: {storm_text})",
                    storm_total as f64 / back.max(1) as f64
                ),
            ],
        ],
    );
    if !got.other_closes.is_empty() {
        println!("  sockets ended otherwise: {:?}", got.other_closes);
    }
    for (log, count, first) in spawn::panics_in_logs(&dir) {
        println!("  panic in {log} ({count}×): {first}");
    }

    for w in procs.iter_mut() {
        let _ = w.send(Command::Quit);
    }
    drop(procs);
    drop(socket_nodes);
    drop(front);
    drop(redis);
    if let Some(dir) = &kept {
        println!("  logs kept in {}", dir.display());
    }

    let checks = [
        ("sockets open", pool_open >= args.sockets as u64),
        ("pushes all delivered", pushed_ok),
        ("kick reached every socket", kick_complete),
        (
            "drained sockets all back",
            drain_complete && back >= on_drained,
        ),
        (
            "back within 10 s",
            Duration::from_micros(all_back) <= DRAIN_BAR,
        ),
        ("no mint call", harness_mints == 0 && server_mints == 0),
    ];
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    if failed.is_empty() {
        println!("scale: PASS");
        Ok(())
    } else {
        println!("scale: FAIL ({})", failed.join(", "));
        bail!("scale: the bar is not met: {}", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_addresses_come_from_every_url_form() {
        let one: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let two: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        assert_eq!(redis_addresses("redis://127.0.0.1:7000"), vec![one]);
        assert_eq!(redis_addresses("redis://127.0.0.1:7000/0"), vec![one]);
        assert_eq!(
            redis_addresses("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001"),
            vec![one, two]
        );
        assert!(redis_addresses("redis://localhost:7000").is_empty());
    }

    #[test]
    fn commands_are_listed_most_first_per_operation() {
        let d: CommandCounts = [
            ("evalsha".to_owned(), 20),
            ("get".to_owned(), 10),
            ("set".to_owned(), 0),
        ]
        .into_iter()
        .collect();
        let (total, text) = commands_cell(&d, 10, 4);
        assert_eq!(total, 30);
        assert_eq!(text, "evalsha 2.00, get 1.00");
    }
}
