//! `push-chaos`: nothing is lost across a reconnect (push history and recovery,
//! PROTOCOL §10), under drains, restarts and dropped sockets.
//!
//! The harness starts its own Redis and three release ticketgate nodes on it, logs in
//! `--users` users and gives each one managed SDK connection
//! ([`SessionHandle::connect_with_reconnect`]). A publisher calls
//! `POST /admin/v1/publish` for every user at `--rate` pushes per second in all, and
//! keeps each answer's `id` per user, in publish order. Meanwhile:
//! - nodes are drained (SIGTERM: their sockets get a `resume` ticket and 1001) and
//!   started again, one at a time, `--drains` times;
//! - `--kills` times a client's TCP connections are cut (its socket ends without a
//!   close frame, 1006), so it mints a fresh ticket instead of resuming.
//!
//! How clients move. The SDK talks to one base URL, so every client talks to its own
//! small TCP forwarder in the harness (a load balancer of one client): each new
//! connection goes to the client's own node (`i mod 3`) when that node is up, else to
//! the next node that is up. A node is taken out of the forwarders' table before its
//! SIGTERM and put back (with its new ports) once it is ready again. The tickets'
//! `ws_url` names the forwarder (nodes derive it from `Host`), so a resume ticket of
//! a drained node is presented to another node, as behind a real load balancer.
//!
//! Every client's pushes are checked against the publisher's list for its user: lost
//! (published, never received), duplicated, out of order, unknown ids, and
//! `recovered: false` ([`Event::PushesLost`]); all must be 0. Also measured: replay
//! latency (from a reconnect's `welcome` to the last push it replayed, i.e. published
//! before that welcome), publish throughput with history on and off (a node started with
//! `TICKETGATE_PUSH_HISTORY=0`, closed loop, alternating rounds) and Redis memory per
//! retained push (`used_memory` before and after filling fresh users' histories).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::{stream, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use ticketgate_sdk::{ClientType, ConnectOptions, Event, SessionHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::redis_stats::RedisStats;
use crate::report::{fmt_us, table};
use crate::spawn::{self, Node, RedisServer};
use crate::target::login;

/// Nodes on the one Redis.
const NODES: usize = 3;
/// Everyone's password (a benchmark value).
const PASSWORD: &str = "flood chaos password";
/// The topic of the checked pushes.
const TOPIC: &str = "chaos";
/// The topic of the throughput phase (clients ignore it).
const BENCH_TOPIC: &str = "chaos-bench";
/// Time for the last reconnects and deliveries after the last publish.
const SETTLE: Duration = Duration::from_secs(4);
/// Time allowed for every client's first welcome.
const FIRST_WELCOME: Duration = Duration::from_secs(30);
/// Users whose histories are filled for the memory figure, and pushes each (the
/// default `TICKETGATE_PUSH_HISTORY`).
const MEMORY_USERS: usize = 20;
const MEMORY_PUSHES: usize = 100;
/// Workers and round length of the throughput phase.
const THROUGHPUT_WORKERS: usize = 8;
const THROUGHPUT_ROUND: Duration = Duration::from_secs(2);
const THROUGHPUT_ROUNDS: usize = 2;

/// Options of `flood push-chaos` (it starts its own Redis and nodes).
#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// Users, one managed connection each.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Pushes per second, all users together.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long the publisher and the chaos run.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Node drains (SIGTERM, then a restart), one node at a time, spread over the run.
    #[arg(long, default_value_t = 3)]
    drains: usize,
    /// Client connections cut (socket ends with 1006: the client mints afresh).
    #[arg(long, default_value_t = 10)]
    kills: usize,
}

/// Where the forwarders send new connections: node `i`'s public address, `None` while
/// it is down.
type Table = Arc<RwLock<Vec<Option<SocketAddr>>>>;

/// One client's forwarder: its listener address and the switch that cuts its
/// connections (bumping the generation).
struct Forwarder {
    addr: SocketAddr,
    cut: watch::Sender<u64>,
}

