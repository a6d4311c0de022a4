//! The durable embedded store under `kill -9`: a real `ticketgate serve` on its default
//! store drives concurrent logins and refreshes, dies by SIGKILL mid-flight, and a new
//! process on the same data dir finds every session whose answer reached its client,
//! still answers "reused" for a rotated token, keeps a blocked user blocked, and refuses
//! a signed request captured before the restart (its nonce was in memory only).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ticketgate_sdk::protocol::{HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use ticketgate_sdk::signing::{sign, SignedParts};
use ticketgate_sdk::{Client, ClientError, ClientType, ErrorCode, Session};

use support::bin::{add_user, free_port, ticketgate, wait_until_up};

const PASSWORD: &str = "pw-durable-1234";
const ADMIN_KEY: &str = "durable-admin-key-0123456789";
/// Concurrent clients logging in and refreshing when the node is killed.
const WORKERS: usize = 8;
/// Answers the workers must have received before the kill.
const OPS_BEFORE_KILL: usize = 120;

/// A `ticketgate serve` process on the default (durable) store; killed on drop.
struct Node {
    process: Child,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    /// Starts a node on `dir`'s data dir and waits until it answers.
    async fn start(dir: &std::path::Path) -> Node {
        let public = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let lots = "100000/s";
        let process = ticketgate(dir)
            .arg("serve")
            .env("TICKETGATE_LISTEN", public.to_string())
            .env("TICKETGATE_ADMIN_LISTEN", admin.to_string())
            .env("TICKETGATE_ADMIN_KEY", ADMIN_KEY)
            .env("TICKETGATE_RATE_LOGIN_IP", lots)
            .env("TICKETGATE_RATE_LOGIN_USER", lots)
            .env("TICKETGATE_RATE_LOGIN_DEVICE", lots)
            .env("TICKETGATE_RATE_FAIL_IP", lots)
            .env("TICKETGATE_RATE_SESSION", lots)
            .env("TICKETGATE_RATE_MINT_DEVICE", lots)
            .env("TICKETGATE_SESSIONS_PER_TYPE", "100000")
            .env("TICKETGATE_REFRESH_CAP_PER_DAY", "100000")
            // A refresh in flight at the kill may have rotated without its answer
            // reaching the client; the parent it still holds is accepted within grace.
            .env("TICKETGATE_REFRESH_GRACE", "60s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let node = Node {
            process,
            public,
            admin,
        };
        wait_until_up(&node.url(), Duration::from_secs(20)).await;
        node
    }

    fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    fn client(&self, device_id: &str) -> Client {
        Client::new(&self.url())
            .expect("client")
            .with_device_id(device_id)
    }

    /// `POST /admin/v1/users/{user}/{action}`.
    async fn admin(&self, user: &str, action: &str) {
        let answer = reqwest::Client::new()
            .post(format!(
                "http://{}/admin/v1/users/{user}/{action}",
                self.admin
            ))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("admin call");
        assert!(
            answer.status().is_success(),
            "{action}: {}",
            answer.status()
        );
    }

