//! What a run costs Redis, asked from outside over raw RESP (no client library):
//! `INFO commandstats` before and after a run for the commands per operation (script
//! calls and the commands run inside them), and a short `MONITOR` probe for the round
//! trips per operation (the commands a node sent itself, not those run by a script).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;

const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this many per operation, a command also seen while idle is background.
const BACKGROUND_SHARE: f64 = 0.1;
/// How often the monitor thread looks at its stop flag.
const MONITOR_POLL: Duration = Duration::from_millis(100);

/// A Redis server to ask about its commands.
#[derive(Debug, Clone, Copy)]
pub struct RedisStats {
    addr: SocketAddr,
}

/// Calls per command, e.g. `evalsha → 3`, `getdel → 3`.
pub type CommandCounts = BTreeMap<String, u64>;

impl RedisStats {
    /// For `redis://host:port` (no password, no TLS: the harness's own Redis).
    ///
    /// # Errors
    /// When the URL is not `redis://IP:PORT`.
    pub fn from_url(url: &str) -> anyhow::Result<RedisStats> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| anyhow!("{url}: expected redis://IP:PORT"))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr = hostport
            .parse()
            .with_context(|| format!("{url}: expected redis://IP:PORT"))?;
        Ok(RedisStats { addr })
    }

    /// A server at `addr`.
    pub fn at(addr: SocketAddr) -> RedisStats {
        RedisStats { addr }
    }

    /// Whether the server answers `PING`.
    pub fn answers_ping(&self) -> bool {
        matches!(self.command(&["PING"]), Ok(reply) if reply == "PONG")
    }

    /// `INFO commandstats` as calls per command. Commands run inside scripts are
    /// counted too; `info` itself is left out.
    ///
    /// # Errors
    /// I/O or protocol errors.
    pub fn command_counts(&self) -> anyhow::Result<CommandCounts> {
        let info = self.command(&["INFO", "commandstats"])?;
        Ok(info
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .filter(|(name, _)| name != "info")
            .collect())
    }

    /// Takes a commandstats snapshot to measure a run against.
    ///
    /// # Errors
    /// As [`RedisStats::command_counts`].
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            stats: *self,
            before: self.command_counts()?,
        })
    }

    /// Starts a `MONITOR` probe; [`Monitor::finish`] stops it and counts what it saw.
    ///
    /// # Errors
    /// When the connection or the `MONITOR` command fails.
    pub fn monitor(&self) -> anyhow::Result<Monitor> {
        let stream = self.open()?;
        stream.set_read_timeout(Some(MONITOR_POLL))?;
        (&stream).write_all(b"MONITOR\r\n")?;
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        read_line_patiently(&mut reader, &mut first)?;
        if first.trim_end() != "+OK" {
            bail!("MONITOR answered {first:?}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || collect_monitor(reader, &flag));
        Ok(Monitor {
            stop,
            thread,
            started: Instant::now(),
        })
    }

    /// `used_memory` of `INFO memory`, in bytes.
    ///
    /// # Errors
    /// When Redis does not answer or the field is missing.
    pub fn used_memory(&self) -> anyhow::Result<u64> {
        let info = self.command(&["INFO", "memory"])?;
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("INFO memory has no used_memory"))
    }

    fn open(&self) -> anyhow::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .with_context(|| format!("connect to redis at {}", self.addr))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// Sends one command and reads a simple-string or bulk reply as text.
    fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let stream = self.open()?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        (&stream).write_all(&request)?;
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end_matches("\r\n");
        match line.split_at_checked(1) {
            Some(("+", text)) => Ok(text.to_owned()),
            Some(("-", err)) => bail!("redis error: {err}"),
            Some(("$", len)) => {
                let len: usize = len.parse().context("bulk length")?;
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Ok(String::from_utf8_lossy(&data).into_owned())
            }
            _ => bail!("unexpected redis reply {line:?}"),
        }
    }
}

/// Reads a line, retrying on read timeouts (the socket polls for a stop flag).
fn read_line_patiently(reader: &mut impl BufRead, line: &mut String) -> std::io::Result<usize> {
    for _ in 0..50 {
        match reader.read_line(line) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            other => return other,
        }
    }
    Err(std::io::Error::new(ErrorKind::TimedOut, "no answer"))
}

/// The difference of two [`RedisStats::command_counts`] snapshots.
pub fn delta(before: &CommandCounts, after: &CommandCounts) -> CommandCounts {
    after
        .iter()
        .filter_map(|(name, &calls)| {
            let d = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
            (d > 0).then(|| (name.clone(), d))
        })
        .collect()
}

/// Commandstats before a run.
pub struct Snapshot {
    stats: RedisStats,
    before: CommandCounts,
}

impl Snapshot {
    /// The cost of the `ops` operations run since the snapshot.
    ///
    /// # Errors
    /// As [`RedisStats::command_counts`].
    pub fn cost(&self, op: &str, ops: u64) -> anyhow::Result<RedisCost> {
        let after = self.stats.command_counts()?;
        Ok(RedisCost::from_delta(op, ops, &delta(&self.before, &after)))
    }
}

/// A running `MONITOR` probe.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<MonitorCounts>,
    started: Instant,
}

/// What a `MONITOR` probe saw.
#[derive(Debug, Clone, Default)]
pub struct MonitorCounts {
    /// Commands sent by clients (round trips), by name.
    pub top_level: CommandCounts,
    /// Commands run inside scripts, by name.
    pub in_scripts: CommandCounts,
    /// How long the probe listened.
    pub elapsed: Duration,
}

