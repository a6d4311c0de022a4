//! `admit`: pre-minted tickets, connect only (socket → upgrade → welcome → close). The
//! tickets are minted beforehand (that run gives the mint figures), so this measures
//! the admission path alone: one Redis round trip per socket.
//!
//! Returns the tickets it consumed, for the `replay` scenario.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{admit_spread, Plan};
use crate::redis_stats::{MonitorCounts, RedisStats};
use crate::stats::{Budget, Figures, Recorder};
use crate::target::{mint_many, Device, Minted};
use crate::ws::{self, Dialer};

/// Operations in flight during a round-trip probe.
const PROBE_CONCURRENCY: usize = 4;
/// How long the probe listens to the nodes' own traffic before the operations: longer
/// than ticketgate's hub heartbeat (2 s), so that every periodic command shows.
const BACKGROUND_WINDOW: Duration = Duration::from_millis(2_500);
/// Time allowed to each half of a probe.
const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// Admits each ticket once (at most `plan.max_ops`, within `plan.duration`).
pub async fn run(
    label: &str,
    tickets: Arc<Vec<Minted>>,
    dialer: Arc<Dialer>,
    plan: &Plan,
) -> (Figures, Vec<Minted>) {
    let max = plan.max_ops.min(tickets.len() as u64);
    let budget = Budget::new(label, plan.duration, max);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let (budget, dialer, tickets, next) = (
                budget.clone(),
                dialer.clone(),
                tickets.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut record = Recorder::new();
                let mut consumed = Vec::new();
                while budget.take() {
                    let Some(minted) = tickets.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let started = Instant::now();
                    match dialer.admit(&minted.device_id, &minted.ticket).await {
                        Ok(socket) => {
                            record.ok(started.elapsed());
                            consumed.push(minted.clone());
                            ws::close(socket).await;
                        }
                        Err(e) => record.error_with(e.kind(), &e),
                    }
                }
                (record, consumed)
            })
        })
        .collect();
    let mut record = Recorder::new();
    let mut consumed = Vec::new();
    for task in tasks {
        if let Ok((r, c)) = task.await {
            record.merge(&r);
            consumed.extend(c);
        }
    }
    (record.figures(label, budget.finish()), consumed)
}

/// Round trips seen by a `MONITOR` probe: a few mints, then admitting their tickets.
pub struct RoundTrips {
    /// Client commands while nothing ran (the nodes' own heartbeats).
    pub background: MonitorCounts,
    /// Commands seen while minting, and how many mints succeeded.
    pub mint: (MonitorCounts, u64),
    /// Commands seen while admitting (and closing), and how many admissions succeeded.
    pub admit: (MonitorCounts, u64),
}

/// Runs the probe with `ops` operations of each kind, a few at a time (`MONITOR` slows
/// Redis down, so this is kept apart from the measured runs).
///
/// # Errors
/// When `MONITOR` cannot be started.
pub async fn probe_round_trips(
    redis: &RedisStats,
    devices: &[Device],
    dialer: Arc<Dialer>,
    ops: usize,
) -> anyhow::Result<RoundTrips> {
    let monitor = redis.monitor()?;
    tokio::time::sleep(BACKGROUND_WINDOW).await;
    let background = monitor.finish();

    let monitor = redis.monitor()?;
    let (tickets, minted) =
        mint_many("probe: mint", devices, ops, PROBE_CONCURRENCY, PROBE_LIMIT).await;
    let mint = (monitor.finish(), minted.ok);

    let monitor = redis.monitor()?;
    let (sockets, admitted) = admit_spread(
        "probe: admit",
        Arc::new(tickets),
        std::slice::from_ref(&dialer),
        PROBE_CONCURRENCY,
    )
    .await;
    for socket in sockets {
        ws::close(socket).await;
    }
    // Let the nodes finish what closing the sockets costs them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admit = (monitor.finish(), admitted.ok_count());
    Ok(RoundTrips {
        background,
        mint,
        admit,
    })
}
