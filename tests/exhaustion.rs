//! Connection exhaustion without authentication ("Hardening, round 2", item 1): what a
//! client can hold on a node before it has authenticated, and that the node keeps
//! serving health checks and its sockets meanwhile.
//!
//! Each limit is set small so the tests run in seconds, over loopback only. Another
//! client IP is a client socket bound to 127.0.0.2 or 127.0.0.3 (Linux routes all of
//! 127/8 to loopback).
//!
//! - a request body must arrive within `TICKETGATE_BODY_TIMEOUT`;
//! - connections not upgraded to a socket are capped in total and per IP
//!   (`TICKETGATE_MAX_HTTP_CONNECTIONS`, `_PER_IP`); sockets do not count;
//! - a kept-alive connection is closed after `TICKETGATE_KEEPALIVE_TIMEOUT` without a
//!   request;
//! - a client that does not read its answers is closed after `TICKETGATE_WRITE_TIMEOUT`;
//! - out of file descriptors, the accept loop backs off and logs rarely (the real
//!   binary under a low `ulimit -n`).

mod support;

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::json;
use support::raw::{connect_head, first_frame, Answer, Conn};
use support::{TestServer, PASSWORD};
use ticketgate_sdk::{Client, Session};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
/// A mint request whose body never comes.
const STALLED_BODY: &[u8] =
    b"POST /v1/tickets HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{";
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const THIRD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A connection from `source` holding a request whose body never arrives.
async fn stalled(server: &TestServer, source: Ipv4Addr) -> Conn {
    let mut conn = Conn::open_from(server, source).await;
    conn.send(STALLED_BODY).await;
    conn
}

/// A `GET /healthz` on a fresh connection from `source`: its answer, or `None` when the
/// node closed the connection without a complete one.
async fn healthz_from(server: &TestServer, source: Ipv4Addr) -> Option<Answer> {
    let mut conn = Conn::open_from(server, source).await;
    // The node may have closed already: a refused write is a refusal too.
    if conn.stream.write_all(HEALTHZ).await.is_err() {
        return None;
    }
    conn.try_answer().await
}

/// The connection from `source` was refused: no answer, or 503 `server_busy`.
async fn assert_refused(server: &TestServer, source: Ipv4Addr) {
    if let Some(answer) = healthz_from(server, source).await {
        assert_eq!(
            answer.status,
            503,
            "not refused: {answer:?} {}",
            answer.text()
        );
        assert_eq!(answer.json()["error"], "server_busy");
        assert_eq!(answer.header("connection"), Some("close"));
    }
}

/// A socket of `session` opened on a fresh connection from `source`: directly, or as
/// the second request of the connection (through hyper) when `through_hyper`.
async fn open_socket(
    server: &TestServer,
    client: &Client,
    session: &Session,
    source: Ipv4Addr,
    through_hyper: bool,
) -> WebSocketStream<TcpStream> {
    let ticket = client.mint_ticket(session).await.expect("mint").ticket;
    let mut conn = Conn::open_from(server, source).await;
    if through_hyper {
        conn.send(HEALTHZ).await;
        assert_eq!(conn.answer().await.status, 200);
    }
    conn.send(&connect_head(session, &ticket)).await;
    assert_eq!(conn.answer().await.status, 101);
    let mut ws = conn.into_ws().await;
    assert_eq!(first_frame(&mut ws).await["type"], "welcome");
    ws
}

