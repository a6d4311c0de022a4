//! How big and long each phase of the bench is: the full and the `--quick` sizes, and
//! the [`Plan`]s of the runs made from them.

use std::time::Duration;

use crate::scenarios::Plan;

/// Workers of the rate runs, the same for ticketgate and the baseline.
pub(super) const RUN_CONCURRENCY: usize = 32;
/// Operations per second of a round that caps its runs: far above any rate seen here
/// (60,000/s at most), so that every run of a round ends on time, not on the count.
const ROUND_OPS_PER_SEC: f64 = 200_000.0;

/// How big and long each phase is.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizes {
    /// Runs outside the rounds (replay; expired tickets run half of it).
    pub(super) run: Duration,
    /// The count that caps those runs.
    pub(super) max_ops: u64,
    /// Interleaved rounds of each rate of the bar.
    pub(super) rounds: usize,
    /// Every run of a round, baseline and ticketgate alike.
    pub(super) round: Duration,
    pub(super) idle_levels: [usize; 3],
    pub(super) idle_run: Duration,
    pub(super) storm_clients: usize,
    pub(super) kick: [(usize, usize); 3],
    pub(super) push_sockets: usize,
    pub(super) push_messages: u64,
    pub(super) push_run: Duration,
    pub(super) flood_phase: Duration,
}

impl Sizes {
    pub(super) fn full() -> Sizes {
        Sizes {
            run: Duration::from_secs(5),
            max_ops: 60_000,
            // Five short rounds rather than three long ones: the baseline runs around a
            // ticketgate run are closer in time, and the median of five shrugs off a
            // round the machine's drift spoiled.
            rounds: 5,
            round: Duration::from_millis(1_500),
            idle_levels: [0, 5_000, 10_000],
            idle_run: Duration::from_secs(3),
            storm_clients: 1_000,
            kick: [(1, 10), (100, 3), (1_000, 1)],
            push_sockets: 60,
            push_messages: 100,
            push_run: Duration::from_secs(3),
            flood_phase: Duration::from_secs(6),
        }
    }

    pub(super) fn quick() -> Sizes {
        Sizes {
            run: Duration::from_secs(3),
            max_ops: 30_000,
            rounds: 2,
            round: Duration::from_secs(2),
            idle_levels: [0, 1_000, 2_000],
            idle_run: Duration::from_secs(2),
            storm_clients: 500,
            kick: [(1, 5), (100, 2), (1_000, 1)],
            push_sockets: 30,
            push_messages: 50,
            push_run: Duration::from_secs(2),
            flood_phase: Duration::from_secs(4),
        }
    }

    pub(super) fn plan(&self) -> Plan {
        Plan {
            duration: self.run,
            max_ops: self.max_ops,
            concurrency: RUN_CONCURRENCY,
        }
    }

    /// Each run of a round: bounded by time (the count is out of reach).
    pub(super) fn round_plan(&self) -> Plan {
        Plan {
            duration: self.round,
            max_ops: (ROUND_OPS_PER_SEC * self.round.as_secs_f64()) as u64,
            concurrency: RUN_CONCURRENCY,
        }
    }

    /// The mint run: the tickets of every admit round. Minting is about as fast as
    /// admitting, so it gets the admit rounds' time and half as much again.
    pub(super) fn mint_plan(&self) -> Plan {
        let rounds = u32::try_from(self.rounds).unwrap_or(u32::MAX);
        let round = self.round_plan();
        Plan {
            duration: self.round * rounds * 3 / 2,
            max_ops: round.max_ops.saturating_mul(self.rounds as u64),
            ..round
        }
    }
}
