//! Shutdown of the real binary on SIGTERM: stop accepting, let in-flight requests
//! finish and answer, close sockets with 1001, close idle connections at once, exit 0.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use support::bin::{add_user, free_port, ticketgate, wait_until_up};
use support::raw::{read_answer, read_more};

const USER: &str = "alice";
const PASSWORD: &str = "pw-alice-1234";

/// A `ticketgate serve` process with one user, answering on free loopback ports;
/// killed on drop if a test fails before it exits.
struct Node {
    process: Child,
    public: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Adds the user, starts the node with `grace` and waits until it answers.
    async fn start(grace: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        add_user(dir.path(), USER, PASSWORD);

        let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let process = ticketgate(dir.path())
            .arg("serve")
            .env("TICKETGATE_LISTEN", public.to_string())
            .env("TICKETGATE_ADMIN_LISTEN", admin.to_string())
            .env("TICKETGATE_SHUTDOWN_GRACE", grace)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let node = Node {
            process,
            public,
            admin,
            _dir: dir,
        };
        wait_until_up(&node.url(), Duration::from_secs(10)).await;
        node
    }

    fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    fn sigterm(&self) {
        let kill = Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .status()
            .expect("kill");
        assert!(kill.success());
    }

    /// The exit status; fails the test if the process still runs after `within`.
    async fn exited_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.process.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

/// SIGTERM: stop accepting, close sockets with 1001, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let mut node = Node::start("3s").await;
    let client = ticketgate_sdk::Client::new(&node.url()).expect("client");
    let session = client
        .login(USER, PASSWORD, ticketgate_sdk::ClientType::Mobile)
        .await
        .expect("login");
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let (mut ws, _) = client.connect(&session, &ticket).await.expect("connect");

    node.sigterm();
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(1001));
    let status = node.exited_within(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

/// SIGTERM while a login body is still arriving: the request is not cut off. Its body
/// is read to the end, its answer goes out, and only then does the process exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_whose_body_is_arriving_finish() {
    let mut node = Node::start("5s").await;
    let body = serde_json::json!({
        "username": USER,
        "password": PASSWORD,
        "device_id": uuid::Uuid::new_v4().to_string(),
        "client_type": "mobile",
    })
    .to_string();
    let (first, second) = body.as_bytes().split_at(body.len() / 2);
    let mut conn = TcpStream::connect(node.public).await.expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let head = format!(
        "POST /v1/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn.write_all(first).await.expect("write half the body");
    // Let the node read the head and start the handler.
    tokio::time::sleep(Duration::from_millis(200)).await;

    node.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(second)
        .await
        .expect("the connection is still open after SIGTERM");
    let mut buf = Vec::new();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut conn, &mut buf))
        .await
        .expect("an answer in time")
        .expect("a complete answer, not a closed connection");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    assert!(json["access_token"].is_string(), "{json}");
    // The connection is not kept alive past its request.
    let closed = tokio::time::timeout(Duration::from_secs(5), read_more(&mut conn, &mut buf))
        .await
        .expect("closed after the answer");
    assert!(!closed && buf.is_empty(), "more after the answer: {buf:?}");
    let status = node.exited_within(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

/// Idle kept-alive connections, on both listeners, do not hold the node for its grace
/// period: they are closed at once, and the process exits well before the grace ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let mut node = Node::start("20s").await;
    let mut idle = Vec::new();
    for (addr, path) in [(node.public, "/healthz"), (node.admin, "/metrics")] {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), read_answer(&mut conn, &mut buf))
                .await
                .expect("an answer in time")
                .expect("an answer");
        assert_ne!(answer.header("connection"), Some("close"), "{path}");
        idle.push(conn);
    }

    let started = Instant::now();
    node.sigterm();
    for mut conn in idle {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), read_more(&mut conn, &mut buf))
            .await
            .expect("an idle connection is closed at shutdown");
        assert!(!closed && buf.is_empty(), "{buf:?}");
    }
    let status = node.exited_within(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
