//! `conn-storm`: N clients connecting at once, as after a deploy.
//!
//! - `cold`: N clients mint and connect at the same instant. The figure is the time
//!   until the last one is welcomed (rate = N / that time) and the spread of
//!   per-client latency.
//! - `after_drain`: N clients hold sockets on a node that is then stopped (SIGTERM: it
//!   closes every socket with 1001). Each client reconnects to a surviving node at
//!   once: with the `resume` ticket the server sent before closing (no mint round
//!   trip) when `use_resume` is set and one came, else with a freshly minted ticket.
//!   Latency is from the stop to the client's new welcome.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::progress;
use crate::stats::{Figures, Recorder};
use crate::target::{sdk_error_kind, Device};
use crate::ws::{self, Dialer, Ws};

/// A failed client: its kind (for counting) and what happened.
type Failure = (String, String);

fn failure(kind: impl Into<String>, detail: impl std::fmt::Display) -> Failure {
    (kind.into(), detail.to_string())
}

/// How long a storm may take before the clients still waiting are counted as failed.
const STORM_LIMIT: Duration = Duration::from_secs(30);

/// N clients (round-robin over `devices`) mint and connect at the same instant.
pub async fn cold(label: &str, devices: &[Device], dialer: Arc<Dialer>, clients: usize) -> Figures {
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let bar = progress::counted(label, clients as u64);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let mut device = devices[i % devices.len()].clone();
            let (dialer, mut go, bar) = (dialer.clone(), go_rx.clone(), bar.clone());
            tokio::spawn(async move {
                let start = match go.wait_for(Option::is_some).await {
                    Ok(start) => (*start).unwrap_or_else(Instant::now),
                    Err(_) => return Err(failure("not started", "the start signal was lost")),
                };
                let outcome = async {
                    let ticket = device
                        .client
                        .mint_ticket(&device.session)
                        .await
                        .map_err(|e| failure(format!("mint {}", sdk_error_kind(&e)), e))?;
                    if let Some(token) = ticket.new_access_token {
                        device.session.access_token = token;
                    }
                    dialer
                        .admit(device.id(), &ticket.ticket)
                        .await
                        .map_err(|e| failure(e.kind(), e))
                };
                let result = tokio::time::timeout(STORM_LIMIT, outcome)
                    .await
                    .unwrap_or_else(|_| Err(failure("storm limit", "not welcomed within 30 s")))
                    .map(|socket| (socket, start.elapsed()));
                bar.inc(1);
                result
            })
        })
        .collect();
    let started = Instant::now();
    let _ = go_tx.send(Some(started));
    let (record, sockets, last) = settle(tasks, clients).await;
    bar.finish_and_clear();
    close_all(sockets).await;
    record.figures(label, last.max(Duration::from_millis(1)))
}

/// What a drain storm measured.
#[derive(Debug, Clone)]
pub struct DrainOutcome {
    /// Reconnects: latency from the stop to the new welcome; elapsed = until the last.
    pub figures: Figures,
    /// `resume` frames the clients received before the close.
    pub resumes_received: u64,
    /// Reconnects that used a resume ticket.
    pub resumes_used: u64,
    /// Reconnects that minted a fresh ticket.
    pub mints: u64,
}

/// Counters shared by the clients of a drain storm.
#[derive(Default)]
struct DrainCounters {
    ready: AtomicUsize,
    resumes_received: AtomicU64,
    resumes_used: AtomicU64,
    mints: AtomicU64,
}

/// N clients on `draining`; `stop` is called once all are welcomed; each reconnects to
/// `survivor` when its socket closes.
///
/// # Errors
/// When `stop` fails.
pub async fn after_drain(
    label: &str,
    devices: &[Device],
    draining: Arc<Dialer>,
    survivor: Arc<Dialer>,
    clients: usize,
    use_resume: bool,
    stop: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<DrainOutcome> {
    let counters = Arc::new(DrainCounters::default());
    let (stop_tx, stop_rx) = watch::channel(None::<Instant>);
    let bar = progress::counted(&format!("{label}: connect"), clients as u64);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let device = devices[i % devices.len()].clone();
            let (draining, survivor) = (draining.clone(), survivor.clone());
            let (counters, stopped, bar) = (counters.clone(), stop_rx.clone(), bar.clone());
            tokio::spawn(async move {
                let client = DrainClient {
                    device,
                    counters,
                    use_resume,
                };
                let first = client.first_socket(&draining).await;
                bar.inc(1);
                let socket = first?;
                tokio::time::timeout(STORM_LIMIT, client.ride_out(socket, &survivor, stopped))
                    .await
                    .unwrap_or_else(|_| Err(failure("storm limit", "not welcomed within 30 s")))
            })
        })
        .collect();

    // Wait until every client is welcomed (or failed), then stop the node.
    let deadline = Instant::now() + STORM_LIMIT;
    while counters.ready.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    let stopped_at = Instant::now();
    let _ = stop_tx.send(Some(stopped_at));
    stop()?;

    let (record, sockets, last) = settle(tasks, clients).await;
    close_all(sockets).await;
    Ok(DrainOutcome {
        figures: record.figures(label, last.max(Duration::from_millis(1))),
        resumes_received: counters.resumes_received.load(Ordering::Relaxed),
        resumes_used: counters.resumes_used.load(Ordering::Relaxed),
        mints: counters.mints.load(Ordering::Relaxed),
    })
}

