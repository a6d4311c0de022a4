//! Configuration: every setting, its default, its environment variable and its config
//! file key, parsed and validated once at start.
//!
//! A setting's value comes from the environment variable (`TICKETGATE_X`) if set, else
//! from the TOML config file (key `x`, the variable's name without the prefix, lower
//! case), else the default below. Every problem is collected and reported together, so
//! an operator fixes a config in one round.
//!
//! # Layout
//! - this file: the schema (one sub-struct per subsystem), [`Config::defaults`], the
//!   entry points [`Config::load`] and [`Config::load_from`], and the cross-field checks
//!   of [`Config::validate`].
//! - [`env`]: the name of every environment variable.
//! - `parse`: the value parsers ([`Rate::parse`], [`parse_duration`], addresses, counts,
//!   lists, CIDRs).
//! - `sources`: reading the environment, the config file and `_FILE` secrets, and
//!   collecting every problem with its origin.
//!
//! Architecture invariant: every default lives in this file.

pub mod env;
mod parse;
mod sources;
mod suggest;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use self::parse::{parse_duration, Rate};
pub use self::sources::file_key;
pub use self::suggest::{nearest, unknown_key};

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
    /// Refresh and logout calls per session (charged after the signature verified).
    pub session: Rate,
    /// Frames per connection.
    pub frames: Rate,
    /// QR logins created per IP (each one can put a prompt on a phone).
    pub qr_ip: Rate,
}

/// QR-code login timings.
#[derive(Debug, Clone)]
pub struct QrConfig {
    /// Life of a QR login, from its creation, rotations included.
    pub ttl: Duration,
    /// An unscanned QR gets a new id this often.
    pub rotate: Duration,
    /// Shortest interval between two polls of one poller; faster is `slow_down`.
    pub poll_interval: Duration,
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
    /// Most frames one message may have (its first frame included); over it, close 1008.
    pub max_fragments: u32,
    /// Close after this long without a frame from the client.
    pub idle_timeout: Duration,
    /// Server ping period.
    pub ping_interval: Duration,
    /// Allowed `Origin` values; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Concurrent connections per node.
    pub max_connections: usize,
    /// Sockets one session may hold on this node (a session is one device).
    pub max_sockets_per_session: usize,
    /// Sockets one user may hold on this node, across their sessions.
    pub max_sockets_per_user: usize,
}

/// The `Retry-After` hint of a 429 `too_many_connections` (a socket or session cap is
/// reached): a slot frees when a socket closes or a session ends, which the server
/// cannot foresee, so this is only a pace for retries.
pub const CAP_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Limits of HTTP connections (those not upgraded to a socket), per listener: they
/// bound what a client can hold without authenticating.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A whole request body must arrive within this long of its head.
    pub body_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub keepalive_timeout: Duration,
    /// A connection whose answer cannot be written for this long is closed.
    pub write_timeout: Duration,
    /// Connections not upgraded to a socket, per listener.
    pub max_connections: usize,
    /// Connections not upgraded to a socket, per client IP (the peer address; trusted
    /// proxies are counted only in the total).
    pub max_connections_per_ip: usize,
}

/// The embedded store of a node without Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedStore {
    /// Sessions, reuse markers, session indexes and blocked flags are written through
    /// to `<data_dir>/store.redb` and survive a restart (the default).
    Durable,
    /// Everything in memory: a restart ends every session (tests, benchmarks).
    Memory,
}

