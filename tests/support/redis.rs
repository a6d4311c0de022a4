//! A real `redis-server` process on a free loopback port, killed on drop.
//!
//! Talks to it over raw RESP on a `TcpStream` (no client library), so the harness can
//! check on the store from outside: is it up, what ran, flush its scripts.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

const REDIS_SERVER: &str = "redis-server";
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Fresh ports tried when a freshly chosen one is taken before redis binds it.
const PORT_ATTEMPTS: usize = 5;

/// One `redis-server` child process.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

/// A RESP reply, as much of it as the tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed (never skips silently), or it does not come
    /// up.
    pub fn start() -> Self {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: Some(spawn(port)),
            };
            if server.wait_until_ready() {
                return server;
            }
            server.stop();
        }
        panic!("redis-server did not come up after {PORT_ATTEMPTS} attempts");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and waits for it to exit. Its data is gone (no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port));
        assert!(
            self.wait_until_ready(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Sends one command and reads its reply.
    ///
    /// # Panics
    ///
    /// On any I/O or protocol error (this is a test harness).
    pub fn command(&self, args: &[&str]) -> Reply {
        command_at(self.port, args)
    }

    /// `INFO commandstats` as calls per command: `"evalsha" → 3`, `"script|load" → 1`.
    ///
    /// Counts include commands run from inside scripts.
    pub fn command_stats(&self) -> HashMap<String, u64> {
        command_stats_at(self.port)
    }

    fn open(&self) -> std::io::Result<TcpStream> {
        open(self.port)
    }

    /// Polls with `PING` until the server answers; `false` if the process exited
    /// (its port was taken) or the time ran out.
    fn wait_until_ready(&mut self) -> bool {
        let deadline = Instant::now() + STARTUP_LIMIT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_exited)) = child.try_wait() {
                    return false;
                }
            }
            if self.answers_ping() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn answers_ping(&self) -> bool {
        let Ok(stream) = self.open() else {
            return false;
        };
        if (&stream).write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).is_ok() && line == "+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(port: u16) -> Child {
    let spawned = Command::new(REDIS_SERVER)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "\n\n*** redis-server not found: run `bash scripts/test.sh`, which installs it ***\n\n"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// Sends one command to the Redis (or Sentinel) on `127.0.0.1:<port>` and reads its
/// reply.
///
/// # Panics
///
/// On any I/O or protocol error (this is a test harness).
pub fn command_at(port: u16, args: &[&str]) -> Reply {
    try_command_at(port, args).unwrap_or_else(|e| panic!("redis on port {port}, {args:?}: {e}"))
}

/// [`command_at`] that says what went wrong instead of panicking (a node that is down).
pub fn try_command_at(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let stream = open(port)?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    (&stream).write_all(&request)?;
    read_reply(&mut BufReader::new(&stream))
}

/// `INFO commandstats` of the Redis on `port` as calls per command.
pub fn command_stats_at(port: u16) -> HashMap<String, u64> {
    let Reply::Bulk(Some(info)) = command_at(port, &["INFO", "commandstats"]) else {
        panic!("INFO commandstats: unexpected reply");
    };
    String::from_utf8_lossy(&info)
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
        .collect()
}

fn open(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

impl Reply {
    /// The text of a simple or bulk string reply (`None` for any other kind).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// A port that was free a moment ago. Another process may take it before redis binds
/// it; [`RedisServer::start`] then retries with a new one.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| protocol_error("reply line not terminated"))?;
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| protocol_error("empty reply line"))?;
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| protocol_error("bad length"))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => Reply::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<std::io::Result<_>>()?,
            )),
        },
        _ => return Err(protocol_error("unknown reply type")),
    })
}

fn protocol_error(what: &str) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, what.to_owned())
}