/// Starts client `i`'s forwarder.
async fn forwarder(i: usize, table: Table) -> anyhow::Result<Forwarder> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("bind a forwarder")?;
    let addr = listener.local_addr()?;
    let (cut, cut_rx) = watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = {
                let nodes = table.read().map(|t| t.clone()).unwrap_or_default();
                (0..nodes.len()).find_map(|k| nodes[(i + k) % nodes.len()])
            };
            let Some(target) = target else { continue };
            let mut cut = cut_rx.clone();
            cut.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    Ok(Forwarder { addr, cut })
}

/// What one client saw, in order.
enum Seen {
    Welcome(Instant),
    Push(String, Instant),
    Lost,
    Closed(u16),
    ConnectFailed,
}

/// Reads a managed connection's events until `stop`.
fn watch_client(
    handle: SessionHandle,
    welcomed: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Vec<Seen>> {
    let options = ConnectOptions {
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
    };
    let mut connection = handle.connect_with_reconnect(options);
    tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let event = tokio::select! {
                _ = stop.changed() => break,
                event = connection.next() => event,
            };
            let Some(event) = event else { break };
            let now = Instant::now();
            match event {
                Event::Welcome(_) => {
                    if !seen.iter().any(|s| matches!(s, Seen::Welcome(_))) {
                        welcomed.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.push(Seen::Welcome(now));
                }
                Event::Push { id, topic, .. } if topic == TOPIC => seen.push(Seen::Push(id, now)),
                Event::PushesLost { .. } => seen.push(Seen::Lost),
                Event::Closed { code, .. } => seen.push(Seen::Closed(code)),
                Event::ConnectFailed { .. } => seen.push(Seen::ConnectFailed),
                _ => {}
            }
        }
        connection.close();
        seen
    })
}

#[derive(Deserialize)]
struct Published {
    id: String,
}

/// The admin API of whichever node is up (`admins[i]`, `None` while node `i` is down).
#[derive(Clone)]
struct Publisher {
    http: reqwest::Client,
    admins: Arc<RwLock<Vec<Option<String>>>>,
    key: String,
}

impl Publisher {
    /// Publishes through the first node that is up, starting at `prefer`; the push id.
    async fn publish(
        &self,
        prefer: usize,
        user: &str,
        topic: &str,
        seq: u64,
    ) -> anyhow::Result<String> {
        let admins = self.admins.read().map(|a| a.clone()).unwrap_or_default();
        let base = (0..admins.len())
            .find_map(|k| admins[(prefer + k) % admins.len()].clone())
            .context("no node is up")?;
        let body = json!({ "user_id": user, "topic": topic, "data": { "seq": seq, "pad": "x".repeat(64) } });
        let response = self
            .http
            .post(format!("{base}/admin/v1/publish"))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("publish answered {}", response.status());
        }
        Ok(response.json::<Published>().await?.id)
    }
}

/// One user's published pushes, in publish order: `(id, when the answer came)`.
type Log = Vec<(String, Instant)>;

/// Publishes to `users` (this task's share) at `rate` per second until `until`; the
/// logs, the failed calls, and the calls' latencies added to `took`.
async fn publish_share(
    publisher: Publisher,
    users: Vec<(usize, String)>,
    rate: f64,
    until: Instant,
    mut took: Histogram<u64>,
    offset: Duration,
) -> (Vec<(usize, Log)>, u64, Histogram<u64>) {
    // Each task starts at its own offset within the period, so the total rate is
    // spread evenly instead of arriving in bursts of one call per user.
    tokio::time::sleep(offset).await;
    let mut logs: Vec<(usize, Log)> = users.iter().map(|(i, _)| (*i, Vec::new())).collect();
    let mut errors = 0;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    while Instant::now() < until {
        tick.tick().await;
        let k = (n as usize) % users.len();
        let (i, user) = &users[k];
        let sent = Instant::now();
        match publisher.publish(*i, user, TOPIC, n).await {
            Ok(id) => {
                let _ = took.record(sent.elapsed().as_micros() as u64);
                logs[k].1.push((id, Instant::now()));
            }
            Err(_) => errors += 1,
        }
        n += 1;
    }
    (logs, errors, took)
}

