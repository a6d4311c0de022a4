//! Test harness shared by the integration tests: real `redis-server` processes on free
//! loopback ports, ticketgate nodes started in-process on `127.0.0.1:0`, and raw HTTP
//! over TCP for the tests where the exact bytes matter ([`raw`]).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod bin;
pub mod cluster;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod sentinel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ticketgate::config::{Config, EmbeddedStore, Rate};
use ticketgate::state::AppState;
use ticketgate::Server;
use ticketgate_sdk::{Client, ClientType, Session};
use tokio::sync::oneshot;

pub use self::cluster::RedisCluster;
pub use self::redis::RedisServer;
pub use self::sentinel::RedisSentinel;

/// The password of every test user.
pub const PASSWORD: &str = "correct horse battery staple";
/// Users present in every test server's users file.
pub const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// Which store a test node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded store, all in memory (`TICKETGATE_STORE=memory`).
    Memory,
    /// A `redis-server` started for the test.
    Redis,
    /// The test binary's shared Redis Cluster ([`RedisCluster::shared`]).
    Cluster,
    /// The test binary's shared primary/replica/Sentinel set ([`RedisSentinel::shared`]).
    Sentinel,
}

impl StoreKind {
    /// Takes this test's turn on the shared Cluster or Sentinel fixture, and empties it
    /// (`FLUSHALL` on its primaries); `None` for the other stores.
    ///
    /// Nodes started for different tests are different deployments (their own secrets,
    /// refused by the deployment check) and log in the same users (the one session per
    /// type policy would revoke another test's sessions), so the tests that start nodes
    /// on a shared fixture take turns: hold the guard for the whole test.
    /// [`every_store!`] does it. Store-level tests, which use keys of their own, need not.
    pub async fn take_turn(self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        static TURN: std::sync::OnceLock<Arc<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
        let primaries: Vec<u16> = match self {
            StoreKind::Cluster => RedisCluster::shared()
                .primaries()
                .iter()
                .map(|p| p.port())
                .collect(),
            StoreKind::Sentinel => vec![RedisSentinel::shared().primary().port()],
            StoreKind::Memory | StoreKind::Redis => return None,
        };
        let turn = TURN.get_or_init(Arc::default).clone().lock_owned().await;
        for port in primaries {
            let reply = redis::command_at(port, &["FLUSHALL"]);
            assert_eq!(reply, redis::Reply::Simple("OK".into()), "FLUSHALL");
        }
        Some(turn)
    }

    /// The Redis URL of a shared Cluster or Sentinel fixture (started on first use).
    pub fn shared_url(self) -> Option<String> {
        match self {
            StoreKind::Cluster => Some(RedisCluster::shared().url()),
            StoreKind::Sentinel => Some(RedisSentinel::shared().url()),
            StoreKind::Memory | StoreKind::Redis => None,
        }
    }
}

/// A change to the config before a node starts.
type ConfigTweak = Box<dyn FnOnce(&mut Config) + Send>;

/// Builds a [`TestServer`].
pub struct Builder {
    store: StoreKind,
    redis: Option<Arc<Mutex<RedisServer>>>,
    data_dir: Option<Arc<tempfile::TempDir>>,
    tweak: Vec<ConfigTweak>,
    handler: Option<Arc<dyn ticketgate::SessionHandler>>,
    redis_url: Option<String>,
}

impl Builder {
    /// Use the Redis (Cluster, Sentinel) at this URL, started by the test
    /// (e.g. `RedisCluster::start().url()`); [`TestServer::redis`] is then `None`.
    pub fn redis_url(mut self, url: String) -> Self {
        self.redis_url = Some(url);
        self
    }

    /// The store to use.
    pub fn store(mut self, store: StoreKind) -> Self {
        self.store = store;
        self
    }

    /// Share an existing Redis (several nodes of one deployment).
    pub fn redis(mut self, redis: Arc<Mutex<RedisServer>>) -> Self {
        self.store = StoreKind::Redis;
        self.redis = Some(redis);
        self
    }

