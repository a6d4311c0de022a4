//! The Redis store, through one `fred` connection pool: standalone, Sentinel or Cluster,
//! chosen by the URL's scheme.
//!
//! Every [`Store`] method is exactly one round trip. Mint and admit are Lua scripts
//! (`scripts/mint.lua`, `scripts/admit.lua`) so that their check-then-write steps are
//! atomic; session creation is a script too (`scripts/create_session.lua`) so a record
//! never exists without its expiry. Scripts are loaded once at connect and called by
//! SHA; after a `NOSCRIPT` (a restarted or failed-over server) the script is loaded
//! again and the call retried, once.
//!
//! # Failure behaviour
//!
//! While Redis is unreachable every call fails with [`StoreError::Unavailable`] within
//! about [`RedisSettings::command_timeout`]: commands wait in fred's queue while it
//! reconnects (exponential backoff, forever) and time out there; a command that timed out
//! is dropped, never sent later. Each command is attempted at most once
//! (`max_command_attempts = 1`): a mint or admit cut off mid-flight is reported as
//! unavailable rather than silently re-run, which could turn a successful mint into
//! `NonceReplayed` or a successful admission into `Unknown`. When Redis comes back the
//! pool reconnects by itself; nothing needs restarting.

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use fred::{
    error::{Error as FredError, ErrorKind},
    interfaces::{ClientLike, EventInterface, HashesInterface, KeysInterface},
    prelude::{Builder, Config, Pool, ReconnectPolicy, Value},
    socket2::TcpKeepalive,
    types::{
        config::{ConnectionConfig, UnresponsiveConfig},
        scripts::Script,
    },
};
use ticketgate_sdk::ClientType;

use super::qr::millis;
use super::{
    keys, utc_day, AdmitOutcome, AdmitTicket, AppendPush, ConfirmOutcome, ConfirmQr, MintOutcome,
    MintTicket, NewQr, PollOutcome, PollQr, PushId, PushReplay, QrContext, QrMode, QrScanner,
    RenewAccess, RenewOutcome, RotateOutcome, RotateRefresh, ScanOutcome, ScanQr, SessionRecord,
    Store, StoreError, StoredPush, TicketGrant, UserSession,
};

const MINT_LUA: &str = include_str!("scripts/mint.lua");
const ADMIT_LUA: &str = include_str!("scripts/admit.lua");
const CREATE_SESSION_LUA: &str = include_str!("scripts/create_session.lua");
const ROTATE_LUA: &str = include_str!("scripts/rotate.lua");
const RENEW_LUA: &str = include_str!("scripts/renew.lua");
const INDEX_SESSION_LUA: &str = include_str!("scripts/index_session.lua");
const QR_CREATE_LUA: &str = include_str!("scripts/qr_create.lua");
const QR_SCAN_LUA: &str = include_str!("scripts/qr_scan.lua");
const QR_CONFIRM_LUA: &str = include_str!("scripts/qr_confirm.lua");
const QR_POLL_LUA: &str = include_str!("scripts/qr_poll.lua");
const PUSH_LUA: &str = include_str!("scripts/push.lua");
const PUSH_SINCE_LUA: &str = include_str!("scripts/push_since.lua");

/// Reconnect backoff: 100 ms doubling up to 2 s, retried forever.
const RECONNECT_MIN_DELAY_MS: u32 = 100;
const RECONNECT_MAX_DELAY_MS: u32 = 2_000;

/// TCP keepalive: idle time before the first probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// TCP keepalive: time between probes (Linux).
#[cfg(target_os = "linux")]
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Field names of the session hash.
mod field {
    pub(super) const SESSION_ID: &str = "session_id";
    pub(super) const USER_ID: &str = "user_id";
    pub(super) const DEVICE_ID: &str = "device_id";
    pub(super) const CLIENT_TYPE: &str = "client_type";
    pub(super) const CREATED_AT: &str = "created_at";
    pub(super) const EXPIRES_AT: &str = "expires_at";
    pub(super) const REFRESH_HASH: &str = "refresh_hash";
}

/// How the pool talks to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisSettings {
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long one command may take, queueing included, before it fails as
    /// [`StoreError::Unavailable`].
    pub command_timeout: Duration,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// Replicas that must acknowledge a consumed ticket (`WAIT`) before the store
    /// answers an admission; `0`: no wait. See [`RedisStore`]'s
    /// "Replication" section.
    pub wait_replicas: u32,
    /// How long the store waits for those acknowledgements.
    pub wait_timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            pool_size: 4,
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
        }
    }
}

/// What [`RedisStore::join_deployment`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployment {
    /// No node had used this Redis: this node's fingerprint is now the deployment's.
    Founded,
    /// The nodes using this Redis share this node's server secret.
    Joined,
    /// The nodes using this Redis have another server secret (fingerprint `theirs`):
    /// every token and ticket of theirs would be refused here, and ours there.
    Foreign {
        /// The deployment's fingerprint.
        theirs: String,
    },
}

