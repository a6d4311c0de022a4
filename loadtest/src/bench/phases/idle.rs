//! Phase 6, idle sockets on processes started for it (node-i, then a second
//! baseline), so that their RSS holds nothing from the earlier phases: RSS per socket,
//! then the handshake rate on node-i while holding the most, some, then none of them.

use std::sync::Arc;
use std::time::Duration;

use crate::bench::nodes::settings;
use crate::bench::Bench;
use crate::host::{self, CpuMeter};
use crate::progress::status;
use crate::report::{GrowthRow, Memory};
use crate::scenarios::idle::{self, HeldSockets};
use crate::scenarios::{handshake, Plan};
use crate::spawn::{Baseline, Node};
use crate::target::Device;
use crate::ws::Dialer;

/// Workers opening idle sockets.
const OPEN_CONCURRENCY: usize = 64;

impl Bench {
    /// Idle sockets, on processes started for it (their heap holds nothing from the
    /// earlier phases, in particular no argon2 blocks from logins): RSS per socket,
    /// then the handshake rate while holding them.
    pub(in crate::bench) async fn phase_idle(&mut self) -> anyhow::Result<()> {
        let [low, mid, max] = self.sizes.idle_levels;
        status("starting node-i (fresh heap) for the idle sockets");
        let node_i = Node::start(&self.binary, &self.dir, "node-i", &self.env).await?;
        self.report.nodes.push(settings(
            &node_i,
            "idle sockets and handshakes while holding them; a fresh process, same settings as node-a",
        ));
        let i = Arc::new(Dialer::new(node_i.public));
        let pid = node_i.pid();

        // Tickets are minted on node-a and admitted on node-i, so node-i's RSS grows
        // by admissions only.
        let mut held = HeldSockets::default();
        let before = host::settled_rss_kib(pid, Duration::from_millis(500)).await?;
        status(format!("idle: {max} sockets on node-i"));
        let figures = idle::hold_ticketgate(
            &format!("hold {max} sockets"),
            &self.devices,
            i.clone(),
            max,
            OPEN_CONCURRENCY,
            &mut held,
        )
        .await;
        self.report.run("idle", "ticketgate", figures);
        let after = host::settled_rss_kib(pid, Duration::from_secs(1)).await?;
        let memory = memory_row("ticketgate", held.still_open(), before, after);
        self.report.memory.push(memory.clone());
        self.found.rss_ticketgate = Some(memory);

        // Handshakes on node-i (mint there too) while holding max, mid, then low sockets.
        let on_i = self
            .devices
            .iter()
            .map(|d| d.on(&node_i.public_url()))
            .collect::<anyhow::Result<Vec<Device>>>()?;
        let plan = Plan {
            duration: self.sizes.idle_run,
            ..self.sizes.plan()
        };
        let mut rows = Vec::new();
        for level in [max, mid, low] {
            held.truncate(level).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            status(format!(
                "handshake on node-i while holding {} idle sockets",
                held.still_open()
            ));
            let cpu = CpuMeter::start(Some(pid));
            let figures = handshake::ticketgate(
                &format!("handshake with {level} idle"),
                &on_i,
                i.clone(),
                &plan,
            )
            .await;
            rows.push(GrowthRow {
                work: "idle sockets held".into(),
                level: level.to_string(),
                figure: "handshake rate".into(),
                shown: format!("{:.0}/s", figures.rate),
                value: Some(figures.rate),
            });
            self.report.run_cpu("idle", "ticketgate", figures, &cpu);
        }
        rows.reverse();
        self.report.growth.extend(rows);
        if held.still_open() < low {
            self.report.note(format!(
                "idle: node-i closed {} of the held sockets",
                low - held.still_open()
            ));
        }
        held.release().await;
        drop(node_i);

        status(format!("idle: {max} sockets on a fresh baseline"));
        let baseline = Baseline::start(&self.dir, "baseline-idle").await?;
        let pid = baseline.pid();
        let dialer = Arc::new(Dialer::new(baseline.addr));
        let mut held = HeldSockets::default();
        let before = host::settled_rss_kib(pid, Duration::from_millis(500)).await?;
        let figures = idle::hold_baseline(
            &format!("hold {max} sockets"),
            dialer,
            max,
            OPEN_CONCURRENCY,
            &mut held,
        )
        .await;
        self.report.run("idle", "baseline", figures);
        let after = host::settled_rss_kib(pid, Duration::from_secs(1)).await?;
        let memory = memory_row("baseline", held.still_open(), before, after);
        held.release().await;
        self.report.memory.push(memory.clone());
        self.found.rss_baseline = Some(memory);
        Ok(())
    }
}

fn memory_row(target: &str, sockets: usize, before: u64, after: u64) -> Memory {
    let per_socket = if sockets == 0 {
        0.0
    } else {
        after.saturating_sub(before) as f64 / sockets as f64
    };
    Memory {
        target: target.to_owned(),
        sockets: sockets as u64,
        rss_before_kib: before,
        rss_after_kib: after,
        per_socket_kib: per_socket,
    }
}