    /// SIGKILL, and wait until the process is gone.
    fn kill_9(&mut self) {
        self.process.kill().expect("SIGKILL");
        self.process.wait().expect("wait");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The sessions as their clients last heard of them, by session id.
type Confirmed = Arc<Mutex<HashMap<String, Session>>>;

/// Logs in and refreshes in a loop; every answer that arrives is recorded. Stops at the
/// first failure, which must come after the kill.
async fn worker(url: String, confirmed: Confirmed, ops: Arc<AtomicUsize>, killed: Arc<AtomicBool>) {
    let client = Client::new(&url).expect("client");
    let failed = |e: ClientError| {
        assert!(
            killed.load(Ordering::SeqCst),
            "a call failed before the kill: {e}"
        );
    };
    loop {
        let mut session = match client.login("alice", PASSWORD, ClientType::Mobile).await {
            Ok(session) => session,
            // The password checks' queue is full (a slow machine): nothing was created.
            Err(ClientError::Api { status: 503, .. }) if !killed.load(Ordering::SeqCst) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return failed(e),
        };
        confirmed
            .lock()
            .expect("lock")
            .insert(session.session_id.clone(), session.clone());
        ops.fetch_add(1, Ordering::SeqCst);
        for _ in 0..3 {
            session = match client.refresh(&session).await {
                Ok(session) => session,
                Err(e) => return failed(e),
            };
            confirmed
                .lock()
                .expect("lock")
                .insert(session.session_id.clone(), session.clone());
            ops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A signed request, built once so that exactly the same bytes can be sent again.
fn signed_request(
    base: &str,
    path: &str,
    session: &Session,
    bearer: bool,
    body: &serde_json::Value,
) -> reqwest::Request {
    let body = serde_json::to_vec(body).expect("body");
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let signature = sign(
        &session.signing_key,
        &SignedParts {
            method: "POST",
            path,
            device_id: &session.device_id,
            timestamp,
            nonce: &nonce,
            body: &body,
        },
    );
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header(HEADER_DEVICE, &session.device_id)
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(HEADER_NONCE, nonce)
        .header(HEADER_SIGNATURE, signature);
    if bearer {
        request = request.bearer_auth(&session.access_token);
    }
    request.body(body).build().expect("request")
}

/// Sends `request` to `node` (whatever host it was built for); status and JSON answer.
async fn send(node: &Node, request: &reqwest::Request) -> (u16, serde_json::Value) {
    let mut request = request.try_clone().expect("a clonable request");
    let mut url = request.url().clone();
    url.set_port(Some(node.public.port())).expect("port");
    *request.url_mut() = url;
    let answer = reqwest::Client::new()
        .execute(request)
        .await
        .expect("an answer");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("a JSON answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_reuse_markers_and_blocks_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    for user in ["alice", "bob", "carol", "mallory"] {
        add_user(dir.path(), user, PASSWORD);
    }
    let mut node = Node::start(dir.path()).await;
    let client = Client::new(&node.url()).expect("client");

    // bob: a rotated family; s0 is two rotations old, so reuse even within the grace.
    let s0 = client
        .login("bob", PASSWORD, ClientType::Mobile)
        .await
        .expect("bob logs in");
    let s1 = client.refresh(&s0).await.expect("refresh");
    let s2 = client.refresh(&s1).await.expect("refresh");

    // mallory: blocked by the admin API (the store's flag, not the users file).
    let mallory = client
        .login("mallory", PASSWORD, ClientType::Web)
        .await
        .expect("mallory logs in");
    node.admin("mallory", "block").await;
    let refused = client.login("mallory", PASSWORD, ClientType::Web).await;
    assert_eq!(
        refused.expect_err("blocked").code(),
        Some(ErrorCode::BadCredentials)
    );

    // carol: a mint and a refresh whose exact requests an eavesdropper keeps.
    let carol = client
        .login("carol", PASSWORD, ClientType::Mobile)
        .await
        .expect("carol logs in");
    let base = node.url();
    let mint = signed_request(&base, "/v1/tickets", &carol, true, &serde_json::json!({}));
    let (status, _) = send(&node, &mint).await;
    assert_eq!(status, 201, "the captured mint was answered");
    let refresh_body = serde_json::json!({ "refresh_token": carol.refresh_token });
    let refresh = signed_request(&base, "/v1/token/refresh", &carol, false, &refresh_body);
    let (status, answer) = send(&node, &refresh).await;
    assert_eq!(status, 200, "the captured refresh was answered: {answer}");
    let carol = Session {
        refresh_token: answer["refresh_token"].as_str().map(str::to_owned),
        access_token: answer["access_token"]
            .as_str()
            .expect("access token")
            .to_owned(),
        ..carol
    };

    // alice: concurrent logins and refreshes, killed mid-flight.
    let confirmed: Confirmed = Arc::default();
    let ops = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(worker(
                node.url(),
                confirmed.clone(),
                ops.clone(),
                killed.clone(),
            ))
        })
        .collect();
    while ops.load(Ordering::SeqCst) < OPS_BEFORE_KILL {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed.store(true, Ordering::SeqCst);
    node.kill_9();
    for w in workers {
        w.await.expect("worker");
    }
    let confirmed = std::mem::take(&mut *confirmed.lock().expect("lock"));
    assert!(confirmed.len() >= OPS_BEFORE_KILL / 4);
    eprintln!(
        "{} answers, {} sessions answered before the kill",
        ops.load(Ordering::SeqCst),
        confirmed.len()
    );

    let node = Node::start(dir.path()).await;

    // Every session whose answer reached its client refreshes (with its latest token,
    // or the parent of a rotation whose answer was lost in the kill).
    for (sid, session) in &confirmed {
        let refreshed = node.client(&session.device_id).refresh(session).await;
        assert!(
            refreshed.is_ok(),
            "session {sid} lost in the restart: {:?}",
            refreshed.err()
        );
    }

    // A token rotated away before the kill is reuse after it, and ends the family.
    let bob = node.client(&s0.device_id);
    let reused = bob.refresh(&s0).await.expect_err("s0 is reuse");
    assert_eq!(reused.code(), Some(ErrorCode::RefreshReused), "{reused}");
    let after = bob.refresh(&s2).await.expect_err("the family ended");
    assert_eq!(after.code(), Some(ErrorCode::RefreshReused), "{after}");

    // The blocked user stays blocked, and only because of the flag.
    let web = node.client(&mallory.device_id);
    let refused = web.login("mallory", PASSWORD, ClientType::Web).await;
    assert_eq!(
        refused.expect_err("still blocked").code(),
        Some(ErrorCode::BadCredentials)
    );
    assert!(
        web.refresh(&mallory).await.is_err(),
        "block ended its session"
    );
    node.admin("mallory", "unblock").await;
    web.login("mallory", PASSWORD, ClientType::Web)
        .await
        .expect("unblocked: logs in");

    // The captured requests are refused: their nonces were in memory only. Without
    // the replay floor the mint would answer a ticket, and the refresh would count as
    // reuse and end carol's session.
    for (what, request) in [("mint", &mint), ("refresh", &refresh)] {
        let (status, answer) = send(&node, request).await;
        assert_eq!(status, 401, "replayed {what}: {answer}");
        assert_eq!(answer["error"], "stale_request", "replayed {what}");
    }
    let carol_client = node.client(&carol.device_id);
    carol_client
        .mint_ticket(&carol)
        .await
        .expect("a fresh mint of the same session is answered");
    carol_client
        .refresh(&carol)
        .await
        .expect("the replay did not count as reuse");
}

/// `ticketgate serve` on `dir` that must fail to start: its exit code and stderr.
fn failed_start(dir: &std::path::Path) -> (Option<i32>, String) {
    let output = ticketgate(dir)
        .arg("serve")
        .env("TICKETGATE_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env(
            "TICKETGATE_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .stdout(Stdio::null())
        .output()
        .expect("run");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The exit code of a node that cannot start (`EX_UNAVAILABLE`, as for a data dir it
/// cannot use).
const EXIT_UNAVAILABLE: i32 = 69;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    add_user(dir.path(), "alice", PASSWORD);
    let node = Node::start(dir.path()).await;
    let (code, stderr) = failed_start(dir.path());
    assert_eq!(code, Some(EXIT_UNAVAILABLE), "{stderr}");
    assert!(stderr.contains("store.redb"), "{stderr}");
    assert!(stderr.contains("another process"), "{stderr}");
    // The first node is untouched.
    Client::new(&node.url())
        .expect("client")
        .login("alice", PASSWORD, ClientType::Web)
        .await
        .expect("the first node still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_file_stops_the_start_and_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    add_user(dir.path(), "alice", PASSWORD);
    let mut node = Node::start(dir.path()).await;
    node.kill_9();
    let file = dir.path().join("data").join("store.redb");
    let garbage: Vec<u8> = (0..16_384u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&file, &garbage).expect("overwrite the store file");

    let (code, stderr) = failed_start(dir.path());
    assert_eq!(code, Some(EXIT_UNAVAILABLE), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert_eq!(
        std::fs::read(&file).expect("read"),
        garbage,
        "never a silent wipe"
    );
}
