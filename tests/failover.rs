//! Faults, each a test of seconds: a Redis replica that does not acknowledge
//! (`TICKETGATE_REDIS_WAIT_REPLICAS`), a node killed with SIGKILL, a Redis paused with
//! SIGSTOP, a Redis primary killed under load.
//!
//! Every process a test starts is stopped by a guard when the test ends, failed or
//! not; a paused process is resumed by its guard before it is killed.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::redis::Reply;
use support::{RedisServer, TestServer};
use ticketgate_sdk::{Client, ClientError, ClientType, Session};

// ---------------------------------------------------------------------------------
// Helpers: processes, signals, replication.
// ---------------------------------------------------------------------------------

/// The text of an `INFO <section>` reply.
fn info(redis: &RedisServer, section: &str) -> String {
    match redis.command(&["INFO", section]) {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO {section}: {other:?}"),
    }
}

/// One `field:value` of an `INFO` text.
fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// The process id of a running `redis-server`.
fn redis_pid(redis: &RedisServer) -> u32 {
    info_field(&info(redis, "server"), "process_id")
        .and_then(|p| p.parse().ok())
        .expect("INFO server names the process id")
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A process paused with SIGSTOP; resumed when dropped (so that a failing test does
/// not leave a stopped process its own guard could not stop).
struct Paused(Option<u32>);

impl Paused {
    fn new(pid: u32) -> Paused {
        signal(pid, "STOP");
        Paused(Some(pid))
    }

    fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            signal(pid, "CONT");
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// A primary and one replica of it, both stopped on drop.
struct Replicated {
    primary: Arc<Mutex<RedisServer>>,
    replica: RedisServer,
}

impl Replicated {
    /// Starts both and waits until the replica is in sync.
    async fn start() -> Replicated {
        let primary = RedisServer::start();
        let replica = RedisServer::start();
        let port = primary.port().to_string();
        assert_eq!(
            replica.command(&["REPLICAOF", "127.0.0.1", &port]),
            Reply::Simple("OK".into())
        );
        let set = Replicated {
            primary: Arc::new(Mutex::new(primary)),
            replica,
        };
        set.wait_in_sync().await;
        set
    }

    /// Waits until the primary counts one connected replica and the replica's link is
    /// up (fails the test after 10 s).
    async fn wait_in_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = info_field(&info(&self.replica, "replication"), "master_link_status")
                .is_some_and(|s| s == "up");
            let counted = info_field(
                &info(&self.primary.lock().expect("not poisoned"), "replication"),
                "connected_slaves",
            )
            .is_some_and(|n| n == "1");
            if up && counted {
                return;
            }
            assert!(Instant::now() < deadline, "the replica did not sync");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The ticket keys the replica holds.
    fn replica_tickets(&self) -> Vec<Reply> {
        match self.replica.command(&["KEYS", "tg:*:ticket:*"]) {
            Reply::Array(Some(keys)) => keys,
            other => panic!("KEYS: {other:?}"),
        }
    }
}

/// A node on `redis` with the replication wait set to `replicas`; nodes given the
/// same `dir` are one deployment.
async fn node_waiting_for(
    redis: Arc<Mutex<RedisServer>>,
    dir: &Arc<tempfile::TempDir>,
    replicas: u32,
) -> TestServer {
    TestServer::builder()
        .redis(redis)
        .data_dir(dir.clone())
        .config(move |c| {
            c.redis_wait_replicas = replicas;
            c.redis_wait_timeout = Duration::from_millis(500);
        })
        .start()
        .await
}

/// The status and protocol code of a refused call.
fn refusal(err: &ClientError) -> (u16, String) {
    match err {
        ClientError::Api {
            status, raw_code, ..
        } => (*status, raw_code.clone()),
        other => panic!("expected an error answer, got {other}"),
    }
}

async fn login(client: &Client) -> Session {
    client
        .login("alice", support::PASSWORD, ClientType::Mobile)
        .await
        .expect("login")
}

// ---------------------------------------------------------------------------------
// The replication wait.
// ---------------------------------------------------------------------------------

/// The replication offset the primary last heard its replica acknowledge
/// (`slave0:...,offset=N` of `INFO replication`), and the primary's own.
fn offsets(primary: &RedisServer) -> (u64, u64) {
    let text = info(primary, "replication");
    let acked = info_field(&text, "slave0")
        .and_then(|s| {
            s.split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|n| n.parse().ok())
        })
        .expect("a replica's acknowledged offset");
    let own = info_field(&text, "master_repl_offset")
        .and_then(|n| n.parse().ok())
        .expect("master_repl_offset");
    (acked, own)
}

/// With the wait on, a socket is admitted only once the replica acknowledged its
/// ticket's consumption: the replica is paused for 300 ms (SIGSTOP) while the ticket
/// is presented; the admission waits for it, and when the socket is open the primary
/// has heard the replica acknowledge past the consumption, and the replica holds no
/// ticket. (Without the wait the socket opens while the replica is still paused and
/// its acknowledged offset is behind: this test fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_wait_on_a_ticket_is_admitted_once_its_consumption_reached_the_replica() {
    let set = Replicated::start().await;
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let node = node_waiting_for(set.primary.clone(), &dir, 1).await;
    let client = node.client();
    let session = login(&client).await;
    let replica_pid = redis_pid(&set.replica);
    for _ in 0..3 {
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let mut paused = Paused::new(replica_pid);
        // Anything written from here on (the consumption) is past this offset.
        let (_, before) = offsets(&set.primary.lock().expect("not poisoned"));
        let resume = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            paused.resume();
        });
        let (ws, _welcome) = client.connect(&session, &ticket).await.expect("admitted");
        let (acked, _) = offsets(&set.primary.lock().expect("not poisoned"));
        assert!(
            acked > before,
            "a socket opened before the replica acknowledged its ticket's consumption \
             (acknowledged {acked}, consumption after {before})"
        );
        resume.join().expect("resume the replica");
        assert!(
            set.replica_tickets().is_empty(),
            "the replica still holds a ticket that opened a socket"
        );
        drop(ws);
    }
}

