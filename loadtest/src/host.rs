//! Facts about this machine that the figures depend on: the file-descriptor limit
//! (raised as far as the OS allows; child processes inherit it), a process's resident
//! memory, the number of cores.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use serde::Serialize;

/// What the harness got for `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FdLimit {
    /// The soft limit before raising it.
    pub before: u64,
    /// The soft limit now (inherited by every child process started after this).
    pub now: u64,
    /// The hard limit: what an unprivileged process can reach.
    pub hard: u64,
}

impl FdLimit {
    /// Roughly how many sockets one process can hold, leaving some room for files,
    /// Redis connections and the HTTP pools.
    pub fn socket_room(&self) -> u64 {
        self.now.saturating_sub(512)
    }
}

/// Raises the soft file-descriptor limit to the hard limit and says what it got, and
/// clearly when that is not enough for `wanted` sockets.
pub fn raise_fd_limit(wanted: u64) -> FdLimit {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    let now = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => now,
        Err(e) => {
            crate::progress::status(format!(
                "cannot raise the file-descriptor limit ({e}); it stays at {before}"
            ));
            before
        }
    };
    let limit = FdLimit { before, now, hard };
    crate::progress::status(format!(
        "file descriptors: soft limit {before} -> {now} (hard limit {hard})"
    ));
    if limit.socket_room() < wanted {
        crate::progress::status(format!(
            "WARNING: {wanted} sockets need a file-descriptor limit above {}; this OS allows {now}. \
             Raise the hard limit (ulimit -Hn, /etc/security/limits.conf, systemd LimitNOFILE) \
             or run with fewer sockets; the idle figures will be capped",
            wanted + 512
        ));
    }
    limit
}

/// The resident set size of a process, KiB (`VmRSS` in `/proc/<pid>/status`).
///
/// # Errors
/// When the process is gone or `/proc` is not there (not Linux).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("{path} has no VmRSS line"))
}

/// The RSS of a process once it has settled: waits `settle`, then reads it.
///
/// # Errors
/// As [`rss_kib`].
pub async fn settled_rss_kib(pid: u32, settle: Duration) -> anyhow::Result<u64> {
    tokio::time::sleep(settle).await;
    rss_kib(pid)
}

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// CPU time (user + system) a process has used so far.
///
/// # Errors
/// When the process is gone or `/proc` is not there.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    read_cpu_time(&format!("/proc/{pid}/stat"))
}

fn read_cpu_time(path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name may hold spaces; the fields after it are plain numbers.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path}: no command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime) are the 12th and 13th after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("{path}: field {} missing", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// Measures the CPU a run costs the server process and this harness.
pub struct CpuMeter {
    server: Option<(u32, Duration)>,
    harness: Option<Duration>,
    redis: Option<(u32, Duration)>,
}

/// CPU per operation of a run, microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerOp {
    /// The server process (ticketgate node or baseline).
    pub server_us: Option<f64>,
    /// This harness (the clients).
    pub harness_us: Option<f64>,
    /// The deployment's Redis, when the run was measured with
    /// [`CpuMeter::with_redis`]: the third process on the same cores.
    pub redis_us: Option<f64>,
}

impl CpuMeter {
    /// Starts measuring; `server_pid` is the process serving the run.
    pub fn start(server_pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            server: server_pid.and_then(|pid| cpu_time(pid).ok().map(|t| (pid, t))),
            harness: read_cpu_time("/proc/self/stat").ok(),
            redis: None,
        }
    }

    /// Also measures the Redis server `redis_pid` (same machine).
    pub fn with_redis(mut self, redis_pid: Option<u32>) -> CpuMeter {
        self.redis = redis_pid.and_then(|pid| cpu_time(pid).ok().map(|t| (pid, t)));
        self
    }

    /// CPU used since the start, divided by `ops`.
    pub fn per_op(&self, ops: u64) -> CpuPerOp {
        let per = |used: Duration| {
            if ops == 0 {
                None
            } else {
                Some(used.as_secs_f64() * 1e6 / ops as f64)
            }
        };
        let of = |measured: Option<(u32, Duration)>| {
            measured.and_then(|(pid, before)| {
                cpu_time(pid)
                    .ok()
                    .and_then(|now| per(now.saturating_sub(before)))
            })
        };
        CpuPerOp {
            server_us: of(self.server),
            redis_us: of(self.redis),
            harness_us: self.harness.and_then(|before| {
                read_cpu_time("/proc/self/stat")
                    .ok()
                    .and_then(|now| per(now.saturating_sub(before)))
            }),
        }
    }
}

/// `TcpExt: ListenDrops` from `/proc/net/netstat`: connection attempts the kernel
/// dropped, mostly because a listener's accept queue was full. A dropped SYN is
/// retried after 1 s, then 3 s: such latencies come from here, not from the servers.
pub fn listen_drops() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(name, _)| *name == "ListenDrops")
        .and_then(|(_, value)| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_figures_are_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("rss") > 0);
        cpu_time(pid).expect("cpu time");
        let meter = CpuMeter::start(Some(pid));
        let per_op = meter.per_op(10);
        assert!(per_op.server_us.is_some() && per_op.harness_us.is_some());
        assert!(listen_drops().is_some());
    }
}
