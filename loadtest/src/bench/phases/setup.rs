//! Phase 1, setup: the users file (argon2, via `ticketgate user add`), Redis, node-a,
//! the baseline, and one login per pool device; what every later phase shares.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rand::distributions::Alphanumeric;
use rand::Rng as _;

use crate::bench::bar::Findings;
use crate::bench::nodes::{main_env, settings};
use crate::bench::sizes::Sizes;
use crate::bench::Bench;
use crate::progress::status;
use crate::redis_stats::RedisStats;
use crate::report::Report;
use crate::spawn::{self, Baseline, Node, RedisServer};
use crate::target::{self, Users};
use crate::ws::Dialer;

/// Pool users (`lt0`..`lt50`), two devices (web + mobile) each.
const POOL_USERS: usize = 51;
/// Devices logged in once: 100 honest devices and one flooder for the mint flood;
/// the other scenarios use them too.
const POOL_DEVICES: usize = 102;

fn random_text(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl Bench {
    /// Phase 1: writes the users file, starts Redis, node-a and the baseline, and logs
    /// in the pool devices.
    pub(in crate::bench) async fn setup(
        sizes: Sizes,
        dir: &Path,
        mut report: Report,
    ) -> anyhow::Result<Bench> {
        let binary = spawn::ticketgate_binary()?;
        let users = Users {
            prefix: "lt".into(),
            count: POOL_USERS,
            password: random_text(24),
        };
        let mut names: Vec<String> = (0..users.count).map(|i| users.name(i)).collect();
        names.push(users.kick_user());
        names.push(users.push_user());
        status(format!(
            "writing {} users with {} user add",
            names.len(),
            binary.display()
        ));
        let users_file = dir.join("users.toml");
        {
            let (binary, users_file, password) =
                (binary.clone(), users_file.clone(), users.password.clone());
            tokio::task::spawn_blocking(move || {
                spawn::add_users(&binary, &users_file, &names, &password)
            })
            .await
            .context("users task")??;
        }

        status("starting redis-server");
        let redis_server = RedisServer::start(dir).await?;
        let redis = RedisStats::at(redis_server.addr);
        let admin_key = random_text(32);
        let env = main_env(&redis_server.url(), dir, &admin_key);
        status("starting ticketgate node-a and the baseline");
        let node_a = Node::start(&binary, dir, "node-a", &env).await?;
        report
            .nodes
            .push(settings(&node_a, "every scenario; rates raised"));
        let baseline = Baseline::start(dir, "baseline").await?;
        let a = Arc::new(Dialer::new(node_a.public));
        let base = Arc::new(Dialer::new(baseline.addr));

        status(format!(
            "logging in {POOL_DEVICES} devices (argon2, on purpose slow)"
        ));
        let devices = target::login_devices(&node_a.public_url(), &users, POOL_DEVICES).await?;

        Ok(Bench {
            sizes,
            dir: dir.to_owned(),
            binary,
            users,
            admin_key,
            env,
            redis,
            node_a,
            baseline,
            a,
            base,
            devices,
            report,
            found: Findings::default(),
            redis_server,
        })
    }
}
