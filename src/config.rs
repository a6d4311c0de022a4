//! Configuration: every setting, its default, its environment variable and its config
//! file key, parsed and validated once at start.
//!
//! A setting's value comes from the environment variable (`TICKETGATE_X`) if set, else
//! from the TOML config file (key `x`, the variable's name without the prefix, lower
//! case), else the default below. Every problem is collected and reported together, so
//! an operator fixes a config in one round.
//!
//! Architecture invariant: every default lives in this file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// Environment variable names (the operator's contract; PROTOCOL §7 and §8).
pub mod env {
    /// Public HTTP + WebSocket listener.
    pub const LISTEN: &str = "TICKETGATE_LISTEN";
    /// Admin API and `/metrics` listener.
    pub const ADMIN_LISTEN: &str = "TICKETGATE_ADMIN_LISTEN";
    /// Admin bearer key.
    pub const ADMIN_KEY: &str = "TICKETGATE_ADMIN_KEY";
    /// File holding the admin bearer key.
    pub const ADMIN_KEY_FILE: &str = "TICKETGATE_ADMIN_KEY_FILE";
    /// Redis URL; none means the embedded store.
    pub const REDIS_URL: &str = "TICKETGATE_REDIS_URL";
    /// The users file.
    pub const USERS_FILE: &str = "TICKETGATE_USERS_FILE";
    /// The API apps file.
    pub const APPS_FILE: &str = "TICKETGATE_APPS_FILE";
    /// Signing keys and server secrets.
    pub const DATA_DIR: &str = "TICKETGATE_DATA_DIR";
    /// This node's name.
    pub const NODE_ID: &str = "TICKETGATE_NODE_ID";
    /// Comma list of allowed WebSocket / CORS origins.
    pub const ALLOWED_ORIGINS: &str = "TICKETGATE_ALLOWED_ORIGINS";
    /// Ticket lifetime.
    pub const TICKET_TTL: &str = "TICKETGATE_TICKET_TTL";
    /// Access token lifetime.
    pub const ACCESS_TTL: &str = "TICKETGATE_ACCESS_TTL";
    /// Refresh lifetime, web.
    pub const REFRESH_TTL_WEB: &str = "TICKETGATE_REFRESH_TTL_WEB";
    /// Refresh lifetime, mobile.
    pub const REFRESH_TTL_MOBILE: &str = "TICKETGATE_REFRESH_TTL_MOBILE";
    /// Refresh lifetime, api.
    pub const REFRESH_TTL_API: &str = "TICKETGATE_REFRESH_TTL_API";
    /// Allowed clock skew of a signed request.
    pub const SKEW: &str = "TICKETGATE_SKEW";
    /// Login attempts per IP.
    pub const RATE_LOGIN_IP: &str = "TICKETGATE_RATE_LOGIN_IP";
    /// Login attempts per username.
    pub const RATE_LOGIN_USER: &str = "TICKETGATE_RATE_LOGIN_USER";
    /// Login attempts per device.
    pub const RATE_LOGIN_DEVICE: &str = "TICKETGATE_RATE_LOGIN_DEVICE";
    /// Requests failing before authentication, per IP.
    pub const RATE_FAIL_IP: &str = "TICKETGATE_RATE_FAIL_IP";
    /// Mints per device (charged after the signature verified).
    pub const RATE_MINT_DEVICE: &str = "TICKETGATE_RATE_MINT_DEVICE";
    /// Connects per device (charged for a ticket whose MAC verified).
    pub const RATE_CONNECT_DEVICE: &str = "TICKETGATE_RATE_CONNECT_DEVICE";
    /// Connects per IP.
    pub const RATE_CONNECT_IP: &str = "TICKETGATE_RATE_CONNECT_IP";
    /// Frames per connection.
    pub const RATE_FRAMES: &str = "TICKETGATE_RATE_FRAMES";
    /// Concurrent connections per node.
    pub const MAX_CONNECTIONS: &str = "TICKETGATE_MAX_CONNECTIONS";
    /// Public base URL, for `ws_url`.
    pub const PUBLIC_URL: &str = "TICKETGATE_PUBLIC_URL";
    /// CIDRs whose `X-Forwarded-For` is believed.
    pub const TRUSTED_PROXIES: &str = "TICKETGATE_TRUSTED_PROXIES";
    /// `text` or `json`.
    pub const LOG_FORMAT: &str = "TICKETGATE_LOG_FORMAT";
    /// Access-token refreshes per session per day.
    pub const REFRESH_CAP_PER_DAY: &str = "TICKETGATE_REFRESH_CAP_PER_DAY";
    /// Time allowed to send a request's headers (slowloris guard).
    pub const HEADER_TIMEOUT: &str = "TICKETGATE_HEADER_TIMEOUT";
    /// A connection with no frame from the client for this long is closed.
    pub const IDLE_TIMEOUT: &str = "TICKETGATE_IDLE_TIMEOUT";
    /// How often the server pings an open connection.
    pub const PING_INTERVAL: &str = "TICKETGATE_PING_INTERVAL";
    /// Largest WebSocket message and frame.
    pub const MAX_FRAME_BYTES: &str = "TICKETGATE_MAX_FRAME_BYTES";
    /// Leeway for `exp`/`nbf` of access tokens.
    pub const JWT_LEEWAY: &str = "TICKETGATE_JWT_LEEWAY";
    /// Time given to connections to close at shutdown.
    pub const SHUTDOWN_GRACE: &str = "TICKETGATE_SHUTDOWN_GRACE";
    /// Live sessions per (user, client type) for web and mobile.
    pub const SESSIONS_PER_TYPE: &str = "TICKETGATE_SESSIONS_PER_TYPE";
    /// Window in which the immediate parent of a refresh token is still accepted.
    pub const REFRESH_GRACE: &str = "TICKETGATE_REFRESH_GRACE";
    /// How often nodes reload access-token keys from the data dir.
    pub const KEY_RELOAD: &str = "TICKETGATE_KEY_RELOAD";
}

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

