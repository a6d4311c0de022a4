//! What `flood scale` and its worker processes say to each other: one JSON value per
//! line, the plan on the worker's standard input first, then commands on standard
//! input and answers on standard output (the worker's log goes to standard error).
//!
//! Times that cross processes are unix microseconds (`CLOCK_REALTIME`, one clock on
//! one machine), so a push's delivery latency is the receiving worker's clock minus
//! the publisher's, and a drain's "back" times compare with the coordinator's SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The topic of the pushes the scale scenario publishes.
pub const TOPIC: &str = "scale";

/// What one worker does: the first line on its standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// This worker's number (0..workers); it also offsets the nodes its sockets use.
    pub index: usize,
    /// The node that serves logins and mints (it holds no sockets).
    pub front: String,
    /// The public listeners of the socket nodes.
    pub nodes: Vec<SocketAddr>,
    /// The users this worker logs in (one device each) and spreads its sockets over.
    pub users: Vec<String>,
    /// Everyone's password.
    pub password: String,
    /// Sockets of `users` to hold, spread evenly over `nodes`.
    pub sockets: usize,
    /// Opens in flight at once (mint + admit each).
    pub concurrency: usize,
    /// The user whose sockets the kick phase closes, with `kick_per_node` sockets on
    /// every node (one worker holds them).
    pub kick_user: Option<String>,
    /// See `kick_user`.
    pub kick_per_node: usize,
}

/// A command from the coordinator.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Answer with a [`Report`].
    Report,
    /// Close every socket and exit.
    Quit,
}

/// A worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Answer {
    /// The sockets of the plan are open (or failed).
    Opened(Opened),
    /// The counters, for a [`Command::Report`].
    Report(Report),
    /// The worker cannot go on (a login failed, ...).
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// The outcome of opening the plan's sockets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Opened {
    /// Sockets welcomed (the kick user's included).
    pub ok: u64,
    /// Failed opens by kind (an open is retried; each failure is counted).
    pub errors: BTreeMap<String, u64>,
    /// Mint calls made to open them.
    pub mints: u64,
    /// Seconds the worker took, logins excluded.
    pub took_secs: f64,
}

/// A worker's counters. Lists are the events since the last report; counts are
/// totals since the sockets were opened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Open sockets per node, by the node's index in the plan.
    pub open_per_node: Vec<u64>,
    /// Pushes of [`TOPIC`] received.
    pub pushes: u64,
    /// Delivery latency of each push received since the last report, µs.
    pub push_latencies_us: Vec<u64>,
    /// When the last push was received, unix µs (0: none yet).
    pub last_push_at_us: u64,
    /// When each socket closed with 4503, since the last report, unix µs.
    pub kicked_at_us: Vec<u64>,
    /// Sockets closed with 1001 (a node draining).
    pub closes_1001: u64,
    /// `resume` frames received.
    pub resumes_received: u64,
    /// Reconnects that presented a resume ticket.
    pub resumes_used: u64,
    /// Mint calls since the sockets were opened (a reconnect without a resume ticket).
    pub mints: u64,
    /// Reconnects welcomed on another node.
    pub back: u64,
    /// When each reconnect was welcomed, since the last report, unix µs.
    pub back_at_us: Vec<u64>,
    /// Reconnects that failed, by kind.
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Other ends of sockets, by close code (`eof`: no close frame).
    pub other_closes: BTreeMap<String, u64>,
}

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
