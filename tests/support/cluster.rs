//! A Redis Cluster of 3 primaries and 3 replicas on loopback, for the tests.
//!
//! Six `redis-server --cluster-enabled yes` processes on free ports (each with its bus on
//! `port + 10000`), joined by `redis-cli --cluster create --cluster-replicas 1`; ready
//! when every node says `cluster_state:ok`, knows all six, and every replica's link to
//! its primary is up. No persistence (`--save ''`, no AOF). Every process is killed and
//! its directory removed on drop, or when the test binary exits (see [`process`]).
//!
//! [`RedisCluster::shared`] is one cluster per test binary for tests that only use it;
//! a test that kills, pauses or restarts nodes starts its own with
//! [`RedisCluster::start`].
//!
//! [`process`]: super::process

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use super::process::{free_port_pair, info_field, process_dir, RedisProcess};
use super::redis::Reply;

/// Primaries; each gets one replica.
const PRIMARIES: usize = 3;
/// `cluster-node-timeout` of [`RedisCluster::start`]: a killed primary is replaced in
/// about this plus a second (the replica's election).
pub const FAST_NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// `cluster-node-timeout` of the shared cluster: long enough that a busy machine never
/// makes it fail over by mistake (no test kills its nodes).
const SHARED_NODE_TIMEOUT: Duration = Duration::from_millis(5000);
/// How long the cluster may take to form.
const FORM_LIMIT: Duration = Duration::from_secs(30);
/// Fresh port sets tried when a port was taken before a node bound it.
const ATTEMPTS: usize = 3;

/// Slots of Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A running 3 + 3 Redis Cluster.
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
}

impl RedisCluster {
    /// Starts a fresh cluster whose failovers are fast ([`FAST_NODE_TIMEOUT`]); for
    /// tests that kill, pause or restart nodes.
    ///
    /// # Panics
    ///
    /// When `redis-server`/`redis-cli` are missing or the cluster does not form.
    pub fn start() -> Self {
        Self::start_with_node_timeout(FAST_NODE_TIMEOUT)
    }