/// Anti-flood limits.
#[derive(Debug, Clone)]
pub struct RateConfig {
    /// Logins per IP.
    pub login_ip: Rate,
    /// Logins per username.
    pub login_user: Rate,
    /// Logins per device.
    pub login_device: Rate,
    /// Failures before authentication, per IP.
    pub fail_ip: Rate,
    /// Mints per device.
    pub mint_device: Rate,
    /// Connects per device.
    pub connect_device: Rate,
    /// Connects per IP.
    pub connect_ip: Rate,
    /// Frames per connection.
    pub frames: Rate,
}

/// Lifetimes.
#[derive(Debug, Clone)]
pub struct TtlConfig {
    /// Ticket lifetime.
    pub ticket: Duration,
    /// Access token lifetime.
    pub access: Duration,
    /// Refresh lifetime, web.
    pub refresh_web: Duration,
    /// Refresh lifetime, mobile.
    pub refresh_mobile: Duration,
    /// Refresh lifetime, api.
    pub refresh_api: Duration,
    /// Allowed clock skew of signed requests; nonces live twice as long.
    pub skew: Duration,
    /// Leeway for access token `exp`/`nbf`.
    pub jwt_leeway: Duration,
}

/// WebSocket connection settings.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Largest message and frame, bytes.
    pub max_frame_bytes: usize,
    /// Close after this long without a frame from the client.
    pub idle_timeout: Duration,
    /// Server ping period.
    pub ping_interval: Duration,
    /// Allowed `Origin` values; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Concurrent connections per node.
    pub max_connections: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration: plain data, one sub-struct per subsystem.
#[derive(Clone)]
pub struct Config {
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Admin bearer key; `None` refuses every admin call.
    pub admin_key: Option<String>,
    /// Redis URL; `None` selects the embedded store.
    pub redis_url: Option<String>,
    /// Users file.
    pub users_file: PathBuf,
    /// API apps file.
    pub apps_file: Option<PathBuf>,
    /// Data dir (keys, secrets).
    pub data_dir: PathBuf,
    /// This node's name.
    pub node_id: String,
    /// Public base URL for `ws_url`; `None` derives it from the request's `Host`.
    pub public_url: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Log format.
    pub log_format: LogFormat,
    /// Refreshes per session per day.
    pub refresh_cap_per_day: u32,
    /// Header read timeout.
    pub header_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Live sessions per (user, client type) for web and mobile; older ones are
    /// replaced (4509). API sessions are never replaced.
    pub sessions_per_type: usize,
    /// Refresh-token grace window for the immediate parent (zero: off).
    pub refresh_grace: Duration,
    /// Key reload period; a new key signs only after two periods.
    pub key_reload: Duration,
    /// Lifetimes.
    pub ttl: TtlConfig,
    /// Rates.
    pub rates: RateConfig,
    /// WebSocket settings.
    pub ws: WsConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("users_file", &self.users_file)
            .field("apps_file", &self.apps_file)
            .field("data_dir", &self.data_dir)
            .field("node_id", &self.node_id)
            .field("public_url", &self.public_url)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("log_format", &self.log_format)
            .field("refresh_cap_per_day", &self.refresh_cap_per_day)
            .field("header_timeout", &self.header_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("sessions_per_type", &self.sessions_per_type)
            .field("refresh_grace", &self.refresh_grace)
            .field("key_reload", &self.key_reload)
            .field("ttl", &self.ttl)
            .field("rates", &self.rates)
            .field("ws", &self.ws)
            .finish()
    }
}

