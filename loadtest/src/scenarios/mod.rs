//! One module per scenario. Each is a plain async function over what it needs (a
//! [`Dialer`](crate::ws::Dialer), logged-in devices, an admin client) that returns
//! [`Figures`](crate::stats::Figures); `bench` and the single-scenario commands both
//! call them.
//!
//! Every run is bounded by a [`Plan`]: a duration, a count and a number of workers.

pub mod admit;
pub mod conn_storm;
pub mod forged;
pub mod handshake;
pub mod idle;
pub mod kick;
pub mod mint_flood;
pub mod push;
pub mod push_chaos;
pub mod replay;
pub mod scale;
pub mod upstream;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::{Budget, Recorder};
use crate::target::Minted;
use crate::ws::{Dialer, Ws};

/// Time allowed to open one set of sockets with [`admit_spread`].
const ADMIT_LIMIT: Duration = Duration::from_secs(60);

/// The bounds of a run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// It stops after this long...
    pub duration: Duration,
    /// ...or after this many operations.
    pub max_ops: u64,
    /// Workers (closed loop: each starts its next operation when the last one ended).
    pub concurrency: usize,
}

/// Runs `concurrency` workers made by `worker(i)` and merges their records.
pub async fn run_workers<F, Fut>(concurrency: usize, worker: F) -> Recorder
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|i| tokio::spawn(worker(i)))
        .collect();
    let mut sum = Recorder::new();
    for task in tasks {
        match task.await {
            Ok(record) => sum.merge(&record),
            Err(_) => sum.error("worker panicked"),
        }
    }
    sum
}

/// Admits `tickets` with `concurrency` workers, ticket `i` on `dialers[i % len]`, and
/// returns the open sockets (in no particular order) with the admission record.
pub async fn admit_spread(
    label: &str,
    tickets: Arc<Vec<Minted>>,
    dialers: &[Arc<Dialer>],
    concurrency: usize,
) -> (Vec<Ws>, Recorder) {
    let budget = Budget::new(label, ADMIT_LIMIT, tickets.len() as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let dialers: Arc<Vec<Arc<Dialer>>> = Arc::new(dialers.to_vec());
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (budget, dialers, tickets, next) = (
                budget.clone(),
                dialers.clone(),
                tickets.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut record = Recorder::new();
                let mut sockets = Vec::new();
                while budget.take() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(minted) = tickets.get(i) else {
                        break;
                    };
                    let dialer = &dialers[i % dialers.len()];
                    let started = Instant::now();
                    match dialer.admit(&minted.device_id, &minted.ticket).await {
                        Ok(socket) => {
                            record.ok(started.elapsed());
                            sockets.push(socket);
                        }
                        Err(e) => record.error_with(e.kind(), &e),
                    }
                }
                (sockets, record)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(tickets.len());
    let mut record = Recorder::new();
    for task in tasks {
        if let Ok((s, r)) = task.await {
            all.extend(s);
            record.merge(&r);
        }
    }
    budget.finish();
    (all, record)
}