/// The upstream: where clients' `send` frames and the socket events go (PROTOCOL §9).
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The URL events are POSTed to; `None`: `send` answers `upstream_unavailable`.
    pub url: Option<String>,
    /// The secret that signs every call (required with a URL).
    pub secret: Option<String>,
    /// How long one call may take; past it, `upstream_unavailable`.
    pub timeout: Duration,
    /// Unanswered `send`s per connection; past it, `busy`.
    pub inflight: usize,
    /// Calls in flight per node, events included: a slow upstream holds at most this
    /// many; past it, `send` answers `upstream_unavailable` and events are dropped.
    pub node_inflight: usize,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("inflight", &self.inflight)
            .field("node_inflight", &self.node_inflight)
            .finish()
    }
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
    /// Which embedded store a node without Redis uses.
    pub store: EmbeddedStore,
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
    /// Live sessions one API app may hold (deployment-wide); a login past it is refused.
    pub max_sessions_per_app: usize,
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
    /// HTTP connection limits.
    pub http: HttpConfig,
    /// QR-code login timings.
    pub qr: QrConfig,
    /// The upstream service.
    pub upstream: UpstreamConfig,
    /// Pushes kept per user for recovery (PROTOCOL §10); `0` turns history off.
    pub push_history: u32,
    /// A user's push history expires this long after its last push; zero turns
    /// history off.
    pub push_history_ttl: Duration,
    /// Serve the demo page at `/demo` on the public listener (PROTOCOL §11).
    pub demo: bool,
    /// Redis replicas that must acknowledge (`WAIT`) a consumed ticket before its
    /// socket is admitted; `0` turns the wait off.
    pub redis_wait_replicas: u32,
    /// How long the store waits for those acknowledgements; fewer in time: 503
    /// `store_unavailable` (the ticket stays spent).
    pub redis_wait_timeout: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("store", &self.store)
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
            .field("max_sessions_per_app", &self.max_sessions_per_app)
            .field("refresh_grace", &self.refresh_grace)
            .field("key_reload", &self.key_reload)
            .field("ttl", &self.ttl)
            .field("rates", &self.rates)
            .field("ws", &self.ws)
            .field("http", &self.http)
            .field("qr", &self.qr)
            .field("upstream", &self.upstream)
            .field("push_history", &self.push_history)
            .field("push_history_ttl", &self.push_history_ttl)
            .field("demo", &self.demo)
            .field("redis_wait_replicas", &self.redis_wait_replicas)
            .field("redis_wait_timeout", &self.redis_wait_timeout)
            .finish()
    }
}

/// The longest replication wait: with a round trip it must fit in the store's command
/// timeout (1 s).
const MAX_REDIS_WAIT: Duration = Duration::from_millis(500);

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