    /// Share a data dir (same secrets: one deployment).
    pub fn data_dir(mut self, dir: Arc<tempfile::TempDir>) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// Changes the config before start.
    pub fn config(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak.push(Box::new(f));
        self
    }

    /// Runs the node with this business handler (else what the config picks).
    pub fn handler(mut self, handler: Arc<dyn ticketgate::SessionHandler>) -> Self {
        self.handler = Some(handler);
        self
    }

    /// Starts the node.
    pub async fn start(self) -> TestServer {
        self.try_start().await.expect("server starts")
    }

    /// Starts the node, or says why it would not start.
    pub async fn try_start(self) -> Result<TestServer, ticketgate::server::StartError> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("tempdir")));
        let redis_url = self.redis_url.or_else(|| self.store.shared_url());
        let redis = match (self.store, self.redis) {
            _ if redis_url.is_some() => None,
            (StoreKind::Memory, _) => None,
            (_, Some(r)) => Some(r),
            (_, None) => Some(Arc::new(Mutex::new(RedisServer::start()))),
        };
        let users_file = data_dir.path().join("users.toml");
        if !users_file.exists() {
            for user in USERS {
                ticketgate::auth::users::add_user(&users_file, user, PASSWORD).expect("add user");
            }
        }
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = data_dir.path().join("data");
        config.users_file = users_file;
        config.redis_url = redis_url.or_else(|| redis.as_ref().map(|r| r.lock().unwrap().url()));
        // The durable embedded store has suites of its own (`store`, `durable_restart`).
        config.store = EmbeddedStore::Memory;
        config.admin_key = Some("test-admin-key-0123456789".into());
        // Generous limits unless a test sets its own: tests are not floods.
        let lots = Rate::per_second(100_000);
        let r = &mut config.rates;
        (r.login_ip, r.login_user, r.login_device, r.fail_ip) = (lots, lots, lots, lots);
        (r.mint_device, r.connect_device, r.connect_ip) = (lots, lots, lots);
        config.rates.frames = Rate::per_second(1_000);
        config.shutdown_grace = Duration::from_secs(3);
        for f in self.tweak {
            f(&mut config);
        }
        let config_copy = config.clone();
        let builder = Server::builder(config);
        let builder = match self.handler {
            Some(handler) => builder.handler(handler),
            None => builder,
        };
        let server = builder.bind().await?;
        let addr = server.local_addr();
        let admin_addr = server.admin_addr();
        let state = server.state();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stop_rx.await;
        }));
        Ok(TestServer {
            addr,
            admin_addr,
            state,
            config: config_copy,
            redis,
            data_dir,
            stop_tx: Some(stop_tx),
            handle: Some(handle),
        })
    }
}

/// Two nodes of one deployment: one Redis, one data dir (the same secrets).
pub async fn two_nodes() -> (TestServer, TestServer) {
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    two_nodes_with(|b| b.redis(redis.clone())).await
}

/// Two nodes of one deployment on the Redis (Cluster, Sentinel) at `url`: one data
/// dir (the same secrets).
pub async fn two_nodes_at(url: &str) -> (TestServer, TestServer) {
    two_nodes_with(|b| b.redis_url(url.to_owned())).await
}

/// Two nodes sharing one data dir, each built by `store` (which names their store).
async fn two_nodes_with(store: impl Fn(Builder) -> Builder) -> (TestServer, TestServer) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let a = store(TestServer::builder())
        .data_dir(dir.clone())
        .start()
        .await;
    let b = store(TestServer::builder()).data_dir(dir).start().await;
    (a, b)
}

