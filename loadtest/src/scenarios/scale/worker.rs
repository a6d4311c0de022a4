//! `flood scale-worker`: one harness process of `flood scale` (a process may hold only
//! ~20,000 file descriptors here, so 100,000 sockets need several). It reads its
//! [`Plan`] from standard input, logs its users in through the front node, opens its
//! sockets (mint on the front node, admit on a socket node, spread evenly), answers
//! [`Answer::Opened`], then answers every [`Command::Report`] until
//! [`Command::Quit`] or the end of its input.
//!
//! Every socket has a task that reads it: pushes of [`TOPIC`] are timed, a 4503 close
//! is timed (the kick), and a 1001 close (a node draining) is followed by a reconnect
//! to another node with the `resume` ticket that came before it (a fresh mint only when
//! none came, and counted).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::wire::{now_us, Answer, Command, Opened, Plan, Report, TOPIC};
use crate::target::{login, sdk_error_kind, Device};
use crate::ws::{Dialer, Ws};
use ticketgate_sdk::ClientType;

/// Attempts per socket before it counts as not opened.
const OPEN_ATTEMPTS: usize = 3;
/// Logins in flight at once per worker (argon2 on the front node).
const LOGIN_CONCURRENCY: usize = 2;
/// Attempts per login (the front node's password queue may be full for a moment).
const LOGIN_ATTEMPTS: usize = 5;

/// What the socket tasks of this worker count.
struct Shared {
    open: Vec<AtomicU64>,
    pushes: AtomicU64,
    last_push_at: AtomicU64,
    closes_1001: AtomicU64,
    resumes_received: AtomicU64,
    resumes_used: AtomicU64,
    mints: AtomicU64,
    back: AtomicU64,
    lists: Mutex<Lists>,
}

/// The timed events since the last report, and the counted failures.
#[derive(Default)]
struct Lists {
    push_latencies_us: Vec<u64>,
    kicked_at_us: Vec<u64>,
    back_at_us: Vec<u64>,
    reconnect_failures: BTreeMap<String, u64>,
    other_closes: BTreeMap<String, u64>,
}

impl Shared {
    fn new(nodes: usize) -> Shared {
        Shared {
            open: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            pushes: AtomicU64::new(0),
            last_push_at: AtomicU64::new(0),
            closes_1001: AtomicU64::new(0),
            resumes_received: AtomicU64::new(0),
            resumes_used: AtomicU64::new(0),
            mints: AtomicU64::new(0),
            back: AtomicU64::new(0),
            lists: Mutex::new(Lists::default()),
        }
    }

    fn with_lists(&self, f: impl FnOnce(&mut Lists)) {
        if let Ok(mut lists) = self.lists.lock() {
            f(&mut lists);
        }
    }

    fn report(&self) -> Report {
        let mut report = Report {
            open_per_node: self
                .open
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            pushes: self.pushes.load(Ordering::Relaxed),
            last_push_at_us: self.last_push_at.load(Ordering::Relaxed),
            closes_1001: self.closes_1001.load(Ordering::Relaxed),
            resumes_received: self.resumes_received.load(Ordering::Relaxed),
            resumes_used: self.resumes_used.load(Ordering::Relaxed),
            mints: self.mints.load(Ordering::Relaxed),
            back: self.back.load(Ordering::Relaxed),
            ..Report::default()
        };
        self.with_lists(|lists| {
            report.push_latencies_us = std::mem::take(&mut lists.push_latencies_us);
            report.kicked_at_us = std::mem::take(&mut lists.kicked_at_us);
            report.back_at_us = std::mem::take(&mut lists.back_at_us);
            report.reconnect_failures = lists.reconnect_failures.clone();
            report.other_closes = lists.other_closes.clone();
        });
        report
    }
}

/// What a socket's task needs to reconnect.
struct Rider {
    device: Arc<Device>,
    dialers: Arc<Vec<Dialer>>,
    shared: Arc<Shared>,
    /// The socket's number: it picks the node a reconnect goes to, so that a drained
    /// node's sockets spread evenly over the others.
    index: usize,
}

/// How a socket ended.
enum End {
    /// A close frame with this code, and the last resume ticket seen before it.
    Closed(u16, Option<String>),
    /// The connection ended without a close frame.
    Eof,
}

