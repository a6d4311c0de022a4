//! Where values come from: the environment variable if set, else the key of the TOML
//! config file, else the default; a secret may also come from a file named by a `_FILE`
//! variable.
//!
//! Reading never stops at the first problem: a value that cannot be read or parsed is
//! recorded with its origin (the variable, or `config key `x``) and the default is kept,
//! so that every problem is reported together. A config file key that names no
//! setting is a problem too, reported with the nearest known key: a misspelled key
//! must not leave its setting at the default in silence.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::parse::{
    parse_addr, parse_byte_count, parse_cidrs, parse_duration, parse_duration_or_off,
    parse_embedded_store, parse_list, parse_log_format, parse_on_off, parse_path, parse_u32,
    parse_usize, Rate,
};
use super::{env, Config, HttpConfig, QrConfig, RateConfig, TtlConfig, UpstreamConfig, WsConfig};

/// Reads every setting from `env` and the optional config `file`: the configuration
/// (the default wherever a value is missing or invalid), one message per value that
/// could not be read or parsed and per unknown file key, and where each value came
/// from. Cross-field checks are [`Config::validate`]'s.
pub(super) fn read(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Config, Vec<String>, Origins) {
    let mut src = Sources::new(file, env);
    let d = Config::defaults();
    let dur = parse_duration;
    let rate = Rate::parse;

    let admin_key = src.secret(env::ADMIN_KEY, env::ADMIN_KEY_FILE);
    let log_format = src.get(env::LOG_FORMAT, d.log_format, parse_log_format);
    let upstream = UpstreamConfig {
        url: src.opt_string(env::UPSTREAM_URL),
        secret: src.secret(env::UPSTREAM_SECRET, env::UPSTREAM_SECRET_FILE),
        timeout: src.get(env::UPSTREAM_TIMEOUT, d.upstream.timeout, dur),
        inflight: src.get(env::UPSTREAM_INFLIGHT, d.upstream.inflight, parse_usize),
        node_inflight: src.get(
            env::UPSTREAM_NODE_INFLIGHT,
            d.upstream.node_inflight,
            parse_usize,
        ),
    };
    let config = Config {
        listen: src.get(env::LISTEN, d.listen, parse_addr),
        admin_listen: src.get(env::ADMIN_LISTEN, d.admin_listen, parse_addr),
        admin_key,
        redis_url: src.opt_string(env::REDIS_URL),
        store: src.get(env::STORE, d.store, parse_embedded_store),
        users_file: src.get(env::USERS_FILE, d.users_file, parse_path),
        apps_file: src.opt_string(env::APPS_FILE).map(PathBuf::from),
        data_dir: src.get(env::DATA_DIR, d.data_dir, parse_path),
        node_id: src.opt_string(env::NODE_ID).unwrap_or(d.node_id),
        public_url: src.opt_string(env::PUBLIC_URL),
        trusted_proxies: src.get(env::TRUSTED_PROXIES, d.trusted_proxies, parse_cidrs),
        log_format,
        refresh_cap_per_day: src.get(env::REFRESH_CAP_PER_DAY, d.refresh_cap_per_day, parse_u32),
        header_timeout: src.get(env::HEADER_TIMEOUT, d.header_timeout, dur),
        shutdown_grace: src.get(env::SHUTDOWN_GRACE, d.shutdown_grace, dur),
        sessions_per_type: src.get(env::SESSIONS_PER_TYPE, d.sessions_per_type, parse_usize),
        max_sessions_per_app: src.get(
            env::MAX_SESSIONS_PER_APP,
            d.max_sessions_per_app,
            parse_usize,
        ),
        refresh_grace: src.get(env::REFRESH_GRACE, d.refresh_grace, parse_duration_or_off),
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
            session: src.get(env::RATE_SESSION, d.rates.session, rate),
            frames: src.get(env::RATE_FRAMES, d.rates.frames, rate),
            qr_ip: src.get(env::RATE_QR_IP, d.rates.qr_ip, rate),
        },
        ws: WsConfig {
            max_frame_bytes: src.get(env::MAX_FRAME_BYTES, d.ws.max_frame_bytes, parse_byte_count),
            max_fragments: src.get(env::MAX_FRAGMENTS, d.ws.max_fragments, parse_u32),
            idle_timeout: src.get(env::IDLE_TIMEOUT, d.ws.idle_timeout, dur),
            ping_interval: src.get(env::PING_INTERVAL, d.ws.ping_interval, dur),
            allowed_origins: src.opt_string(env::ALLOWED_ORIGINS).map(|s| parse_list(&s)),
            max_connections: src.get(env::MAX_CONNECTIONS, d.ws.max_connections, parse_usize),
            max_sockets_per_session: src.get(
                env::MAX_SOCKETS_PER_SESSION,
                d.ws.max_sockets_per_session,
                parse_usize,
            ),
            max_sockets_per_user: src.get(
                env::MAX_SOCKETS_PER_USER,
                d.ws.max_sockets_per_user,
                parse_usize,
            ),
        },
        http: HttpConfig {
            body_timeout: src.get(env::BODY_TIMEOUT, d.http.body_timeout, dur),
            keepalive_timeout: src.get(env::KEEPALIVE_TIMEOUT, d.http.keepalive_timeout, dur),
            write_timeout: src.get(env::WRITE_TIMEOUT, d.http.write_timeout, dur),
            max_connections: src.get(
                env::MAX_HTTP_CONNECTIONS,
                d.http.max_connections,
                parse_usize,
            ),
            max_connections_per_ip: src.get(
                env::MAX_HTTP_CONNECTIONS_PER_IP,
                d.http.max_connections_per_ip,
                parse_usize,
            ),
        },
        qr: QrConfig {
            ttl: src.get(env::QR_TTL, d.qr.ttl, dur),
            rotate: src.get(env::QR_ROTATE, d.qr.rotate, dur),
            poll_interval: src.get(
                env::QR_POLL_INTERVAL,
                d.qr.poll_interval,
                parse_duration_or_off,
            ),
        },
        upstream,
        push_history: src.get(env::PUSH_HISTORY, d.push_history, parse_u32),
        push_history_ttl: src.get(
            env::PUSH_HISTORY_TTL,
            d.push_history_ttl,
            parse_duration_or_off,
        ),
        demo: src.get(env::DEMO, d.demo, parse_on_off),
        redis_wait_replicas: src.get(env::REDIS_WAIT_REPLICAS, d.redis_wait_replicas, parse_u32),
        redis_wait_timeout: src.get(env::REDIS_WAIT_TIMEOUT, d.redis_wait_timeout, dur),
    };
    src.refuse_unknown_keys(file);
    let origins = Origins(src.origins);
    (config, src.errors, origins)
}

