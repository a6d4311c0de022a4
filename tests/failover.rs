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
                &info(&self.primary.lock().unwrap(), "replication"),
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
            c.redis_wait_timeout = Duration::from_millis(200);
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

/// With the wait on and a healthy replica, sockets are admitted, and by then the
/// replica no longer holds the ticket: a failover to it could not admit it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_wait_on_a_ticket_is_admitted_once_its_consumption_reached_the_replica() {
    let set = Replicated::start().await;
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let node = node_waiting_for(set.primary.clone(), &dir, 1).await;
    let client = node.client();
    let session = login(&client).await;
    for _ in 0..5 {
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let (ws, _welcome) = client.connect(&session, &ticket).await.expect("admitted");
        assert!(
            set.replica_tickets().is_empty(),
            "the replica still holds a ticket that opened a socket"
        );
        drop(ws);
    }
    // A refresh rotation is waited for too, and works.
    let rotated = client.refresh(&session).await.expect("refresh");
    assert_ne!(rotated.refresh_token, session.refresh_token);
}

/// A replica that does not acknowledge: no socket is admitted (503
/// `store_unavailable`, never a 500), the ticket stays spent, and a refresh rotation is
/// refused the same way. With the wait off the same setup admits (the control: the
/// refusal comes from the wait).
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

    let err = client
        .refresh(&session)
        .await
        .expect_err("a rotation no replica acknowledged");
    assert_eq!(refusal(&err), (503, "store_unavailable".into()));

    // Control: a node without the wait admits on the same primary.
    other
        .connect(&session, &spare)
        .await
        .expect("without the wait, admitted");
}
