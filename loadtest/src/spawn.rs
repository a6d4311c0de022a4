//! Child processes that `bench` starts: `redis-server`, ticketgate nodes and the
//! baseline. Each is held by a [`ChildGuard`] that kills it on drop, so every exit path
//! (error, panic, Ctrl-C) leaves nothing running.

use std::io::{ErrorKind, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::redis_stats::RedisStats;

/// How long a child may take to become ready.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);
/// Lines of a child's log quoted when it fails.
const LOG_TAIL_LINES: usize = 20;

/// A child process, killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: Option<PathBuf>,
}

impl ChildGuard {
    fn new(name: &str, child: Child, log: Option<PathBuf>) -> ChildGuard {
        ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The process id (0 once it was reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Asks the process to stop (SIGTERM): a ticketgate node drains its sockets with
    /// 1001 then exits.
    ///
    /// # Errors
    /// When `kill` cannot be run.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.pid();
        if pid == 0 {
            return Ok(());
        }
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("run kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed for {}", self.name);
        }
        Ok(())
    }

    /// Waits (polling) until the process exits or `limit` passes; `true` if it exited.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The last lines of the child's log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n    ");
        format!("\n  last lines of {}:\n    {tail}", path.display())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that was free a moment ago.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Variables of this process that never reach a child: they change what is measured
/// (a `RUST_BACKTRACE` makes every panic symbolize a backtrace on a worker thread, a
/// `RUST_LOG` changes how much is logged).
pub const REMOVED_VARS: [&str; 3] = ["RUST_LOG", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE"];

/// A command with every `TICKETGATE_*` variable and [`REMOVED_VARS`] of this process
/// removed, so that only what the bench sets reaches the child.
pub(crate) fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("TICKETGATE_") || REMOVED_VARS.contains(&text.as_ref()) {
            command.env_remove(name);
        }
    }
    command
}

/// Panics reported in the logs of `dir`: `(log file, how many, the first message)`.
pub fn panics_in_logs(dir: &Path) -> Vec<(String, usize, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("log") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let at: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains("panicked at"))
            .collect();
        if let Some(&first) = at.first() {
            let message = lines
                .get(first + 1)
                .copied()
                .unwrap_or("")
                .trim()
                .to_owned();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push((name, at.len(), message));
        }
    }
    found.sort();
    found
}

/// A `redis-server` on a free loopback port, without persistence.
pub struct RedisServer {
    /// Its address.
    pub addr: SocketAddr,
    guard: ChildGuard,
}

impl RedisServer {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Starts `redis-server` and waits until it answers `PING`.
    ///
    /// # Errors
    /// When `redis-server` is not installed (said plainly) or does not come up.
    pub async fn start(dir: &Path) -> anyhow::Result<RedisServer> {
        let port = free_port()?;
        let log = dir.join("redis.log");
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--logfile", &log.to_string_lossy()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "redis-server not found: install it (`apt-get install redis-server`; \
                 `bash scripts/test.sh` installs it too)"
            ),
            Err(e) => return Err(e).context("start redis-server"),
        };
        let mut guard = ChildGuard::new("redis-server", child, Some(log));
        let stats = RedisStats::at(loopback(port));
        let deadline = Instant::now() + STARTUP_LIMIT;
        while !stats.answers_ping() {
            if guard.exited().is_some() || Instant::now() > deadline {
                bail!(
                    "redis-server did not come up on port {port}{}",
                    guard.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(RedisServer {
            addr: loopback(port),
            guard,
        })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

/// The release `ticketgate` binary next to this executable.
///
/// # Errors
/// When it is not there: the message says how to build it.
pub fn ticketgate_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the flood executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    let binary = dir.join("ticketgate");
    if !binary.is_file() {
        bail!(
            "{} not found: build both binaries first with\n    \
             cargo build --release -j 2 -p ticketgate -p ticketgate-loadtest",
            binary.display()
        );
    }
    Ok(binary)
}

/// Adds users to a users file with `ticketgate user add NAME --password-stdin`, one
/// process per user (each hashes with argon2, on purpose slow).
///
/// # Errors
/// When a `user add` fails; its output is quoted.
pub fn add_users(
    binary: &Path,
    users_file: &Path,
    names: &[String],
    password: &str,
) -> anyhow::Result<()> {
    let bar = crate::progress::counted("users file (argon2)", names.len() as u64);
    for name in names {
        let mut child = clean_command(binary)
            .args(["user", "add", name, "--password-stdin"])
            .env("TICKETGATE_USERS_FILE", users_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {} user add", binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(password.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "ticketgate user add {name} failed: {}{}",
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// A ticketgate node running as a child process (`ticketgate serve`).
pub struct Node {
    /// Its name (also its `TICKETGATE_NODE_ID`).
    pub name: String,
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The settings it was started with, as `(variable, value)`.
    pub env: Vec<(String, String)>,
    guard: ChildGuard,
}

impl Node {
    /// Starts `ticketgate serve` with `env` plus its own listeners and node id, and
    /// waits for `GET /readyz`.
    ///
    /// # Errors
    /// When it exits or is not ready within 20 s; its log is quoted.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        name: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Node> {
        let public = loopback(free_port()?);
        let admin = loopback(free_port()?);
        let mut env = env.to_vec();
        env.push(("TICKETGATE_LISTEN".into(), public.to_string()));
        env.push(("TICKETGATE_ADMIN_LISTEN".into(), admin.to_string()));
        env.push(("TICKETGATE_NODE_ID".into(), name.to_owned()));
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).context("create node log")?;
        let child = clean_command(binary)
            .arg("serve")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start {} serve", binary.display()))?;
        let mut guard = ChildGuard::new(name, child, Some(log));
        let ready_url = format!("http://{public}/readyz");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Some(status) = guard.exited() {
                bail!(
                    "ticketgate node {name} exited ({status}){}",
                    guard.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "ticketgate node {name} not ready within 20 s{}",
                    guard.log_tail()
                );
            }
            if let Ok(response) = http.get(&ready_url).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Node {
            name: name.to_owned(),
            public,
            admin,
            env,
            guard,
        })
    }

    /// `http://127.0.0.1:<public port>`.
    pub fn public_url(&self) -> String {
        format!("http://{}", self.public)
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// SIGTERM: the node closes its sockets with 1001 and exits.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.guard.terminate()
    }

    /// Waits until the node's process has exited; `true` if it did within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        self.guard.wait_exit(limit).await
    }
}

/// The baseline server (`flood baseline-server`) as a child process.
pub struct Baseline {
    /// Its listener.
    pub addr: SocketAddr,
    guard: ChildGuard,
}

impl Baseline {
    /// Starts this executable as `baseline-server` on a free port and waits until it
    /// accepts connections; its output goes to `<dir>/<name>.log`.
    ///
    /// # Errors
    /// When it exits or does not listen within 20 s.
    pub async fn start(dir: &Path, name: &str) -> anyhow::Result<Baseline> {
        let exe = std::env::current_exe().context("locate the flood executable")?;
        let addr = loopback(free_port()?);
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).context("create baseline log")?;
        let child = clean_command(&exe)
            .args(["baseline-server", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("start the baseline server")?;
        let mut guard = ChildGuard::new(name, child, Some(log));
        let deadline = Instant::now() + STARTUP_LIMIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if guard.exited().is_some() || Instant::now() > deadline {
                bail!("the baseline server did not come up{}", guard.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Baseline { addr, guard })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}
