//! `upstream`: business calls through ticketgate against the same upstream called
//! directly, with the same concurrency, in one run (PROTOCOL §9).
//!
//! The harness runs a small upstream itself (it verifies the signature of every call
//! and echoes the `data`), starts a ticketgate node (release binary, embedded store)
//! forwarding to it, and measures in alternating rounds:
//! - `direct`: each worker POSTs signed `message` events to the upstream over a
//!   kept-alive pool and waits for the answer;
//! - `through`: each worker holds one socket and sends `send` frames, waiting for the
//!   `reply` before the next.
//!
//! The figures: both rates (calls per second), their ratio, and the latency ticketgate
//! adds (p50 and p99 through minus direct). The bar: ratio ≥ 0.5, added p50 ≤ 0.5 ms.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use ticketgate_sdk::protocol::upstream_headers;
use ticketgate_sdk::signing::{signatures_equal, upstream_signature};
use ticketgate_sdk::ClientType;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{admit_spread, run_workers, Plan};
use crate::report::{fmt_us, table};
use crate::spawn::{self, Node};
use crate::stats::{Budget, Figures, Recorder};
use crate::target::{login, mint_many};
use crate::ws::{Dialer, Ws};

/// The secret shared by the harness's upstream and the node (a benchmark value).
const SECRET: &str = "flood-upstream-secret-0123456789";
/// The one user whose sockets make the calls.
const USER: &str = "upstream0";
/// Its password.
const PASSWORD: &str = "flood upstream password";
/// Rounds of each kind, alternated so the machine's drift reaches both.
const ROUNDS: usize = 3;

/// The harness's upstream: verifies, then answers `{"data": <the event's data>}`.
async fn answer(State(secret): State<Arc<Vec<u8>>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp = header(upstream_headers::TIMESTAMP).and_then(|t| t.parse::<i64>().ok());
    let signature = header(upstream_headers::SIGNATURE).unwrap_or_default();
    let verified = timestamp.is_some_and(|ts| {
        let expected = upstream_signature(&secret, ts, &body);
        signatures_equal(expected.as_bytes(), signature.as_bytes())
    });
    if !verified {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if event["event"] != "message" {
        return StatusCode::NO_CONTENT.into_response();
    }
    axum::Json(json!({ "data": event["data"] })).into_response()
}

/// Starts the upstream on a free loopback port.
///
/// # Errors
/// When it cannot bind.
pub async fn start_upstream() -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let app = axum::Router::new()
        .route("/events", axum::routing::post(answer))
        .with_state(Arc::new(SECRET.as_bytes().to_vec()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the upstream")?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// One direct call: a signed `message` event, as ticketgate would send it.
async fn call_direct(http: &reqwest::Client, url: &str, n: u64) -> Result<(), String> {
    let event = json!({
        "event": "message", "conn_id": "direct", "node_id": "harness", "user_id": USER,
        "session_id": "s", "device_id": "d", "client_type": "web",
        "id": n.to_string(), "data": {"n": n},
    });
    let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature = upstream_signature(SECRET.as_bytes(), timestamp, &body);
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header(upstream_headers::TIMESTAMP, timestamp.to_string())
        .header(upstream_headers::SIGNATURE, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let answer: Value = response.json().await.map_err(|e| format!("body: {e}"))?;
    if answer["data"]["n"] != n {
        return Err("wrong answer".into());
    }
    Ok(())
}

/// The direct round: `plan.concurrency` workers over one kept-alive pool; the record
/// and the round's time.
pub async fn direct(plan: Plan, url: &str) -> (Recorder, Duration) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_default();
    let budget = Budget::new("upstream: direct", plan.duration, plan.max_ops);
    let record = run_workers(plan.concurrency, |_| {
        let (http, url, budget) = (http.clone(), url.to_owned(), budget.clone());
        async move {
            let mut record = Recorder::new();
            let mut n = 0;
            while budget.take() {
                n += 1;
                let started = Instant::now();
                match call_direct(&http, &url, n).await {
                    Ok(()) => record.ok(started.elapsed()),
                    Err(e) => record.error(e),
                }
            }
            record
        }
    })
    .await;
    (record, budget.finish())
}

/// One call through a socket: a `send`, then frames until its `reply`.
async fn call_through(ws: &mut Ws, n: u64) -> Result<(), String> {
    let id = n.to_string();
    let frame = json!({"type": "send", "id": id, "data": {"n": n}}).to_string();
    ws.send(Message::text(frame))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        let message = ws
            .next()
            .await
            .ok_or("closed")?
            .map_err(|e| format!("read: {e}"))?;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
        if frame["id"] != id.as_str() {
            continue;
        }
        return match frame["type"].as_str() {
            Some("reply") if frame["data"]["n"] == n => Ok(()),
            Some("error") => Err(format!("error {}", frame["error"])),
            _ => Err("wrong answer".into()),
        };
    }
}

/// The round through ticketgate: one worker per socket; the record, the round's time
/// and the sockets back.
pub async fn through(plan: Plan, sockets: Vec<Ws>) -> (Recorder, Duration, Vec<Ws>) {
    let budget = Budget::new("upstream: through ticketgate", plan.duration, plan.max_ops);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut record = Recorder::new();
                let mut n = 0;
                while budget.take() {
                    n += 1;
                    let started = Instant::now();
                    match call_through(&mut ws, n).await {
                        Ok(()) => record.ok(started.elapsed()),
                        Err(e) => {
                            record.error(e);
                            break;
                        }
                    }
                }
                (record, ws)
            })
        })
        .collect();
    let mut record = Recorder::new();
    let mut sockets = Vec::new();
    for task in tasks {
        if let Ok((r, ws)) = task.await {
            record.merge(&r);
            sockets.push(ws);
        }
    }
    (record, budget.finish(), sockets)
}

