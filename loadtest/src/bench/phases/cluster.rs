//! Phase 5, nodes B and C: kick-to-close across nodes (sockets on node-b, kicked
//! through node-a) and push fan-out over 1, 2 and 3 nodes; their rows of the growth
//! table.

use std::sync::Arc;
use std::time::Duration;

use ticketgate_sdk::ClientType;

use crate::bench::nodes::settings;
use crate::bench::Bench;
use crate::progress::status;
use crate::report::{fmt_us, GrowthRow};
use crate::scenarios::kick::{self, KickSetup};
use crate::scenarios::push::{self, PushSetup};
use crate::scenarios::Plan;
use crate::spawn::Node;
use crate::stats::Figures;
use crate::target::{login, Admin};
use crate::ws::Dialer;

impl Bench {
    /// Nodes B and C: kick across nodes, push over 1/2/3 nodes.
    pub(in crate::bench) async fn phase_cluster(&mut self) -> anyhow::Result<()> {
        status("starting node-b and node-c");
        let node_b = Node::start(&self.binary, &self.dir, "node-b", &self.env).await?;
        let node_c = Node::start(&self.binary, &self.dir, "node-c", &self.env).await?;
        self.report
            .nodes
            .push(settings(&node_b, "kick and push; same settings as node-a"));
        self.report
            .nodes
            .push(settings(&node_c, "push; same settings as node-a"));
        let b = Arc::new(Dialer::new(node_b.public));
        let c = Arc::new(Dialer::new(node_c.public));
        let admin = Admin::new(&self.node_a.admin_url(), &self.admin_key)?;

        self.kick(&admin, b.clone()).await?;
        self.push(&admin, &[self.a.clone(), b, c]).await?;
        drop(node_b);
        drop(node_c);
        Ok(())
    }

    async fn kick(&mut self, admin: &Admin, sockets_on: Arc<Dialer>) -> anyhow::Result<()> {
        let public_url = self.node_a.public_url();
        let user = self.users.kick_user();
        let setup = KickSetup {
            public_url: &public_url,
            user: &user,
            password: &self.users.password,
            admin,
            socket_nodes: std::slice::from_ref(&sockets_on),
        };
        let mut available = true;
        for (size, reps) in self.sizes.kick {
            let level = size.to_string();
            if !available {
                self.report.growth.push(na_row(
                    "sockets of the kicked user",
                    &level,
                    "kick-to-close p50 / p99",
                ));
                continue;
            }
            status(format!(
                "kick: {reps} × a user with {size} sockets on node-b, kicked through node-a"
            ));
            let label = format!("{size} sockets on node-b, kick via node-a");
            match kick::run(&label, &setup, size, reps).await? {
                None => {
                    available = false;
                    self.report.note(
                        "kick: not available on this server (POST /admin/v1/users/{user_id}/kick answered 404)",
                    );
                    self.report.growth.push(na_row(
                        "sockets of the kicked user",
                        &level,
                        "kick-to-close p50 / p99",
                    ));
                }
                Some(figures) => {
                    self.report.growth.push(latency_row(
                        "sockets of the kicked user",
                        &level,
                        "kick-to-close p50 / p99",
                        &figures,
                    ));
                    if size == 100 {
                        self.found.kick = Some(figures.clone());
                    }
                    self.report.run("kick", "ticketgate", figures);
                }
            }
        }
        Ok(())
    }

    async fn push(&mut self, admin: &Admin, nodes: &[Arc<Dialer>]) -> anyhow::Result<()> {
        let user = self.users.push_user();
        let device = login(
            &self.node_a.public_url(),
            &user,
            &self.users.password,
            ClientType::Web,
        )
        .await?;
        let setup = PushSetup {
            device: &device,
            user: &user,
            admin,
        };
        let sockets = self.sizes.push_sockets;
        for count in 1..=nodes.len() {
            let level = count.to_string();
            status(format!(
                "push: {} messages to {sockets} sockets on {count} node(s), published via node-a",
                self.sizes.push_messages
            ));
            let label = format!("latency: {sockets} sockets on {count} node(s)");
            let figures = push::latency(
                &label,
                &setup,
                &nodes[..count],
                sockets,
                self.sizes.push_messages,
                Duration::from_millis(10),
            )
            .await?;
            let Some(figures) = figures else {
                self.report.note(
                    "push: not available on this server (POST /admin/v1/publish answered 404)",
                );
                for n in count..=nodes.len() {
                    self.report.growth.push(na_row(
                        "nodes",
                        &n.to_string(),
                        "push latency p50 / p99",
                    ));
                }
                self.report.growth.push(na_row(
                    "nodes",
                    &nodes.len().to_string(),
                    "push deliveries/s",
                ));
                return Ok(());
            };
            self.report.growth.push(latency_row(
                "nodes",
                &level,
                "push latency p50 / p99",
                &figures,
            ));
            self.report.run("push", "ticketgate", figures);
        }
        status("push: publishers as fast as they can, sockets on every node");
        let plan = Plan {
            duration: self.sizes.push_run,
            max_ops: self.sizes.max_ops,
            concurrency: 8,
        };
        let label = format!("throughput: {sockets} sockets on {} nodes", nodes.len());
        if let Some((deliveries, publishes)) =
            push::throughput(&label, &setup, nodes, sockets, &plan).await?
        {
            self.report.growth.push(GrowthRow {
                work: "nodes".into(),
                level: nodes.len().to_string(),
                figure: "push deliveries/s".into(),
                shown: format!("{:.0}/s", deliveries.rate),
                value: Some(deliveries.rate),
            });
            self.report.run("push", "ticketgate", deliveries);
            self.report.run("push", "ticketgate", publishes);
        }
        Ok(())
    }
}

fn na_row(work: &str, level: &str, figure: &str) -> GrowthRow {
    GrowthRow {
        work: work.to_owned(),
        level: level.to_owned(),
        figure: figure.to_owned(),
        shown: "n/a".into(),
        value: None,
    }
}

fn latency_row(work: &str, level: &str, figure: &str, figures: &Figures) -> GrowthRow {
    match figures.latency {
        Some(l) => GrowthRow {
            work: work.to_owned(),
            level: level.to_owned(),
            figure: figure.to_owned(),
            shown: format!("{} / {}", fmt_us(l.p50_us), fmt_us(l.p99_us)),
            value: Some(l.p99_us as f64 / 1000.0),
        },
        None => na_row(work, level, figure),
    }
}
