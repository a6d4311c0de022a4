//! Business messages (PROTOCOL §9): a client's `send` goes to the upstream as a signed
//! `message` event and comes back as `reply` or `error` with its id; `connect` and
//! `disconnect` carry the identity ticketgate verified; a slow, broken or absent
//! upstream never stalls the socket or the node. The test upstream
//! (`support/upstream.rs`) refuses any call whose signature or timestamp does not
//! verify, and each test checks that it refused none.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::upstream::{TestUpstream, SECRET};
use support::{wait_until, TestServer};
use ticketgate::handler::{Context, Identity, Refused, SessionHandler};
use ticketgate_sdk::{ClientType, Welcome, WsStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// A node forwarding to `upstream` with the given call timeout and in-flight cap.
async fn node(upstream: &TestUpstream, timeout: Duration, inflight: usize) -> TestServer {
    let url = upstream.url();
    TestServer::builder()
        .config(move |c| {
            c.upstream.url = Some(url);
            c.upstream.secret = Some(SECRET.into());
            c.upstream.timeout = timeout;
            c.upstream.inflight = inflight;
        })
        .start()
        .await
}

/// A socket of `user` (web), its welcome.
async fn socket(server: &TestServer, user: &str) -> (WsStream, Welcome) {
    let (client, session) = server.login_as(user, ClientType::Web).await;
    let ticket = client.mint_ticket(&session).await.expect("ticket");
    client.connect(&session, &ticket).await.expect("connect")
}

async fn send(ws: &mut WsStream, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("frame sent");
}

/// The next text frame (pings skipped); fails the test after 10 s.
async fn frame(ws: &mut WsStream) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await.expect("socket open").expect("a message") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
                Message::Close(c) => panic!("socket closed: {c:?}"),
                _ => continue,
            }
        }
    })
    .await
    .expect("a frame in time")
}

/// Sends a ping and expects the pong as the next frame: the socket loop is alive.
async fn assert_pong(ws: &mut WsStream) {
    send(ws, json!({"type": "ping"})).await;
    assert_eq!(frame(ws).await, json!({"type": "pong"}));
}

fn identity_of(welcome: &Welcome, node_id: &str) -> Value {
    json!({
        "conn_id": welcome.conn_id, "node_id": node_id, "user_id": welcome.user_id,
        "session_id": welcome.session_id, "device_id": welcome.device_id,
        "client_type": "web",
    })
}

