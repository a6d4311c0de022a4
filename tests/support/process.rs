//! One Redis process (a Cluster node, a Sentinel-monitored server or a Sentinel) under a
//! watchdog, for the Cluster and Sentinel fixtures.
//!
//! Each process runs under a small `sh` watchdog whose stdin is a pipe from the test
//! process: when the pipe closes (the fixture is dropped, or the test binary exits or
//! dies in any way, even with SIGKILL) the watchdog kills the server and removes its
//! directory. So a fixture kept in a `static` for a whole test binary (statics are never
//! dropped) still leaves nothing behind. Signals go through `kill(1)`: the workspace
//! forbids `unsafe`, so there is no `libc::kill`.

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use super::redis::{try_command_at, Reply};

/// Arguments of every throwaway server of the fixtures: nothing on disk, in the
/// foreground, and a replica's first sync at once (the default waits 5 s for more
/// replicas to share one transfer).
pub const THROWAWAY_SERVER_ARGS: [&str; 8] = [
    "--save",
    "",
    "--appendonly",
    "no",
    "--daemonize",
    "no",
    "--repl-diskless-sync-delay",
    "0",
];

/// How long a process may take to answer `PING` after it starts.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// Cluster nodes listen on `port + 10000` too (the cluster bus).
const BUS_OFFSET: u16 = 10_000;
/// The highest port whose bus port still exists.
const MAX_PORT: u16 = u16::MAX - BUS_OFFSET;

/// The watchdog: starts `redis-server "$@"`, prints its pid, waits for a line (or EOF)
/// on stdin, then kills it and removes its directory (unless the line was `keep`: a
/// restart on the same directory).
const WATCHDOG: &str = r#"dir=$1; shift
redis-server "$@" </dev/null >>"$dir/redis.log" 2>&1 &
p=$!
echo "$p"
read -r cmd
kill -9 "$p" 2>/dev/null
wait "$p" 2>/dev/null
[ "$cmd" = keep ] || rm -rf "$dir"
"#;

/// One Redis process on `127.0.0.1:<port>`, killed (and its directory removed) on drop.
///
/// Every method takes `&self`, so a fixture can be shared (`&'static`, `Arc`) by tasks
/// that kill, pause or restart its processes.
pub struct RedisProcess {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    running: Mutex<Running>,
}

struct Running {
    watchdog: Option<(Child, ChildStdin)>,
    pid: u32,
}

