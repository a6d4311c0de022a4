//! # ticketgate-loadtest: the flood harness
//!
//! Simulates real clients and attackers against a ticketgate deployment on this
//! machine and prints figures that compare across machines: ratios against a baseline
//! WebSocket server measured in the same run.
//!
//! ```text
//! flood bench [--quick]                  everything: Redis, nodes, baseline, all scenarios, the bar
//! flood <scenario> --target URL ...      one scenario against a running deployment
//! flood baseline-server --listen ADDR    the baseline (bench starts it itself)
//! ```
//!
//! # Layout
//! - `bench/`: the orchestrator: the run order (`bench`), one module per phase
//!   (`phases/`), the rounds on the live processes, the nodes' settings, the sizes and
//!   the bar.
//! - `rounds`: interleaved baseline and ticketgate runs, the ratios of the bar.
//! - `standalone`: one scenario against an existing deployment.
//! - `scenarios/`: one module per scenario, plain async functions returning figures.
//! - `target`: login, mint and the admin API (through `ticketgate-sdk`).
//! - `ws`: the socket client shared by every scenario, with spread source addresses.
//! - `baseline`: the baseline echo server.
//! - `spawn`: child processes, killed on drop.
//! - `stats`, `progress`, `report`: histograms and budgets, progress bars, tables and
//!   JSON.
//! - `redis_stats`, `host`: Redis commands per operation; fd limit and RSS.
//!
//! Every run is bounded in count and time, sends traffic to loopback addresses only,
//! and stops by itself.

pub mod baseline;
pub mod bench;
pub mod host;
pub mod progress;
pub mod redis_stats;
pub mod report;
pub mod rounds;
pub mod scenarios;
pub mod spawn;
pub mod standalone;
pub mod stats;
pub mod target;
pub mod ws;

use std::time::Duration;

/// Parses `500ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` needs a unit: ms, s or m"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => Ok(Duration::from_secs(n * 60)),
        other => Err(format!("unknown unit `{other}` in `{s}` (ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10h").is_err());
    }
}