/// The figures of one comparison: rates, their ratio and the added latency.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Direct calls, all rounds merged.
    pub direct: Figures,
    /// Calls through ticketgate, all rounds merged.
    pub through: Figures,
}

impl Comparison {
    /// Through-ticketgate rate over direct rate.
    pub fn ratio(&self) -> f64 {
        self.through.rate / self.direct.rate.max(1e-9)
    }

    /// Added (p50, p99) in microseconds: through minus direct.
    pub fn added_us(&self) -> Option<(i64, i64)> {
        let (t, d) = (self.through.latency?, self.direct.latency?);
        Some((
            t.p50_us as i64 - d.p50_us as i64,
            t.p99_us as i64 - d.p99_us as i64,
        ))
    }

    /// The bar: ratio ≥ 0.5 and added p50 ≤ 0.5 ms, with no errors.
    pub fn passes(&self) -> bool {
        let errors = self.direct.error_count() + self.through.error_count();
        errors == 0 && self.ratio() >= 0.5 && self.added_us().is_some_and(|(p50, _)| p50 <= 500)
    }

    /// The comparison as the bench's bar rows: the rate ratio and the added p50 (the
    /// direct call plays the baseline).
    pub fn bar_rows(&self) -> Vec<crate::report::BarRow> {
        use crate::report::{BarRow, Verdict};
        let errors = self.direct.error_count() + self.through.error_count();
        let ratio = self.ratio();
        let (p50, p99) = self.added_us().unwrap_or((i64::MAX, i64::MAX));
        let us = |f: &Figures| f.latency.map_or("-".into(), |l| fmt_us(l.p50_us));
        vec![
            BarRow {
                figure: "upstream send→reply rate (through ticketgate / direct)".into(),
                ticketgate: format!("{:.0}/s", self.through.rate),
                baseline: format!("{:.0}/s", self.direct.rate),
                ratio: format!("{ratio:.2}"),
                bar: "≥ 0.5 × direct".into(),
                verdict: Verdict::of(errors == 0 && ratio >= 0.5),
                value: Some(ratio),
                rounds: None,
            },
            BarRow {
                figure: format!("upstream added latency p50 (p99 added: {p99} µs)"),
                ticketgate: us(&self.through),
                baseline: us(&self.direct),
                ratio: "-".into(),
                bar: "≤ 0.5 ms added".into(),
                verdict: Verdict::of(errors == 0 && p50 <= 500),
                value: Some(p50 as f64 / 1000.0),
                rounds: None,
            },
        ]
    }

