//! Building and running a node: config → secrets and keys → store → state → listeners
//! → wait for the shutdown signal → drain with a grace period ([`crate::shutdown`]).
//!
//! Tests start a node with [`Server::bind`] on `127.0.0.1:0` and stop it by resolving the
//! future given to [`Server::run`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::apps::{Apps, AppsError};
use crate::auth::secrets::{load_or_create_server_secret, Secrets, SecretsError};
use crate::auth::ticket::TicketCodec;
use crate::auth::tokens::KeyStore;
use crate::auth::users::{Users, UsersError};
use crate::clock::SystemClock;
use crate::config::{Config, EmbeddedStore};
use crate::handler::{NoUpstream, Pusher, SessionHandler};
use crate::http::ConnLimits;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::registry::Registry;
use crate::sessions::{self, Policy, Sessions};
use crate::shutdown::{Shutdown, Stopped};
use crate::state::{AppState, Shared};
use crate::store::durable::{self, DurableError, DurableStore};
use crate::store::memory::MemoryStore;
use crate::store::redis::{Deployment, RedisSettings, RedisStore};
use crate::store::{Store, StoreError};
use crate::upstream::{Upstream, UpstreamError};
use crate::ws::connection::{SocketNode, SocketSettings};

/// How often limiter state and expired embedded-store entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Data dir, secret or keys.
    #[error("data dir: {0}")]
    Secrets(#[from] SecretsError),
    /// Users file.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// Apps file.
    #[error(transparent)]
    Apps(#[from] AppsError),
    /// Store connection.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The Redis is used by nodes with another server secret.
    #[error(
        "this node's server secret (fingerprint {ours}) is not the one of the nodes already \
         using this Redis (fingerprint {theirs}): each side would refuse every token and \
         ticket of the other. Give this node the running nodes' `server.secret` (copy it \
         into its data dir, mode 0600), or point it at a Redis of its own. After rotating \
         the secret on every node (all stopped), delete the Redis key `tg:deployment` once."
    )]
    SplitDeployment {
        /// This node's fingerprint.
        ours: String,
        /// The deployment's fingerprint, as recorded in Redis.
        theirs: String,
    },
    /// The durable embedded store's file (locked by another node, unreadable).
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The upstream forwarder could not be built.
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the operator's files or settings are wrong (as opposed to something
    /// unavailable now, like the store or a port): the binary exits with 78 for these.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            StartError::Users(UsersError::Parse { .. })
                | StartError::Apps(_)
                | StartError::SplitDeployment { .. }
        )
    }
}

/// A node with its listeners bound, not yet serving.
pub struct Server {
    public: TcpListener,
    admin: TcpListener,
    state: AppState,
    /// The users and apps files, watched while the node runs.
    files: (Users, Apps),
    /// What the store is, for the start-up line.
    store_description: String,
}

