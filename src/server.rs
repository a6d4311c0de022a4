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
use crate::config::Config;
use crate::http::ConnLimits;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::registry::Registry;
use crate::sessions::{self, Policy, Sessions};
use crate::shutdown::{Shutdown, Stopped};
use crate::state::{AppState, Shared};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::{Store, StoreError};
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
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A node with its listeners bound, not yet serving.
pub struct Server {
    public: TcpListener,
    admin: TcpListener,
    state: AppState,
    /// The users and apps files, watched while the node runs.
    files: (Users, Apps),
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

/// The store and the hub that goes with it.
async fn open_store(
    config: &Config,
    registry: &Registry,
    shutdown: &Shutdown,
) -> Result<(Arc<dyn Store>, Arc<Hub>), StartError> {
    let node_id = config.node_id.clone();
    match &config.redis_url {
        Some(url) => {
            let redis = RedisStore::connect(url, RedisSettings::default()).await?;
            let store: Arc<dyn Store> = Arc::new(redis.clone());
            let hub =
                Hub::redis(node_id, registry.clone(), &redis, store.clone(), shutdown).await?;
            Ok((store, hub))
        }
        None => {
            let store = MemoryStore::new();
            shutdown.spawn_background(store.sweeper(SWEEP_EVERY));
            Ok((Arc::new(store), Hub::local(node_id, registry.clone())))
        }
    }
}

impl Server {
    /// Loads secrets and keys, connects the store and binds both listeners.
    ///
    /// # Errors
    /// Any [`StartError`]; nothing is left running.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let server_secret = load_or_create_server_secret(&config.data_dir)?;
        let secrets = Secrets::derive(&server_secret);
        let keys = KeyStore::open(&config.data_dir, config.ttl.jwt_leeway, config.key_reload)?;
        let users = Users::open(&config.users_file)?;
        let apps = Apps::open(config.apps_file.as_deref())?;
        let registry = Registry::default();
        let shutdown = Shutdown::new();
        let (store, hub) = open_store(&config, &registry, &shutdown).await?;
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
        });
        let limits = Limits::new(&config.rates);
        let sockets = SocketNode::new(
            SocketSettings::new(&config),
            Arc::new(SystemClock),
            shutdown.token().clone(),
            limits.clock().clone(),
        );
        let state = AppState::new(Shared {
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
        } = self;
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
        tracing::info!(
            node_id = %state.config.node_id,
            store = if state.config.redis_url.is_some() { "redis" } else { "embedded" },
            "ticketgate serving"
        );

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
        tracing::info!("stopped");
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