/// The store on Redis. Cloning is cheap and shares the pool.
///
/// # Replication
///
/// Redis replicates asynchronously: a ticket consumed on the primary just before it
/// fails could still exist on the replica promoted in its place, and be consumed a
/// second time there. With [`RedisSettings::wait_replicas`] > 0, an admission (ticket
/// or resume ticket) is followed by `WAIT n timeout` on the same connection, in one
/// pipeline with the script (so the `WAIT` can never land on a fresh connection, where
/// it would have nothing to wait for and answer at once). Fewer acknowledgements in
/// time and the store answers [`StoreError::Unavailable`] (503 `store_unavailable`):
/// the ticket stays spent on the primary, and no socket is opened on the strength of a
/// write a failover could lose.
///
/// Refresh rotations are not waited for: a rotation refused after it happened on the
/// primary would leave the client only its old token, whose retry is reuse (the session
/// ends unless `TICKETGATE_REFRESH_GRACE` covers it); a rotation a failover loses is
/// caught by reuse detection instead (the family is revoked when the old and the new
/// token both show up). Nonces, renewals, QR steps and pushes are not waited for
/// either.
#[derive(Debug, Clone)]
pub struct RedisStore {
    pool: Pool,
    mint: Script,
    admit: Script,
    create_session: Script,
    rotate: Script,
    renew: Script,
    index_session: Script,
    qr: QrScripts,
    push: Script,
    push_since: Script,
    url: String,
    settings: RedisSettings,
    /// Cluster or not: where push histories live, and which pub/sub the hub uses.
    topology: keys::Topology,
}

