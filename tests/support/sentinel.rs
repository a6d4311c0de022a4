//! A Redis primary, its replica and three Sentinels on loopback, for the tests.
//!
//! The Sentinels monitor the primary as [`SERVICE`] with quorum 2, declare it down
//! after [`DOWN_AFTER`] and may retry a failover after [`FAILOVER_TIMEOUT`], so a killed
//! primary is replaced in about 1 to 3 s. Ready when the replica's link is up and every
//! Sentinel knows the replica and the two other Sentinels (found through their hello
//! messages, every 2 s). No persistence. Every process is killed and its directory
//! removed on drop, or when the test binary exits (see [`process`]).
//!
//! [`process`]: super::process

use std::{
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use super::process::{free_port_pair, info_field, process_dir, RedisProcess};
use super::redis::Reply;

/// The name the Sentinels monitor the primary under.
pub const SERVICE: &str = "tgprimary";
/// `sentinel down-after-milliseconds`.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// `sentinel failover-timeout`.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
/// How long the set may take to be ready (Sentinels find each other every 2 s).
const READY_LIMIT: Duration = Duration::from_secs(30);
const ATTEMPTS: usize = 3;

/// A running primary/replica pair watched by three Sentinels.
pub struct RedisSentinel {
    /// The primary first, then the replica (roles change with failovers).
    servers: Vec<RedisProcess>,
    sentinels: Vec<RedisProcess>,
}

impl RedisSentinel {
    /// Starts a fresh set; for tests that kill, pause or restart its processes.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing or the set does not become ready.
    pub fn start() -> Self {
        for _ in 0..ATTEMPTS {
            if let Some(set) = Self::try_start() {
                return set;
            }
        }
        panic!("the Sentinel set did not start after {ATTEMPTS} attempts");
    }

    /// One set shared by every test of this test binary, started on first use and
    /// stopped when the binary exits. Never kill, pause or restart its processes.
    pub fn shared() -> &'static RedisSentinel {
        static SHARED: OnceLock<RedisSentinel> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    fn try_start() -> Option<Self> {
        let mut servers = Vec::new();
        let primary_port = free_port_pair();
        for replica_of in [None, Some(primary_port)] {
            let port = if replica_of.is_none() {
                primary_port
            } else {
                free_port_pair()
            };
            let dir = process_dir("tg-sentinel-data-");
            let mut args = server_args(port, &dir);
            if let Some(primary) = replica_of {
                args.extend(["--replicaof", "127.0.0.1", &primary.to_string()].map(String::from));
            }
            servers.push(RedisProcess::spawn(port, dir, args)?);
        }
        let mut sentinels = Vec::new();
        for _ in 0..SENTINELS {
            let port = free_port_pair();
            let dir = process_dir("tg-sentinel-");
            let conf = dir.join("sentinel.conf");
            std::fs::write(&conf, sentinel_conf(port, &dir, primary_port))
                .expect("write sentinel.conf");
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinels.push(RedisProcess::spawn(port, dir, args)?);
        }
        let set = RedisSentinel { servers, sentinels };
        set.wait_until_ready();
        Some(set)
    }

    /// The store URL in fred's grammar:
    /// `redis-sentinel://127.0.0.1:s1/0?sentinelServiceName=tgprimary&node=127.0.0.1:s2&...`.
    pub fn url(&self) -> String {
        let mut sentinels = self.sentinels.iter().map(RedisProcess::addr);
        let first = sentinels.next().expect("a sentinel");
        let rest: String = sentinels.map(|s| format!("&node={s}")).collect();
        format!("redis-sentinel://{first}/0?sentinelServiceName={SERVICE}{rest}")
    }

    /// The two data servers, the first started as primary (roles change with failovers).
    pub fn servers(&self) -> &[RedisProcess] {
        &self.servers
    }

    /// The three Sentinels.
    pub fn sentinels(&self) -> &[RedisProcess] {
        &self.sentinels
    }

    /// The primary the Sentinels name now (`SENTINEL GET-MASTER-ADDR-BY-NAME`, asked of
    /// the first Sentinel that answers). It may be a killed one until the failover.
    pub fn primary(&self) -> &RedisProcess {
        let port = self
            .named_primary_port()
            .expect("a Sentinel names the primary");
        self.server(port)
    }

    /// The data server that is not [`primary`](Self::primary).
    pub fn replica(&self) -> &RedisProcess {
        let primary = self.primary().port();
        self.servers
            .iter()
            .find(|s| s.port() != primary)
            .expect("two data servers")
    }

    /// Kills (SIGKILL) the current primary; returns it (bring it back with
    /// [`RedisProcess::restart`]: the Sentinels make it a replica). Follow with
    /// [`wait_for_failover`](Self::wait_for_failover).
    pub fn kill_primary(&self) -> &RedisProcess {
        let primary = self.primary();
        primary.kill();
        primary
    }

    /// Waits until the Sentinels name a running primary that says `role:master` (after
    /// the old one was killed: the replica was promoted). Returns the new primary and
    /// how long that took.
    ///
    /// # Panics
    ///
    /// When that does not happen within `timeout`.
    pub fn wait_for_failover(&self, timeout: Duration) -> (&RedisProcess, Duration) {
        let start = Instant::now();
        loop {
            if let Some(port) = self.named_primary_port() {
                let server = self.server(port);
                if server.is_running()
                    && info_field(server, "replication", "role").as_deref() == Some("master")
                {
                    return (server, start.elapsed());
                }
            }
            assert!(start.elapsed() < timeout, "no failover within {timeout:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn server(&self, port: u16) -> &RedisProcess {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data server on port {port}"))
    }

    fn named_primary_port(&self) -> Option<u16> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .find_map(|s| {
                let reply = s
                    .try_command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                    .ok()?;
                let Reply::Array(Some(addr)) = reply else {
                    return None;
                };
                addr.get(1)?.text()?.parse().ok()
            })
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + READY_LIMIT;
        while !self.is_ready() {
            assert!(
                Instant::now() < deadline,
                "the Sentinel set was not ready within {READY_LIMIT:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_ready(&self) -> bool {
        let replica = &self.servers[1];
        if info_field(replica, "replication", "master_link_status").as_deref() != Some("up") {
            return false;
        }
        let count = |s: &RedisProcess, what: &str| match s.try_command(&["SENTINEL", what, SERVICE])
        {
            Ok(Reply::Array(Some(items))) => items.len(),
            _ => 0,
        };
        self.sentinels
            .iter()
            .all(|s| count(s, "SENTINELS") == SENTINELS - 1 && count(s, "REPLICAS") == 1)
    }
}

fn server_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    let dir = dir.display().to_string();
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir,
    ]
    .iter()
    .chain(&super::process::THROWAWAY_SERVER_ARGS)
    .map(|&arg| arg.to_owned())
    .collect()
}

fn sentinel_conf(port: u16, dir: &std::path::Path, primary: u16) -> String {
    format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         daemonize no\n\
         dir {dir}\n\
         sentinel monitor {SERVICE} 127.0.0.1 {primary} {QUORUM}\n\
         sentinel down-after-milliseconds {SERVICE} {down}\n\
         sentinel failover-timeout {SERVICE} {failover}\n\
         sentinel parallel-syncs {SERVICE} 1\n",
        dir = dir.display(),
        down = DOWN_AFTER.as_millis(),
        failover = FAILOVER_TIMEOUT.as_millis(),
    )
}
