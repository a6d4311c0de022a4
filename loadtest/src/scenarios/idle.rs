//! `idle`: hold N admitted sockets open and see what they cost the server: its RSS per
//! socket (VmRSS before and after, divided by N), and in `bench` what they do to the
//! handshake rate.
//!
//! Every held socket has a cheap reader task, so the server's pings are answered and
//! its close frames seen; [`HeldSockets::still_open`] tells how many the server has not
//! closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::task::JoinHandle;

use super::admit_spread;
use crate::stats::{Budget, Figures, Recorder};
use crate::target::{mint_many, Device};
use crate::ws::{Dialer, Ws};

/// Tickets are minted and used in batches of this many, well within their lifetime.
const BATCH: usize = 2_000;
/// Time allowed to open one batch.
const BATCH_LIMIT: Duration = Duration::from_secs(60);

/// Sockets held open by reader tasks; dropping this closes them (the tasks are
/// aborted, their sockets dropped).
#[derive(Default)]
pub struct HeldSockets {
    readers: Vec<JoinHandle<()>>,
    open: Arc<AtomicUsize>,
}

impl HeldSockets {
    /// How many were opened.
    pub fn len(&self) -> usize {
        self.readers.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.readers.is_empty()
    }

    /// How many are still open (not closed by the server, not released).
    pub fn still_open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Holds `socket` with a reader task that answers pings until the server closes.
    pub fn hold(&mut self, mut socket: Ws) {
        let open = OpenGuard::new(self.open.clone());
        self.readers.push(tokio::spawn(async move {
            let _open = open;
            while let Some(Ok(_)) = socket.next().await {}
        }));
    }

    /// Closes all but the first `keep` sockets.
    pub async fn truncate(&mut self, keep: usize) {
        if keep >= self.readers.len() {
            return;
        }
        let dropped = self.readers.split_off(keep);
        for r in &dropped {
            r.abort();
        }
        for r in dropped {
            let _ = r.await;
        }
    }

    /// Closes every socket (drops them) and waits for the tasks to end.
    pub async fn release(mut self) {
        let readers = std::mem::take(&mut self.readers);
        for r in &readers {
            r.abort();
        }
        for r in readers {
            let _ = r.await;
        }
    }
}

/// Counts a socket as open while its reader task lives (ended or aborted).
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for HeldSockets {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

/// Opens `n` more admitted ticketgate sockets into `held`: tickets are minted in
/// batches over `devices`, then admitted by `concurrency` workers.
pub async fn hold_ticketgate(
    label: &str,
    devices: &[Device],
    dialer: Arc<Dialer>,
    n: usize,
    concurrency: usize,
    held: &mut HeldSockets,
) -> Figures {
    let started = Instant::now();
    let mut record = Recorder::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(BATCH);
        let (tickets, mint) = mint_many(
            &format!("{label}: mint"),
            devices,
            batch,
            concurrency,
            BATCH_LIMIT,
        )
        .await;
        for (kind, count) in &mint.errors {
            for _ in 0..*count {
                record.error(format!("mint {kind}"));
            }
        }
        let (sockets, admitted) = admit_spread(
            &format!("{label}: connect"),
            Arc::new(tickets),
            std::slice::from_ref(&dialer),
            concurrency,
        )
        .await;
        record.merge(&admitted);
        for s in sockets {
            held.hold(s);
        }
        left -= batch;
    }
    record.figures(label, started.elapsed())
}

/// Opens `n` more baseline sockets into `held`.
pub async fn hold_baseline(
    label: &str,
    dialer: Arc<Dialer>,
    n: usize,
    concurrency: usize,
    held: &mut HeldSockets,
) -> Figures {
    let budget = Budget::new(label, BATCH_LIMIT, n as u64);
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (budget, dialer) = (budget.clone(), dialer.clone());
            tokio::spawn(async move {
                let mut record = Recorder::new();
                let mut sockets = Vec::new();
                while budget.take() {
                    let started = Instant::now();
                    match dialer.open_plain().await {
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
    let mut record = Recorder::new();
    for task in tasks {
        if let Ok((sockets, r)) = task.await {
            record.merge(&r);
            for s in sockets {
                held.hold(s);
            }
        }
    }
    record.figures(label, budget.finish())
}