impl MonitorCounts {
    /// Client commands per second.
    pub fn top_level_rate(&self) -> f64 {
        let n: u64 = self.top_level.values().sum();
        n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Monitor {
    /// Stops the probe and returns its counts.
    pub fn finish(self) -> MonitorCounts {
        self.stop.store(true, Ordering::Relaxed);
        let mut counts = self.thread.join().unwrap_or_default();
        counts.elapsed = self.started.elapsed();
        counts
    }
}

/// Reads monitor lines until `stop`: `+1700000000.123456 [0 127.0.0.1:5555] "evalsha" ...`
/// for a client's command, `[0 lua] "getdel" ...` for one run by a script.
fn collect_monitor(mut reader: BufReader<TcpStream>, stop: &AtomicBool) -> MonitorCounts {
    let mut counts = MonitorCounts::default();
    let mut line = String::new();
    // Lines already in flight when the stop flag flips are still read: the socket is
    // drained until a poll comes back empty.
    let mut stopping = false;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                let Some((source, command)) = parse_monitor_line(&line) else {
                    continue;
                };
                let bucket = if source.ends_with("lua") {
                    &mut counts.in_scripts
                } else {
                    &mut counts.top_level
                };
                *bucket.entry(command).or_default() += 1;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stopping {
                    break;
                }
                stopping = stop.load(Ordering::Relaxed);
            }
            Err(_) => break,
        }
    }
    counts
}

/// `(source, command)` of a monitor line; the command lower-cased.
fn parse_monitor_line(line: &str) -> Option<(String, String)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let source = line[open + 1..close].to_owned();
    let rest = &line[close + 1..];
    let start = rest.find('"')? + 1;
    let end = start + rest[start..].find('"')?;
    Some((source, rest[start..end].to_ascii_lowercase()))
}

/// The cost of one kind of operation in Redis commands.
#[derive(Debug, Clone, Serialize)]
pub struct RedisCost {
    /// The operation: `mint`, `admit`, `forged`, `expired`, `replay`.
    pub op: String,
    /// How many operations the run made.
    pub ops: u64,
    /// Round trips per operation (commands a node sent itself), from a `MONITOR` probe;
    /// `None` when no probe ran.
    pub round_trips_per_op: Option<f64>,
    /// The same, per command name (background left out).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub round_trips_by_command: BTreeMap<String, f64>,
    /// Every command per operation, script-internal ones included, from commandstats.
    pub commands_per_op: f64,
    /// The same, per command name.
    pub breakdown: BTreeMap<String, f64>,
}

impl RedisCost {
    /// The cost of `ops` operations that moved commandstats by `delta`.
    pub fn from_delta(op: &str, ops: u64, delta: &CommandCounts) -> RedisCost {
        let per = |n: u64| if ops == 0 { 0.0 } else { n as f64 / ops as f64 };
        RedisCost {
            op: op.to_owned(),
            ops,
            round_trips_per_op: None,
            round_trips_by_command: BTreeMap::new(),
            commands_per_op: per(delta.values().sum()),
            breakdown: delta.iter().map(|(k, &v)| (k.clone(), per(v))).collect(),
        }
    }

    /// Adds the round trips a probe of `probe_ops` operations saw. Commands the nodes
    /// also send when idle (`background`, e.g. cross-node heartbeats) are left out when
    /// they are rare in the probe (under one per ten operations): they are not on the
    /// operation's path. A command on the path runs about once per operation or more,
    /// so it is never left out.
    pub fn with_round_trips(
        mut self,
        probe: &MonitorCounts,
        probe_ops: u64,
        background: &MonitorCounts,
    ) -> RedisCost {
        if probe_ops == 0 {
            return self;
        }
        let mut own = 0;
        self.round_trips_by_command.clear();
        for (name, &n) in &probe.top_level {
            let per_op = n as f64 / probe_ops as f64;
            if background.top_level.contains_key(name) && per_op < BACKGROUND_SHARE {
                continue;
            }
            own += n;
            self.round_trips_by_command.insert(name.clone(), per_op);
        }
        self.round_trips_per_op = Some(own as f64 / probe_ops as f64);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_split_into_source_and_command() {
        let client = "+1700000000.123456 [0 127.0.0.1:5555] \"EVALSHA\" \"abc\" \"3\"\r\n";
        let script = "+1700000000.123457 [0 lua] \"getdel\" \"tg:{s}:ticket:x\"\r\n";
        assert_eq!(
            parse_monitor_line(client),
            Some(("0 127.0.0.1:5555".into(), "evalsha".into()))
        );
        assert_eq!(
            parse_monitor_line(script),
            Some(("0 lua".into(), "getdel".into()))
        );
    }

    #[test]
    fn deltas_keep_only_commands_that_ran() {
        let before = CommandCounts::from([("get".into(), 3), ("set".into(), 1)]);
        let after = CommandCounts::from([("get".into(), 3), ("set".into(), 4), ("del".into(), 2)]);
        let d = delta(&before, &after);
        assert_eq!(
            d,
            CommandCounts::from([("set".into(), 3), ("del".into(), 2)])
        );
        let cost = RedisCost::from_delta("mint", 2, &d);
        assert!((cost.commands_per_op - 2.5).abs() < 1e-9);
    }
}
