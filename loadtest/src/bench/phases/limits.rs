//! Phase 3, node-l (the real mint quota, 1 s tickets): expired tickets presented on
//! node-a, then the mint flood (one device flooding, honest devices minting at their
//! normal rate).

use std::sync::Arc;
use std::time::Duration;

use crate::bench::nodes::{limits_env, settings};
use crate::bench::Bench;
use crate::progress::status;
use crate::scenarios::mint_flood::{self, FloodPlan};
use crate::scenarios::{forged, Plan};
use crate::spawn::Node;
use crate::target::{mint_many, Device};

/// Honest devices of the mint flood.
const HONEST_DEVICES: usize = 100;
/// Expired tickets presented.
const EXPIRED_TICKETS: usize = 300;
/// The mint flood's offered rate, fixed so the honest figures mean the same anywhere.
const FLOOD_RATE: u32 = 2_000;

impl Bench {
    /// Node L: the real mint quota and 1 s tickets. Expired tickets, then the flood.
    pub(in crate::bench) async fn phase_limits(&mut self) -> anyhow::Result<()> {
        let env = limits_env(&self.env);
        status("starting node-l (default mint quota, 1 s tickets)");
        let node_l = Node::start(&self.binary, &self.dir, "node-l", &env).await?;
        self.report.nodes.push(settings(
            &node_l,
            "mint flood and expired tickets; TICKETGATE_RATE_MINT_DEVICE left at its default (30/min)",
        ));
        let on_l = self
            .devices
            .iter()
            .map(|d| d.on(&node_l.public_url()))
            .collect::<anyhow::Result<Vec<Device>>>()?;
        let honest = &on_l[..HONEST_DEVICES];

        status("expired tickets: mint on node-l, wait for them to expire, present them on node-a");
        let (expired, _) = mint_many(
            "expired: mint",
            honest,
            EXPIRED_TICKETS,
            16,
            Duration::from_secs(20),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let plan = Plan {
            duration: self.sizes.run / 2,
            ..self.sizes.plan()
        };
        let snap = self.redis.snapshot()?;
        let cpu = self.node_a_cpu();
        let figures = forged::expired(
            &format!("expired tickets ({} tickets, cycled)", EXPIRED_TICKETS),
            Arc::new(expired),
            self.a.clone(),
            &plan,
        )
        .await;
        let cost = snap.cost("expired", figures.ok + figures.error_count())?;
        self.found.expired_commands = Some(cost.commands_per_op);
        self.report.redis.push(cost);
        self.report.run_cpu("forged", "ticketgate", figures, &cpu);

        status(format!(
            "mint flood: 1 device at {FLOOD_RATE}/s, {HONEST_DEVICES} honest devices minting every 2 s"
        ));
        let outcome = mint_flood::run(
            honest,
            &on_l[HONEST_DEVICES],
            &FloodPlan {
                honest_interval: Duration::from_secs(2),
                flood_rate: FLOOD_RATE,
                phase: self.sizes.flood_phase,
            },
        )
        .await;
        for figures in [&outcome.unloaded, &outcome.loaded, &outcome.flood] {
            self.report.run("mint-flood", "ticketgate", figures.clone());
        }
        self.found.flood = Some(outcome);
        drop(node_l);
        Ok(())
    }
}
