//! Shutdown: the signal and the tasks that must end before the node does.
//!
//! One [`Shutdown`] per node, cloned into whatever spawns tasks. It holds the signal (a
//! [`CancellationToken`]) and a [`TaskTracker`] of every task the node started:
//! connections, sockets, accept loops and background loops. [`Shutdown::stop`] gives
//! the signal and then waits for all of them, up to the grace period, so the process
//! exits only when every answer has gone out and every socket has said goodbye.
//!
//! How each kind of task ends once the signal is given:
//! - accept loops stop accepting;
//! - HTTP connections finish the request in flight (its body may still be arriving) and
//!   close; idle ones close at once;
//! - sockets send a resume ticket and close with 1001;
//! - background loops (sweepers, reloaders, the hub's) are dropped at their next await:
//!   they have nothing to finish ([`Shutdown::spawn_background`]).
//!
//! A task spawned with `tokio::spawn` instead is invisible here: the process may exit
//! in the middle of it.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// The shutdown signal of a node and the tasks it waits for; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    signal: CancellationToken,
    tasks: TaskTracker,
}

/// How [`Shutdown::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every task ended within the grace period.
    Drained,
    /// The grace period ran out with this many tasks still running.
    GraceOver {
        /// Tasks still running.
        left: usize,
    },
}

impl Shutdown {
    /// A signal not yet given, and no tasks.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Spawns `task` on the current runtime; [`Shutdown::stop`] waits for it. The task
    /// ends by itself once the signal is given (it watches [`Shutdown::cancelled`]).
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime (as `tokio::spawn`).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Spawns a loop that has nothing to finish (a sweeper, a reloader, a subscriber):
    /// it runs until the signal is given, then is dropped at its next await point.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime (as `tokio::spawn`).
    pub fn spawn_background<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let signal = self.signal.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = signal.cancelled() => {}
                () = task => {}
            }
        })
    }

    /// Resolves once the signal is given (at once if it was).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: made for `tokio::select!`.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.signal.cancelled()
    }

    /// Whether the signal was given.
    pub fn is_cancelled(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// The signal alone, for code that must not spawn tasks (a store, a library).
    pub fn token(&self) -> &CancellationToken {
        &self.signal
    }

    /// The task tracker alone, for code that spawns on it directly.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tasks
    }

    /// How many tracked tasks are running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Gives the signal, then waits up to `grace` for every tracked task to end, those
    /// spawned while waiting included. Tasks still running after `grace` are left to
    /// the runtime: when the process exits, they are dropped.
    pub async fn stop(&self, grace: Duration) -> Stopped {
        self.signal.cancel();
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => Stopped::Drained,
            Err(_) => Stopped::GraceOver {
                left: self.tasks.len(),
            },
        }
    }
}

/// Resolves on SIGINT or SIGTERM (on Ctrl-C elsewhere).
pub async fn os_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(cause = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_waits_for_a_task_that_finishes_its_work() {
        let shutdown = Shutdown::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let watcher = shutdown.clone();
        shutdown.spawn(async move {
            watcher.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        assert_eq!(
            shutdown.stop(Duration::from_secs(5)).await,
            Stopped::Drained
        );
        assert!(shutdown.is_cancelled());
        assert!(
            done_rx.await.is_ok(),
            "stop returned before the task finished"
        );
    }

    #[tokio::test]
    async fn stop_waits_for_tasks_spawned_while_stopping() {
        let shutdown = Shutdown::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let parent = shutdown.clone();
        shutdown.spawn(async move {
            parent.cancelled().await;
            parent.spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = done_tx.send(());
            });
        });
        assert_eq!(
            shutdown.stop(Duration::from_secs(5)).await,
            Stopped::Drained
        );
        assert!(
            done_rx.await.is_ok(),
            "stop returned before the child finished"
        );
    }

    #[tokio::test]
    async fn background_loops_end_at_the_signal() {
        let shutdown = Shutdown::new();
        shutdown.spawn_background(async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
            }
        });
        let started = std::time::Instant::now();
        assert_eq!(
            shutdown.stop(Duration::from_secs(5)).await,
            Stopped::Drained
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(shutdown.running(), 0);
    }

    #[tokio::test]
    async fn stop_gives_up_after_the_grace_period_and_counts_what_is_left() {
        let shutdown = Shutdown::new();
        for _ in 0..2 {
            shutdown.spawn(std::future::pending::<()>());
        }
        let started = std::time::Instant::now();
        assert_eq!(
            shutdown.stop(Duration::from_millis(100)).await,
            Stopped::GraceOver { left: 2 }
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