    /// One cluster shared by every test of this test binary, started on first use and
    /// stopped when the binary exits. Never kill, pause or restart its nodes.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| Self::start_with_node_timeout(SHARED_NODE_TIMEOUT))
    }

    /// Starts a cluster with this `cluster-node-timeout`.
    pub fn start_with_node_timeout(node_timeout: Duration) -> Self {
        for _ in 0..ATTEMPTS {
            if let Some(cluster) = Self::try_start(node_timeout) {
                return cluster;
            }
        }
        panic!("the Redis Cluster did not start after {ATTEMPTS} attempts");
    }

    fn try_start(node_timeout: Duration) -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..PRIMARIES * 2 {
            let port = free_port_pair();
            let dir = process_dir("tg-cluster-");
            let args = node_args(port, &dir, node_timeout);
            nodes.push(RedisProcess::spawn(port, dir, args)?);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(nodes.iter().map(RedisProcess::addr));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_until_healthy(FORM_LIMIT);
        Some(cluster)
    }

    /// The store URL in fred's grammar:
    /// `redis-cluster://127.0.0.1:p1?node=127.0.0.1:p2&node=...` (every node).
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(RedisProcess::addr);
        let first = nodes.next().expect("a node");
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    /// Every node, primaries and replicas (roles change with failovers).
    pub fn nodes(&self) -> &[RedisProcess] {
        &self.nodes
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &RedisProcess {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// Nodes that are running (not killed).
    pub fn live_nodes(&self) -> impl Iterator<Item = &RedisProcess> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, hash tags included).
    pub fn slot_of(&self, key: &str) -> u16 {
        for node in self.live_nodes() {
            if let Ok(Reply::Integer(slot)) = node.try_command(&["CLUSTER", "KEYSLOT", key]) {
                return u16::try_from(slot).expect("slot in range");
            }
        }
        panic!("no cluster node answered CLUSTER KEYSLOT");
    }

    /// The primary serving `slot` now, as a live node sees the cluster.
    pub fn primary_of_slot(&self, slot: u16) -> &RedisProcess {
        self.slot_owner(slot)
            .unwrap_or_else(|| panic!("no live primary serves slot {slot}"))
    }

    /// The primary serving `key`'s slot now.
    pub fn primary_of_key(&self, key: &str) -> &RedisProcess {
        self.primary_of_slot(self.slot_of(key))
    }

    /// Kills (SIGKILL) the primary serving `key`'s slot; returns it (restart it with
    /// [`RedisProcess::restart`]). Follow with [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_primary_of_key(&self, key: &str) -> &RedisProcess {
        let primary = self.primary_of_key(key);
        primary.kill();
        primary
    }

    /// The primaries now (one per slot range), as a live node sees the cluster.
    pub fn primaries(&self) -> Vec<&RedisProcess> {
        let mut ports: Vec<u16> = self.slot_ranges().into_iter().map(|r| r.2).collect();
        ports.sort_unstable();
        ports.dedup();
        ports.into_iter().map(|p| self.node(p)).collect()
    }

    /// Waits until every slot is served by a running primary again and every running
    /// node says `cluster_state:ok` (after a primary was killed: its replica took over).
    /// Returns how long that took.
    ///
    /// # Panics
    ///
    /// When that does not happen within `timeout`.
    pub fn wait_for_failover(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        while !self.is_healthy(false) {
            assert!(
                start.elapsed() < timeout,
                "the cluster did not recover within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// `INFO commandstats` calls per command, summed over the running nodes.
    pub fn command_stats(&self) -> HashMap<String, u64> {
        let mut total = HashMap::new();
        for node in self.live_nodes() {
            for (name, calls) in super::redis::command_stats_at(node.port()) {
                *total.entry(name).or_insert(0) += calls;
            }
        }
        total
    }

    /// Runs `command` on every running primary (e.g. `SCRIPT FLUSH`, `CONFIG RESETSTAT`).
    pub fn on_every_primary(&self, command: &[&str]) -> Vec<Reply> {
        self.primaries()
            .into_iter()
            .map(|p| p.command(command))
            .collect()
    }

    fn wait_until_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.is_healthy(true) {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become healthy within {limit:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every running node: `cluster_state:ok`, knows all nodes; every slot has a running
    /// primary; with `replicas`, every primary has a replica whose link is up.
    fn is_healthy(&self, replicas: bool) -> bool {
        let live: Vec<&RedisProcess> = self.live_nodes().collect();
        for node in &live {
            let Ok(Some(info)) = node.try_command(&["CLUSTER", "INFO"]).map(|r| r.text()) else {
                return false;
            };
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
                    .map(str::to_owned)
            };
            if field("cluster_state").as_deref() != Some("ok")
                || field("cluster_known_nodes").as_deref() != Some(&self.nodes.len().to_string())
            {
                return false;
            }
        }
        let ranges = self.slot_ranges();
        let covered: u32 = ranges.iter().map(|r| u32::from(r.1 - r.0) + 1).sum();
        if covered != u32::from(SLOTS) || ranges.iter().any(|r| !self.node(r.2).is_running()) {
            return false;
        }
        if replicas {
            for node in &live {
                if info_field(node, "replication", "role").as_deref() == Some("slave")
                    && info_field(node, "replication", "master_link_status").as_deref()
                        != Some("up")
                {
                    return false;
                }
            }
            let primaries = self.primaries();
            if primaries.len() != PRIMARIES
                || primaries.iter().any(|p| {
                    info_field(p, "replication", "connected_slaves").as_deref() != Some("1")
                })
            {
                return false;
            }
        }
        true
    }

    /// `(first slot, last slot, primary port)` from `CLUSTER SLOTS` on a running node.
    fn slot_ranges(&self) -> Vec<(u16, u16, u16)> {
        for node in self.live_nodes() {
            let Ok(Reply::Array(Some(ranges))) = node.try_command(&["CLUSTER", "SLOTS"]) else {
                continue;
            };
            return ranges.iter().filter_map(parse_range).collect();
        }
        Vec::new()
    }

    fn slot_owner(&self, slot: u16) -> Option<&RedisProcess> {
        self.slot_ranges()
            .into_iter()
            .find(|r| r.0 <= slot && slot <= r.1)
            .map(|r| self.node(r.2))
            .filter(|n| n.is_running())
    }
}

fn parse_range(range: &Reply) -> Option<(u16, u16, u16)> {
    let Reply::Array(Some(fields)) = range else {
        return None;
    };
    let int = |r: &Reply| match r {
        Reply::Integer(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let Reply::Array(Some(primary)) = fields.get(2)? else {
        return None;
    };
    Some((
        int(fields.first()?)?,
        int(fields.get(1)?)?,
        int(primary.get(1)?)?,
    ))
}

fn node_args(port: u16, dir: &std::path::Path, node_timeout: Duration) -> Vec<String> {
    let dir = dir.display().to_string();
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        &node_timeout.as_millis().to_string(),
    ]
    .iter()
    .chain(&super::process::THROWAWAY_SERVER_ARGS)
    .map(|&arg| arg.to_owned())
    .collect()
}