/// Where each setting that was given came from, to name it as the operator wrote it.
pub(super) struct Origins(BTreeMap<String, String>);

impl Origins {
    /// The setting of variable `var` as the operator wrote it: `config key `x`` when it
    /// came from the file, else the variable.
    pub(super) fn name(&self, var: &str) -> String {
        self.0.get(var).cloned().unwrap_or_else(|| var.to_owned())
    }
}

/// The config file key of an environment variable: the name without `TICKETGATE_`,
/// lower case.
pub fn file_key(var: &str) -> String {
    var.trim_start_matches("TICKETGATE_").to_ascii_lowercase()
}

/// Where values come from: environment first, then the config file.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: BTreeMap<String, String>,
    errors: Vec<String>,
    /// Every file key a setting looked for: the known keys.
    asked: BTreeSet<String>,
    /// Variable → where its value came from, for the settings that were given.
    origins: BTreeMap<String, String>,
}

impl<'a> Sources<'a> {
    /// The environment and the config file at `file`, if any; a file that cannot be
    /// read counts as empty, and its problem is the first one recorded.
    fn new(file: Option<&Path>, env: &'a dyn Fn(&str) -> Option<String>) -> Sources<'a> {
        let mut errors = Vec::new();
        let file = match file {
            None => BTreeMap::new(),
            Some(path) => read_file(path).unwrap_or_else(|e| {
                errors.push(e);
                BTreeMap::new()
            }),
        };
        Sources {
            env,
            file,
            errors,
            asked: BTreeSet::new(),
            origins: BTreeMap::new(),
        }
    }

    /// The raw value of a setting and where it came from, for messages.
    fn raw(&mut self, var: &str) -> Option<(String, String)> {
        let key = file_key(var);
        let found = match (self.env)(var) {
            Some(v) => Some((v, var.to_owned())),
            None => self
                .file
                .get(&key)
                .map(|v| (v.clone(), format!("config key `{key}`"))),
        };
        self.asked.insert(key);
        if let Some((_, origin)) = &found {
            self.origins.insert(var.to_owned(), origin.clone());
        }
        found
    }

    /// Records one problem per file key that no setting looked for.
    fn refuse_unknown_keys(&mut self, file: Option<&Path>) {
        let Some(path) = file else { return };
        let known = self.asked.iter().map(String::as_str);
        for key in self.file.keys().filter(|k| !self.asked.contains(*k)) {
            self.errors.push(format!(
                "config file `{}`: {}",
                path.display(),
                super::unknown_key(key, known.clone())
            ));
        }
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

    /// A secret: the value of `var`, else the trimmed contents of the file named by
    /// `file_var`.
    fn secret(&mut self, var: &str, file_var: &str) -> Option<String> {
        let path = self.opt_string(file_var);
        if let Some(value) = self.opt_string(var) {
            return Some(value);
        }
        let path = path?;
        match std::fs::read_to_string(&path) {
            Ok(k) => Some(k.trim().to_owned()),
            Err(e) => {
                let origin = self.origins.get(file_var).map_or(file_var, String::as_str);
                self.errors
                    .push(format!("{origin}: cannot read `{path}`: {e}"));
                None
            }
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
    use std::time::Duration;

    use super::*;
    use crate::config::ConfigError;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Config::load_from(None, &env)
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
    fn max_fragments_is_read_and_must_be_at_least_one() {
        assert_eq!(Config::defaults().ws.max_fragments, 16);
        let c = load(&[(env::MAX_FRAGMENTS, "4")]).expect("valid");
        assert_eq!(c.ws.max_fragments, 4);
        let err = load(&[(env::MAX_FRAGMENTS, "0")]).expect_err("zero");
        assert!(err.to_string().contains(env::MAX_FRAGMENTS), "{err}");
    }

    #[test]
    fn qr_settings_are_read_and_checked() {
        let d = Config::defaults();
        assert_eq!(
            (d.qr.ttl, d.qr.rotate, d.qr.poll_interval),
            (
                Duration::from_secs(120),
                Duration::from_secs(60),
                Duration::from_secs(2)
            )
        );
        let c = load(&[
            (env::QR_TTL, "30s"),
            (env::QR_ROTATE, "10s"),
            (env::QR_POLL_INTERVAL, "0s"),
            (env::RATE_QR_IP, "3/min"),
        ])
        .expect("valid");
        assert_eq!(c.qr.ttl, Duration::from_secs(30));
        assert_eq!(c.qr.rotate, Duration::from_secs(10));
        assert_eq!(c.qr.poll_interval, Duration::ZERO);
        assert_eq!(c.rates.qr_ip.count.get(), 3);
        let err = load(&[(env::QR_ROTATE, "0s")]).expect_err("zero rotation");
        assert!(err.to_string().contains(env::QR_ROTATE), "{err}");
    }

    #[test]
    fn the_embedded_store_is_durable_unless_memory_is_asked_for() {
        use crate::config::EmbeddedStore;
        assert_eq!(Config::defaults().store, EmbeddedStore::Durable);
        let c = load(&[(env::STORE, "memory")]).expect("valid");
        assert_eq!(c.store, EmbeddedStore::Memory);
        let c = load(&[(env::STORE, "durable")]).expect("valid");
        assert_eq!(c.store, EmbeddedStore::Durable);
        let err = load(&[(env::STORE, "disk")]).expect_err("unknown kind");
        assert!(err.to_string().contains(env::STORE), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "store = \"memory\"\n").expect("write");
        let c = Config::load_from(Some(&path), &|_| None).expect("valid");
        assert_eq!(c.store, EmbeddedStore::Memory);
    }

    #[test]
    fn upstream_settings_are_read_and_a_url_needs_a_secret() {
        let d = Config::defaults().upstream;
        assert_eq!(
            (d.url, d.timeout, d.inflight),
            (None, Duration::from_secs(5), 16)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("upstream-secret");
        std::fs::write(&secret_file, "from-a-file-0123456789\n").expect("write");
        let path = secret_file.to_str().expect("utf-8 path");
        let c = load(&[
            (env::UPSTREAM_URL, "https://biz.internal/events"),
            (env::UPSTREAM_SECRET_FILE, path),
            (env::UPSTREAM_TIMEOUT, "250ms"),
            (env::UPSTREAM_INFLIGHT, "4"),
        ])
        .expect("valid");
        assert_eq!(
            c.upstream.url.as_deref(),
            Some("https://biz.internal/events")
        );
        assert_eq!(c.upstream.secret.as_deref(), Some("from-a-file-0123456789"));
        assert_eq!(c.upstream.timeout, Duration::from_millis(250));
        assert_eq!(c.upstream.inflight, 4);
        assert!(
            !format!("{c:?}").contains("from-a-file"),
            "the secret is not in Debug"
        );

        let err = load(&[(env::UPSTREAM_URL, "http://biz")]).expect_err("no secret");
        assert!(err.to_string().contains(env::UPSTREAM_SECRET), "{err}");
        let err = load(&[
            (env::UPSTREAM_URL, "ftp://biz"),
            (env::UPSTREAM_SECRET, "0123456789abcdef"),
            (env::UPSTREAM_INFLIGHT, "0"),
        ])
        .expect_err("bad scheme, zero inflight");
        assert_eq!(err.0.len(), 2, "{err}");
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

    fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ticketgate.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn an_unknown_file_key_is_an_error_naming_the_file_and_the_nearest_key() {
        let (_dir, path) = write_config("tiket_ttl = \"10s\"\nlisten = \"127.0.0.1:1\"\n");
        let err = Config::load_from(Some(&path), &|_| None).expect_err("unknown key");
        assert_eq!(err.0.len(), 1, "{err}");
        let message = &err.0[0];
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("unknown key `tiket_ttl` (did you mean `ticket_ttl`?)"),
            "{message}"
        );
        let (_dir, path) = write_config("colour = \"blue\"\n");
        let err = Config::load_from(Some(&path), &|_| None).expect_err("unknown key");
        assert!(err.0[0].ends_with("unknown key `colour`"), "{err}");
    }

    #[test]
    fn every_setting_is_a_known_file_key() {
        // The secret's `_file` twin is known even when the secret itself is set.
        let (_dir, path) = write_config(
            "admin_key = \"0123456789abcdef0123\"\nadmin_key_file = \"/nonexistent\"\n\
             max_http_connections_per_ip = 3\nrefresh_grace = \"2s\"\n",
        );
        let c = Config::load_from(Some(&path), &|_| None).expect("all keys known");
        assert_eq!(c.http.max_connections_per_ip, 3);
    }

    #[test]
    fn errors_name_the_setting_as_the_operator_wrote_it() {
        let (_dir, path) = write_config("ticket_ttl = \"0s\"\nmax_fragments = 0\n");
        let err = Config::load_from(Some(&path), &|_| None).expect_err("zero");
        let text = err.to_string();
        assert!(
            text.contains("config key `ticket_ttl` must be greater than zero"),
            "{text}"
        );
        assert!(
            text.contains("config key `max_fragments` must be at least 1"),
            "{text}"
        );
        assert!(!text.contains("TICKETGATE_"), "{text}");
        // The same mistake in the environment names the variable.
        let err = load(&[(env::TICKET_TTL, "0s")]).expect_err("zero");
        assert!(
            err.to_string().contains("TICKETGATE_TICKET_TTL must be"),
            "{err}"
        );
    }

    #[test]
    fn the_demo_page_is_on_unless_switched_off() {
        assert!(load(&[]).expect("defaults").demo);
        assert!(!load(&[(env::DEMO, "off")]).expect("off").demo);
        let err = load(&[(env::DEMO, "yes")]).expect_err("not a switch");
        assert!(
            err.to_string()
                .contains("TICKETGATE_DEMO: `yes` is not `on` or `off`"),
            "{err}"
        );
    }

    #[test]
    fn the_replication_wait_is_off_by_default_needs_redis_and_a_short_timeout() {
        let c = load(&[]).expect("defaults");
        assert_eq!(c.redis_wait_replicas, 0);
        let url = (env::REDIS_URL, "redis://127.0.0.1:6379");
        let c = load(&[
            url,
            (env::REDIS_WAIT_REPLICAS, "1"),
            (env::REDIS_WAIT_TIMEOUT, "50ms"),
        ])
        .expect("wait on");
        assert_eq!(c.redis_wait_replicas, 1);
        assert_eq!(c.redis_wait_timeout, std::time::Duration::from_millis(50));
        let err = load(&[(env::REDIS_WAIT_REPLICAS, "1")]).expect_err("no redis");
        assert!(
            err.to_string()
                .contains("TICKETGATE_REDIS_WAIT_REPLICAS needs TICKETGATE_REDIS_URL"),
            "{err}"
        );
        let err = load(&[
            url,
            (env::REDIS_WAIT_REPLICAS, "1"),
            (env::REDIS_WAIT_TIMEOUT, "2s"),
        ])
        .expect_err("too long");
        assert!(
            err.to_string()
                .contains("TICKETGATE_REDIS_WAIT_TIMEOUT must be between 1ms and 500ms"),
            "{err}"
        );
        let err = load(&[(env::REDIS_WAIT_REPLICAS, "some")]).expect_err("not a number");
        assert!(
            err.to_string().contains("TICKETGATE_REDIS_WAIT_REPLICAS"),
            "{err}"
        );
    }

    /// The README's production config file uses only keys that exist, with values
    /// that parse (the files it names do not exist here, so only those may fail).
    #[test]
    fn the_readmes_production_config_file_is_valid() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let marker = "# /etc/ticketgate/ticketgate.toml";
        let text = readme
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split_once('\n'))
            .and_then(|(_, rest)| rest.split("```").next())
            .expect("the README's config file");
        let (_dir, path) = write_config(text);
        let problems = match Config::load_from(Some(&path), &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        let unexpected: Vec<_> = problems
            .iter()
            .filter(|p| !p.contains("cannot read `/etc/ticketgate/"))
            .collect();
        assert!(unexpected.is_empty(), "{unexpected:?}");
    }
}