/// The start-up line says when the wait is on, and not when it is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_description_names_the_wait() {
    use ticketgate::store::redis::{RedisSettings, RedisStore};
    let redis = RedisServer::start();
    let off = RedisStore::connect(&redis.url(), RedisSettings::default())
        .await
        .expect("connect");
    assert!(!off.describe().contains("WAIT"), "{}", off.describe());
    let settings = RedisSettings {
        wait_replicas: 2,
        wait_timeout: Duration::from_millis(150),
        ..RedisSettings::default()
    };
    let on = RedisStore::connect(&redis.url(), settings)
        .await
        .expect("connect");
    assert!(
        on.describe().ends_with(", WAIT 2 replica(s) within 150ms"),
        "{}",
        on.describe()
    );
    off.close().await;
    on.close().await;
}

/// A replica that does not acknowledge: no socket is admitted (503
/// `store_unavailable`, never a 500), and the ticket stays spent. With the wait off
/// the same setup admits (the control: the refusal comes from the wait). A refresh
/// rotation is not waited for (its retry after a refusal would be reuse): it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_wait_on_a_replica_that_does_not_acknowledge_refuses_admission() {
    let mut set = Replicated::start().await;
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let waiting = node_waiting_for(set.primary.clone(), &dir, 1).await;
    let not_waiting = node_waiting_for(set.primary.clone(), &dir, 0).await;
    let client = waiting.client();
    let session = login(&client).await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    // The same device, through the node without the wait.
    let other = Client::new(&not_waiting.url())
        .expect("client")
        .with_device_id(client.device_id());
    let spare = other.mint_ticket(&session).await.expect("mint");

    set.replica.stop();
    let err = client
        .connect(&session, &ticket)
        .await
        .expect_err("no replica acknowledged: not admitted");
    assert_eq!(refusal(&err), (503, "store_unavailable".into()));
    // The ticket was spent on the primary: it never opens a socket later either.
    let again = client
        .connect(&session, &ticket)
        .await
        .expect_err("a spent ticket");
    assert_eq!(refusal(&again).0, 401, "{again}");

    let rotated = client
        .refresh(&session)
        .await
        .expect("a rotation does not wait for replicas");
    assert_ne!(rotated.refresh_token, session.refresh_token);

    // Control: a node without the wait admits on the same primary.
    other
        .connect(&session, &spare)
        .await
        .expect("without the wait, admitted");
}