/// The QR login transitions, one script each (`scripts/qr_*.lua`).
#[derive(Debug, Clone)]
struct QrScripts {
    create: Script,
    scan: Script,
    confirm: Script,
    poll: Script,
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`, in fred's grammar) and loads the scripts.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the URL is invalid or Redis cannot be reached
    /// now: a node refuses to start against a store it cannot see. Once connected, the
    /// store rides out outages by itself.
    pub async fn connect(url: &str, settings: RedisSettings) -> Result<Self, StoreError> {
        let config = Config::from_url(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid redis url: {}", e.details())))?;
        let topology = if config.server.is_clustered() {
            keys::Topology::Cluster
        } else {
            keys::Topology::Single
        };
        let pool = build_pool(config, settings).map_err(map_err)?;
        log_connection_events(&pool);

        // fred bounds each connection attempt by `connection_timeout`; the outer timeout
        // also bounds the discovery steps of Sentinel and Cluster.
        let limit = settings.connect_timeout + settings.command_timeout;
        let connected = match tokio::time::timeout(limit, pool.init()).await {
            Ok(Ok(_connection_task)) => Ok(()),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(StoreError::Unavailable(
                "timed out connecting to redis".into(),
            )),
        };
        if let Err(e) = connected {
            quit(&pool).await;
            return Err(e);
        }

        let store = RedisStore {
            pool,
            mint: Script::from_lua(MINT_LUA),
            admit: Script::from_lua(ADMIT_LUA),
            create_session: Script::from_lua(CREATE_SESSION_LUA),
            rotate: Script::from_lua(ROTATE_LUA),
            renew: Script::from_lua(RENEW_LUA),
            index_session: Script::from_lua(INDEX_SESSION_LUA),
            qr: QrScripts {
                create: Script::from_lua(QR_CREATE_LUA),
                scan: Script::from_lua(QR_SCAN_LUA),
                confirm: Script::from_lua(QR_CONFIRM_LUA),
                poll: Script::from_lua(QR_POLL_LUA),
            },
            push: Script::from_lua(PUSH_LUA),
            push_since: Script::from_lua(PUSH_SINCE_LUA),
            url: url.to_owned(),
            settings,
            topology,
        };
        if let Err(e) = store.load_scripts().await {
            quit(&store.pool).await;
            return Err(e);
        }
        Ok(store)
    }

    /// What this store is, for the start-up line: the mode and its seeds, never the
    /// credentials (`redis cluster, seeds 10.0.0.1:6379,10.0.0.2:6379`), and the
    /// replication wait when it is on (`, WAIT 1 replica(s) within 100ms`).
    pub fn describe(&self) -> String {
        let wait = match self.settings.wait_replicas {
            0 => String::new(),
            n => format!(
                ", WAIT {n} replica(s) within {}ms",
                self.settings.wait_timeout.as_millis()
            ),
        };
        format!("{}{wait}", self.describe_mode())
    }

    fn describe_mode(&self) -> String {
        use fred::types::config::ServerConfig;

        let Ok(config) = Config::from_url(&self.url) else {
            return "redis".into();
        };
        let tls = if self.url.starts_with("rediss") {
            " (TLS)"
        } else {
            ""
        };
        let list = |hosts: &[fred::types::config::Server]| {
            hosts
                .iter()
                .map(|h| format!("{}:{}", h.host, h.port))
                .collect::<Vec<_>>()
                .join(",")
        };
        match &config.server {
            ServerConfig::Centralized { server } => {
                format!("redis standalone{tls}, {}:{}", server.host, server.port)
            }
            ServerConfig::Clustered { hosts, .. } => {
                format!("redis cluster{tls}, seeds {}", list(hosts))
            }
            ServerConfig::Sentinel {
                hosts,
                service_name,
                ..
            } => format!(
                "redis sentinel{tls}, service {service_name}, sentinels {}",
                list(hosts)
            ),
            #[allow(unreachable_patterns)]
            _ => "redis".into(),
        }
    }

    /// Joins the deployment that uses this Redis: records `fingerprint` (of this node's
    /// server secret) if no node did before, else compares it with the recorded one.
    /// One round trip (`SET NX GET`).
    pub async fn join_deployment(&self, fingerprint: &str) -> Result<Deployment, StoreError> {
        use fred::types::SetOptions;

        let before: Option<String> = self
            .pool
            .set(
                keys::DEPLOYMENT,
                fingerprint,
                None,
                Some(SetOptions::NX),
                true,
            )
            .await
            .map_err(map_err)?;
        Ok(match before {
            None => Deployment::Founded,
            Some(theirs) if theirs == fingerprint => Deployment::Joined,
            Some(theirs) => Deployment::Foreign { theirs },
        })
    }

    /// The pool, for the cross-node hub's publishing side.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Cluster or not (the hub picks sharded or classic pub/sub by it).
    pub(crate) fn topology(&self) -> keys::Topology {
        self.topology
    }

    /// The URL and settings this store connected with (the hub's subscriber uses them).
    pub(crate) fn connection(&self) -> (&str, RedisSettings) {
        (&self.url, self.settings)
    }

    /// Closes every connection of the pool (at shutdown).
    pub async fn close(&self) {
        quit(&self.pool).await;
    }

    async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in [
            &self.mint,
            &self.admit,
            &self.create_session,
            &self.rotate,
            &self.renew,
            &self.index_session,
            &self.qr.create,
            &self.qr.scan,
            &self.qr.confirm,
            &self.qr.poll,
            &self.push,
            &self.push_since,
        ] {
            script.load(self.pool.next()).await.map_err(map_err)?;
        }
        Ok(())
    }

    /// Appends a push to its user's history (`scripts/push.lua`) and, with
    /// `announce = Some((channel, before, after))`, publishes `before + id + after` on
    /// `channel` in the same atomic step (on a Cluster with `SPUBLISH`: `channel` is
    /// then the user's hub partition, in the history's slot). Answers the push's id.
    pub(crate) async fn append_push_announced(
        &self,
        push: &AppendPush<'_>,
        announce: Option<(&str, &str, &str)>,
    ) -> Result<String, StoreError> {
        let (channel, before, after) = announce.unwrap_or(("", "", ""));
        let args = vec![
            push.limits.max_len.max(1).to_string(),
            ttl_millis(push.limits.ttl).to_string(),
            PushId::new_epoch(),
            push.session_id.unwrap_or("").to_owned(),
            push.topic.to_owned(),
            push.data.to_owned(),
            channel.to_owned(),
            before.to_owned(),
            after.to_owned(),
            match self.topology {
                keys::Topology::Single => "",
                keys::Topology::Cluster => "sharded",
            }
            .to_owned(),
        ];
        let keys = vec![keys::push_history(push.user_id, self.topology)];
        let answer = self.run(&self.push, keys, args).await?;
        answer
            .as_string()
            .filter(|id| PushId::parse(id).is_some())
            .ok_or_else(|| unexpected("push", &answer))
    }

    /// Like [`run`](Self::run), then, with the replication wait on, `WAIT` on the same
    /// connection in the same pipeline: the script's answer, and whether the wait (if
    /// any) was acknowledged by enough replicas.
    async fn run_replicated(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<(Value, Replicated), StoreError> {
        let wanted = self.settings.wait_replicas;
        if wanted == 0 {
            return Ok((self.run(script, keys, args).await?, Replicated::NotAsked));
        }
        use fred::types::{ClusterHash, CustomCommand};
        // Every key of one call shares a hash tag: the first key's slot is the node
        // the script runs on, and the one `WAIT` must ask.
        let slot = keys
            .first()
            .map_or(0, |k| fred::util::redis_keyslot(k.as_bytes()));
        let client = self.pool.next_connected();
        let mut reloaded = false;
        loop {
            let pipeline = client.pipeline();
            let mut eval: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
            eval.push(script.sha1().clone().into());
            eval.push(Value::Integer(keys.len() as i64));
            eval.extend(keys.iter().map(|k| Value::from(k.as_str())));
            eval.extend(args.iter().map(|a| Value::from(a.as_str())));
            let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
            let wait = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
            let timeout_ms = i64::try_from(self.settings.wait_timeout.as_millis())
                .unwrap_or(1)
                .max(1);
            pipeline
                .custom::<(), _>(evalsha, eval)
                .await
                .map_err(map_err)?;
            pipeline
                .custom::<(), _>(
                    wait,
                    vec![
                        Value::Integer(i64::from(wanted)),
                        Value::Integer(timeout_ms),
                    ],
                )
                .await
                .map_err(map_err)?;
            let mut answers = pipeline.try_all::<Value>().await.into_iter();
            let answer = answers
                .next()
                .unwrap_or_else(|| Err(FredError::new(ErrorKind::Unknown, "empty pipeline")));
            let acked = answers.next();
            match answer {
                Err(e) if e.details().starts_with("NOSCRIPT") && !reloaded => {
                    reloaded = true;
                    script.load(client).await.map_err(map_err)?;
                }
                Err(e) => return Err(map_err(e)),
                Ok(answer) => {
                    let acked = match acked {
                        Some(Ok(Value::Integer(n))) => n,
                        Some(Err(e)) => return Err(map_err(e)),
                        _ => return Err(unexpected("wait", &Value::Null)),
                    };
                    let replicated = if acked >= i64::from(wanted) {
                        Replicated::Acknowledged
                    } else {
                        Replicated::Short { acked, wanted }
                    };
                    return Ok((answer, replicated));
                }
            }
        }
    }

    /// `EVALSHA`, with one `SCRIPT LOAD` and retry on `NOSCRIPT`.
    async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        script
            .evalsha_with_reload(self.pool.next_connected(), keys, args)
            .await
            .map_err(map_err)
    }
}

/// What the replication wait found after a single-use write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replicated {
    /// The wait is off.
    NotAsked,
    /// Enough replicas acknowledged the write.
    Acknowledged,
    /// Fewer than `wanted` replicas acknowledged it in time.
    Short { acked: i64, wanted: u32 },
}

impl Replicated {
    /// `Ok` unless the write may be lost in a failover.
    fn check(self, what: &str) -> Result<(), StoreError> {
        match self {
            Replicated::NotAsked | Replicated::Acknowledged => Ok(()),
            Replicated::Short { acked, wanted } => Err(StoreError::Unavailable(format!(
                "{what} acknowledged by {acked} of {wanted} replicas in time"
            ))),
        }
    }
}

fn build_pool(config: Config, settings: RedisSettings) -> Result<Pool, FredError> {
    Builder::from_config(config)
        .with_connection_config(|c| {
            configure_connection(c, settings);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = command_timeout(settings))
        .set_policy(reconnect_policy())
        .build_pool(settings.pool_size.max(1))
}

/// How one Redis connection is opened and watched; shared by the pool and the hub's
/// subscriber, so that both notice a dead link the same way.
///
/// A server or network that stops answering without closing the socket (a paused
/// server, a partition, a NAT or load balancer that forgot the connection) gets the
/// connection closed and re-opened: by fred when a command waits longer than twice the
/// command timeout for its reply, and by the kernel's keepalive probes on an idle one.
pub(super) fn configure_connection(c: &mut ConnectionConfig, settings: RedisSettings) {
    let unresponsive_after = unresponsive_after(settings);
    c.connection_timeout = settings.connect_timeout;
    c.internal_command_timeout = settings.connect_timeout;
    c.tcp.nodelay = Some(true);
    c.tcp.keepalive = Some(keepalive());
    c.unresponsive = UnresponsiveConfig {
        max_timeout: Some(unresponsive_after),
        interval: (unresponsive_after / 4).max(Duration::from_millis(10)),
    };
}

/// How long a connection may leave a command unanswered before it is taken for dead:
/// twice the command timeout.
pub(super) fn unresponsive_after(settings: RedisSettings) -> Duration {
    command_timeout(settings) * 2
}

/// The longest a command may take, queueing included.
pub(super) fn command_timeout(settings: RedisSettings) -> Duration {
    settings.command_timeout.max(Duration::from_millis(1))
}

/// Reconnect forever, with exponential backoff.
pub(super) fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, RECONNECT_MIN_DELAY_MS, RECONNECT_MAX_DELAY_MS, 2)
}

/// TCP keepalive: the first probe after [`KEEPALIVE_IDLE`] of silence, then every
/// `KEEPALIVE_INTERVAL` (Linux); the system's count of unanswered probes (9 on Linux)
/// closes the socket. A backstop: the command and hub checks notice sooner.
fn keepalive() -> TcpKeepalive {
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_interval(KEEPALIVE_INTERVAL);
    keepalive
}

fn log_connection_events(pool: &Pool) {
    for client in pool.clients() {
        client.on_error(|(err, server)| async move {
            let server = server.map(|s| s.to_string()).unwrap_or_default();
            tracing::warn!(cause = %err, %server, "redis connection failed");
            Ok(())
        });
        client.on_reconnect(|server| async move {
            tracing::info!(%server, "redis connected");
            Ok(())
        });
    }
}

async fn quit(pool: &Pool) {
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
}

#[async_trait]
impl Store for RedisStore {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let args = vec![
            record.expires_at.to_string(),
            field::SESSION_ID.into(),
            record.session_id.clone(),
            field::USER_ID.into(),
            record.user_id.clone(),
            field::DEVICE_ID.into(),
            record.device_id.clone(),
            field::CLIENT_TYPE.into(),
            record.client_type.as_str().into(),
            field::CREATED_AT.into(),
            record.created_at.to_string(),
            field::EXPIRES_AT.into(),
            record.expires_at.to_string(),
            field::REFRESH_HASH.into(),
            record.refresh_hash.clone(),
        ];
        let keys = vec![keys::session(&record.session_id)];
        self.run(&self.create_session, keys, args).await?;
        Ok(())
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let fields: HashMap<String, String> = self
            .pool
            .hgetall(keys::session(session_id))
            .await
            .map_err(map_err)?;
        if fields.is_empty() {
            return Ok(None);
        }
        parse_session(&fields).map(Some)
    }

    async fn revoke_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let deleted: i64 = self
            .pool
            .del(keys::session(session_id))
            .await
            .map_err(map_err)?;
        Ok(deleted > 0)
    }

    async fn mint_ticket(&self, mint: &MintTicket<'_>) -> Result<MintOutcome, StoreError> {
        let keys = vec![
            keys::session(mint.session_id),
            keys::nonce(mint.session_id, mint.nonce),
            keys::ticket(mint.session_id, mint.ticket_id),
        ];
        let args = vec![
            ttl_millis(mint.nonce_ttl).to_string(),
            mint.grant.encode(),
            ttl_millis(mint.ticket_ttl).to_string(),
        ];
        match self.run(&self.mint, keys, args).await? {
            Value::Integer(0) => Ok(MintOutcome::Minted),
            Value::Integer(1) => Ok(MintOutcome::NonceReplayed),
            Value::Integer(2) => Ok(MintOutcome::SessionGone),
            other => Err(unexpected("mint", &other)),
        }
    }

    async fn admit_ticket(&self, admit: &AdmitTicket<'_>) -> Result<AdmitOutcome, StoreError> {
        let keys = vec![
            keys::ticket(admit.session_id, admit.ticket_id),
            keys::session(admit.session_id),
        ];
        let args = vec![admit.device_id.to_owned()];
        let (answer, replicated) = self.run_replicated(&self.admit, keys, args).await?;
        let outcome = match answer {
            Value::Integer(0) => AdmitOutcome::Unknown,
            Value::Integer(1) => AdmitOutcome::DeviceMismatch,
            Value::Integer(2) => AdmitOutcome::SessionGone,
            Value::String(grant) => AdmitOutcome::Admitted(TicketGrant::decode(&grant)?),
            Value::Bytes(grant) => AdmitOutcome::Admitted(
                std::str::from_utf8(&grant)
                    .map_err(|_| StoreError::Corrupt("ticket grant is not UTF-8".into()))
                    .and_then(TicketGrant::decode)?,
            ),
            other => return Err(unexpected("admit", &other)),
        };
        // Only an admission opens something; a refusal stays a refusal.
        if matches!(outcome, AdmitOutcome::Admitted(_)) {
            replicated.check("ticket consumption")?;
        }
        Ok(outcome)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.pool.ping::<()>(None).await.map_err(map_err)
    }

    async fn record_nonce(
        &self,
        scope: &str,
        nonce: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .pool
            .set(
                keys::nonce(scope, nonce),
                "1",
                Some(fred::types::Expiration::PX(ttl_millis(ttl) as i64)),
                Some(fred::types::SetOptions::NX),
                false,
            )
            .await
            .map_err(map_err)?;
        Ok(set.is_some())
    }

    async fn rotate_refresh(&self, r: &RotateRefresh<'_>) -> Result<RotateOutcome, StoreError> {
        let now_ms = unix_now_ms();
        let args = vec![
            r.presented_hash.to_owned(),
            r.new_hash.to_owned(),
            r.grace.as_millis().to_string(),
            r.cap_per_day.to_string(),
            utc_day(now_ms / 1000).to_string(),
            now_ms.to_string(),
            r.device_id.to_owned(),
        ];
        let keys = vec![keys::session(r.session_id), keys::reused(r.session_id)];
        match self.run(&self.rotate, keys, args).await? {
            Value::Integer(1) => Ok(RotateOutcome::Reused),
            Value::Integer(2) => Ok(RotateOutcome::SessionGone),
            Value::Integer(3) => Ok(RotateOutcome::Limit),
            Value::Integer(4) => Ok(RotateOutcome::DeviceMismatch),
            Value::Array(items) => {
                let mut fields = HashMap::new();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if let (Some(k), Some(v)) = (k.into_string(), v.into_string()) {
                        fields.insert(k, v);
                    }
                }
                parse_session(&fields).map(RotateOutcome::Rotated)
            }
            other => Err(unexpected("rotate", &other)),
        }
    }

    async fn renew_access(&self, r: &RenewAccess<'_>) -> Result<RenewOutcome, StoreError> {
        let keys = vec![
            keys::session(r.session_id),
            keys::renewed(r.session_id, r.jti),
        ];
        let args = vec![
            ttl_millis(r.jti_ttl).to_string(),
            r.cap_per_day.to_string(),
            utc_day(unix_now_ms() / 1000).to_string(),
        ];
        match self.run(&self.renew, keys, args).await? {
            Value::Integer(0) => Ok(RenewOutcome::Renewed),
            Value::Integer(1) => Ok(RenewOutcome::AlreadyRenewed),
            Value::Integer(2) => Ok(RenewOutcome::SessionGone),
            Value::Integer(3) => Ok(RenewOutcome::Limit),
            other => Err(unexpected("renew", &other)),
        }
    }

    async fn index_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let keys = vec![keys::user_sessions(&record.user_id)];
        let args = vec![
            record.session_id.clone(),
            super::index_value(record),
            record.expires_at.to_string(),
        ];
        self.run(&self.index_session, keys, args).await?;
        Ok(())
    }

    async fn unindex_session(&self, user_id: &str, session_id: &str) -> Result<(), StoreError> {
        self.pool
            .hdel::<i64, _, _>(keys::user_sessions(user_id), session_id)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn user_sessions(&self, user_id: &str) -> Result<Vec<UserSession>, StoreError> {
        let entries: HashMap<String, String> = self
            .pool
            .hgetall(keys::user_sessions(user_id))
            .await
            .map_err(map_err)?;
        Ok(super::live_index_entries(entries, unix_now_ms() / 1000))
    }

    async fn set_blocked(&self, user_id: &str, blocked: bool) -> Result<(), StoreError> {
        let key = keys::blocked(user_id);
        if blocked {
            self.pool
                .set::<(), _, _>(key, "1", None, None, false)
                .await
                .map_err(map_err)
        } else {
            self.pool
                .del::<i64, _>(key)
                .await
                .map(drop)
                .map_err(map_err)
        }
    }

    async fn append_push(&self, push: &AppendPush<'_>) -> Result<String, StoreError> {
        self.append_push_announced(push, None).await
    }

    async fn pushes_since(
        &self,
        user_id: &str,
        since: &str,
        session_id: &str,
    ) -> Result<PushReplay, StoreError> {
        let (epoch, seq) = PushId::parse(since).map_or((String::new(), 0), |s| (s.epoch, s.seq));
        let keys = vec![keys::push_history(user_id, self.topology)];
        let args = vec![epoch, seq.to_string(), session_id.to_owned()];
        let answer = self.run(&self.push_since, keys, args).await?;
        let corrupt = || unexpected("push_since", &answer);
        let items = match &answer {
            Value::Array(items) => items,
            _ => return Err(corrupt()),
        };
        let Some((last, rest)) = items.split_first() else {
            return Ok(PushReplay::default());
        };
        let last_id = last.as_string().ok_or_else(corrupt)?;
        let last = PushId::parse(&last_id).ok_or_else(corrupt)?;
        let recovered = rest.first().and_then(Value::as_i64).ok_or_else(corrupt)? == 1;
        let mut pushes = Vec::new();
        for entry in rest[1..].chunks(4) {
            let [seq, session, topic, data] = entry else {
                return Err(corrupt());
            };
            let text = |v: &Value| v.as_string().ok_or_else(corrupt);
            let seq: u64 = text(seq)?.parse().map_err(|_| corrupt())?;
            let session = text(session)?;
            pushes.push(StoredPush {
                id: PushId {
                    epoch: last.epoch.clone(),
                    seq,
                }
                .to_string(),
                session_id: (!session.is_empty()).then_some(session),
                topic: text(topic)?,
                data: text(data)?,
            });
        }
        Ok(PushReplay {
            recovered,
            last_id: Some(last_id),
            pushes,
        })
    }

    async fn is_blocked(&self, user_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .pool
            .exists(keys::blocked(user_id))
            .await
            .map_err(map_err)?;
        Ok(n > 0)
    }

    async fn create_qr(&self, qr: &NewQr<'_>) -> Result<(), StoreError> {
        let now = qr.now_ms.to_string();
        let fields: [(&str, String); 15] = [
            ("mode", qr.mode.as_str().into()),
            ("generation", qr.generation.into()),
            ("state", "pending".into()),
            ("owner_hash", qr.owner_hash.into()),
            ("owner_device", qr.owner_device.into()),
            ("owner_client_type", qr.owner_client_type.as_str().into()),
            (
                "approver_session",
                qr.approver.map_or("", |a| a.session_id).into(),
            ),
            (
                "approver_user",
                qr.approver.map_or("", |a| a.user_id).into(),
            ),
            ("ip", qr.ip.into()),
            ("created_ms", now.clone()),
            (
                "expires_ms",
                qr.now_ms.saturating_add(millis(qr.ttl)).to_string(),
            ),
            ("rotated_ms", now),
            ("owner_poll_ms", "0".into()),
            ("scanner_poll_ms", "0".into()),
            ("scanner_hash", String::new()),
        ];
        let mut args = vec![ttl_millis(qr.ttl).to_string()];
        for (field, value) in fields {
            args.push(field.to_owned());
            args.push(value);
        }
        self.run(&self.qr.create, vec![keys::qr(qr.family)], args)
            .await?;
        Ok(())
    }

    async fn scan_qr(&self, scan: &ScanQr<'_>) -> Result<ScanOutcome, StoreError> {
        let args = vec![
            scan.generation.to_owned(),
            scan.session.map_or("", |s| s.session_id).to_owned(),
            scan.session.map_or("", |s| s.user_id).to_owned(),
            scan.secret_hash.to_owned(),
            scan.now_ms.to_string(),
            millis(scan.rotate_every).to_string(),
            scan.ip.to_owned(),
        ];
        match self
            .run(&self.qr.scan, vec![keys::qr(scan.family)], args)
            .await?
        {
            Value::Integer(0) => Ok(ScanOutcome::Gone),
            Value::Integer(1) => Ok(ScanOutcome::NeedsSession),
            Value::Array(items) => {
                let mut it = items.into_iter().map(Value::into_string);
                let corrupt = || StoreError::Corrupt("qr_scan answer".into());
                let mut next = || it.next().flatten().ok_or_else(corrupt);
                let mode = QrMode::parse(&next()?).ok_or_else(corrupt)?;
                let client_type = ClientType::parse(&next()?).ok_or_else(corrupt)?;
                let ip = next()?;
                let created_ms: i64 = next()?.parse().map_err(|_| corrupt())?;
                Ok(ScanOutcome::Scanned(QrContext {
                    mode,
                    client_type,
                    ip,
                    created_at: created_ms.div_euclid(1000),
                }))
            }
            other => Err(unexpected("qr_scan", &other)),
        }
    }

    async fn confirm_qr(&self, confirm: &ConfirmQr<'_>) -> Result<ConfirmOutcome, StoreError> {
        let args = vec![confirm.generation.to_owned(), confirm.session_id.to_owned()];
        let keys = vec![keys::qr(confirm.family)];
        match self.run(&self.qr.confirm, keys, args).await? {
            Value::Integer(0) => Ok(ConfirmOutcome::Gone),
            Value::Integer(1) => Ok(ConfirmOutcome::Confirmed),
            other => Err(unexpected("qr_confirm", &other)),
        }
    }

    async fn poll_qr(&self, poll: &PollQr<'_>) -> Result<PollOutcome, StoreError> {
        let args = vec![
            poll.generation.to_owned(),
            poll.secret_hash.to_owned(),
            poll.device_id.to_owned(),
            poll.client_type.as_str().to_owned(),
            poll.now_ms.to_string(),
            millis(poll.interval).to_string(),
            millis(poll.rotate_every).to_string(),
            poll.next_generation.to_owned(),
        ];
        let answer = self
            .run(&self.qr.poll, vec![keys::qr(poll.family)], args)
            .await?;
        let corrupt = || StoreError::Corrupt("qr_poll answer".into());
        match answer {
            Value::Integer(0) => Ok(PollOutcome::Gone),
            Value::Integer(3) => Ok(PollOutcome::Pending),
            Value::Integer(4) => Ok(PollOutcome::Scanned(None)),
            Value::Integer(5) => Ok(PollOutcome::Confirmed),
            Value::Array(items) => {
                let mut it = items.into_iter();
                let tag = it.next().and_then(|v| v.as_i64()).ok_or_else(corrupt)?;
                let mut text = || it.next().and_then(Value::into_string).ok_or_else(corrupt);
                match tag {
                    1 => {
                        let wait: u64 = text()?.parse().map_err(|_| corrupt())?;
                        Ok(PollOutcome::SlowDown(Duration::from_millis(wait)))
                    }
                    2 => {
                        let next_generation = text()?;
                        let expires_at_ms = text()?.parse().map_err(|_| corrupt())?;
                        Ok(PollOutcome::Rotated {
                            next_generation,
                            expires_at_ms,
                        })
                    }
                    4 => {
                        let ip = text()?;
                        let scanned_ms: i64 = text()?.parse().map_err(|_| corrupt())?;
                        Ok(PollOutcome::Scanned(Some(QrScanner {
                            ip,
                            scanned_at: scanned_ms.div_euclid(1000),
                        })))
                    }
                    6 => Ok(PollOutcome::Redeemed {
                        user_id: text()?,
                        approver_session_id: text()?,
                    }),
                    _ => Err(corrupt()),
                }
            }
            other => Err(unexpected("qr_poll", &other)),
        }
    }
}

fn unix_now_ms() -> i64 {
    crate::clock::unix_now_ms()
}

fn parse_session(fields: &HashMap<String, String>) -> Result<SessionRecord, StoreError> {
    let text = |name: &str| {
        fields
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("session field {name} missing")))
    };
    let number = |name: &str| {
        text(name)?
            .parse::<i64>()
            .map_err(|_| StoreError::Corrupt(format!("session field {name} is not a number")))
    };
    let client_type = ClientType::parse(&text(field::CLIENT_TYPE)?)
        .ok_or_else(|| StoreError::Corrupt("session field client_type unknown".into()))?;
    Ok(SessionRecord {
        session_id: text(field::SESSION_ID)?,
        user_id: text(field::USER_ID)?,
        device_id: text(field::DEVICE_ID)?,
        client_type,
        created_at: number(field::CREATED_AT)?,
        expires_at: number(field::EXPIRES_AT)?,
        refresh_hash: text(field::REFRESH_HASH)?,
    })
}

/// A TTL in whole milliseconds, at least 1 (`PX 0` is an error in Redis) and at most
/// a century (Redis rejects TTLs whose deadline overflows).
fn ttl_millis(ttl: Duration) -> u64 {
    const MAX_TTL_MS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MS)
        .clamp(1, MAX_TTL_MS)
}

fn unexpected(script: &str, answer: &Value) -> StoreError {
    StoreError::Corrupt(format!("{script} script answered a {}", answer.kind()))
}

/// Sorts fred's errors into "Redis is not there" and "Redis said something odd".
fn map_err(err: FredError) -> StoreError {
    let unavailable = match err.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel
        | ErrorKind::Backpressure
        | ErrorKind::Auth
        | ErrorKind::Config
        | ErrorKind::Url => true,
        ErrorKind::Parse
        | ErrorKind::Protocol
        | ErrorKind::NotFound
        | ErrorKind::InvalidArgument
        | ErrorKind::InvalidCommand => false,
        // Server replies land here too; only the transient ones mean "try later".
        _ => is_transient_reply(err.details()) || !is_server_reply(err.details()),
    };
    let details = format!("{:?}: {}", err.kind(), err.details());
    if unavailable {
        StoreError::Unavailable(details)
    } else {
        StoreError::Corrupt(details)
    }
}

/// Whether an error text is a Redis error reply (`PREFIX message`, prefix in capitals)
/// rather than a message from fred itself.
fn is_server_reply(details: &str) -> bool {
    details
        .split_whitespace()
        .next()
        .is_some_and(|p| p.chars().all(|c| c.is_ascii_uppercase()))
}

/// Error replies that a healthy deployment gives while it is loading, failing over or
/// overloaded.
fn is_transient_reply(details: &str) -> bool {
    const TRANSIENT: [&str; 9] = [
        "LOADING",
        "BUSY",
        "READONLY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
        "OOM",
        "ERR max number of clients reached",
    ];
    TRANSIENT.iter().any(|p| details.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_into_unavailable_and_corrupt() {
        let unavailable = |kind, details| {
            matches!(
                map_err(FredError::new(kind, details)),
                StoreError::Unavailable(_)
            )
        };
        assert!(unavailable(ErrorKind::IO, "connection reset"));
        assert!(unavailable(ErrorKind::Timeout, "Request timed out."));
        assert!(unavailable(ErrorKind::Canceled, "Canceled."));
        assert!(unavailable(ErrorKind::Unknown, "LOADING Redis is loading"));
        assert!(unavailable(
            ErrorKind::Unknown,
            "Too many failed write attempts."
        ));
        assert!(!unavailable(ErrorKind::Parse, "bad integer"));
        assert!(!unavailable(ErrorKind::Unknown, "ERR Error running script"));
        assert!(!unavailable(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation"
        ));
    }

    #[test]
    fn ttls_are_whole_positive_milliseconds() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 1);
        assert_eq!(ttl_millis(Duration::from_secs(30)), 30_000);
        assert_eq!(ttl_millis(Duration::MAX), 100 * 365 * 24 * 60 * 60 * 1000);
    }
}