/// Hides a password in a Redis URL (`redis://:secret@h` → `redis://:***@h`).
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Everything wrong with a configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// Where values come from: environment first, then the config file.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: BTreeMap<String, String>,
    errors: Vec<String>,
}

impl Sources<'_> {
    /// The raw value of a setting and where it came from, for messages.
    fn raw(&self, var: &str) -> Option<(String, String)> {
        if let Some(v) = (self.env)(var) {
            return Some((v, var.to_owned()));
        }
        let key = file_key(var);
        self.file
            .get(&key)
            .map(|v| (v.clone(), format!("config key `{key}`")))
    }

    fn get<T>(&mut self, var: &str, default: T, parse: impl Fn(&str) -> Result<T, String>) -> T {
        match self.raw(var) {
            None => default,
            Some((raw, origin)) => match parse(&raw) {
                Ok(v) => v,
                Err(e) => {
                    self.errors.push(format!("{origin}: {e}"));
                    default
                }
            },
        }
    }

    fn opt_string(&mut self, var: &str) -> Option<String> {
        self.raw(var)
            .map(|(v, _)| v)
            .filter(|v| !v.trim().is_empty())
    }
}

/// The config file key of an environment variable: the name without `TICKETGATE_`,
/// lower case.
pub fn file_key(var: &str) -> String {
    var.trim_start_matches("TICKETGATE_").to_ascii_lowercase()
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an address like 127.0.0.1:8080"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))
}

fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    parse_list(s)
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{c}` is not a CIDR like 10.0.0.0/8"))
        })
        .collect()
}

impl Config {
    /// The defaults, as documented in `docs/protocol.md` and the README.
    pub fn defaults() -> Config {
        let rate = |s: &str| Rate::parse(s).unwrap_or_else(|_| Rate::per_second(1));
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            admin_key: None,
            redis_url: None,
            users_file: PathBuf::from("./ticketgate-users.toml"),
            apps_file: None,
            data_dir: PathBuf::from("./ticketgate-data"),
            node_id: format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            public_url: None,
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Text,
            refresh_cap_per_day: 200,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            sessions_per_type: 1,
            refresh_grace: Duration::ZERO,
            key_reload: Duration::from_secs(10),
            ttl: TtlConfig {
                ticket: Duration::from_secs(30),
                access: Duration::from_secs(15 * 60),
                refresh_web: Duration::from_secs(86_400),
                refresh_mobile: Duration::from_secs(30 * 86_400),
                refresh_api: Duration::from_secs(7 * 86_400),
                skew: Duration::from_secs(60),
                jwt_leeway: Duration::from_secs(5),
            },
            rates: RateConfig {
                login_ip: rate("20/min"),
                login_user: rate("10/min"),
                login_device: rate("10/min"),
                fail_ip: rate("600/min"),
                mint_device: rate("30/min"),
                connect_device: rate("30/min"),
                connect_ip: rate("6000/min"),
                frames: rate("50/s"),
            },
            ws: WsConfig {
                max_frame_bytes: 64 * 1024,
                idle_timeout: Duration::from_secs(90),
                ping_interval: Duration::from_secs(30),
                allowed_origins: None,
                max_connections: 100_000,
            },
        }
    }

    /// Loads the configuration from an optional TOML file and the process environment.
    ///
    /// # Errors
    /// Every invalid value, collected into one [`ConfigError`].
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        Config::load_from(file, &env)
    }

    /// Like [`Config::load`], with the environment given as a function (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let file = match file {
            None => BTreeMap::new(),
            Some(path) => read_file(path).unwrap_or_else(|e| {
                errors.push(e);
                BTreeMap::new()
            }),
        };
        let mut src = Sources { env, file, errors };
        let d = Config::defaults();
        let dur = parse_duration;
        let rate = Rate::parse;

        let admin_key = match src.opt_string(env::ADMIN_KEY) {
            Some(k) => Some(k),
            None => match src.opt_string(env::ADMIN_KEY_FILE) {
                None => None,
                Some(path) => match std::fs::read_to_string(&path) {
                    Ok(k) => Some(k.trim().to_owned()),
                    Err(e) => {
                        src.errors.push(format!(
                            "{}: cannot read `{path}`: {e}",
                            env::ADMIN_KEY_FILE
                        ));
                        None
                    }
                },
            },
        };
        let log_format = src.get(env::LOG_FORMAT, d.log_format, |s| match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            o => Err(format!("`{o}` is not `text` or `json`")),
        });
        let config = Config {
            listen: src.get(env::LISTEN, d.listen, parse_addr),
            admin_listen: src.get(env::ADMIN_LISTEN, d.admin_listen, parse_addr),
            admin_key,
            redis_url: src.opt_string(env::REDIS_URL),
            users_file: src.get(env::USERS_FILE, d.users_file, |s| Ok(PathBuf::from(s))),
            apps_file: src.opt_string(env::APPS_FILE).map(PathBuf::from),
            data_dir: src.get(env::DATA_DIR, d.data_dir, |s| Ok(PathBuf::from(s))),
            node_id: src.opt_string(env::NODE_ID).unwrap_or(d.node_id),
            public_url: src.opt_string(env::PUBLIC_URL),
            trusted_proxies: src.get(env::TRUSTED_PROXIES, d.trusted_proxies, parse_cidrs),
            log_format,
            refresh_cap_per_day: src.get(
                env::REFRESH_CAP_PER_DAY,
                d.refresh_cap_per_day,
                parse_u32,
            ),
            header_timeout: src.get(env::HEADER_TIMEOUT, d.header_timeout, dur),
            shutdown_grace: src.get(env::SHUTDOWN_GRACE, d.shutdown_grace, dur),
            sessions_per_type: src.get(env::SESSIONS_PER_TYPE, d.sessions_per_type, |s| {
                s.trim()
                    .parse()
                    .map_err(|_| format!("`{s}` is not a whole number"))
            }),
            refresh_grace: src.get(env::REFRESH_GRACE, d.refresh_grace, |s| {
                if s.trim().starts_with('0') {
                    Ok(Duration::ZERO)
                } else {
                    dur(s)
                }
            }),
            key_reload: src.get(env::KEY_RELOAD, d.key_reload, dur),
            ttl: TtlConfig {
                ticket: src.get(env::TICKET_TTL, d.ttl.ticket, dur),
                access: src.get(env::ACCESS_TTL, d.ttl.access, dur),
                refresh_web: src.get(env::REFRESH_TTL_WEB, d.ttl.refresh_web, dur),
                refresh_mobile: src.get(env::REFRESH_TTL_MOBILE, d.ttl.refresh_mobile, dur),
                refresh_api: src.get(env::REFRESH_TTL_API, d.ttl.refresh_api, dur),
                skew: src.get(env::SKEW, d.ttl.skew, dur),
                jwt_leeway: src.get(env::JWT_LEEWAY, d.ttl.jwt_leeway, dur),
            },
            rates: RateConfig {
                login_ip: src.get(env::RATE_LOGIN_IP, d.rates.login_ip, rate),
                login_user: src.get(env::RATE_LOGIN_USER, d.rates.login_user, rate),
                login_device: src.get(env::RATE_LOGIN_DEVICE, d.rates.login_device, rate),
                fail_ip: src.get(env::RATE_FAIL_IP, d.rates.fail_ip, rate),
                mint_device: src.get(env::RATE_MINT_DEVICE, d.rates.mint_device, rate),
                connect_device: src.get(env::RATE_CONNECT_DEVICE, d.rates.connect_device, rate),
                connect_ip: src.get(env::RATE_CONNECT_IP, d.rates.connect_ip, rate),
                frames: src.get(env::RATE_FRAMES, d.rates.frames, rate),
            },
            ws: WsConfig {
                max_frame_bytes: src.get(env::MAX_FRAME_BYTES, d.ws.max_frame_bytes, |s| {
                    s.trim()
                        .parse()
                        .map_err(|_| format!("`{s}` is not a byte count"))
                }),
                idle_timeout: src.get(env::IDLE_TIMEOUT, d.ws.idle_timeout, dur),
                ping_interval: src.get(env::PING_INTERVAL, d.ws.ping_interval, dur),
                allowed_origins: src.opt_string(env::ALLOWED_ORIGINS).map(|s| parse_list(&s)),
                max_connections: src.get(env::MAX_CONNECTIONS, d.ws.max_connections, |s| {
                    s.trim()
                        .parse()
                        .map_err(|_| format!("`{s}` is not a whole number"))
                }),
            },
        };
        let mut errors = src.errors;
        errors.extend(config.validate());
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Cross-field checks; one message per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut positive = |name: &str, d: Duration| {
            if d.is_zero() {
                errors.push(format!("{name} must be greater than zero"));
            }
        };
        positive(env::TICKET_TTL, self.ttl.ticket);
        positive(env::ACCESS_TTL, self.ttl.access);
        positive(env::REFRESH_TTL_WEB, self.ttl.refresh_web);
        positive(env::REFRESH_TTL_MOBILE, self.ttl.refresh_mobile);
        positive(env::REFRESH_TTL_API, self.ttl.refresh_api);
        positive(env::SKEW, self.ttl.skew);
        positive(env::HEADER_TIMEOUT, self.header_timeout);
        positive(env::IDLE_TIMEOUT, self.ws.idle_timeout);
        positive(env::PING_INTERVAL, self.ws.ping_interval);
        positive(env::KEY_RELOAD, self.key_reload);
        if self.ws.max_frame_bytes < 1024 {
            errors.push(format!("{} must be at least 1024", env::MAX_FRAME_BYTES));
        }
        if self.sessions_per_type == 0 {
            errors.push(format!("{} must be at least 1", env::SESSIONS_PER_TYPE));
        }
        if self.refresh_grace > Duration::from_secs(60) {
            errors.push(format!(
                "{} must be short (at most 60s): it lets a stolen parent token through",
                env::REFRESH_GRACE
            ));
        }
        if self.ws.max_connections == 0 {
            errors.push(format!("{} must be at least 1", env::MAX_CONNECTIONS));
        }
        if let Some(url) = &self.redis_url {
            let known = [
                "redis://",
                "rediss://",
                "redis-sentinel://",
                "redis-cluster://",
            ];
            if !known.iter().any(|p| url.starts_with(p)) {
                errors.push(format!(
                    "{}: `{}` must start with redis://, rediss://, redis-sentinel:// or redis-cluster://",
                    env::REDIS_URL,
                    redact_url(url)
                ));
            }
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.push(format!(
                    "{}: `{url}` must start with http:// or https://",
                    env::PUBLIC_URL
                ));
            }
        }
        if matches!(&self.admin_key, Some(k) if k.len() < 16) {
            errors.push(format!(
                "{}: the admin key must be at least 16 characters",
                env::ADMIN_KEY
            ));
        }
        errors
    }

    /// The refresh lifetime of a client type.
    pub fn refresh_ttl(&self, client_type: ticketgate_sdk::ClientType) -> Duration {
        match client_type {
            ticketgate_sdk::ClientType::Web => self.ttl.refresh_web,
            ticketgate_sdk::ClientType::Mobile => self.ttl.refresh_mobile,
            ticketgate_sdk::ClientType::Api => self.ttl.refresh_api,
        }
    }
}

/// Reads a TOML config file into `key → raw string`; scalars only.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file `{}`: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config file `{}`: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    let mut bad = Vec::new();
    for (k, v) in table {
        let raw = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => {
                bad.push(format!(
                    "config key `{k}`: expected a string, number or list"
                ));
                continue;
            }
        };
        out.insert(k, raw);
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Config::load_from(None, &env)
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

    #[test]
    fn env_overrides_defaults_and_all_errors_are_reported_together() {
        let c = load(&[(env::TICKET_TTL, "2s"), (env::RATE_FRAMES, "5/s")]).expect("valid");
        assert_eq!(c.ttl.ticket, Duration::from_secs(2));
        assert_eq!(c.rates.frames.count.get(), 5);
        let err = load(&[
            (env::TICKET_TTL, "soon"),
            (env::LISTEN, "nowhere"),
            (env::REDIS_URL, "http://x"),
        ])
        .expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn file_keys_are_lower_case_names_without_prefix() {
        assert_eq!(file_key(env::RATE_MINT_DEVICE), "rate_mint_device");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "ticket_ttl = \"5s\"\nmax_connections = 7\nallowed_origins = [\"https://a\", \"https://b\"]\n")
            .expect("write");
        let c = Config::load_from(Some(&path), &|_| None).expect("valid");
        assert_eq!(c.ttl.ticket, Duration::from_secs(5));
        assert_eq!(c.ws.max_connections, 7);
        assert_eq!(
            c.ws.allowed_origins,
            Some(vec!["https://a".into(), "https://b".into()])
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = Config::defaults();
        c.admin_key = Some("super-secret-admin-key".into());
        c.redis_url = Some("redis://:hunter2@127.0.0.1:6379".into());
        let s = format!("{c:?}");
        assert!(!s.contains("super-secret") && !s.contains("hunter2"), "{s}");
    }
}