impl RedisProcess {
    /// Starts `redis-server <args>` in `dir` (which the process then owns: it is removed
    /// when the process is dropped) and waits until it answers `PING` on `port`.
    ///
    /// `None` when it did not come up (its port was taken meanwhile): the caller retries
    /// on other ports.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed (never skips silently).
    pub fn spawn(port: u16, dir: PathBuf, args: Vec<String>) -> Option<Self> {
        require_redis_server();
        let running = start_watchdog(&dir, &args);
        let process = RedisProcess {
            port,
            dir,
            args,
            running: Mutex::new(running),
        };
        process.wait_until_ready().then_some(process)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's process id (changes on [`restart`](Self::restart)).
    pub fn pid(&self) -> u32 {
        self.running.lock().unwrap().pid
    }

    /// Its directory (config, `nodes.conf`, `redis.log`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sends one command and reads its reply.
    ///
    /// # Panics
    ///
    /// On any I/O or protocol error (the process is down, or paused past 5 s).
    pub fn command(&self, args: &[&str]) -> Reply {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis on port {}, {args:?}: {e}", self.port))
    }

    /// [`command`](Self::command) that says what went wrong instead of panicking.
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<Reply> {
        try_command_at(self.port, args)
    }

    /// Whether the server process is alive (a paused one is).
    pub fn is_running(&self) -> bool {
        process_alive(self.pid())
    }

    /// Kills the server with SIGKILL (no shutdown, no last write) and waits until it is
    /// gone. Its directory stays, so [`restart`](Self::restart) brings the same node back.
    pub fn kill(&self) {
        let pid = self.pid();
        signal(pid, "KILL");
        let deadline = Instant::now() + STARTUP_LIMIT;
        while process_alive(pid) {
            assert!(Instant::now() < deadline, "pid {pid} survived SIGKILL");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the process with SIGSTOP: it holds its sockets but answers nothing.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// Resumes a process stopped by [`freeze`](Self::freeze) (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Freezes the process for `length`, then resumes it; returns at once (a thread
    /// sends SIGCONT). Join the handle to wait for the resume.
    pub fn pause(&self, length: Duration) -> thread::JoinHandle<()> {
        let pid = self.pid();
        signal(pid, "STOP");
        thread::spawn(move || {
            thread::sleep(length);
            signal(pid, "CONT");
        })
    }

    /// Starts the server again with the same port, arguments and directory (after
    /// [`kill`](Self::kill); a running one is killed first). A Cluster node comes back
    /// with its `nodes.conf` and rejoins; a Sentinel-monitored server is turned into a
    /// replica by the Sentinels.
    ///
    /// # Panics
    ///
    /// When it does not answer `PING` again.
    pub fn restart(&self) {
        {
            let mut running = self.running.lock().unwrap();
            if let Some((mut child, mut stdin)) = running.watchdog.take() {
                let _ = stdin.write_all(b"keep\n");
                drop(stdin);
                let _ = child.wait();
            }
            *running = start_watchdog(&self.dir, &self.args);
        }
        assert!(
            self.wait_until_ready(),
            "redis on port {} did not come back",
            self.port
        );
    }

    /// Polls with `PING` until the server answers (a Cluster node answers before it
    /// serves slots); `false` if the process died or the time ran out.
    fn wait_until_ready(&self) -> bool {
        let deadline = Instant::now() + STARTUP_LIMIT;
        while Instant::now() < deadline {
            if !self.is_running() {
                return false;
            }
            if let Ok(Reply::Simple(pong)) = self.try_command(&["PING"]) {
                if pong == "PONG" {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((mut child, stdin)) = running.watchdog.take() {
            // EOF: the watchdog kills the server (paused or not), reaps it, removes the
            // directory.
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn start_watchdog(dir: &std::path::Path, args: &[String]) -> Running {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sh (the watchdog of a redis-server)");
    let stdin = child.stdin.take().expect("watchdog stdin");
    let stdout = child.stdout.take().expect("watchdog stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the pid of redis-server");
    let pid = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("watchdog printed {line:?}, not a pid"));
    Running {
        watchdog: Some((child, stdin)),
        pid,
    }
}

/// Fails loudly, once per test binary, when `redis-server` is missing.
fn require_redis_server() {
    static FOUND: OnceLock<()> = OnceLock::new();
    FOUND.get_or_init(|| {
        for program in ["redis-server", "redis-cli"] {
            match Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
            {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                    "\n\n*** {program} not found: run `bash scripts/test.sh`, which installs \
                     redis-server and redis-tools ***\n\n"
                ),
                Err(e) => panic!("cannot run {program}: {e}"),
            }
        }
    });
}

/// Sends `SIG<name>` to `pid` with `kill(1)`.
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("run kill(1)");
    // A process already gone is not an error here.
    let _ = status;
}

/// Alive and not a zombie (a killed server stays a zombie until its watchdog reaps it).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// A loopback port that is free, as is `port + 10000` (a Cluster node's bus), both at
/// most 65535. Another process may take it before redis binds it; the fixtures then
/// retry with new ports.
pub fn free_port_pair() -> u16 {
    for _ in 0..1000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral loopback port");
        // Ephemeral ports mostly lie above 32768; fold them into 10000..=55535.
        let port = if port > MAX_PORT {
            10_000 + port % (MAX_PORT - 10_000)
        } else {
            port
        };
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            return port;
        }
    }
    panic!("no free loopback port pair (port, port + 10000)");
}

/// A fresh directory for one process, kept on disk (its watchdog removes it).
pub fn process_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
        .keep()
}

/// The lines `field:value` of an `INFO` section, as a lookup.
pub fn info_field(process: &RedisProcess, section: &str, field: &str) -> Option<String> {
    let text = process.try_command(&["INFO", section]).ok()?.text()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim().to_owned())
    })
}