/// The verdict of one client's record against its user's log.
#[derive(Default, Debug, Clone, Copy)]
struct Check {
    published: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    unknown: u64,
    pushes_lost: u64,
    reconnects: u64,
    closes_1001: u64,
    closes_1006: u64,
    connect_failures: u64,
}

impl Check {
    fn add(&mut self, o: &Check) {
        self.published += o.published;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unknown += o.unknown;
        self.pushes_lost += o.pushes_lost;
        self.reconnects += o.reconnects;
        self.closes_1001 += o.closes_1001;
        self.closes_1006 += o.closes_1006;
        self.connect_failures += o.connect_failures;
    }

    fn zeros(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.unknown + self.pushes_lost == 0
    }
}

/// Compares a client's record with its user's log; replay latencies go to `replay`.
fn check(log: &Log, seen: &[Seen], replay: &mut Histogram<u64>) -> Check {
    let index: HashMap<&str, usize> = log
        .iter()
        .enumerate()
        .map(|(k, (id, _))| (id.as_str(), k))
        .collect();
    let mut got = vec![0u32; log.len()];
    let mut c = Check {
        published: log.len() as u64,
        ..Check::default()
    };
    let mut newest: Option<usize> = None;
    // The current reconnect's welcome and the last push it replayed.
    let mut welcome: Option<(Instant, Option<Instant>)> = None;
    let flush = |w: Option<(Instant, Option<Instant>)>, h: &mut Histogram<u64>| {
        if let Some((at, Some(last))) = w {
            let _ = h.record(last.duration_since(at).as_micros() as u64);
        }
    };
    let mut first = true;
    for s in seen {
        match s {
            Seen::Welcome(at) => {
                flush(welcome.take(), replay);
                if !first {
                    c.reconnects += 1;
                    welcome = Some((*at, None));
                }
                first = false;
            }
            Seen::Push(id, at) => {
                c.received += 1;
                let Some(&k) = index.get(id.as_str()) else {
                    c.unknown += 1;
                    continue;
                };
                got[k] += 1;
                if got[k] > 1 {
                    c.duplicated += 1;
                    continue;
                }
                if newest.is_some_and(|n| k < n) {
                    c.out_of_order += 1;
                }
                newest = Some(newest.map_or(k, |n| n.max(k)));
                if let Some((w_at, last)) = &mut welcome {
                    if log[k].1 < *w_at {
                        *last = Some(*at);
                    }
                }
            }
            Seen::Lost => c.pushes_lost += 1,
            Seen::Closed(1001) => c.closes_1001 += 1,
            Seen::Closed(1006) => c.closes_1006 += 1,
            Seen::Closed(_) => {}
            Seen::ConnectFailed => c.connect_failures += 1,
        }
    }
    flush(welcome, replay);
    c.lost = got.iter().filter(|&&n| n == 0).count() as u64;
    c
}

