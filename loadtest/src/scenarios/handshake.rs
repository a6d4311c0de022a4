//! `handshake`: legit clients, logged in once, then mint + connect + welcome + close in
//! a loop. Each worker keeps its SDK client, so mints go over a kept-alive HTTP
//! connection, as a real client's would. The baseline run does connect + welcome +
//! close on the baseline server with the same socket client.
//!
//! Latency is mint start → welcome; the close is part of the loop (and so of the rate)
//! but not of the latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{run_workers, Plan};
use crate::stats::{Budget, Figures, Recorder};
use crate::target::{sdk_error_kind, Device};
use crate::ws::{self, Dialer};

/// Pause after a 429, so a rate-limited run does not spin.
const BACKOFF: Duration = Duration::from_millis(50);

/// Full handshakes against ticketgate: worker `i` uses `devices[i % len]`.
pub async fn ticketgate(
    label: &str,
    devices: &[Device],
    dialer: Arc<Dialer>,
    plan: &Plan,
) -> Figures {
    let budget = Budget::new(label, plan.duration, plan.max_ops);
    let devices: Arc<Vec<Device>> = Arc::new(devices.to_vec());
    let record = run_workers(plan.concurrency, |i| {
        let mut device = devices[i % devices.len()].clone();
        let (budget, dialer) = (budget.clone(), dialer.clone());
        async move {
            let mut record = Recorder::new();
            while budget.take() {
                one_handshake(&mut device, &dialer, &mut record).await;
            }
            record
        }
    })
    .await;
    record.figures(label, budget.finish())
}

async fn one_handshake(device: &mut Device, dialer: &Dialer, record: &mut Recorder) {
    let started = Instant::now();
    let ticket = match device.client.mint_ticket(&device.session).await {
        Ok(ticket) => ticket,
        Err(e) => {
            let kind = sdk_error_kind(&e);
            if kind == "rate_limited" {
                tokio::time::sleep(BACKOFF).await;
            }
            record.error_with(format!("mint {kind}"), &e);
            return;
        }
    };
    if let Some(token) = ticket.new_access_token {
        device.session.access_token = token;
    }
    match dialer.admit(device.id(), &ticket.ticket).await {
        Ok(socket) => {
            record.ok(started.elapsed());
            ws::close(socket).await;
        }
        Err(e) => record.error_with(e.kind(), &e),
    }
}

/// Connect + welcome + close against the baseline server.
pub async fn baseline(label: &str, dialer: Arc<Dialer>, plan: &Plan) -> Figures {
    let budget = Budget::new(label, plan.duration, plan.max_ops);
    let record = run_workers(plan.concurrency, |_| {
        let (budget, dialer) = (budget.clone(), dialer.clone());
        async move {
            let mut record = Recorder::new();
            while budget.take() {
                let started = Instant::now();
                match dialer.open_plain().await {
                    Ok(socket) => {
                        record.ok(started.elapsed());
                        ws::close(socket).await;
                    }
                    Err(e) => record.error_with(e.kind(), &e),
                }
            }
            record
        }
    })
    .await;
    record.figures(label, budget.finish())
}