/// On Cluster the `WAIT` goes to the primary that ran the consumption: with the
/// replica of one session's shard paused, that session's ticket is refused (503),
/// while a session on another shard is admitted. (A `WAIT` sent to another node would
/// have nothing to wait for there and answer at once: the paused shard would admit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cluster_the_wait_asks_the_shard_that_consumed_the_ticket() {
    let cluster = support::RedisCluster::start_with_node_timeout(Duration::from_secs(10));
    let node = TestServer::builder()
        .redis_url(cluster.url())
        .config(|c| {
            c.sessions_per_type = 256;
            c.redis_wait_replicas = 1;
            c.redis_wait_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let primary_of = |session: &Session| {
        cluster
            .primary_of_key(&format!("tg:{{{}}}:session", session.session_id))
            .port()
    };
    let client = node.client();
    let paused_shard = login(&client).await;
    let target = primary_of(&paused_shard);
    let mut other_shard = None;
    for _ in 0..100 {
        let session = login(&client).await;
        if primary_of(&session) != target {
            other_shard = Some(session);
            break;
        }
    }
    let other_shard = other_shard.expect("a session on another shard");
    let replica_port = support::process::info_field(cluster.node(target), "replication", "slave0")
        .and_then(|s| {
            s.split(',')
                .find_map(|kv| kv.strip_prefix("port="))
                .and_then(|p| p.parse::<u16>().ok())
        })
        .expect("the shard's replica");
    let ticket = client.mint_ticket(&paused_shard).await.expect("mint");
    let other_ticket = client.mint_ticket(&other_shard).await.expect("mint");

    let mut paused = Paused::new(cluster.node(replica_port).pid());
    let refused = client.connect(&paused_shard, &ticket).await;
    let admitted = client.connect(&other_shard, &other_ticket).await;
    paused.resume();
    let err = refused.expect_err("the paused shard's ticket is not admitted");
    assert_eq!(refusal(&err), (503, "store_unavailable".into()));
    admitted.expect("the other shard's ticket is admitted");
}

// ---------------------------------------------------------------------------------
// A node killed with SIGKILL.
// ---------------------------------------------------------------------------------

/// A `ticketgate serve` process; killed on drop.
struct NodeProcess {
    child: std::process::Child,
    public: SocketAddr,
    admin: SocketAddr,
}

const ADMIN_KEY: &str = "failover-admin-key-0123456789";

impl NodeProcess {
    /// Starts a node of the deployment in `dir` (users file and data dir) on `redis`.
    async fn start(dir: &std::path::Path, redis_url: &str) -> NodeProcess {
        NodeProcess::start_with(dir, redis_url, &[]).await
    }

    /// [`start`](Self::start) with more settings.
    async fn start_with(
        dir: &std::path::Path,
        redis_url: &str,
        settings: &[(&str, &str)],
    ) -> NodeProcess {
        let public: SocketAddr = ([127, 0, 0, 1], support::bin::free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], support::bin::free_port()).into();
        let child = support::bin::ticketgate(dir)
            .arg("serve")
            .env("TICKETGATE_REDIS_URL", redis_url)
            .env("TICKETGATE_LISTEN", public.to_string())
            .env("TICKETGATE_ADMIN_LISTEN", admin.to_string())
            .env("TICKETGATE_ADMIN_KEY", ADMIN_KEY)
            // Several clients of one user at once.
            .env("TICKETGATE_SESSIONS_PER_TYPE", "64")
            .env("RUST_LOG", "warn")
            .envs(settings.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ticketgate");
        let node = NodeProcess {
            child,
            public,
            admin,
        };
        support::bin::wait_until_up(&format!("http://{public}"), Duration::from_secs(15)).await;
        node
    }

    fn kill(&mut self) {
        signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A load balancer without sticky sessions, as far as a test needs one: each new TCP
/// connection goes to the first backend that accepts it. Its tasks end when it is
/// dropped.
struct Front {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Front {
    async fn start(backends: Vec<SocketAddr>) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the front");
        let addr = listener.local_addr().expect("front address");
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let pumps = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backends = backends.clone();
                let pump = tokio::spawn(async move {
                    for backend in backends {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
                pumps
                    .lock()
                    .expect("not poisoned")
                    .push(pump.abort_handle());
            }
        });
        tasks
            .lock()
            .expect("not poisoned")
            .push(accept.abort_handle());
        Front { addr, tasks }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("not poisoned").drain(..) {
            task.abort();
        }
    }
}

/// Publishes `n` to alice through the admin API at `admin`; answers the push's id.
async fn publish(admin: SocketAddr, n: u64) -> String {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{admin}/admin/v1/publish"))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"user_id": "alice", "topic": "t", "data": {"n": n}}))
        .send()
        .await
        .expect("publish sent")
        .json()
        .await
        .expect("publish answer");
    answer["id"].as_str().expect("an id").to_owned()
}

/// The next event of a managed connection that is not a frame (pong etc.); fails the
/// test after 20 s.
async fn next_event(conn: &mut ticketgate_sdk::ManagedConnection) -> ticketgate_sdk::Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("an event within 20 s")
            .expect("the connection goes on");
        if !matches!(event, ticketgate_sdk::Event::Frame(_)) {
            return event;
        }
    }
}

/// Kill the node that holds the SDK clients' sockets with SIGKILL (no drain, no
/// resume ticket): every client reconnects through the other node with a fresh
/// ticket, and gets the pushes published meanwhile, each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_its_clients_reconnect_elsewhere_and_recover_pushes() {
    use ticketgate_sdk::{ConnectOptions, Event, SessionHandle};

    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    support::bin::add_user(dir.path(), "alice", support::PASSWORD);
    let mut a = NodeProcess::start(dir.path(), &redis.url()).await;
    let b = NodeProcess::start(dir.path(), &redis.url()).await;
    // Every connection goes to `a` while it lives.
    let front = Front::start(vec![a.public, b.public]).await;

    const CLIENTS: usize = 3;
    let options = ConnectOptions {
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(1),
    };
    let mut connections = Vec::new();
    for _ in 0..CLIENTS {
        let client = Client::new(&front.url()).expect("client");
        let session = login(&client).await;
        let mut conn = SessionHandle::new(client, session).connect_with_reconnect(options.clone());
        assert!(matches!(next_event(&mut conn).await, Event::Welcome(_)));
        connections.push(conn);
    }
    let first = publish(b.admin, 0).await;
    for conn in &mut connections {
        match next_event(conn).await {
            Event::Push { id, .. } => assert_eq!(id, first),
            other => panic!("expected the first push, got {other:?}"),
        }
    }
    let before = Counts::of(b.admin).await;

    a.kill();
    let mut published = Vec::new();
    for n in 1..=5 {
        published.push(publish(b.admin, n).await);
    }

    for conn in &mut connections {
        let mut received = Vec::new();
        let mut welcomed = false;
        while received.len() < published.len() {
            match next_event(conn).await {
                Event::Closed { will_reconnect, .. } => {
                    assert!(will_reconnect, "a killed node's socket is reconnected")
                }
                Event::Reconnecting { .. } | Event::ConnectFailed { .. } => {}
                Event::Welcome(_) => welcomed = true,
                Event::Push { id, .. } => {
                    assert!(welcomed, "a push came before the reconnect");
                    received.push(id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(received, published, "every push once, in order");
    }
    // Each client came back through `b`, with a ticket minted there and then, and
    // recovered its pushes there.
    let after = Counts::of(b.admin).await;
    let n = CLIENTS as u64;
    assert!(after.mints >= before.mints + n, "{before:?} → {after:?}");
    assert!(
        after.admissions >= before.admissions + n,
        "{before:?} → {after:?}"
    );
    assert!(
        after.recovered >= before.recovered + n,
        "{before:?} → {after:?}"
    );
}

/// A node's counters, from its `/metrics`.
#[derive(Debug, Clone, Copy)]
struct Counts {
    mints: u64,
    admissions: u64,
    recovered: u64,
}

impl Counts {
    async fn of(admin: SocketAddr) -> Counts {
        Counts {
            mints: metric(admin, "ticketgate_mints_total{outcome=\"ok\"}").await,
            admissions: metric(admin, "ticketgate_admissions_total{outcome=\"ok\"}").await,
            recovered: metric(
                admin,
                "ticketgate_push_recoveries_total{recovered=\"true\"}",
            )
            .await,
        }
    }
}

/// The sum of the series of a node's `/metrics` that start with `series`.
async fn metric(admin: SocketAddr, series: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

// ---------------------------------------------------------------------------------
// Handshake load: outcomes.
// ---------------------------------------------------------------------------------

/// How one call of a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    /// Answered with success.
    Ok,
    /// 503 `store_unavailable`: the store did not answer (expected during a fault).
    Unavailable,
    /// Another 4xx (a ticket already spent, for the second of two racers).
    Refused,
    /// Any other 5xx: a bug.
    ServerError,
    /// No answer at all (transport failure, timeout): a bug here.
    Transport,
}

impl Outcome {
    fn of<T>(result: &Result<T, ClientError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(ClientError::Api {
                status, raw_code, ..
            }) => match (*status, raw_code.as_str()) {
                (503, "store_unavailable") => Outcome::Unavailable,
                (400..=499, _) => Outcome::Refused,
                _ => Outcome::ServerError,
            },
            Err(_) => Outcome::Transport,
        }
    }
}

/// Counts of outcomes, and when the first and last `Unavailable` came.
#[derive(Debug, Default)]
struct Tally {
    counts: std::collections::HashMap<Outcome, u64>,
    first_unavailable: Option<Instant>,
    last_unavailable: Option<Instant>,
    /// Admissions after the first `Unavailable`, with when they happened.
    first_ok_after_unavailable: Option<Instant>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, at: Instant) {
        *self.counts.entry(outcome).or_default() += 1;
        match outcome {
            Outcome::Unavailable => {
                self.first_unavailable.get_or_insert(at);
                self.last_unavailable = Some(at);
                self.first_ok_after_unavailable = None;
            }
            Outcome::Ok if self.first_unavailable.is_some() => {
                self.first_ok_after_unavailable.get_or_insert(at);
            }
            _ => {}
        }
    }

    fn count(&self, outcome: Outcome) -> u64 {
        self.counts.get(&outcome).copied().unwrap_or(0)
    }

    /// From the first `Unavailable` to the first success after the last one.
    fn unavailable_for(&self) -> Option<Duration> {
        Some(self.first_ok_after_unavailable? - self.first_unavailable?)
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/<pid>/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Open file descriptors of a process (its sockets included).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .count()
}

/// Redis paused with SIGSTOP for 5 s under an open-loop handshake load (100 a second,
/// whether or not earlier ones were answered): every handshake is answered, with
/// 503 `store_unavailable` while Redis is stopped, never a 500, within the store's
/// command timeout, so the requests in flight, the node's open descriptors and its
/// memory stay bounded; after SIGCONT admission resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_answers_bounded_503s_without_pile_up_and_resumes() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    const RATE: u64 = 100;
    const PAUSE: Duration = Duration::from_secs(5);
    const SESSIONS: usize = 8;

    let redis = RedisServer::start();
    let redis_pid = redis_pid(&redis);
    let dir = tempfile::tempdir().expect("tempdir");
    support::bin::add_user(dir.path(), "alice", support::PASSWORD);
    let node = NodeProcess::start_with(
        dir.path(),
        &redis.url(),
        &[
            ("TICKETGATE_RATE_MINT_DEVICE", "100000/s"),
            ("TICKETGATE_RATE_CONNECT_DEVICE", "100000/s"),
            ("TICKETGATE_RATE_CONNECT_IP", "100000/s"),
        ],
    )
    .await;
    let node_pid = node.child.id();
    let base = format!("http://{}", node.public);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let client = Client::new(&base).expect("client");
        let session = login(&client).await;
        sessions.push((client, session));
    }
    let sessions = Arc::new(sessions);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load = {
        let (sessions, tally) = (sessions.clone(), tally.clone());
        let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                let (sessions, tally) = (sessions.clone(), tally.clone());
                let (in_flight, max_in_flight) = (in_flight.clone(), max_in_flight.clone());
                tasks.spawn(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    let (client, session) = &sessions[i % SESSIONS];
                    let minted = client.mint_ticket(session).await;
                    let outcome = match &minted {
                        Ok(ticket) => Outcome::of(&client.connect(session, ticket).await),
                        Err(_) => Outcome::of(&minted),
                    };
                    tally
                        .lock()
                        .expect("not poisoned")
                        .record(outcome, Instant::now());
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    let sample = |peak: &mut (u64, usize)| {
        peak.0 = peak.0.max(rss_kib(node_pid));
        peak.1 = peak.1.max(open_fds(node_pid));
    };
    // A second of normal load: the baseline.
    let mut baseline = (0, 0);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sample(&mut baseline);
    }
    assert!(
        tally.lock().expect("not poisoned").count(Outcome::Ok) > 0,
        "admissions before the pause"
    );

    let mut paused = Paused::new(redis_pid);
    let paused_at = Instant::now();
    let mut peak = baseline;
    while paused_at.elapsed() < PAUSE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sample(&mut peak);
    }
    paused.resume();
    let resumed_at = Instant::now();
    let resumed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sample(&mut peak);
        let t = tally.lock().expect("not poisoned");
        if let (Some(ok), Some(last)) = (t.first_ok_after_unavailable, t.last_unavailable) {
            if ok > last && ok > resumed_at {
                break true;
            }
        }
        if resumed_at.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    stop_tx.send(true).expect("stop the load");
    load.await.expect("the load ends");

    let t = tally.lock().expect("not poisoned");
    let max_in_flight = max_in_flight.load(Ordering::SeqCst);
    println!(
        "redis paused {PAUSE:?}: {:?}; unavailable for {:?}; in flight at most {max_in_flight}; \
         node RSS {} → {} KiB, fds {} → {}",
        t.counts,
        t.unavailable_for(),
        baseline.0,
        peak.0,
        baseline.1,
        peak.1
    );
    assert!(resumed, "admission resumed within 20 s of SIGCONT: {t:?}");
    assert_eq!(t.count(Outcome::ServerError), 0, "no 500: {t:?}");
    assert_eq!(
        t.count(Outcome::Transport),
        0,
        "every handshake answered: {t:?}"
    );
    assert_eq!(t.count(Outcome::Refused), 0, "nothing refused: {t:?}");
    assert!(
        t.count(Outcome::Unavailable) > 0,
        "the pause was noticed: {t:?}"
    );
    // Each handshake is answered within about the command timeout (1 s per store
    // call, two calls): at 100 a second, a few hundred at most are ever open. Requests
    // that waited for Redis to come back would reach 500 within the pause.
    assert!(
        max_in_flight < 3 * RATE as usize,
        "requests piled up: {max_in_flight} in flight"
    );
    assert!(
        peak.1 < baseline.1 + 3 * RATE as usize,
        "descriptors piled up: {} → {}",
        baseline.1,
        peak.1
    );
    assert!(
        peak.0 < baseline.0 + 64 * 1024,
        "memory piled up: {} → {} KiB",
        baseline.0,
        peak.0
    );
}

// ---------------------------------------------------------------------------------
// The Redis primary killed under load, on Sentinel and on Cluster.
// ---------------------------------------------------------------------------------

/// A replicated Redis whose primary a test kills.
enum Topology {
    Sentinel(support::RedisSentinel),
    Cluster(support::RedisCluster),
}

impl Topology {
    fn url(&self) -> String {
        match self {
            Topology::Sentinel(s) => s.url(),
            Topology::Cluster(c) => c.url(),
        }
    }

    /// The port of the primary that serves `key`.
    fn primary_of(&self, key: &str) -> u16 {
        match self {
            Topology::Sentinel(s) => s.primary().port(),
            Topology::Cluster(c) => c.primary_of_key(key).port(),
        }
    }

    fn process(&self, port: u16) -> &support::process::RedisProcess {
        match self {
            Topology::Sentinel(s) => s
                .servers()
                .iter()
                .find(|p| p.port() == port)
                .expect("a server on that port"),
            Topology::Cluster(c) => c.node(port),
        }
    }

    /// Kills the primary on `port` with SIGKILL, waits for the failover, then starts
    /// the killed server again (it comes back as a replica): blocking.
    fn fail_over(&self, port: u16) {
        let limit = Duration::from_secs(30);
        self.process(port).kill();
        match self {
            Topology::Sentinel(s) => {
                s.wait_for_failover(limit);
            }
            Topology::Cluster(c) => {
                c.wait_for_failover(limit);
            }
        }
        self.process(port).restart();
    }
}

/// Sends a ping frame on a live socket and waits for its pong.
async fn pings(ws: &mut ticketgate_sdk::WsStream) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ping = serde_json::to_string(&ticketgate_sdk::protocol::ClientFrame::Ping).expect("json");
    if ws.send(Message::text(ping)).await.is_err() {
        return false;
    }
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                let frame: serde_json::Value = serde_json::from_str(text.as_str()).expect("json");
                if frame["type"] == "pong" {
                    return true;
                }
            }
        }
        false
    });
    pong.await.unwrap_or(false)
}