    /// Prints the comparison as a table.
    pub fn print(&self) {
        let row = |f: &Figures| {
            let l = f.latency;
            vec![
                f.label.clone(),
                format!("{:.0}", f.rate),
                l.map_or("-".into(), |l| fmt_us(l.p50_us)),
                l.map_or("-".into(), |l| fmt_us(l.p99_us)),
                f.error_count().to_string(),
            ]
        };
        table(
            "upstream: send → reply",
            &["path", "calls/s", "p50", "p99", "errors"],
            vec![row(&self.direct), row(&self.through)],
        );
        let (p50, p99) = self.added_us().unwrap_or((0, 0));
        println!(
            "ratio through/direct {:.2} (bar ≥ 0.50), added p50 {} µs (bar ≤ 500), added p99 {} µs: {}",
            self.ratio(),
            p50,
            p99,
            if self.passes() { "PASS" } else { "FAIL" }
        );
        for (kind, count) in self.through.errors.iter().chain(self.direct.errors.iter()) {
            println!("  error {kind}: {count}");
        }
    }
}

/// Runs the whole comparison in `dir`: the upstream, a node forwarding to it, the
/// sockets, then [`ROUNDS`] alternating rounds of each kind.
///
/// # Errors
/// When the node does not start, the login fails, or sockets cannot be opened.
pub async fn compare(binary: &Path, dir: &Path, plan: Plan) -> anyhow::Result<Comparison> {
    let (upstream, _upstream_task) = start_upstream().await?;
    let url = format!("http://{upstream}/events");
    let users_file = dir.join("users.toml");
    spawn::add_users(binary, &users_file, &[USER.to_owned()], PASSWORD)?;
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        ("TICKETGATE_DATA_DIR".into(), path(&dir.join("data"))),
        ("TICKETGATE_USERS_FILE".into(), path(&users_file)),
        ("TICKETGATE_UPSTREAM_URL".into(), url.clone()),
        ("TICKETGATE_UPSTREAM_SECRET".into(), SECRET.into()),
        ("TICKETGATE_RATE_FRAMES".into(), "1000000/s".into()),
        ("TICKETGATE_RATE_MINT_DEVICE".into(), "1000000/s".into()),
        ("TICKETGATE_RATE_CONNECT_DEVICE".into(), "1000000/s".into()),
        (
            "TICKETGATE_MAX_SOCKETS_PER_SESSION".into(),
            "1000000".into(),
        ),
        ("TICKETGATE_MAX_SOCKETS_PER_USER".into(), "1000000".into()),
        ("TICKETGATE_LOG_FORMAT".into(), "text".into()),
    ];
    env.sort();
    let node = Node::start(binary, dir, "node-u", &env).await?;
    let device = login(&node.public_url(), USER, PASSWORD, ClientType::Api)
        .await
        .or(login(&node.public_url(), USER, PASSWORD, ClientType::Web).await)?;
    let (tickets, _) = mint_many(
        "upstream: mint",
        std::slice::from_ref(&device),
        plan.concurrency,
        plan.concurrency.min(32),
        Duration::from_secs(30),
    )
    .await;
    let dialer = Arc::new(Dialer::new(node.public));
    let (mut sockets, _) =
        admit_spread("upstream: connect", Arc::new(tickets), &[dialer], 32).await;
    if sockets.len() < plan.concurrency {
        bail!(
            "only {} of {} sockets opened",
            sockets.len(),
            plan.concurrency
        );
    }
    let round = Plan {
        duration: plan.duration / ROUNDS as u32,
        max_ops: plan.max_ops / ROUNDS as u64,
        ..plan
    };
    let (mut direct_sum, mut direct_time) = (Recorder::new(), Duration::ZERO);
    let (mut through_sum, mut through_time) = (Recorder::new(), Duration::ZERO);
    for _ in 0..ROUNDS {
        let (record, took) = direct(round, &url).await;
        direct_sum.merge(&record);
        direct_time += took;
        let (record, took, back) = through(round, sockets).await;
        through_sum.merge(&record);
        through_time += took;
        sockets = back;
    }
    drop(sockets);
    Ok(Comparison {
        direct: direct_sum.figures("direct", direct_time),
        through: through_sum.figures("through ticketgate", through_time),
    })
}
