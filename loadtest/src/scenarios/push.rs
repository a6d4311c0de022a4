//! `push`: fan-out latency and throughput. One user holds sockets spread over one or
//! more nodes; messages are published through one node's admin API
//! (`POST /admin/v1/publish`). Each message's `data` carries the instant it was sent,
//! so every socket measures its own delivery latency.
//!
//! - `latency`: messages published one at a time, paced, to see delivery latency
//!   without queueing;
//! - `throughput`: publishers as fast as they can for a while; the figure is deliveries
//!   (frames received by sockets) per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{admit_spread, run_workers, Plan};
use crate::stats::{Budget, Figures, Recorder};
use crate::target::{mint_many, Admin, Device};
use crate::ws::{self, Dialer, Ws};

/// The topic every message is published on.
const TOPIC: &str = "flood";
/// Time for the last deliveries to arrive after the last publish.
const DRAIN: Duration = Duration::from_millis(500);
/// Workers minting and connecting.
const CONCURRENCY: usize = 32;

/// Who receives, and where.
pub struct PushSetup<'a> {
    /// The receiving user's device (its session mints the tickets).
    pub device: &'a Device,
    /// The user id (the username).
    pub user: &'a str,
    /// The admin API messages are published through.
    pub admin: &'a Admin,
}

/// Sockets of the receiving user with their reader tasks.
struct Receivers {
    readers: Vec<JoinHandle<Recorder>>,
    stop: watch::Sender<bool>,
    received: Arc<AtomicU64>,
}

impl Receivers {
    /// Stops the readers (after a short drain) and merges their records.
    async fn finish(self) -> Recorder {
        tokio::time::sleep(DRAIN).await;
        let _ = self.stop.send(true);
        let mut record = Recorder::new();
        for r in self.readers {
            if let Ok(rec) = r.await {
                record.merge(&rec);
            }
        }
        record
    }
}

/// Opens `sockets` sockets of the user, round-robin over `nodes`.
async fn open_receivers(
    label: &str,
    setup: &PushSetup<'_>,
    nodes: &[Arc<Dialer>],
    sockets: usize,
    base: Instant,
) -> anyhow::Result<Receivers> {
    let concurrency = CONCURRENCY.min(sockets);
    let (tickets, mint) = mint_many(
        &format!("{label}: mint"),
        std::slice::from_ref(setup.device),
        sockets,
        concurrency,
        Duration::from_secs(60),
    )
    .await;
    let (opened, admitted) = admit_spread(
        &format!("{label}: connect"),
        Arc::new(tickets),
        nodes,
        concurrency,
    )
    .await;
    if opened.len() < sockets {
        anyhow::bail!(
            "{label}: only {} of {sockets} sockets opened (mint errors {:?}, connect errors {})",
            opened.len(),
            mint.errors,
            admitted.error_count()
        );
    }
    let (stop, stop_rx) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let readers = opened
        .into_iter()
        .map(|socket| tokio::spawn(read_pushes(socket, base, stop_rx.clone(), received.clone())))
        .collect();
    Ok(Receivers {
        readers,
        stop,
        received,
    })
}

/// Records the delivery latency of every push frame until told to stop.
async fn read_pushes(
    mut socket: Ws,
    base: Instant,
    mut stop: watch::Receiver<bool>,
    received: Arc<AtomicU64>,
) -> Recorder {
    let mut record = Recorder::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(sent_us) = sent_at_us(text.as_str()) {
                        let now_us = u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX);
                        record.ok(Duration::from_micros(now_us.saturating_sub(sent_us)));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    record.error("socket closed");
                    break;
                }
            }
        }
    }
    ws::close(socket).await;
    record
}

/// `data.t` of a `{"type":"push","data":{"t":..}}` frame.
fn sent_at_us(text: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    if value.get("type")?.as_str()? != "push" {
        return None;
    }
    value.get("data")?.get("t")?.as_u64()
}

fn stamp(base: Instant, seq: u64) -> serde_json::Value {
    let t = u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX);
    serde_json::json!({ "seq": seq, "t": t })
}