/// Publish calls per second, closed loop, through `admin` for `round`.
async fn publish_rate(publisher: &Publisher, prefer: usize, users: &[String]) -> (u64, Duration) {
    let started = Instant::now();
    let until = started + THROUGHPUT_ROUND;
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..THROUGHPUT_WORKERS)
        .map(|w| {
            let (publisher, users, done) = (publisher.clone(), users.to_vec(), done.clone());
            tokio::spawn(async move {
                let mut n = w;
                while Instant::now() < until {
                    let user = &users[n % users.len()];
                    if publisher
                        .publish(prefer, user, BENCH_TOPIC, n as u64)
                        .await
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    n += THROUGHPUT_WORKERS;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    (done.load(Ordering::Relaxed), started.elapsed())
}

/// The nodes, by slot, and how to start one again.
struct Cluster<'a> {
    binary: &'a Path,
    dir: &'a Path,
    env: Vec<(String, String)>,
    nodes: Vec<Option<Node>>,
    table: Table,
    admins: Arc<RwLock<Vec<Option<String>>>>,
    starts: usize,
}

impl Cluster<'_> {
    fn set(&self, slot: usize, node: Option<&Node>) {
        if let Ok(mut t) = self.table.write() {
            t[slot] = node.map(|n| n.public);
        }
        if let Ok(mut a) = self.admins.write() {
            a[slot] = node.map(Node::admin_url);
        }
    }

    async fn start(&mut self, slot: usize) -> anyhow::Result<()> {
        self.starts += 1;
        let name = format!("node-{slot}-{}", self.starts);
        let node = Node::start(self.binary, self.dir, &name, &self.env).await?;
        self.set(slot, Some(&node));
        self.nodes[slot] = Some(node);
        Ok(())
    }

    /// Out of the table, SIGTERM, wait for the exit, start again.
    async fn drain_and_restart(&mut self, slot: usize) -> anyhow::Result<Duration> {
        self.set(slot, None);
        let started = Instant::now();
        if let Some(mut node) = self.nodes[slot].take() {
            node.terminate()?;
            if !node.wait_exit(Duration::from_secs(15)).await {
                bail!("{} did not exit within 15 s of SIGTERM", node.name);
            }
        }
        let drained = started.elapsed();
        self.start(slot).await?;
        Ok(drained)
    }
}

/// Lines of the nodes' logs in `dir` that contain `needle`.
fn lines_in_logs(dir: &Path, needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("log"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        })
        .sum()
}

/// `flood push-chaos`: see the module docs.
///
/// # Errors
/// When Redis or a node does not start, a login fails, a client is never welcomed, or
/// a check is not zero (so scripts can rely on the exit code).
pub async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.rate == 0 {
        bail!("--users and --rate must be at least 1");
    }
    let binary = spawn::ticketgate_binary()?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let dir = dir.path();
    let redis = RedisServer::start(dir).await?;
    let redis_stats = RedisStats::at(redis.addr);
    let names: Vec<String> = (0..args.users).map(|i| format!("chaos{i}")).collect();
    spawn::add_users(&binary, &dir.join("users.toml"), &names, PASSWORD)?;
    let admin_key = format!("flood-{}", uuid::Uuid::new_v4().simple());
    let mut env = crate::bench::nodes::main_env(&redis.url(), dir, &admin_key);
    env.sort();
    let mut cluster = Cluster {
        binary: &binary,
        dir,
        env: env.clone(),
        nodes: (0..NODES).map(|_| None).collect(),
        table: Arc::new(RwLock::new(vec![None; NODES])),
        admins: Arc::new(RwLock::new(vec![None; NODES])),
        starts: 0,
    };
    for slot in 0..NODES {
        cluster.start(slot).await?;
    }
    let publisher = Publisher {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        admins: cluster.admins.clone(),
        key: admin_key.clone(),
    };

    // Clients: a forwarder each, a login through it, one managed connection.
    let mut forwarders = Vec::with_capacity(args.users);
    for i in 0..args.users {
        forwarders.push(forwarder(i, cluster.table.clone()).await?);
    }
    println!("push-chaos: logging {} users in", args.users);
    let devices: Vec<_> = stream::iter(forwarders.iter().zip(&names))
        .map(|(f, name)| {
            let url = format!("http://{}", f.addr);
            async move { login(&url, name, PASSWORD, ClientType::Web).await }
        })
        .buffered(4)
        .collect()
        .await;
    let welcomed = Arc::new(AtomicUsize::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let mut clients = Vec::with_capacity(args.users);
    for device in devices {
        let device = device?;
        let handle = SessionHandle::new(device.client, device.session);
        clients.push(watch_client(handle, welcomed.clone(), stop_rx.clone()));
    }
    let deadline = Instant::now() + FIRST_WELCOME;
    while welcomed.load(Ordering::Relaxed) < args.users {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} clients were welcomed within {FIRST_WELCOME:?}",
                welcomed.load(Ordering::Relaxed),
                args.users
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The publisher and the chaos, for the run's duration.
    println!(
        "push-chaos: {} users, {}/s for {:?}, {} drains, {} cuts",
        args.users, args.rate, args.duration, args.drains, args.kills
    );
    let started = Instant::now();
    let until = started + args.duration;
    // One publisher task per user: a user's pushes are published one after the other,
    // so their order is known, and a slow call holds up that user only.
    let share = f64::from(args.rate) / args.users as f64;
    let empty = Histogram::<u64>::new(3).context("histogram")?;
    let publishers: Vec<_> = (0..args.users)
        .map(|i| {
            let users = vec![(i, names[i].clone())];
            tokio::spawn(publish_share(
                publisher.clone(),
                users,
                share,
                until,
                empty.clone(),
                Duration::from_secs_f64(i as f64 / f64::from(args.rate)),
            ))
        })
        .collect();
    let cuts: Vec<watch::Sender<u64>> = forwarders.iter().map(|f| f.cut.clone()).collect();
    let kills = args.kills;
    let cutter = tokio::spawn(async move {
        let every = args.duration / (kills as u32 + 1);
        for k in 0..kills {
            tokio::time::sleep(every).await;
            let i = (k * 7 + 3) % cuts.len();
            cuts[i].send_modify(|g| *g += 1);
        }
    });
    let mut drain_times = Vec::new();
    let every = args.duration / (args.drains as u32 + 1);
    for d in 0..args.drains {
        let next = started + every * (d as u32 + 1);
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        drain_times.push(cluster.drain_and_restart(d % NODES).await?);
    }
    let _ = cutter.await;
    let mut logs: Vec<Log> = vec![Vec::new(); args.users];
    let mut publish_errors = 0;
    let mut publish_took = Histogram::<u64>::new(3).context("histogram")?;
    for p in publishers {
        let (share, errors, took) = p.await.context("publisher task")?;
        publish_errors += errors;
        publish_took.add(&took).context("histogram")?;
        for (i, log) in share {
            logs[i] = log;
        }
    }
    let published: usize = logs.iter().map(Vec::len).sum();
    let run_time = started.elapsed();
    tokio::time::sleep(SETTLE).await;

    // Memory per retained push: fresh users' histories filled on a quiet system.
    let before = redis_stats.used_memory()?;
    for u in 0..MEMORY_USERS {
        for n in 0..MEMORY_PUSHES {
            publisher
                .publish(0, &format!("memory{u}"), TOPIC, n as u64)
                .await?;
        }
    }
    let after = redis_stats.used_memory()?;
    let retained = (MEMORY_USERS * MEMORY_PUSHES) as f64;
    let per_push = after.saturating_sub(before) as f64 / retained;

    // Throughput with history on (node 0) and off (a node started without history).
    let mut off_env = env.clone();
    off_env.push(("TICKETGATE_PUSH_HISTORY".into(), "0".into()));
    let off_node = Node::start(&binary, dir, "node-nohistory", &off_env).await?;
    let off = Publisher {
        admins: Arc::new(RwLock::new(vec![Some(off_node.admin_url())])),
        ..publisher.clone()
    };
    let (mut on_n, mut on_t, mut off_n, mut off_t) = (0, Duration::ZERO, 0, Duration::ZERO);
    for _ in 0..THROUGHPUT_ROUNDS {
        let (n, t) = publish_rate(&publisher, 0, &names).await;
        on_n += n;
        on_t += t;
        let (n, t) = publish_rate(&off, 0, &names).await;
        off_n += n;
        off_t += t;
    }
    let on_rate = on_n as f64 / on_t.as_secs_f64().max(1e-9);
    let off_rate = off_n as f64 / off_t.as_secs_f64().max(1e-9);
    drop(off_node);

    // The checks.
    let _ = stop.send(true);
    let mut replay = Histogram::<u64>::new(3).context("histogram")?;
    let mut total = Check::default();
    for (i, client) in clients.into_iter().enumerate() {
        let seen = client.await.context("client task")?;
        total.add(&check(&logs[i], &seen, &mut replay));
    }
    let panics = spawn::panics_in_logs(dir);
    let lagged = lines_in_logs(dir, "hub fell behind");

    let replay_cell = |q: f64| {
        if replay.is_empty() {
            "-".to_owned()
        } else {
            fmt_us(replay.value_at_quantile(q))
        }
    };
    let drain_max = drain_times.iter().max().copied().unwrap_or_default();
    table(
        "push-chaos: nothing lost across a reconnect",
        &["figure", "value"],
        vec![
            vec!["users / nodes".into(), format!("{} / {NODES}", args.users)],
            vec![
                "pushes published (rate)".into(),
                format!(
                    "{published} ({:.0}/s)",
                    published as f64 / run_time.as_secs_f64()
                ),
            ],
            vec!["publish errors".into(), publish_errors.to_string()],
            vec![
                "publish call p50 / p99 / max".into(),
                format!(
                    "{} / {} / {}",
                    fmt_us(publish_took.value_at_quantile(0.5)),
                    fmt_us(publish_took.value_at_quantile(0.99)),
                    fmt_us(publish_took.max())
                ),
            ],
            vec![
                "drains + restarts (slowest exit)".into(),
                format!("{} ({} ms)", drain_times.len(), drain_max.as_millis()),
            ],
            vec!["connections cut".into(), args.kills.to_string()],
            vec![
                "reconnects (after 1001 / 1006)".into(),
                format!(
                    "{} ({} / {})",
                    total.reconnects, total.closes_1001, total.closes_1006
                ),
            ],
            vec![
                "connect attempts failed".into(),
                total.connect_failures.to_string(),
            ],
            vec!["pushes received".into(), total.received.to_string()],
            vec!["lost".into(), total.lost.to_string()],
            vec!["duplicated".into(), total.duplicated.to_string()],
            vec!["out of order".into(), total.out_of_order.to_string()],
            vec!["unknown ids".into(), total.unknown.to_string()],
            vec![
                "recovered: false (PushesLost)".into(),
                total.pushes_lost.to_string(),
            ],
            vec![
                "replay latency p50 / p99 / max".into(),
                format!(
                    "{} / {} / {} ({} replays)",
                    replay_cell(0.5),
                    replay_cell(0.99),
                    replay_cell(1.0),
                    replay.len()
                ),
            ],
            vec![
                "publish rate history on / off".into(),
                format!(
                    "{on_rate:.0}/s / {off_rate:.0}/s (ratio {:.2})",
                    on_rate / off_rate.max(1e-9)
                ),
            ],
            vec![
                "Redis memory per retained push".into(),
                format!("{per_push:.0} B ({} pushes)", retained),
            ],
        ],
    );
    if lagged > 0 {
        println!(
            "  node logs: \"hub fell behind\" {lagged}× (bus messages dropped: pushes to live \
             sockets lost)"
        );
    }
    for (log, count, first) in &panics {
        println!("  panic in {log} ({count}×): {first}");
    }
    let pass = total.zeros() && panics.is_empty();
    println!(
        "push-chaos: {} (lost {}, duplicated {}, out of order {}, unknown {}, recovered: false {})",
        if pass { "PASS" } else { "FAIL" },
        total.lost,
        total.duplicated,
        total.out_of_order,
        total.unknown,
        total.pushes_lost
    );
    drop(forwarders);
    if !pass {
        bail!("push-chaos: a check is not zero");
    }
    Ok(())
}
