//! `mint-flood`: one device floods `POST /v1/tickets` at a fixed rate (open loop,
//! validly signed, so the server must verify each request before its per-device quota
//! refuses it) while honest devices mint at their normal rate. The figures that matter
//! are the honest devices': their success rate, and their p99 latency against the same
//! devices' p99 without the flood.
//!
//! The flood runs at a fixed offered rate (not "as fast as this machine can"), so the
//! honest figures mean the same on any machine. Run it against a node with the real
//! `TICKETGATE_RATE_MINT_DEVICE`: the point is that the quota holds the flood off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::stats::{Budget, Figures, Recorder};
use crate::target::{sdk_error_kind, Device};

/// Flood requests in flight at most; past that the harness itself is saturated and
/// counts the request as `not sent`.
const MAX_IN_FLIGHT: usize = 1024;
/// The flood's timer period; requests are sent in batches of rate × period.
const FLOOD_TICK: Duration = Duration::from_millis(1);

/// How a mint flood is run.
#[derive(Debug, Clone, Copy)]
pub struct FloodPlan {
    /// Each honest device mints once per this (default 2 s: 30/min, the default quota).
    pub honest_interval: Duration,
    /// Requests per second the flooding device offers.
    pub flood_rate: u32,
    /// Length of each phase (without, then with the flood).
    pub phase: Duration,
}

/// What a mint flood measured.
#[derive(Debug, Clone)]
pub struct FloodOutcome {
    /// Honest devices, no flood.
    pub unloaded: Figures,
    /// Honest devices during the flood.
    pub loaded: Figures,
    /// The flooding device's requests: `ok` = minted, errors by kind (`rate_limited`).
    pub flood: Figures,
}

/// Runs the unloaded phase, then the loaded one.
pub async fn run(honest: &[Device], flooder: &Device, plan: &FloodPlan) -> FloodOutcome {
    let unloaded = honest_phase("mint-flood: honest, unloaded", honest, plan).await;
    let flood_task = tokio::spawn(flood(flooder.clone(), *plan));
    let loaded = honest_phase("mint-flood: honest, flooded", honest, plan).await;
    let flood = match flood_task.await {
        Ok(figures) => figures,
        Err(_) => {
            let mut record = Recorder::new();
            record.error("flood task panicked");
            record.figures("flood", plan.phase)
        }
    };
    FloodOutcome {
        unloaded,
        loaded,
        flood,
    }
}

/// Every honest device mints once per interval (a random offset spreads them).
async fn honest_phase(label: &str, devices: &[Device], plan: &FloodPlan) -> Figures {
    let budget = Budget::new(label, plan.phase, u64::MAX);
    let tasks: Vec<_> = devices
        .iter()
        .cloned()
        .map(|mut device| {
            let budget = budget.clone();
            let interval = plan.honest_interval;
            tokio::spawn(async move {
                let mut record = Recorder::new();
                let offset = rand::thread_rng().gen_range(Duration::ZERO..interval);
                let mut next = Instant::now() + offset;
                loop {
                    tokio::time::sleep_until(next.into()).await;
                    if !budget.take() {
                        break;
                    }
                    let started = Instant::now();
                    match device.client.mint_ticket(&device.session).await {
                        Ok(ticket) => {
                            record.ok(started.elapsed());
                            if let Some(token) = ticket.new_access_token {
                                device.session.access_token = token;
                            }
                        }
                        Err(e) => record.error_with(sdk_error_kind(&e), &e),
                    }
                    next += interval;
                }
                record
            })
        })
        .collect();
    let mut record = Recorder::new();
    for task in tasks {
        if let Ok(r) = task.await {
            record.merge(&r);
        }
    }
    record.figures(label, budget.finish())
}

/// The flooding device: `flood_rate` signed mints per second for one phase.
async fn flood(device: Device, plan: FloodPlan) -> Figures {
    let label = format!("mint-flood: flooder at {}/s", plan.flood_rate);
    let started = Instant::now();
    let deadline = started + plan.phase;
    let gate = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(FLOOD_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let per_second = f64::from(plan.flood_rate);
    let mut sent: u64 = 0;
    let mut tasks = Vec::new();
    let mut not_sent: u64 = 0;
    while Instant::now() < deadline {
        ticker.tick().await;
        // Catch up to the schedule: as many as should have been sent by now.
        let due = (started.elapsed().as_secs_f64() * per_second) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = gate.clone().try_acquire_owned() else {
                not_sent += 1;
                continue;
            };
            let device = device.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let started = Instant::now();
                device
                    .client
                    .mint_ticket(&device.session)
                    .await
                    .map(|_| started.elapsed())
                    .map_err(|e| sdk_error_kind(&e))
            }));
        }
    }
    let mut record = Recorder::new();
    for task in tasks {
        match task.await {
            Ok(Ok(took)) => record.ok(took),
            Ok(Err(kind)) => record.error(kind),
            Err(_) => record.error("task panicked"),
        }
    }
    for _ in 0..not_sent {
        record.error("not sent (harness saturated)");
    }
    record.figures(label, started.elapsed())
}