/// Publishes `data` to alice's sockets through the admin API.
async fn publish(server: &TestServer, data: &str) {
    let answer = reqwest::Client::new()
        .post(format!("http://{}/admin/v1/publish", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&json!({"user_id": "alice", "topic": "t", "data": data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(answer.status(), 200);
}

/// The socket still gets a ping and the push of `data`, within 5 s.
async fn assert_alive(ws: &mut WebSocketStream<TcpStream>, data: &str) {
    let (mut pinged, mut pushed) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(pinged && pushed) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.next())
            .await
            .expect("a ping and the push within 5 s")
            .expect("the socket is open")
            .expect("a valid frame");
        match frame {
            Message::Ping(_) => pinged = true,
            Message::Text(text) if text.contains(data) => pushed = true,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// (a) Body deadline
// ---------------------------------------------------------------------------------------

/// Connections that send a head with a `Content-Length` and no body are closed within
/// the body deadline; health checks answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_closed_within_the_body_deadline() {
    let server = TestServer::builder()
        .config(|c| c.http.body_timeout = Duration::from_secs(1))
        .start()
        .await;
    let started = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(stalled(&server, OTHER_IP).await);
    }
    let healthz = healthz_from(&server, Ipv4Addr::LOCALHOST).await;
    assert_eq!(healthz.map(|a| a.status), Some(200));
    let closes = conns.iter_mut().map(|conn| async move {
        conn.closed_within(Duration::from_secs(4)).await;
        Instant::now()
    });
    let closed = futures_util::future::join_all(closes).await;
    let last = closed.into_iter().max().expect("closes") - started;
    assert!(last < Duration::from_secs(4), "last closed after {last:?}");
}

/// A body that arrives in time is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_in_time_is_read() {
    let server = TestServer::builder()
        .config(|c| c.http.body_timeout = Duration::from_secs(2))
        .start()
        .await;
    let mut conn = Conn::open(&server).await;
    conn.send(b"POST /v1/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.send(b"}").await;
    // Read and refused for what it says (no credentials), not for its timing.
    assert_eq!(conn.answer().await.status, 400);
}

// ---------------------------------------------------------------------------------------
// (b) Caps on connections not upgraded
// ---------------------------------------------------------------------------------------

/// With a cap of K per IP, the K+1th connection from one IP is refused, while another
/// IP's health check answers and an open socket still gets pings and pushes. A
/// connection that leaves frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_refuses_one_ip_and_spares_the_others() {
    const K: usize = 4;
    let server = TestServer::builder()
        .config(|c| {
            c.http.max_connections_per_ip = K;
            c.ws.ping_interval = Duration::from_millis(300);
        })
        .start()
        .await;
    let (client, session) = server.login().await;
    let mut ws = open_socket(&server, &client, &session, THIRD_IP, false).await;

    let mut held = Vec::new();
    for _ in 0..K {
        held.push(stalled(&server, OTHER_IP).await);
    }
    assert_refused(&server, OTHER_IP).await;
    let healthz = healthz_from(&server, Ipv4Addr::LOCALHOST).await;
    assert_eq!(healthz.map(|a| a.status), Some(200), "another IP is served");
    publish(&server, "still-here").await;
    assert_alive(&mut ws, "still-here").await;

    // One leaves: its place is free again (once the node has seen it go).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match healthz_from(&server, OTHER_IP).await {
            Some(a) if a.status == 200 => break,
            _ => assert!(Instant::now() < deadline, "the freed place is not reused"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The total cap refuses every IP once reached; sockets (opened directly or through
/// hyper) stop counting when they upgrade, and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_refuses_every_ip_and_sockets_do_not_count() {
    const TOTAL: usize = 3;
    let server = TestServer::builder()
        .config(|c| {
            c.http.max_connections = TOTAL;
            c.ws.ping_interval = Duration::from_millis(300);
        })
        .start()
        .await;
    let mut sockets = Vec::new();
    {
        let client = Client::new(&server.url()).expect("client");
        let session = client
            .login("alice", PASSWORD, ticketgate_sdk::ClientType::Mobile)
            .await
            .expect("login");
        for i in 0..TOTAL {
            let socket = open_socket(&server, &client, &session, OTHER_IP, i == 0).await;
            sockets.push(socket);
        }
        // The SDK's kept-alive connection closes with its client.
    }
    // TOTAL sockets are open; TOTAL connections that are not sockets are still let in.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while held.len() < TOTAL {
        let mut conn = Conn::open_from(&server, OTHER_IP).await;
        let answer = match conn.stream.write_all(HEALTHZ).await {
            Ok(()) => conn.try_answer().await,
            Err(_) => None,
        };
        match answer {
            Some(a) if a.status == 200 => held.push(conn),
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "{} let in, not {TOTAL}",
                    held.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_refused(&server, THIRD_IP).await;
    assert_refused(&server, Ipv4Addr::LOCALHOST).await;
    publish(&server, "all-of-them").await;
    for ws in &mut sockets {
        assert_alive(ws, "all-of-them").await;
    }
}

// ---------------------------------------------------------------------------------------
// (c) Idle keep-alive
// ---------------------------------------------------------------------------------------

/// A kept-alive connection with no request for the keep-alive timeout is closed; one
/// that keeps asking is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed() {
    let server = TestServer::builder()
        .config(|c| c.http.keepalive_timeout = Duration::from_secs(1))
        .start()
        .await;
    let mut idle = Conn::open(&server).await;
    idle.send(HEALTHZ).await;
    assert_eq!(idle.answer().await.status, 200);
    let mut busy = Conn::open(&server).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        busy.send(HEALTHZ).await;
        assert_eq!(busy.answer().await.status, 200, "a busy connection stays");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Idle since `started`, minus one request: closed by now or very soon.
    idle.closed_within(Duration::from_secs(1)).await;
    busy.closed_within(Duration::from_secs(3)).await;
}

// ---------------------------------------------------------------------------------------
// (d) Write deadline
// ---------------------------------------------------------------------------------------

/// A client that pipelines requests and never reads the answers is disconnected once
/// the node's writes have been blocked for the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected() {
    let server = TestServer::builder()
        .config(|c| c.http.write_timeout = Duration::from_secs(1))
        .start()
        .await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    let batch = HEALTHZ.repeat(100);
    let started = Instant::now();
    let mut sent = 0usize;
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while stream.write_all(&batch).await.is_ok() {
            sent += 100;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "still connected after {:?} ({sent} requests sent, none read)",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// (e) Out of file descriptors
// ---------------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_ticketgate");

/// A `ticketgate serve` process under `ulimit -n <fds>`, its log (stdout) in a file;
/// killed on drop.
struct Node {
    process: Child,
    public: std::net::SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(fds: u32, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let public = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let log = dir.path().join("node.log");
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\" serve"))
            .arg(BIN)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TICKETGATE_USERS_FILE", dir.path().join("users.toml"))
            .env("TICKETGATE_DATA_DIR", dir.path().join("data"))
            .env("TICKETGATE_LISTEN", public.to_string())
            .env("TICKETGATE_ADMIN_LISTEN", admin.to_string())
            .env("TICKETGATE_LOG_FORMAT", "text")
            .stdout(out)
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = cmd.spawn().expect("spawn the node");
        Node {
            process,
            public,
            log,
            _dir: dir,
        }
    }

    /// Waits until `/healthz` answers 200 on a fresh connection from `source`; how long
    /// that took, or `None` after `bound`.
    async fn healthz_within(&self, source: Ipv4Addr, bound: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < bound {
            let attempt = async {
                let socket = tokio::net::TcpSocket::new_v4().ok()?;
                socket.bind((source, 0).into()).ok()?;
                let mut stream = socket.connect(self.public).await.ok()?;
                stream.write_all(HEALTHZ).await.ok()?;
                let mut buf = Vec::new();
                support::raw::read_answer(&mut stream, &mut buf).await
            };
            let left = bound.saturating_sub(started.elapsed());
            if let Ok(Some(answer)) =
                tokio::time::timeout(left.min(Duration::from_secs(2)), attempt).await
            {
                if answer.status == 200 {
                    return Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Lines of the log containing `what`.
    fn count(&self, what: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }

    /// The node's resident memory, KiB (`VmRSS`).
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Out of file descriptors, the accept loop backs off and warns rarely (not 20 times a
/// second), and the node serves again once the clients leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    let node = Node::start(64, &[]);
    node.healthz_within(Ipv4Addr::LOCALHOST, Duration::from_secs(10))
        .await
        .expect("the node starts");
    // More connections than descriptors: the kernel completes them, the node cannot
    // accept them all.
    let mut clients = Vec::new();
    for _ in 0..120 {
        match TcpStream::connect(node.public).await {
            Ok(stream) => clients.push(stream),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warnings = node.count("accept failed");
    assert!(warnings >= 1, "the node never ran out of descriptors");
    assert!(warnings <= 2, "{warnings} accept warnings in 3 s");
    drop(clients);
    let back = node
        .healthz_within(Ipv4Addr::LOCALHOST, Duration::from_secs(5))
        .await;
    assert!(
        back.is_some(),
        "the node did not recover once the clients left"
    );
}

// ---------------------------------------------------------------------------------------
// Figures (not run by default)
// ---------------------------------------------------------------------------------------

/// Before/after figures for the report: `EXHAUSTION_CONNS` (600) connections with a
/// stalled body against the real binary under `ulimit -n EXHAUSTION_FDS` (1024), spread
/// over `EXHAUSTION_IPS` (1) source addresses from 127.0.1.1; prints how long
/// `/healthz` from 127.0.0.1 took to answer, how many were closed by the node and
/// when, and the node's RSS. Run with
/// `cargo test --test exhaustion -- --ignored --nocapture figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; slow"]
async fn figures() {
    let var = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (conns, fds, ips) = (
        var("EXHAUSTION_CONNS", 600),
        var("EXHAUSTION_FDS", 1024),
        var("EXHAUSTION_IPS", 1),
    );
    let node = Node::start(fds as u32, &[]);
    node.healthz_within(Ipv4Addr::LOCALHOST, Duration::from_secs(10))
        .await
        .expect("the node starts");
    let rss_before = node.rss_kib();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let source = Ipv4Addr::new(127, 0, 1, 1 + (i % ips) as u8);
        let public = node.public;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind((source, 0).into()).expect("bind");
        let Ok(mut stream) = socket.connect(public).await else {
            continue;
        };
        tasks.push(tokio::spawn(async move {
            if stream.write_all(STALLED_BODY).await.is_err() {
                return Some(Duration::ZERO);
            }
            let mut buf = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(70), async {
                while support::raw::read_more(&mut stream, &mut buf).await {}
            })
            .await;
            closed.ok().map(|()| started.elapsed())
        }));
    }
    let sent = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_held = node.rss_kib();
    let healthz = node
        .healthz_within(Ipv4Addr::LOCALHOST, Duration::from_secs(30))
        .await;
    let mut closed = Vec::new();
    let mut open = 0;
    for task in tasks {
        match task.await.expect("task") {
            Some(at) => closed.push(at),
            None => open += 1,
        }
    }
    closed.sort();
    let rss_after = node.rss_kib();
    println!(
        "{conns} stalled bodies from {ips} IP(s), ulimit -n {fds}: connected in {sent:?}\n\
         /healthz from 127.0.0.1 answered after {healthz:?} (None: not within 30 s)\n\
         closed by the node: {} (median at {:?}, last at {:?}); still open after 70 s: {open}\n\
         RSS: {rss_before:?} KiB before, {rss_held:?} KiB held, {rss_after:?} KiB after\n\
         'accept failed' lines: {}, 'refused' lines: {}",
        closed.len(),
        closed.get(closed.len() / 2),
        closed.last(),
        node.count("accept failed"),
        node.count("refused"),
    );
}