/// `messages` publishes, one every `pace`, to `sockets` sockets over `nodes`.
/// `Ok(None)` when the server has no publish endpoint (404).
///
/// # Errors
/// When the sockets cannot be opened or a publish call fails (other than 404).
pub async fn latency(
    label: &str,
    setup: &PushSetup<'_>,
    nodes: &[Arc<Dialer>],
    sockets: usize,
    messages: u64,
    pace: Duration,
) -> anyhow::Result<Option<Figures>> {
    let base = Instant::now();
    let receivers = open_receivers(label, setup, nodes, sockets, base).await?;
    let budget = Budget::new(
        label,
        pace * u32::try_from(messages).unwrap_or(u32::MAX) * 2,
        messages,
    );
    let mut reported: u64 = 0;
    let mut seq = 0;
    while budget.take() {
        seq += 1;
        match setup
            .admin
            .publish(setup.user, TOPIC, stamp(base, seq))
            .await
        {
            Ok(Some(delivered)) => reported += delivered,
            Ok(None) => {
                budget.finish();
                drop(receivers.finish().await);
                return Ok(None);
            }
            Err(e) => {
                budget.finish();
                drop(receivers.finish().await);
                return Err(e);
            }
        }
        tokio::time::sleep(pace).await;
    }
    let elapsed = budget.finish();
    let mut record = receivers.finish().await;
    let expected = seq * sockets as u64;
    for _ in record.ok_count()..expected {
        record.error("not delivered");
    }
    if reported < expected {
        record.error(format!(
            "publish answered {reported} delivered of {expected}"
        ));
    }
    Ok(Some(record.figures(label, elapsed)))
}

/// Publishers as fast as they can for `plan.duration`; returns the deliveries (ok =
/// frames received, with their latency) and the publish calls.
///
/// # Errors
/// As [`latency`].
pub async fn throughput(
    label: &str,
    setup: &PushSetup<'_>,
    nodes: &[Arc<Dialer>],
    sockets: usize,
    plan: &Plan,
) -> anyhow::Result<Option<(Figures, Figures)>> {
    let base = Instant::now();
    let receivers = open_receivers(label, setup, nodes, sockets, base).await?;
    let budget = Budget::new(label, plan.duration, plan.max_ops);
    let seq = Arc::new(AtomicU64::new(0));
    let missing = Arc::new(AtomicU64::new(0));
    let admin = setup.admin.clone();
    let user = setup.user.to_owned();
    let publishes = run_workers(plan.concurrency, |_| {
        let (budget, seq, missing) = (budget.clone(), seq.clone(), missing.clone());
        let (admin, user) = (admin.clone(), user.clone());
        async move {
            let mut record = Recorder::new();
            while budget.take() {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                match admin.publish(&user, TOPIC, stamp(base, n)).await {
                    Ok(Some(_)) => record.ok(started.elapsed()),
                    Ok(None) => {
                        missing.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => record.error_with("publish failed", format!("{e:#}")),
                }
            }
            record
        }
    })
    .await;
    let elapsed = budget.finish();
    let received_by_end = receivers.received.load(Ordering::Relaxed);
    let deliveries = receivers.finish().await;
    if missing.load(Ordering::Relaxed) > 0 {
        return Ok(None);
    }
    // The rate counts what arrived while publishing; the drain's late arrivals only
    // add latency samples.
    let mut delivered = deliveries.figures(format!("{label}: deliveries"), elapsed);
    delivered.rate = received_by_end as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(Some((
        delivered,
        publishes.figures(format!("{label}: publish calls"), elapsed),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_frames_carry_their_send_time() {
        let frame = r#"{"type":"push","id":"m1","topic":"flood","data":{"seq":3,"t":1234}}"#;
        assert_eq!(sent_at_us(frame), Some(1234));
        assert_eq!(sent_at_us(r#"{"type":"welcome","data":{"t":1}}"#), None);
    }
}