/// Accept queue length: a reconnect storm after a deploy arrives all at once, and the
/// default (1024) drops SYNs that then retry only after a second. The kernel caps it
/// at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    // Accepted sockets inherit it (Linux): one system call here instead of one per
    // connection. Frames are small and latency matters more than packet count.
    socket.set_nodelay(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// An opened store, the hub that goes with it, and what it is (for the start-up line).
struct OpenedStore {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    description: String,
}

/// The store and the hub that goes with it. On Redis, the node first checks that the
/// nodes already using it share its server secret (`fingerprint`).
async fn open_store(
    config: &Config,
    fingerprint: &str,
    registry: &Registry,
    shutdown: &Shutdown,
) -> Result<OpenedStore, StartError> {
    let node_id = config.node_id.clone();
    match &config.redis_url {
        Some(url) => {
            let settings = RedisSettings {
                wait_replicas: config.redis_wait_replicas,
                wait_timeout: config.redis_wait_timeout,
                ..RedisSettings::default()
            };
            let redis = RedisStore::connect(url, settings).await?;
            let joined = redis.join_deployment(fingerprint).await;
            match joined {
                Ok(Deployment::Founded | Deployment::Joined) => {}
                Ok(Deployment::Foreign { theirs }) => {
                    redis.close().await;
                    return Err(StartError::SplitDeployment {
                        ours: fingerprint.to_owned(),
                        theirs,
                    });
                }
                Err(e) => {
                    redis.close().await;
                    return Err(e.into());
                }
            }
            let description = redis.describe();
            let store: Arc<dyn Store> = Arc::new(redis.clone());
            let hub =
                Hub::redis(node_id, registry.clone(), &redis, store.clone(), shutdown).await?;
            Ok(OpenedStore {
                store,
                hub,
                description,
            })
        }
        None if config.store == EmbeddedStore::Memory => {
            let store = MemoryStore::new();
            shutdown.spawn_background(store.sweeper(SWEEP_EVERY));
            Ok(OpenedStore {
                store: Arc::new(store),
                hub: Hub::local(node_id, registry.clone()),
                description: "embedded, in memory: every session ends when the node stops".into(),
            })
        }
        None => {
            let path = config.data_dir.join(durable::FILE_NAME);
            let description = format!(
                "embedded, durable: sessions in {} (tickets and nonces in memory)",
                path.display()
            );
            let opening = path.clone();
            let store = tokio::task::spawn_blocking(move || DurableStore::open(&opening))
                .await
                .map_err(|e| DurableError::Open {
                    path,
                    reason: format!("opening task failed: {e}"),
                })??;
            shutdown.spawn_background(store.sweeper(SWEEP_EVERY));
            past_replay_floor(&store).await;
            Ok(OpenedStore {
                store: Arc::new(store),
                hub: Hub::local(node_id, registry.clone()),
                description,
            })
        }
    }
}

/// Waits until the wall clock is past the store's replay floor (at most a second), so
/// that a client signing right after the node starts listening is not refused as stale.
async fn past_replay_floor(store: &dyn Store) {
    if let Some(floor) = store.replay_floor() {
        let first_ms = floor.saturating_add(1).saturating_mul(1000);
        let wait = first_ms.saturating_sub(crate::clock::unix_now_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
        }
    }
}

/// Builds a node with a business handler of the caller's choice; see
/// [`Server::builder`].
pub struct Builder {
    config: Config,
    handler: Option<Arc<dyn SessionHandler>>,
}

impl Builder {
    /// The node's [`SessionHandler`]: it gets every socket's `connect`, `send` and
    /// `disconnect`, instead of the upstream forwarder or [`NoUpstream`].
    pub fn handler(mut self, handler: impl SessionHandler) -> Builder {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Loads secrets and keys, connects the store and binds both listeners, as
    /// [`Server::bind`].
    ///
    /// # Errors
    /// Any [`StartError`]; nothing is left running.
    pub async fn bind(self) -> Result<Server, StartError> {
        let handler = match self.handler {
            Some(handler) => handler,
            None => default_handler(&self.config)?,
        };
        Server::bind_with(self.config, handler).await
    }
}

/// The handler `ticketgate serve` runs: the upstream forwarder when
/// `TICKETGATE_UPSTREAM_URL` is set, else [`NoUpstream`].
fn default_handler(config: &Config) -> Result<Arc<dyn SessionHandler>, StartError> {
    Ok(match config.upstream.url {
        Some(_) => Arc::new(Upstream::new(&config.upstream)?),
        None => Arc::new(NoUpstream),
    })
}

impl Server {
    /// A node of `config` whose business handler can be chosen:
    ///
    /// ```no_run
    /// # async fn run(config: ticketgate::Config) -> Result<(), ticketgate::server::StartError> {
    /// use ticketgate::handler::{Context, Refused, SessionHandler};
    ///
    /// struct Echo;
    ///
    /// #[ticketgate::async_trait]
    /// impl SessionHandler for Echo {
    ///     async fn message(&self, _cx: &Context, _id: &str, data: serde_json::Value)
    ///         -> Result<serde_json::Value, Refused> {
    ///         Ok(data)
    ///     }
    /// }
    ///
    /// let server = ticketgate::Server::builder(config).handler(Echo).bind().await?;
    /// server.run(ticketgate::shutdown::os_signal()).await;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            handler: None,
        }
    }

    /// Loads secrets and keys, connects the store and binds both listeners. The
    /// business handler is the upstream forwarder when `TICKETGATE_UPSTREAM_URL` is
    /// set, else [`NoUpstream`].
    ///
    /// # Errors
    /// Any [`StartError`]; nothing is left running.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        Server::builder(config).bind().await
    }

    async fn bind_with(
        config: Config,
        handler: Arc<dyn SessionHandler>,
    ) -> Result<Server, StartError> {
        let server_secret = load_or_create_server_secret(&config.data_dir)?;
        let secrets = Secrets::derive(&server_secret);
        let keys = KeyStore::open(&config.data_dir, config.ttl.jwt_leeway, config.key_reload)?;
        let users = Users::open(&config.users_file)?;
        let apps = Apps::open(config.apps_file.as_deref())?;
        let registry = Registry::default();
        let shutdown = Shutdown::new();
        let OpenedStore {
            store,
            hub,
            description: store_description,
        } = open_store(&config, &secrets.fingerprint(), &registry, &shutdown).await?;
        let _ = crate::metrics::handle(); // the recorder, before the store's meters
        let store = crate::store::metered::Metered::wrap(store);
        let public = bind(config.listen)?;
        let admin = bind(config.admin_listen)?;
        let tickets = TicketCodec::new(*secrets.ticket_mac_key());
        let sessions = Sessions::new(sessions::Parts {
            store: store.clone(),
            hub: hub.clone(),
            keys: keys.clone(),
            secrets,
            tickets: tickets.clone(),
            users: users.clone(),
            apps: apps.clone(),
            policy: Policy::from_config(&config),
            app_logins: tokio::sync::Mutex::new(()),
            resume_gate: tokio::sync::Semaphore::new(sessions::RESUME_IN_FLIGHT),
        });
        let limits = Limits::new(&config.rates);
        let sockets = SocketNode::new(
            SocketSettings::new(&config),
            Arc::new(SystemClock),
            shutdown.token().clone(),
            limits.clock().clone(),
        );
        let state = AppState::new(Shared {
            pusher: Pusher::new(
                hub.clone(),
                store.clone(),
                crate::hub::history_limits(&config),
            ),
            handler,
            limits,
            sockets,
            connection_slots: Arc::new(Semaphore::new(config.ws.max_connections)),
            registry,
            hub,
            sessions,
            tickets,
            shutdown,
            config,
            store,
            keys,
        });
        Ok(Server {
            public,
            admin,
            state,
            files: (users, apps),
            store_description,
        })
    }

    /// The public listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.public.local_addr().unwrap_or(self.state.config.listen)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.state.config.admin_listen)
    }

    /// The node's state (tests inspect the registry).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `signal` resolves, then shuts down: stops accepting, lets requests in
    /// flight finish, closes every socket with 1001 and waits up to the grace period for
    /// every task of the node.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Server {
            public,
            admin,
            state,
            files: (users, apps),
            store_description,
        } = self;
        announce(&state, &public, &admin, &store_description);
        let shutdown = state.shutdown.clone();
        shutdown.spawn_background(users.watch(shutdown.token().clone()));
        shutdown.spawn_background(apps.watch(shutdown.token().clone()));
        shutdown.spawn(crate::http::serve_public(public, state.clone()));
        shutdown.spawn(crate::http::serve_admin(
            admin,
            crate::http::admin::router(state.clone()),
            ConnLimits::of(&state.config),
            shutdown.clone(),
        ));
        shutdown.spawn_background(sweep(state.clone()));
        shutdown.spawn_background(reload_keys(state.clone()));

        signal.await;
        tracing::info!(
            sockets = state.registry.len(),
            tasks = shutdown.running(),
            "shutting down: finishing requests, closing sockets with 1001"
        );
        if let Stopped::GraceOver { left } = shutdown.stop(state.config.shutdown_grace).await {
            tracing::warn!(
                left,
                sockets = state.registry.len(),
                "grace period over with tasks still running"
            );
        }
        // The heartbeat stopped with the background loops: leave the set now rather
        // than have the other nodes wait on this one until it ages out.
        state.hub.leave().await;
        tracing::info!("stopped");
    }
}