/// The identity fields of an event.
fn identity_in(event: &Value) -> Value {
    let keys = [
        "conn_id",
        "node_id",
        "user_id",
        "session_id",
        "device_id",
        "client_type",
    ];
    Value::Object(
        keys.iter()
            .map(|k| ((*k).to_owned(), event[*k].clone()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_is_answered_by_a_reply_with_its_id() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(5), 16).await;
    let (mut ws, _) = socket(&server, "alice").await;
    send(
        &mut ws,
        json!({"type": "send", "id": "req-1", "data": {"echo": [1, "two"]}}),
    )
    .await;
    assert_eq!(
        frame(&mut ws).await,
        json!({"type": "reply", "id": "req-1", "data": {"echo": [1, "two"], "user_id": "alice"}})
    );
    assert_eq!(upstream.refused(), 0, "every call verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_back_out_of_order_paired_by_id() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(5), 16).await;
    let (mut ws, _) = socket(&server, "alice").await;
    // The slow one never answers before the upstream has seen the fast one.
    send(
        &mut ws,
        json!({"type": "send", "id": "slow", "data": {"delay_ms": 1500, "echo": 1}}),
    )
    .await;
    wait_until(|| upstream.events_of("message").len() == 1).await;
    send(
        &mut ws,
        json!({"type": "send", "id": "fast", "data": {"echo": 2}}),
    )
    .await;
    let first = frame(&mut ws).await;
    let second = frame(&mut ws).await;
    assert_eq!(
        (first["id"].as_str(), first["data"]["echo"].as_i64()),
        (Some("fast"), Some(2))
    );
    assert_eq!(
        (second["id"].as_str(), second["data"]["echo"].as_i64()),
        (Some("slow"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_4xx_code_passes_through_only_in_its_form() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(5), 16).await;
    let (mut ws, _) = socket(&server, "alice").await;
    send(
        &mut ws,
        json!({"type": "send", "id": "a", "data": {"status": 409, "error": "seat_taken"}}),
    )
    .await;
    assert_eq!(
        frame(&mut ws).await,
        json!({"type": "error", "id": "a", "error": "seat_taken", "message": "scripted"})
    );
    for (id, code) in [
        ("b", json!("Seat-Taken")),
        ("c", json!("x".repeat(65))),
        ("d", json!(7)),
    ] {
        send(
            &mut ws,
            json!({"type": "send", "id": id, "data": {"status": 403, "error": code}}),
        )
        .await;
        let answer = frame(&mut ws).await;
        assert_eq!(
            (answer["id"].as_str(), answer["error"].as_str()),
            (Some(id), Some("upstream_unavailable")),
            "{code}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_a_bad_body_or_a_timeout_is_upstream_unavailable_and_the_socket_stays() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_millis(300), 16).await;
    let (mut ws, _) = socket(&server, "alice").await;
    let cases = [
        ("five", json!({"status": 503, "error": "down"})),
        ("garbage", json!({"garbage": true})),
        ("hang", json!({"hang": true})),
    ];
    for (id, data) in cases {
        send(&mut ws, json!({"type": "send", "id": id, "data": data})).await;
        let answer = frame(&mut ws).await;
        assert_eq!(answer["type"], "error", "{id}");
        assert_eq!(
            (answer["id"].as_str(), answer["error"].as_str()),
            (Some(id), Some("upstream_unavailable"))
        );
        assert_pong(&mut ws).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_upstream_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/events", closed.local_addr().expect("addr"));
    drop(closed);
    let server = TestServer::builder()
        .config(move |c| {
            c.upstream.url = Some(url);
            c.upstream.secret = Some(SECRET.into());
        })
        .start()
        .await;
    let (mut ws, _) = socket(&server, "alice").await;
    send(&mut ws, json!({"type": "send", "id": "r", "data": {}})).await;
    let answer = frame(&mut ws).await;
    assert_eq!(
        (answer["id"].as_str(), answer["error"].as_str()),
        (Some("r"), Some("upstream_unavailable"))
    );
    assert_pong(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_answers_upstream_unavailable() {
    let server = TestServer::builder().start().await;
    let (mut ws, _) = socket(&server, "alice").await;
    send(&mut ws, json!({"type": "send", "id": "n", "data": null})).await;
    let answer = frame(&mut ws).await;
    assert_eq!(
        (answer["id"].as_str(), answer["error"].as_str()),
        (Some("n"), Some("upstream_unavailable"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_past_the_inflight_cap_is_busy() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(60), 2).await;
    let (mut ws, _) = socket(&server, "alice").await;
    for id in ["h1", "h2"] {
        send(
            &mut ws,
            json!({"type": "send", "id": id, "data": {"hang": true}}),
        )
        .await;
    }
    send(
        &mut ws,
        json!({"type": "send", "id": "h3", "data": {"echo": 3}}),
    )
    .await;
    let answer = frame(&mut ws).await;
    assert_eq!(
        (answer["id"].as_str(), answer["error"].as_str()),
        (Some("h3"), Some("busy"))
    );
    wait_until(|| upstream.events_of("message").len() == 2).await;
    assert_eq!(
        upstream.events_of("message").len(),
        2,
        "the busy one never left"
    );
    assert_pong(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_send_is_a_bad_request_with_its_id_when_it_can_be_read() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(5), 16).await;
    let (mut ws, _) = socket(&server, "alice").await;
    let cases = [
        (json!({"type": "send", "id": "no-data"}), Some("no-data")),
        (json!({"type": "send", "id": "bad id!", "data": 1}), None),
        (json!({"type": "send", "id": 12, "data": 1}), None),
        (json!({"type": "send", "data": 1}), None),
        (json!({"type": "send", "id": "", "data": 1}), None),
    ];
    for (sent, id) in cases {
        send(&mut ws, sent.clone()).await;
        let answer = frame(&mut ws).await;
        assert_eq!(answer["error"], "bad_request", "{sent}");
        assert_eq!(answer["id"].as_str(), id, "{sent}");
    }
    assert!(
        upstream.events_of("message").is_empty(),
        "nothing malformed was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_stays_healthy_while_the_upstream_hangs() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(60), 16).await;
    let (mut ws, _) = socket(&server, "alice").await;
    for n in 0..16 {
        send(
            &mut ws,
            json!({"type": "send", "id": format!("h{n}"), "data": {"hang": true}}),
        )
        .await;
    }
    wait_until(|| upstream.events_of("message").len() == 16).await;
    // Pings, pushes and renewals of the same socket.
    assert_pong(&mut ws).await;
    let admin = reqwest::Client::new();
    let published = admin
        .post(format!("http://{}/admin/v1/publish", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&json!({"user_id": "alice", "topic": "t", "data": "still here"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200);
    assert_eq!(frame(&mut ws).await["data"], "still here");
    // The node: health, and a new socket of another user with its own sends.
    let health = admin
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let (mut other, _) = socket(&server, "bob").await;
    send(
        &mut other,
        json!({"type": "send", "id": "b", "data": {"echo": "bob"}}),
    )
    .await;
    assert_eq!(frame(&mut other).await["data"]["echo"], "bob");
    // Close is not held by the calls in flight: the disconnect event arrives.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close sent");
    wait_until(|| !upstream.events_of("disconnect").is_empty()).await;
    assert_eq!(upstream.events_of("disconnect")[0]["code"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_message_and_disconnect_carry_the_verified_identity() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(5), 16).await;
    let (mut ws, welcome) = socket(&server, "alice").await;
    let identity = identity_of(&welcome, &server.config.node_id);
    wait_until(|| upstream.events_of("connect").len() == 1).await;
    assert_eq!(identity_in(&upstream.events_of("connect")[0]), identity);

    // A client that writes someone else's identity into its data changes nothing.
    let forged = json!({"echo": 1, "user_id": "bob", "session_id": "s", "conn_id": "c"});
    send(
        &mut ws,
        json!({"type": "send", "id": "m", "data": forged, "user_id": "bob"}),
    )
    .await;
    assert_eq!(frame(&mut ws).await["data"]["user_id"], "alice");
    let message = &upstream.events_of("message")[0];
    assert_eq!(identity_in(message), identity);
    assert_eq!(
        (message["id"].as_str(), &message["data"]),
        (Some("m"), &forged)
    );

    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    }))
    .await
    .expect("close sent");
    wait_until(|| upstream.events_of("disconnect").len() == 1).await;
    let disconnect = &upstream.events_of("disconnect")[0];
    assert_eq!(identity_in(disconnect), identity);
    assert_eq!(disconnect["code"], 1001);
    let kinds: Vec<Value> = upstream
        .events()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![json!("connect"), json!("message"), json!("disconnect")]
    );
    assert_eq!(upstream.refused(), 0, "every call verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_reaches_the_upstream_as_a_disconnect_with_4503() {
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(5), 16).await;
    let (mut ws, _) = socket(&server, "alice").await;
    let kicked = reqwest::Client::new()
        .post(format!(
            "http://{}/admin/v1/users/alice/kick",
            server.admin_addr
        ))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&json!({}))
        .send()
        .await
        .expect("kick");
    assert_eq!(kicked.status(), 200);
    assert_eq!(support::close_code(&mut ws).await, Some(4503));
    wait_until(|| upstream.events_of("disconnect").len() == 1).await;
    assert_eq!(upstream.events_of("disconnect")[0]["code"], 4503);
}

/// An in-process handler: records identities, echoes with a push to the sender.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, Identity)>>,
}

#[ticketgate::async_trait]
impl SessionHandler for Recorder {
    async fn connect(&self, cx: &Context) {
        self.seen
            .lock()
            .expect("recorder lock")
            .push(("connect".into(), cx.identity().clone()));
    }

    async fn message(&self, cx: &Context, id: &str, data: Value) -> Result<Value, Refused> {
        self.seen
            .lock()
            .expect("recorder lock")
            .push((format!("message {id}"), cx.identity().clone()));
        if data == "refuse" {
            return Err(Refused::new("not_today", "refused in-process"));
        }
        let who = cx.identity().user_id.clone();
        let pushed = cx
            .push()
            .to_user(&who, "echo", data.clone())
            .await
            .map_err(|_| Refused::unavailable())?;
        Ok(json!({"delivered": pushed.delivered, "data": data}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_handler_sees_the_identity_and_pushes() {
    let recorder = Arc::new(Recorder::default());
    let server = TestServer::builder()
        .handler(recorder.clone())
        .start()
        .await;
    let (mut ws, welcome) = socket(&server, "alice").await;
    wait_until(|| !recorder.seen.lock().expect("recorder lock").is_empty()).await;
    send(
        &mut ws,
        json!({"type": "send", "id": "x", "data": {"user_id": "bob"}}),
    )
    .await;
    let (a, b) = (frame(&mut ws).await, frame(&mut ws).await);
    let (push, reply) = if a["type"] == "push" { (a, b) } else { (b, a) };
    assert_eq!(
        (push["topic"].as_str(), &push["data"]),
        (Some("echo"), &json!({"user_id": "bob"}))
    );
    // A handler's push takes the admin publish's path: kept in the user's history, so
    // a socket that comes back with `since` learns it as the newest id (PROTOCOL §10).
    let pushed_id = push["id"].as_str().expect("a push id").to_owned();
    assert_eq!(
        reply,
        json!({"type": "reply", "id": "x", "data": {"delivered": 1, "data": {"user_id": "bob"}}})
    );
    send(
        &mut ws,
        json!({"type": "send", "id": "y", "data": "refuse"}),
    )
    .await;
    assert_eq!(
        frame(&mut ws).await,
        json!({"type": "error", "id": "y", "error": "not_today", "message": "refused in-process"})
    );
    let expected = Identity {
        conn_id: welcome.conn_id.clone(),
        node_id: server.config.node_id.clone(),
        user_id: "alice".into(),
        session_id: welcome.session_id.clone(),
        device_id: welcome.device_id.clone(),
        client_type: ClientType::Web,
    };
    let seen = recorder.seen.lock().expect("recorder lock").clone();
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["connect", "message x", "message y"]);
    assert!(seen.iter().all(|(_, who)| *who == expected), "{seen:?}");

    let (client, session) = server.login_as("alice", ClientType::Mobile).await;
    let ticket = client.mint_ticket(&session).await.expect("ticket");
    let (_second, resumed) = client
        .connect_since(&session, &ticket, Some(&pushed_id))
        .await
        .expect("connect with since");
    assert_eq!(resumed.recovered, Some(true), "{resumed:?}");
    assert_eq!(resumed.last_id.as_deref(), Some(pushed_id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_pairs_calls_and_types_their_errors() {
    use ticketgate_sdk::{CallSocket, ConnectOptions, Event, SendError, SessionHandle};
    let upstream = TestUpstream::start().await;
    let server = node(&upstream, Duration::from_secs(5), 16).await;

    // The plain socket: one call at a time, a push that comes meanwhile is kept.
    let (ws, _) = socket(&server, "alice").await;
    let mut calls = CallSocket::new(ws);
    let reply = calls
        .request(json!({"echo": "plain"}))
        .await
        .expect("a reply");
    assert_eq!(reply["echo"], "plain");
    let refused = calls
        .request(json!({"status": 409, "error": "seat_taken"}))
        .await;
    assert_eq!(
        refused,
        Err(SendError::Refused {
            code: "seat_taken".into(),
            message: "scripted".into()
        })
    );
    let down = calls.request(json!({"status": 502, "error": "x"})).await;
    assert!(
        matches!(down, Err(SendError::UpstreamUnavailable { .. })),
        "{down:?}"
    );

    // The managed connection: concurrent calls from two tasks, answered out of order.
    let (client, session) = server.login_as("bob", ClientType::Mobile).await;
    let handle = SessionHandle::new(client, session);
    let mut connection = handle.connect_with_reconnect(ConnectOptions::default());
    let welcome = tokio::time::timeout(Duration::from_secs(10), connection.next())
        .await
        .expect("an event in time");
    assert!(matches!(welcome, Some(Event::Welcome(_))), "{welcome:?}");
    let sender = connection.sender();
    let slow = tokio::spawn(async move {
        sender
            .request(json!({"delay_ms": 500, "echo": "slow"}))
            .await
    });
    let fast = connection
        .request(json!({"echo": "fast"}))
        .await
        .expect("fast reply");
    assert_eq!(fast["echo"], "fast");
    let slow = slow.await.expect("joined").expect("slow reply");
    assert_eq!(
        (slow["echo"].as_str(), slow["user_id"].as_str()),
        (Some("slow"), Some("bob"))
    );
    connection.close();
}