/// A running ticketgate node.
pub struct TestServer {
    /// Public listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// The node's state (registry, store, limits).
    pub state: AppState,
    /// The config it runs with.
    pub config: Config,
    /// Its Redis, if any.
    pub redis: Option<Arc<Mutex<RedisServer>>>,
    /// Its data dir (secrets, keys, users file).
    pub data_dir: Arc<tempfile::TempDir>,
    stop_tx: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// A builder on the embedded store.
    pub fn builder() -> Builder {
        Builder {
            store: StoreKind::Memory,
            redis: None,
            data_dir: None,
            tweak: Vec::new(),
            handler: None,
            redis_url: None,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client with a fresh device id.
    pub fn client(&self) -> Client {
        Client::new(&self.url()).expect("client")
    }

    /// Logs `user` in from a fresh device.
    pub async fn login_as(&self, user: &str, client_type: ClientType) -> (Client, Session) {
        let client = self.client();
        let session = client
            .login(user, PASSWORD, client_type)
            .await
            .expect("login");
        (client, session)
    }

    /// Logs alice in on mobile from a fresh device.
    pub async fn login(&self) -> (Client, Session) {
        self.login_as("alice", ClientType::Mobile).await
    }

    /// Runs a Redis command on this node's Redis.
    pub fn redis_stats(&self) -> std::collections::HashMap<String, u64> {
        self.redis
            .as_ref()
            .expect("redis")
            .lock()
            .unwrap()
            .command_stats()
    }

    /// Stops the node (closing sockets with 1001) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Defines a test once per store: `both_stores!(name, |kind| async move { ... })`
/// expands into `mod name { memory, redis }`.
#[macro_export]
macro_rules! both_stores {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                ($body)(StoreKind::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                ($body)(StoreKind::Redis).await
            }
        }
    };
}

/// [`both_stores!`] plus the shared Redis Cluster: `every_store!(name, |kind| ...)`
/// expands into `mod name { memory, redis, cluster }`; the cluster test takes its turn
/// ([`StoreKind::take_turn`]) on an emptied cluster.
#[macro_export]
macro_rules! every_store {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                ($body)(StoreKind::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                ($body)(StoreKind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                let _turn = StoreKind::Cluster.take_turn().await;
                ($body)(StoreKind::Cluster).await
            }
        }
    };
}

/// A hand-made signed POST, for tests that need to control every part of it.
pub struct Signed<'a> {
    /// The node.
    pub server: &'a TestServer,
    /// Path, e.g. `/v1/tickets`.
    pub path: &'a str,
    /// HMAC key.
    pub key: &'a [u8],
    /// `X-TG-Device`.
    pub device_id: &'a str,
    /// `Authorization: Bearer` value, if any.
    pub bearer: Option<&'a str>,
    /// Raw body.
    pub body: &'a str,
}

impl Signed<'_> {
    /// Signs with a fresh nonce and the current time, and sends.
    pub async fn send(&self) -> reqwest::Response {
        self.send_with_nonce(&fresh_nonce()).await
    }

    /// Signs with the given nonce and sends.
    pub async fn send_with_nonce(&self, nonce: &str) -> reqwest::Response {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signature = ticketgate_sdk::signing::sign(
            self.key,
            &ticketgate_sdk::signing::SignedParts {
                method: "POST",
                path: self.path,
                device_id: self.device_id,
                timestamp,
                nonce,
                body: self.body.as_bytes(),
            },
        );
        let mut req = reqwest::Client::new()
            .post(format!("{}{}", self.server.url(), self.path))
            .header("content-type", "application/json")
            .header("x-tg-device", self.device_id)
            .header("x-tg-timestamp", timestamp.to_string())
            .header("x-tg-nonce", nonce)
            .header("x-tg-signature", signature)
            .body(self.body.to_owned());
        if let Some(bearer) = self.bearer {
            req = req.bearer_auth(bearer);
        }
        req.send().await.expect("request sent")
    }
}

/// A random nonce of 32 characters.
pub fn fresh_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The error code of a JSON error answer, with its status.
pub async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Reads frames until the server closes; the close code (None: closed without a close
/// frame). Fails the test after 10 s.
pub async fn close_code(ws: &mut ticketgate_sdk::WsStream) -> Option<u16> {
    close_frame(ws).await.map(|(code, _)| code)
}

/// Reads until the server's close frame; its code and reason (`None`: no close frame).
pub async fn close_frame(ws: &mut ticketgate_sdk::WsStream) -> Option<(u16, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("server closed the socket in time")
}

/// Waits until `cond` holds; fails the test after 10 s.
pub async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