impl Rider {
    /// Reads `ws` (on node `node`) until it ends for good: reconnects after 1001.
    async fn ride(self, mut ws: Ws, mut node: usize) {
        loop {
            let end = self.read(&mut ws).await;
            drop(ws);
            self.shared.open[node].fetch_sub(1, Ordering::Relaxed);
            let (code, resume) = match end {
                End::Closed(code, resume) => (code, resume),
                End::Eof => {
                    self.shared
                        .with_lists(|l| *l.other_closes.entry("eof".into()).or_default() += 1);
                    return;
                }
            };
            match code {
                4503 => {
                    let at = now_us();
                    self.shared.with_lists(|l| l.kicked_at_us.push(at));
                    return;
                }
                1001 => {
                    self.shared.closes_1001.fetch_add(1, Ordering::Relaxed);
                    match self.reconnect(node, resume).await {
                        Ok((next, socket)) => {
                            ws = socket;
                            node = next;
                        }
                        Err(kind) => {
                            self.shared.with_lists(|l| {
                                *l.reconnect_failures.entry(kind).or_default() += 1;
                            });
                            return;
                        }
                    }
                }
                other => {
                    self.shared.with_lists(|l| {
                        *l.other_closes.entry(other.to_string()).or_default() += 1;
                    });
                    return;
                }
            }
        }
    }

    /// Reads frames: times pushes, keeps the last resume ticket, returns at the end.
    async fn read(&self, ws: &mut Ws) -> End {
        let mut resume = None;
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Text(text)) => self.on_text(text.as_str(), &mut resume),
                Ok(Message::Close(frame)) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return End::Closed(code, resume);
                }
                Ok(_) => {}
                Err(_) => return End::Eof,
            }
        }
        End::Eof
    }

    fn on_text(&self, text: &str, resume: &mut Option<String>) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        match value.get("type").and_then(|t| t.as_str()) {
            Some("push") if value.get("topic").and_then(|t| t.as_str()) == Some(TOPIC) => {
                let at = now_us();
                let sent = value
                    .get("data")
                    .and_then(|d| d.get("sent_us"))
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(at);
                self.shared.pushes.fetch_add(1, Ordering::Relaxed);
                self.shared.last_push_at.fetch_max(at, Ordering::Relaxed);
                self.shared
                    .with_lists(|l| l.push_latencies_us.push(at.saturating_sub(sent)));
            }
            Some("resume") => {
                self.shared.resumes_received.fetch_add(1, Ordering::Relaxed);
                *resume = value
                    .get("ticket")
                    .and_then(|t| t.as_str())
                    .map(str::to_owned);
            }
            _ => {}
        }
    }

    /// Opens the socket again on another node than `from`: with `resume` when the
    /// draining node sent one, else with a fresh mint (counted).
    async fn reconnect(&self, from: usize, resume: Option<String>) -> Result<(usize, Ws), String> {
        let count = self.dialers.len();
        if count < 2 {
            return Err("no other node".into());
        }
        let next = (from + 1 + self.index % (count - 1)) % count;
        let ticket = match resume {
            Some(ticket) => {
                self.shared.resumes_used.fetch_add(1, Ordering::Relaxed);
                ticket
            }
            None => {
                self.shared.mints.fetch_add(1, Ordering::Relaxed);
                self.device
                    .client
                    .mint_ticket(&self.device.session)
                    .await
                    .map_err(|e| format!("mint {}", sdk_error_kind(&e)))?
                    .ticket
            }
        };
        let socket = self.dialers[next]
            .admit(self.device.id(), &ticket)
            .await
            .map_err(|e| e.kind())?;
        self.shared.open[next].fetch_add(1, Ordering::Relaxed);
        self.shared.back.fetch_add(1, Ordering::Relaxed);
        let at = now_us();
        self.shared.with_lists(|l| l.back_at_us.push(at));
        Ok((next, socket))
    }
}

/// Logs `name` in (web), retrying a refused or failed attempt a few times.
async fn login_patiently(front: &str, name: &str, password: &str) -> anyhow::Result<Device> {
    let mut last = None;
    for attempt in 0..LOGIN_ATTEMPTS {
        match login(front, name, password, ClientType::Web).await {
            Ok(device) => return Ok(device),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt as u64 + 1))).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("login of {name} failed")))
}

/// Mints on the front node and admits on `dialer`, a few attempts.
async fn open_one(
    device: &Device,
    dialer: &Dialer,
    errors: &Mutex<BTreeMap<String, u64>>,
    mints: &AtomicU64,
) -> Option<Ws> {
    for _ in 0..OPEN_ATTEMPTS {
        mints.fetch_add(1, Ordering::Relaxed);
        let kind = match device.client.mint_ticket(&device.session).await {
            Ok(ticket) => match dialer.admit(device.id(), &ticket.ticket).await {
                Ok(ws) => return Some(ws),
                Err(e) => e.kind(),
            },
            Err(e) => format!("mint {}", sdk_error_kind(&e)),
        };
        if let Ok(mut errors) = errors.lock() {
            *errors.entry(kind).or_default() += 1;
        }
    }
    None
}

