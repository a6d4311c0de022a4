//! Value parsers: one function per kind of setting (durations, rates, counts, byte
//! sizes, addresses, lists, CIDRs), each turning the raw text of a variable or config
//! key into a typed value or a message saying what is wrong with it.
//!
//! A message names the value, never the setting: [`sources`](super::sources) prefixes
//! it with where the value came from.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::{EmbeddedStore, LogFormat};

/// A rate: `count` events per `period`, with a burst of `count`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events per period; also the burst.
    pub count: NonZeroU32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/min` or `N/h`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a rate like `30/min`"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a whole number"))?;
        let count = NonZeroU32::new(count).ok_or("a rate must be at least 1")?;
        let period = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("unknown rate unit `{other}` (use s, min or h)")),
        };
        Ok(Rate { count, period })
    }

    /// A rate of `count` per second.
    pub fn per_second(count: u32) -> Rate {
        Rate {
            count: NonZeroU32::new(count.max(1)).unwrap_or(NonZeroU32::MIN),
            period: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => return write!(f, "{}/{:?}", self.count, self.period),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Parses durations like `500ms`, `30s`, `15m`, `12h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` needs a unit (ms, s, m, h or d)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like `30s`"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown duration unit `{other}` in `{s}`")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Parses a window that may be off: anything starting with `0` (`0`, `0s`) is zero,
/// anything else a duration.
pub(super) fn parse_duration_or_off(s: &str) -> Result<Duration, String> {
    if s.trim().starts_with('0') {
        Ok(Duration::ZERO)
    } else {
        parse_duration(s)
    }
}

/// Parses `text` or `json`.
pub(super) fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        o => Err(format!("`{o}` is not `text` or `json`")),
    }
}

/// Parses a switch: `on` or `off`.
pub(super) fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        o => Err(format!("`{o}` is not `on` or `off`")),
    }
}

/// Parses the embedded store's kind: `durable` or `memory`.
pub(super) fn parse_embedded_store(s: &str) -> Result<EmbeddedStore, String> {
    match s.trim() {
        "durable" => Ok(EmbeddedStore::Durable),
        "memory" => Ok(EmbeddedStore::Memory),
        o => Err(format!("`{o}` is not `durable` or `memory`")),
    }
}

/// Parses a listen address: `127.0.0.1:8080`, `[::1]:8080`, or a host name and port
/// (`localhost:8080`), resolved once at start. A name with both kinds of address
/// listens on its IPv4 one, where clients of `localhost` usually go first.
pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;

    let s = s.trim();
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let shape = || format!("`{s}` is not an address like 127.0.0.1:8080 or localhost:8080");
    let (host, port) = s.rsplit_once(':').ok_or_else(shape)?;
    let port: u16 = port.parse().map_err(|_| shape())?;
    if host.is_empty() {
        return Err(shape());
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: cannot resolve `{host}`: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("`{s}`: `{host}` has no address"))
}

/// Parses a path; any text is one.
pub(super) fn parse_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// Parses a whole number that fits a `u32`.
pub(super) fn parse_u32(s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))
}

/// Parses a whole number that fits a `usize` (a count of things).
pub(super) fn parse_usize(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))
}

/// Parses a size in bytes, as a plain whole number.
pub(super) fn parse_byte_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count"))
}

/// Splits a comma list, trimming each item and dropping empty ones.
pub(super) fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses a comma list of CIDRs; a bare IP address is a network of one.
pub(super) fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    parse_list(s)
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{c}` is not a CIDR like 10.0.0.0/8"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_ips_and_host_names() {
        assert_eq!(
            parse_addr("127.0.0.1:8080"),
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(parse_addr("[::1]:9"), Ok("[::1]:9".parse().expect("addr")));
        assert_eq!(
            parse_addr("localhost:8080"),
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
        for bad in [
            "nowhere",
            "localhost",
            "localhost:http",
            ":8080",
            "localhost:99999",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
        assert!(parse_addr("no-such-host.invalid:80").is_err());
    }

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("x1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        let r = Rate::parse("30/min").expect("valid");
        assert_eq!((r.count.get(), r.period), (30, Duration::from_secs(60)));
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("5/week").is_err());
    }
}
