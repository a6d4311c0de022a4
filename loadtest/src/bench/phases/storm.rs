//! Phase 4, conn-storm: N clients connecting to node-a at once (cold), then two drains
//! of a node started for the purpose, its clients reconnecting to node-a with resume
//! tickets, then with fresh mints.

use std::sync::Arc;
use std::time::Duration;

use crate::bench::Bench;
use crate::progress::status;
use crate::scenarios::conn_storm::{self, DrainOutcome};
use crate::spawn::Node;
use crate::ws::Dialer;

impl Bench {
    /// conn-storm: cold, then drains of a node started for the purpose.
    pub(in crate::bench) async fn phase_storm(&mut self) -> anyhow::Result<()> {
        let n = self.sizes.storm_clients;
        status(format!("conn-storm: {n} clients mint and connect at once"));
        let cold = conn_storm::cold(
            "cold: mint + connect at once",
            &self.devices,
            self.a.clone(),
            n,
        )
        .await;
        self.report.run("conn-storm", "ticketgate", cold);

        status(format!(
            "conn-storm: {n} clients on a node that is stopped; they move to node-a with resume tickets"
        ));
        let with_resume = self.drain_storm("node-drain-1", n, true).await?;
        if with_resume.resumes_received == 0 {
            self.report.note(
                "conn-storm with resume tickets: not available on this server (no resume frame \
                 came before the 1001 close); every client minted a fresh ticket",
            );
            let mut figures = with_resume.figures;
            figures.label = "drain: reconnect with a fresh mint (no resume frames)".into();
            self.report.run("conn-storm", "ticketgate", figures);
            return Ok(());
        }
        let mut figures = with_resume.figures;
        figures.label = format!(
            "drain: reconnect with resume ({} of {n} resumed)",
            with_resume.resumes_used
        );
        self.report.run("conn-storm", "ticketgate", figures);

        status(format!(
            "conn-storm: {n} clients on a stopped node, reconnecting with fresh mints"
        ));
        let without = self.drain_storm("node-drain-2", n, false).await?;
        let mut figures = without.figures;
        figures.label = "drain: reconnect with a fresh mint".into();
        self.report.run("conn-storm", "ticketgate", figures);
        Ok(())
    }

    async fn drain_storm(
        &mut self,
        name: &str,
        n: usize,
        use_resume: bool,
    ) -> anyhow::Result<DrainOutcome> {
        let mut node = Node::start(&self.binary, &self.dir, name, &self.env).await?;
        let draining = Arc::new(Dialer::new(node.public));
        let outcome = conn_storm::after_drain(
            &format!("drain {name}"),
            &self.devices,
            draining,
            self.a.clone(),
            n,
            use_resume,
            || node.terminate(),
        )
        .await?;
        if !node.wait_exit(Duration::from_secs(15)).await {
            self.report
                .note(format!("{name} did not exit within 15 s of SIGTERM"));
        }
        Ok(outcome)
    }
}