/// One socket to open: its device, its node, its number.
struct Slot {
    device: Arc<Device>,
    node: usize,
    index: usize,
}

/// Opens every slot with `concurrency` tasks and starts a rider on each socket.
async fn open_all(
    slots: Vec<Slot>,
    dialers: &Arc<Vec<Dialer>>,
    shared: &Arc<Shared>,
    concurrency: usize,
) -> Opened {
    let started = Instant::now();
    let slots = Arc::new(slots);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::new()));
    let mints = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (slots, next, errors, mints, ok) = (
                slots.clone(),
                next.clone(),
                errors.clone(),
                mints.clone(),
                ok.clone(),
            );
            let (dialers, shared) = (dialers.clone(), shared.clone());
            tokio::spawn(async move {
                while let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let dialer = &dialers[slot.node];
                    if let Some(ws) = open_one(&slot.device, dialer, &errors, &mints).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                        shared.open[slot.node].fetch_add(1, Ordering::Relaxed);
                        let rider = Rider {
                            device: slot.device.clone(),
                            dialers: dialers.clone(),
                            shared: shared.clone(),
                            index: slot.index,
                        };
                        tokio::spawn(rider.ride(ws, slot.node));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Opened {
        ok: ok.load(Ordering::Relaxed),
        errors,
        mints: mints.load(Ordering::Relaxed),
        took_secs: started.elapsed().as_secs_f64(),
    }
}

/// Writes one answer line on standard output.
fn answer(answer: &Answer) -> anyhow::Result<()> {
    use std::io::Write as _;
    let line = serde_json::to_string(answer)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Standard input's lines, read by a thread (the harness's tokio has no `io-std`).
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `flood scale-worker`: see the module docs.
///
/// # Errors
/// When the plan cannot be read or an answer cannot be written; a failed login is
/// answered as [`Answer::Failed`] and returned.
pub async fn run() -> anyhow::Result<()> {
    crate::host::raise_fd_limit(0);
    let mut lines = stdin_lines();
    let plan: Plan = match lines.recv().await {
        Some(line) => serde_json::from_str(&line).context("read the plan")?,
        None => bail!("no plan on standard input"),
    };
    match prepare(&plan).await {
        Ok((slots, dialers, shared)) => {
            let opened = open_all(slots, &dialers, &shared, plan.concurrency).await;
            answer(&Answer::Opened(opened))?;
            while let Some(line) = lines.recv().await {
                match serde_json::from_str::<Command>(&line) {
                    Ok(Command::Report) => answer(&Answer::Report(shared.report()))?,
                    Ok(Command::Quit) => break,
                    Err(e) => eprintln!("scale-worker: unknown command {line:?}: {e}"),
                }
            }
            Ok(())
        }
        Err(e) => {
            answer(&Answer::Failed {
                error: format!("{e:#}"),
            })?;
            Err(e)
        }
    }
}

/// Logs the plan's users in and lays out the sockets: pool sockets round-robin over
/// the users, node `(i + worker index) mod nodes`; the kick user's on every node.
async fn prepare(plan: &Plan) -> anyhow::Result<(Vec<Slot>, Arc<Vec<Dialer>>, Arc<Shared>)> {
    if plan.nodes.is_empty() || plan.users.is_empty() {
        bail!("the plan has no nodes or no users");
    }
    let dialers: Arc<Vec<Dialer>> = Arc::new(plan.nodes.iter().map(|a| Dialer::new(*a)).collect());
    let shared = Arc::new(Shared::new(plan.nodes.len()));
    let devices: Vec<anyhow::Result<Device>> = futures_util::stream::iter(&plan.users)
        .map(|name| login_patiently(&plan.front, name, &plan.password))
        .buffered(LOGIN_CONCURRENCY)
        .collect()
        .await;
    let devices: Vec<Arc<Device>> = devices
        .into_iter()
        .map(|d| d.map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    let nodes = plan.nodes.len();
    let mut slots: Vec<Slot> = (0..plan.sockets)
        .map(|i| Slot {
            device: devices[i % devices.len()].clone(),
            node: (i + plan.index) % nodes,
            index: i,
        })
        .collect();
    if let Some(kick_user) = &plan.kick_user {
        let device = Arc::new(login_patiently(&plan.front, kick_user, &plan.password).await?);
        for k in 0..plan.kick_per_node * nodes {
            slots.push(Slot {
                device: device.clone(),
                node: k % nodes,
                index: plan.sockets + k,
            });
        }
    }
    Ok((slots, dialers, shared))
}
