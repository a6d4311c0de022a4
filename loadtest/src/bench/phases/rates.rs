//! Phase 2, the rates of the bar on node-a: mint (the tickets of every admit round) →
//! admit → replay on the same tickets; a `MONITOR` probe for round trips; full
//! handshakes; forged tickets; then the admit rounds again on node-e (embedded store).
//! Admit, full handshake and forged tickets are each measured in interleaved rounds
//! with the baseline handshake.

use std::sync::Arc;

use crate::bench::interleave::{Measured, RoundRun};
use crate::bench::nodes::{embedded_env, settings};
use crate::bench::sizes::RUN_CONCURRENCY;
use crate::bench::Bench;
use crate::progress::status;
use crate::redis_stats::RedisCost;
use crate::rounds::split_even;
use crate::scenarios::{admit, forged, handshake, replay};
use crate::spawn::Node;
use crate::target::{self, mint_many, Minted};
use crate::ws::Dialer;

/// Operations of each kind in the `MONITOR` probe.
const PROBE_OPS: usize = 200;

impl Bench {
    /// Mint → admit → replay on the same tickets; round-trip probe; full handshake;
    /// forged tickets. The rates of the bar (admit, full handshake, forged) are each
    /// measured in interleaved rounds with the baseline handshake.
    pub(in crate::bench) async fn phase_rates(&mut self) -> anyhow::Result<()> {
        let (mint_cost, admit_cost, consumed) = self.mint_then_admit().await?;
        let replay_cost = self.replay(consumed).await?;
        let (mint_cost, admit_cost) = self.with_round_trips(mint_cost, admit_cost).await?;
        self.report
            .redis
            .extend([mint_cost, admit_cost, replay_cost]);
        self.full_handshakes().await?;
        self.forged_tickets().await?;
        self.embedded_admit().await?;
        self.note_drift();
        Ok(())
    }

    /// Mints the tickets of every admit round, then admits them in interleaved rounds,
    /// each round its own share, the oldest tickets first. Returns the Redis cost of a
    /// mint and of an admission (the baseline runs between the rounds send no Redis
    /// command), and the tickets the last round consumed: the freshest, so that they
    /// are replayed well within their lifetime.
    async fn mint_then_admit(&mut self) -> anyhow::Result<(RedisCost, RedisCost, Vec<Minted>)> {
        let rounds = self.sizes.rounds;
        status(format!(
            "ticketgate: mint the tickets of {rounds} admit rounds"
        ));
        let plan = self.sizes.mint_plan();
        let snap = self.redis.snapshot()?;
        let cpu = self.node_a_cpu();
        let (tickets, mint) = mint_many(
            "mint (keep-alive)",
            &self.devices,
            usize::try_from(plan.max_ops).unwrap_or(usize::MAX),
            RUN_CONCURRENCY,
            plan.duration,
        )
        .await;
        let mint_cost = snap.cost("mint", mint.ok)?;
        self.report.run_cpu("mint", "ticketgate", mint, &cpu);

        let mut shares = split_even(tickets, rounds).into_iter();
        let a = self.a.clone();
        let snap = self.redis.snapshot()?;
        let (admitted, mut consumed) = self
            .interleaved("admit", "socket + welcome + close", move |label, plan| {
                let (tickets, a) = (Arc::new(shares.next().unwrap_or_default()), a.clone());
                async move {
                    let (figures, consumed) = admit::run(&label, tickets, a, &plan).await;
                    RoundRun {
                        figures,
                        parts: Vec::new(),
                        kept: consumed,
                    }
                }
            })
            .await;
        let admit_cost = snap.cost("admit", admitted.ok())?;
        self.found.admit = Some(admitted);
        Ok((mint_cost, admit_cost, consumed.pop().unwrap_or_default()))
    }

    /// Presents `consumed` tickets again (each must be refused); returns the Redis cost
    /// of a replay.
    async fn replay(&mut self, consumed: Vec<Minted>) -> anyhow::Result<RedisCost> {
        status("ticketgate: replay the tickets of the last admit round");
        let snap = self.redis.snapshot()?;
        let cpu = self.node_a_cpu();
        let replayed = replay::run(
            "consumed tickets again",
            Arc::new(consumed),
            self.a.clone(),
            &self.sizes.plan(),
        )
        .await;
        let cost = snap.cost("replay", replayed.ok + replayed.error_count())?;
        self.report.run_cpu("replay", "ticketgate", replayed, &cpu);
        Ok(cost)
    }