impl Config {
    /// The defaults, as documented in `docs/protocol.md` and the README.
    pub fn defaults() -> Config {
        let rate = |s: &str| Rate::parse(s).unwrap_or_else(|_| Rate::per_second(1));
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            admin_key: None,
            redis_url: None,
            store: EmbeddedStore::Durable,
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
            // Many workers of one app, not thousands (each session lives 7 days).
            max_sessions_per_app: 128,
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
                session: rate("30/min"),
                frames: rate("50/s"),
                qr_ip: rate("10/min"),
            },
            ws: WsConfig {
                max_frame_bytes: 64 * 1024,
                max_fragments: 16,
                idle_timeout: Duration::from_secs(90),
                ping_interval: Duration::from_secs(30),
                allowed_origins: None,
                max_connections: 100_000,
                // A session is one device: a few sockets (browser tabs share one
                // session). A user: a handful of devices; an app's workers each hold a
                // session, so this is at least `max_sessions_per_app` sockets of one.
                max_sockets_per_session: 16,
                max_sockets_per_user: 128,
            },
            http: HttpConfig {
                body_timeout: Duration::from_secs(10),
                // hyper's header timer starts as soon as a connection is idle: a
                // kept-alive connection is closed after the header timeout too.
                keepalive_timeout: Duration::from_secs(10),
                write_timeout: Duration::from_secs(10),
                max_connections: 10_000,
                max_connections_per_ip: 256,
            },
            qr: QrConfig {
                ttl: Duration::from_secs(120),
                rotate: Duration::from_secs(60),
                poll_interval: Duration::from_secs(2),
            },
            upstream: UpstreamConfig {
                url: None,
                secret: None,
                timeout: Duration::from_secs(5),
                inflight: 16,
                node_inflight: 1024,
            },
            push_history: 100,
            push_history_ttl: Duration::from_secs(24 * 3600),
            demo: true,
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_millis(100),
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
        let (config, mut errors, origins) = sources::read(file, env);
        errors.extend(config.validate_named(&|var| origins.name(var)));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(errors))
        }
    }

    /// Cross-field checks; one message per problem, naming settings by their
    /// environment variables.
    pub fn validate(&self) -> Vec<String> {
        self.validate_named(&|var| var.to_owned())
    }

    /// Cross-field checks; one message per problem, naming each setting by `name` of
    /// its variable (as the operator wrote it: the variable, or the config file key).
    fn validate_named(&self, name: &dyn Fn(&str) -> String) -> Vec<String> {
        let mut errors = Vec::new();
        let mut positive = |var: &str, d: Duration| {
            if d.is_zero() {
                errors.push(format!("{} must be greater than zero", name(var)));
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
        positive(env::BODY_TIMEOUT, self.http.body_timeout);
        positive(env::KEEPALIVE_TIMEOUT, self.http.keepalive_timeout);
        positive(env::WRITE_TIMEOUT, self.http.write_timeout);
        positive(env::QR_TTL, self.qr.ttl);
        positive(env::QR_ROTATE, self.qr.rotate);
        if self.ws.max_frame_bytes < 1024 {
            errors.push(format!(
                "{} must be at least 1024",
                name(env::MAX_FRAME_BYTES)
            ));
        }
        if self.sessions_per_type == 0 {
            errors.push(format!(
                "{} must be at least 1",
                name(env::SESSIONS_PER_TYPE)
            ));
        }
        if self.refresh_grace > Duration::from_secs(60) {
            errors.push(format!(
                "{} must be short (at most 60s): it lets a stolen parent token through",
                name(env::REFRESH_GRACE)
            ));
        }
        let at_least_one = [
            (env::MAX_CONNECTIONS, self.ws.max_connections),
            (
                env::MAX_SOCKETS_PER_SESSION,
                self.ws.max_sockets_per_session,
            ),
            (env::MAX_SOCKETS_PER_USER, self.ws.max_sockets_per_user),
            (env::MAX_SESSIONS_PER_APP, self.max_sessions_per_app),
            (env::MAX_FRAGMENTS, self.ws.max_fragments as usize),
            (env::MAX_HTTP_CONNECTIONS, self.http.max_connections),
            (
                env::MAX_HTTP_CONNECTIONS_PER_IP,
                self.http.max_connections_per_ip,
            ),
        ];
        for (var, value) in at_least_one {
            if value == 0 {
                errors.push(format!("{} must be at least 1", name(var)));
            }
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
                    name(env::REDIS_URL),
                    redact_url(url)
                ));
            }
        }
        errors.extend(self.validate_wait(name));
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.push(format!(
                    "{}: `{url}` must start with http:// or https://",
                    name(env::PUBLIC_URL)
                ));
            }
        }
        errors.extend(self.validate_upstream());
        if matches!(&self.admin_key, Some(k) if k.len() < 16) {
            errors.push(format!(
                "{}: the admin key must be at least 16 characters",
                name(env::ADMIN_KEY)
            ));
        }
        errors
    }

    /// The replication wait's checks: it needs Redis, and its timeout must fit, with a
    /// round trip, in the store's one-second command timeout.
    fn validate_wait(&self, name: &dyn Fn(&str) -> String) -> Vec<String> {
        let mut errors = Vec::new();
        if self.redis_wait_replicas == 0 {
            return errors;
        }
        if self.redis_url.is_none() {
            errors.push(format!(
                "{} needs {}: the embedded store has no replicas",
                name(env::REDIS_WAIT_REPLICAS),
                name(env::REDIS_URL)
            ));
        }
        if self.redis_wait_timeout.is_zero() || self.redis_wait_timeout > MAX_REDIS_WAIT {
            errors.push(format!(
                "{} must be between 1ms and {}ms",
                name(env::REDIS_WAIT_TIMEOUT),
                MAX_REDIS_WAIT.as_millis()
            ));
        }
        errors
    }

    /// The upstream's checks: an http(s) URL, and a secret with it (an unsigned call
    /// could not be told from a forged one, so a URL without a secret is refused
    /// rather than sent unsigned).
    fn validate_upstream(&self) -> Vec<String> {
        let up = &self.upstream;
        let mut errors = Vec::new();
        if up.timeout.is_zero() {
            errors.push(format!(
                "{} must be greater than zero",
                env::UPSTREAM_TIMEOUT
            ));
        }
        for (name, value) in [
            (env::UPSTREAM_INFLIGHT, up.inflight),
            (env::UPSTREAM_NODE_INFLIGHT, up.node_inflight),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
        if let Some(url) = &up.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.push(format!(
                    "{}: `{}` must start with http:// or https://",
                    env::UPSTREAM_URL,
                    redact_url(url)
                ));
            }
            match &up.secret {
                None => errors.push(format!(
                    "{}: calls to the upstream are signed; set {} or {}",
                    env::UPSTREAM_URL,
                    env::UPSTREAM_SECRET,
                    env::UPSTREAM_SECRET_FILE
                )),
                Some(s) if s.len() < 16 => errors.push(format!(
                    "{}: the upstream secret must be at least 16 characters",
                    env::UPSTREAM_SECRET
                )),
                Some(_) => {}
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let mut c = Config::defaults();
        c.admin_key = Some("super-secret-admin-key".into());
        c.redis_url = Some("redis://:hunter2@127.0.0.1:6379".into());
        let s = format!("{c:?}");
        assert!(!s.contains("super-secret") && !s.contains("hunter2"), "{s}");
    }
}