struct DrainClient {
    device: Device,
    counters: Arc<DrainCounters>,
    use_resume: bool,
}

impl DrainClient {
    async fn first_socket(&self, draining: &Dialer) -> Result<Ws, Failure> {
        let ticket = self
            .device
            .client
            .mint_ticket(&self.device.session)
            .await
            .map_err(|e| failure(format!("first mint {}", sdk_error_kind(&e)), e));
        let socket = match ticket {
            Ok(ticket) => draining
                .admit(self.device.id(), &ticket.ticket)
                .await
                .map_err(|e| failure(format!("first connect {}", e.kind()), e)),
            Err(e) => Err(e),
        };
        self.counters.ready.fetch_add(1, Ordering::Relaxed);
        socket
    }

    /// Reads until the draining node closes the socket, then reconnects to `survivor`.
    async fn ride_out(
        &self,
        mut socket: Ws,
        survivor: &Dialer,
        mut stopped: watch::Receiver<Option<Instant>>,
    ) -> Result<(Ws, Duration), Failure> {
        let mut resume = None;
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) => {
                    if let Some(ticket) = resume_ticket(text.as_str()) {
                        self.counters
                            .resumes_received
                            .fetch_add(1, Ordering::Relaxed);
                        resume = Some(ticket);
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        drop(socket);
        let stopped_at = match stopped.wait_for(Option::is_some).await {
            Ok(at) => (*at).unwrap_or_else(Instant::now),
            Err(_) => Instant::now(),
        };
        let ticket = match resume.filter(|_| self.use_resume) {
            Some(ticket) => {
                self.counters.resumes_used.fetch_add(1, Ordering::Relaxed);
                ticket
            }
            None => {
                self.counters.mints.fetch_add(1, Ordering::Relaxed);
                self.device
                    .client
                    .mint_ticket(&self.device.session)
                    .await
                    .map_err(|e| failure(format!("mint {}", sdk_error_kind(&e)), e))?
                    .ticket
            }
        };
        let socket = survivor
            .admit(self.device.id(), &ticket)
            .await
            .map_err(|e| failure(e.kind(), e))?;
        Ok((socket, stopped_at.elapsed()))
    }
}

/// The ticket of a `{"type":"resume","ticket",...}` frame.
fn resume_ticket(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    if value.get("type")?.as_str()? != "resume" {
        return None;
    }
    value.get("ticket")?.as_str().map(str::to_owned)
}

/// Waits for every client of a storm: their welcomed sockets, the record of their
/// latencies and failures, and the latency of the last one welcomed.
async fn settle(
    tasks: Vec<JoinHandle<Result<(Ws, Duration), Failure>>>,
    clients: usize,
) -> (Recorder, Vec<Ws>, Duration) {
    let mut record = Recorder::new();
    let mut sockets = Vec::with_capacity(clients);
    let mut last = Duration::ZERO;
    for task in tasks {
        match task.await {
            Ok(Ok((socket, took))) => {
                record.ok(took);
                last = last.max(took);
                sockets.push(socket);
            }
            Ok(Err((kind, detail))) => record.error_with(kind, detail),
            Err(_) => record.error("task panicked"),
        }
    }
    (record, sockets, last)
}

async fn close_all(sockets: Vec<Ws>) {
    let closing: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(ws::close(s)))
        .collect();
    for c in closing {
        let _ = c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_frames_give_their_ticket() {
        let frame = r#"{"type":"resume","ticket":"1.abc.123.def.ghi","expires_in":30}"#;
        assert_eq!(resume_ticket(frame).as_deref(), Some("1.abc.123.def.ghi"));
        assert_eq!(resume_ticket(r#"{"type":"pong"}"#), None);
        assert_eq!(resume_ticket("not json"), None);
    }
}