/// What one run of [`primary_killed_under_load`] saw.
#[derive(Debug)]
struct FailoverReport {
    tally: Tally,
    /// From the kill to the first admission after the last 503.
    kill_to_admission: Duration,
    tickets: usize,
    most_admissions_of_one_ticket: u32,
}

/// Two nodes on `topology`, a closed-loop handshake load in which every ticket is
/// presented by two clients at once, one per node; the primary serving the load's
/// sessions is killed, the topology fails over, the killed server comes back as a
/// replica. Then every ticket minted is presented again to both nodes, and the live
/// sockets opened before the kill are pinged.
async fn primary_killed_under_load(topology: Topology, wait_replicas: u32) -> FailoverReport {
    const WORKERS: usize = 6;
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let node = |dir: &Arc<tempfile::TempDir>| {
        TestServer::builder()
            .redis_url(topology.url())
            .data_dir(dir.clone())
            .config(move |c| {
                c.sessions_per_type = 256;
                c.redis_wait_replicas = wait_replicas;
                c.redis_wait_timeout = Duration::from_millis(200);
            })
            .start()
    };
    let a = node(&dir).await;
    let b = node(&dir).await;

    // Sessions whose keys live on one primary: the one the test kills.
    let mut sessions = Vec::new();
    let mut target = None;
    for _ in 0..200 {
        let client = a.client();
        let session = login(&client).await;
        let port = topology.primary_of(&format!("tg:{{{}}}:session", session.session_id));
        if *target.get_or_insert(port) == port {
            let via_b = Client::new(&b.url())
                .expect("client")
                .with_device_id(client.device_id());
            sessions.push((client, via_b, session));
        }
        if sessions.len() == WORKERS {
            break;
        }
    }
    assert_eq!(sessions.len(), WORKERS, "sessions on one primary");
    let target = target.expect("a primary");

    // Live sockets, one per node, that must outlive the failover.
    let mut live = Vec::new();
    for (via_a, via_b, session) in &sessions[..2] {
        for client in [via_a, via_b] {
            let mut ticket = client.mint_ticket(session).await.expect("mint");
            ticket.ws_url.clear();
            live.push(client.connect(session, &ticket).await.expect("connect").0);
        }
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let tickets = Arc::new(Mutex::new(Vec::new()));
    let admissions = Arc::new(Mutex::new(std::collections::HashMap::<String, u32>::new()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sessions = Arc::new(sessions);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (sessions, tally, tickets, admissions) = (
            sessions.clone(),
            tally.clone(),
            tickets.clone(),
            admissions.clone(),
        );
        let stop_rx = stop_rx.clone();
        workers.spawn(async move {
            let (via_a, via_b, session) = &sessions[w];
            for i in 0usize.. {
                if *stop_rx.borrow() {
                    break;
                }
                let minter = if i % 2 == 0 { via_a } else { via_b };
                let minted = minter.mint_ticket(session).await;
                let mut ticket = match minted {
                    Ok(ticket) => ticket,
                    Err(_) => {
                        tally
                            .lock()
                            .expect("not poisoned")
                            .record(Outcome::of(&minted), Instant::now());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                ticket.ws_url.clear();
                tickets
                    .lock()
                    .expect("not poisoned")
                    .push((w, ticket.clone()));
                let (on_a, on_b) = tokio::join!(
                    via_a.connect(session, &ticket),
                    via_b.connect(session, &ticket)
                );
                let now = Instant::now();
                let mut t = tally.lock().expect("not poisoned");
                for result in [&on_a, &on_b] {
                    let outcome = Outcome::of(result);
                    if outcome == Outcome::Ok {
                        *admissions
                            .lock()
                            .expect("not poisoned")
                            .entry(ticket.ticket.clone())
                            .or_default() += 1;
                    }
                    t.record(outcome, now);
                }
            }
        });
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tally.lock().expect("not poisoned").count(Outcome::Ok) > 0,
        "admissions before the kill"
    );
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| topology.fail_over(target));
    // Resumed: an admission after the last 503, and 2 s without a 503 since.
    let resumed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = tally.lock().expect("not poisoned");
        let quiet = t
            .last_unavailable
            .is_none_or(|last| last.elapsed() > Duration::from_secs(2));
        if quiet && t.first_ok_after_unavailable.is_some() {
            break true;
        }
        if t.first_unavailable.is_none() && killed_at.elapsed() > Duration::from_secs(5) {
            // No 503 at all: the failover was invisible to the load.
            break t.count(Outcome::Ok) > 0;
        }
        if killed_at.elapsed() > Duration::from_secs(60) {
            break false;
        }
    };
    stop_tx.send(true).expect("stop");
    while workers.join_next().await.is_some() {}
    assert!(
        resumed,
        "admission resumed within 60 s of the kill: {:?}",
        tally.lock().expect("not poisoned")
    );

    // Every ticket again, on both nodes at once: none opens a second socket.
    let all: Vec<(usize, ticketgate_sdk::Ticket)> = tickets.lock().expect("not poisoned").clone();
    for (w, ticket) in &all {
        let (via_a, via_b, session) = &sessions[*w];
        let (on_a, on_b) = tokio::join!(
            via_a.connect(session, ticket),
            via_b.connect(session, ticket)
        );
        for result in [&on_a, &on_b] {
            let outcome = Outcome::of(result);
            if outcome == Outcome::Ok {
                *admissions
                    .lock()
                    .expect("not poisoned")
                    .entry(ticket.ticket.clone())
                    .or_default() += 1;
            }
            assert!(
                matches!(outcome, Outcome::Ok | Outcome::Refused),
                "a replayed ticket after the failover: {result:?}",
                result = result.as_ref().err()
            );
        }
    }
    for ws in &mut live {
        assert!(
            pings(ws).await,
            "a live socket did not survive the failover"
        );
    }

    let tally = Arc::try_unwrap(tally)
        .map_err(|_| "the tally is still shared")
        .expect("workers ended")
        .into_inner()
        .expect("not poisoned");
    let kill_to_admission = tally
        .first_ok_after_unavailable
        .map_or(Duration::ZERO, |ok| ok - killed_at);
    let most = admissions
        .lock()
        .expect("not poisoned")
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    FailoverReport {
        tally,
        kill_to_admission,
        tickets: all.len(),
        most_admissions_of_one_ticket: most,
    }
}

fn check_and_print(name: &str, report: &FailoverReport) {
    let t = &report.tally;
    println!(
        "{name}: unavailable {:.2} s (first 503 → first admission after the last 503), \
         kill → admission {:.2} s; outcomes {:?}; {} tickets, at most {} admission(s) each",
        t.unavailable_for().unwrap_or_default().as_secs_f64(),
        report.kill_to_admission.as_secs_f64(),
        t.counts,
        report.tickets,
        report.most_admissions_of_one_ticket
    );
    assert_eq!(t.count(Outcome::ServerError), 0, "no 500: {t:?}");
    assert_eq!(t.count(Outcome::Transport), 0, "every call answered: {t:?}");
    assert_eq!(
        report.most_admissions_of_one_ticket, 1,
        "no ticket admitted twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_primary_killed_under_load_without_wait() {
    let report =
        primary_killed_under_load(Topology::Sentinel(support::RedisSentinel::start()), 0).await;
    check_and_print("sentinel, WAIT off", &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_primary_killed_under_load_with_wait() {
    let report =
        primary_killed_under_load(Topology::Sentinel(support::RedisSentinel::start()), 1).await;
    check_and_print("sentinel, WAIT 1", &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_primary_killed_under_load_without_wait() {
    let report =
        primary_killed_under_load(Topology::Cluster(support::RedisCluster::start()), 0).await;
    check_and_print("cluster, WAIT off", &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_primary_killed_under_load_with_wait() {
    let report =
        primary_killed_under_load(Topology::Cluster(support::RedisCluster::start()), 1).await;
    check_and_print("cluster, WAIT 1", &report);
}