    /// The `MONITOR` probe: round trips per mint and per admit, added to their costs.
    async fn with_round_trips(
        &mut self,
        mint: RedisCost,
        admit: RedisCost,
    ) -> anyhow::Result<(RedisCost, RedisCost)> {
        status("MONITOR probe: round trips per mint and per admit");
        let probe =
            admit::probe_round_trips(&self.redis, &self.devices, self.a.clone(), PROBE_OPS).await?;
        let background = &probe.background;
        let names: Vec<&str> = background.top_level.keys().map(String::as_str).collect();
        self.report.note(format!(
            "Redis background: {:.1} commands/s that the idle nodes send themselves ({}); \
             left out of the round trips per operation",
            background.top_level_rate(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ));
        let mint = mint.with_round_trips(&probe.mint.0, probe.mint.1, background);
        let admit = admit.with_round_trips(&probe.admit.0, probe.admit.1, background);
        self.found.mint_round_trips = mint.round_trips_per_op;
        self.found.admit_round_trips = admit.round_trips_per_op;
        Ok((mint, admit))
    }

    /// Full handshakes (mint over keep-alive + admit) in interleaved rounds.
    async fn full_handshakes(&mut self) -> anyhow::Result<()> {
        let (devices, a) = (Arc::new(self.devices.clone()), self.a.clone());
        let snap = self.redis.snapshot()?;
        let (full, _) = self
            .interleaved(
                "handshake",
                "mint + socket + welcome + close",
                move |label, plan| {
                    let (devices, a) = (devices.clone(), a.clone());
                    async move {
                        RoundRun::of(handshake::ticketgate(&label, &devices, a, &plan).await)
                    }
                },
            )
            .await;
        self.report
            .redis
            .push(snap.cost("handshake (mint + admit)", full.ok())?);
        self.found.handshake = Some(full);
        Ok(())
    }

    /// Forged tickets at the upgrade in interleaved rounds; none may cost a Redis
    /// command.
    async fn forged_tickets(&mut self) -> anyhow::Result<()> {
        let sample = forged::Sample::mint(&self.devices[0]).await?;
        let a = self.a.clone();
        let snap = self.redis.snapshot()?;
        let (refused, _) = self
            .interleaved("forged", "forged", move |label, plan| {
                let (sample, a) = (sample.clone(), a.clone());
                async move {
                    let run = forged::run(&label, sample, a, &plan).await;
                    RoundRun {
                        figures: run.all,
                        parts: run.by_kind.into(),
                        kept: (),
                    }
                }
            })
            .await;
        let cost = snap.cost("forged", refused.ok() + refused.error_count())?;
        self.found.forged_commands = Some(cost.commands_per_op);
        self.report.redis.push(cost);
        self.found.forged = Some(refused);
        Ok(())
    }

    /// The admit rounds again on node-e, a node on the embedded store (same settings
    /// as node-a but no Redis URL): what the Redis round trip, and Redis's own CPU on
    /// these cores, cost the admit rate. For reading; not a bar.
    async fn embedded_admit(&mut self) -> anyhow::Result<()> {
        status("starting node-e (embedded store): the admit rounds without Redis");
        let env = embedded_env(&self.env);
        let node_e = Node::start(&self.binary, &self.dir, "node-e", &env).await?;
        self.report.nodes.push(settings(
            &node_e,
            "admit rounds on the embedded store; same settings as node-a without a Redis URL",
        ));
        let devices =
            target::login_devices(&node_e.public_url(), &self.users, RUN_CONCURRENCY).await?;
        let plan = self.sizes.mint_plan();
        let (tickets, mint) = mint_many(
            "embedded store: mint (keep-alive)",
            &devices,
            usize::try_from(plan.max_ops).unwrap_or(usize::MAX),
            RUN_CONCURRENCY,
            plan.duration,
        )
        .await;
        self.report.run("mint", "ticketgate", mint);
        let mut shares = split_even(tickets, self.sizes.rounds).into_iter();
        let e = Arc::new(Dialer::new(node_e.public));
        let on = Measured {
            pid: node_e.pid(),
            redis_pid: None,
        };
        let (admitted, _) = self
            .interleaved_on(
                on,
                "admit",
                "embedded store: socket + welcome + close",
                move |label, plan| {
                    let (tickets, e) = (Arc::new(shares.next().unwrap_or_default()), e.clone());
                    async move {
                        let (figures, _) = admit::run(&label, tickets, e, &plan).await;
                        RoundRun::of(figures)
                    }
                },
            )
            .await;
        self.found.admit_embedded = Some(admitted);
        Ok(())
    }
}
