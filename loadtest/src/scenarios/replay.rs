//! `replay`: tickets that were already consumed, presented again. Each must be refused
//! with 401; an upgrade would be a security failure and is counted as `admitted`.
//! A replayed ticket's MAC verifies, so each costs one store round trip (the
//! consuming script finds nothing).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{run_workers, Plan};
use crate::stats::{Budget, Figures, Recorder};
use crate::target::Minted;
use crate::ws::Dialer;

/// Presents the consumed tickets again, round-robin, until the plan ends.
pub async fn run(
    label: &str,
    consumed: Arc<Vec<Minted>>,
    dialer: Arc<Dialer>,
    plan: &Plan,
) -> Figures {
    present_refused(
        label,
        consumed,
        dialer,
        plan,
        "no consumed tickets to replay",
    )
    .await
}

/// Presents `tickets` by their own devices, round-robin until the plan ends; each must
/// be refused with 401 (counted as ok), anything else is an error. Shared by `replay`
/// (consumed tickets) and `forged` (expired tickets).
pub async fn present_refused(
    label: &str,
    consumed: Arc<Vec<Minted>>,
    dialer: Arc<Dialer>,
    plan: &Plan,
    when_empty: &str,
) -> Figures {
    let budget = Budget::new(label, plan.duration, plan.max_ops);
    if consumed.is_empty() {
        let mut record = Recorder::new();
        record.error(when_empty);
        return record.figures(label, budget.finish());
    }
    let next = Arc::new(AtomicUsize::new(0));
    let record = run_workers(plan.concurrency, |_| {
        let (budget, dialer, consumed, next) = (
            budget.clone(),
            dialer.clone(),
            consumed.clone(),
            next.clone(),
        );
        async move {
            let mut record = Recorder::new();
            while budget.take() {
                let minted = &consumed[next.fetch_add(1, Ordering::Relaxed) % consumed.len()];
                let started = Instant::now();
                match dialer
                    .expect_refusal(&minted.device_id, &minted.ticket)
                    .await
                {
                    Ok(401) => record.ok(started.elapsed()),
                    Ok(status) => record.error(format!("refused {status}")),
                    Err(e) => record.error_with(e.kind(), &e),
                }
            }
            record
        }
    })
    .await;
    record.figures(label, budget.finish())
}