/// The start-up lines: what the node is and where it listens, one line each, and a
/// warning for a setting that leaves a part unusable.
fn announce(state: &AppState, public: &TcpListener, admin: &TcpListener, store: &str) {
    let addr = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let config = &state.config;
    tracing::info!(node_id = %config.node_id, "node");
    tracing::info!(store, "store");
    tracing::info!(
        public = %addr(public, config.listen),
        admin = %addr(admin, config.admin_listen),
        "listening"
    );
    if config.admin_key.is_none() {
        tracing::warn!(
            "admin API disabled: no admin key is set ({} or {}); every admin call \
             and /metrics answer 401",
            crate::config::env::ADMIN_KEY,
            crate::config::env::ADMIN_KEY_FILE
        );
    }
}

/// Forgets limiter state and access-token keys past their time, every [`SWEEP_EVERY`].
async fn sweep(state: AppState) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        state.limits.retain_recent();
        state.keys.sweep();
    }
}

/// Reloads access-token keys from the data dir every `key_reload` (new keys appear
/// there when an operator rotates them).
async fn reload_keys(state: AppState) {
    let mut tick = tokio::time::interval(state.config.key_reload);
    loop {
        tick.tick().await;
        if let Err(e) = state.keys.reload() {
            tracing::warn!(cause = %e, "reloading access-token keys failed; keeping the old ones");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept loop no longer sets `TCP_NODELAY` per connection: it must come from
    /// the listener.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
    }
}
