//! The one-time-ticket handshake end to end, on the embedded store, on real Redis and
//! (the tests written with `every_store!`: those whose outcome rests on the store) on a
//! Redis Cluster: login → mint → connect → welcome, and every way a ticket must fail.

mod support;

use support::{close_code, wait_until};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::{StoreKind, TestServer};
use ticketgate_sdk::protocol::close;
use ticketgate_sdk::{ClientError, ClientType, ErrorCode, Ticket};
use tokio_tungstenite::tungstenite::Message;

type Ws = ticketgate_sdk::WsStream;

fn api_error(err: ClientError) -> (u16, Option<ErrorCode>) {
    match err {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn with_ticket(t: &Ticket, ticket: &str) -> Ticket {
    let mut t = t.clone();
    t.ticket = ticket.to_owned();
    t
}

every_store!(
    a_minted_ticket_opens_one_socket_with_a_welcome,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let ticket = client.mint_ticket(&session).await.expect("mint");
        assert!(ticket
            .ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
        assert_eq!(ticket.expires_in, 30);
        assert_eq!(ticket.ws_url, format!("ws://{}/v1/connect", server.addr));
        let (mut ws, welcome) = client.connect(&session, &ticket).await.expect("connect");
        assert_eq!(welcome.session_id, session.session_id);
        assert_eq!(welcome.user_id, "alice");
        assert_eq!(welcome.device_id, session.device_id);
        assert_eq!(welcome.expires_at as u64, session.access_expires_at);
        assert_eq!(server.state.registry.len(), 1);

        ws.send(Message::text(r#"{"type":"ping"}"#))
            .await
            .expect("send");
        let pong = ws.next().await.expect("frame").expect("ok");
        assert_eq!(
            pong.into_text().expect("text").as_str(),
            r#"{"type":"pong"}"#
        );

        ws.close(None).await.expect("close");
        wait_until(|| server.state.registry.is_empty()).await;
    }
);

every_store!(a_ticket_is_single_use, |kind| async move {
    let server = TestServer::builder().store(kind).start().await;
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let _first = client.connect(&session, &ticket).await.expect("first use");
    let second = client
        .connect(&session, &ticket)
        .await
        .expect_err("second use");
    assert_eq!(api_error(second), (401, Some(ErrorCode::TicketInvalid)));
});

every_store!(
    racing_upgrades_on_one_ticket_admit_exactly_one,
    |kind| async move {
        // Every racer holds a socket slot of the session (and of its user) while it
        // waits for the store: caps above the racers keep this about the ticket alone.
        let server = TestServer::builder()
            .store(kind)
            .config(|c| {
                c.ws.max_sockets_per_session = 200;
                c.ws.max_sockets_per_user = 200;
            })
            .start()
            .await;
        let (client, session) = server.login().await;
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let barrier = Arc::new(tokio::sync::Barrier::new(200));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (client, session, ticket, barrier) = (
                    client.clone(),
                    session.clone(),
                    ticket.clone(),
                    barrier.clone(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    client.connect(&session, &ticket).await
                })
            })
            .collect();
        let mut sockets = Vec::new();
        let mut refused = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(pair) => sockets.push(pair),
                Err(e) => {
                    assert_eq!(api_error(e), (401, Some(ErrorCode::TicketInvalid)));
                    refused += 1;
                }
            }
        }
        assert_eq!((sockets.len(), refused), (1, 199));
        assert_eq!(server.state.registry.len(), 1);
    }
);

both_stores!(
    an_expired_ticket_is_refused_without_a_store_command,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| c.ttl.ticket = Duration::from_millis(300))
            .start()
            .await;
        let (client, session) = server.login().await;
        let ticket = client.mint_ticket(&session).await.expect("mint");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = server.redis.as_ref().map(|_| server.redis_stats());
        let err = client
            .connect(&session, &ticket)
            .await
            .expect_err("expired");
        assert_eq!(api_error(err), (401, Some(ErrorCode::TicketInvalid)));
        if let Some(before) = before {
            assert_eq!(data_commands(&before, &server.redis_stats()), 0);
        }
    }
);

every_store!(
    a_foreign_device_is_refused_and_burns_the_ticket,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let mut thief = session.clone();
        thief.device_id = uuid::Uuid::new_v4().to_string();
        let err = client
            .connect(&thief, &ticket)
            .await
            .expect_err("foreign device");
        assert_eq!(api_error(err), (403, Some(ErrorCode::DeviceMismatch)));
        let err = client.connect(&session, &ticket).await.expect_err("burnt");
        assert_eq!(api_error(err), (401, Some(ErrorCode::TicketInvalid)));
    }
);

every_store!(
    a_ticket_minted_before_its_session_ended_opens_nothing,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let ticket = client.mint_ticket(&session).await.expect("mint");
        assert!(server
            .state
            .store
            .revoke_session(&session.session_id)
            .await
            .expect("revoke"));
        let err = client
            .connect(&session, &ticket)
            .await
            .expect_err("session gone");
        assert_eq!(api_error(err), (401, Some(ErrorCode::TicketInvalid)));
        let err = client
            .mint_ticket(&session)
            .await
            .expect_err("session gone");
        assert_eq!(api_error(err), (401, Some(ErrorCode::TokenRevoked)));
    }
);

/// Forged, truncated, re-MACed and foreign tickets: all 401, none reaches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tickets_cost_no_redis_command() {
    let server = TestServer::builder().store(StoreKind::Redis).start().await;
    let other = TestServer::builder().start().await; // another deployment's secret
    let (client, session) = server.login().await;
    let (other_client, other_session) = other.login().await;
    let real = client.mint_ticket(&session).await.expect("mint");
    let foreign = other_client
        .mint_ticket(&other_session)
        .await
        .expect("mint");

    let (body, mac) = real.ticket.rsplit_once('.').expect("dot");
    let mut forgeries = vec![
        foreign.ticket.clone(),
        real.ticket[..real.ticket.len() - 1].to_owned(),
        format!("{body}.AAAAAAAAAAAAAAAAAAAAAA"),
        format!(
            "{}.{mac}",
            body.replacen(&session.session_id, "1AAAAAAAAAAAAAAAAAAAAAA", 1)
        ),
        "1.x.1.y.z".to_owned(),
    ];
    while forgeries.len() < 1000 {
        forgeries.push(format!(
            "1.{}.9999999999999.{}.{}",
            session.session_id,
            forgeries.len(),
            "A".repeat(22)
        ));
    }
    let before = server.redis_stats();
    for f in &forgeries {
        let err = client
            .connect(&session, &with_ticket(&real, f))
            .await
            .expect_err("forged");
        assert_eq!(api_error(err), (401, Some(ErrorCode::TicketInvalid)), "{f}");
    }
    assert_eq!(
        data_commands(&before, &server.redis_stats()),
        0,
        "forged tickets reached Redis"
    );
    // The real ticket is untouched by all that.
    client
        .connect(&session, &real)
        .await
        .expect("real ticket still works");
}

both_stores!(
    one_thousand_connect_close_cycles_leave_the_registry_empty,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let cycles = if kind == StoreKind::Memory { 1000 } else { 300 };
        for _ in 0..cycles {
            let ticket = client.mint_ticket(&session).await.expect("mint");
            let (mut ws, _) = client.connect(&session, &ticket).await.expect("connect");
            ws.close(None).await.expect("close");
            while ws.next().await.is_some() {}
        }
        wait_until(|| server.state.registry.is_empty()).await;
        assert_eq!(server.state.registry.index_sizes(), (0, 0, 0));
    }
);

both_stores!(
    a_frame_over_the_size_limit_closes_with_1009,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (mut ws, _) = connected(&server).await;
        ws.send(Message::text("x".repeat(64 * 1024 + 1)))
            .await
            .expect("send");
        assert_eq!(close_code(&mut ws).await, Some(close::TOO_BIG));
    }
);

both_stores!(a_frame_flood_closes_with_4008, |kind| async move {
    let server = TestServer::builder()
        .store(kind)
        .config(|c| c.rates.frames = ticketgate::config::Rate::parse("20/s").expect("rate"))
        .start()
        .await;
    let (mut ws, _) = connected(&server).await;
    for _ in 0..50 {
        if ws
            .send(Message::text(r#"{"type":"ack","id":"1"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(close::FLOOD));
    let (mut ws, _) = connected(&server).await;
    for _ in 0..50 {
        if ws.send(Message::Ping(Default::default())).await.is_err() {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(close::FLOOD), "ping flood");
});

both_stores!(
    the_socket_closes_with_4004_when_the_access_token_expires,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| {
                c.ttl.access = Duration::from_secs(2);
                c.ttl.jwt_leeway = Duration::ZERO;
            })
            .start()
            .await;
        let (mut ws, welcome) = connected(&server).await;
        let started = Instant::now();
        let code = close_code(&mut ws).await;
        assert_eq!(code, Some(close::SESSION_EXPIRED));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "closed at exp, not later"
        );
        assert!(welcome.expires_at > 0);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_is_closed() {
    let server = TestServer::builder()
        .config(|c| c.ws.idle_timeout = Duration::from_millis(500))
        .start()
        .await;
    let (mut ws, _) = connected(&server).await;
    assert_eq!(close_code(&mut ws).await, Some(close::NORMAL));
}

/// The server pings every `ping_interval`, and a client that answers (any frame counts)
/// is not idle: the socket outlives several idle timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_an_answering_client_stays_connected() {
    let server = TestServer::builder()
        .config(|c| {
            // Wide margins: on a loaded machine the client's pong can be late by
            // hundreds of milliseconds, which must not read as idleness.
            c.ws.ping_interval = Duration::from_millis(200);
            c.ws.idle_timeout = Duration::from_millis(1_000);
        })
        .start()
        .await;
    let (mut ws, _) = connected(&server).await;
    let started = std::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3_500) {
        let frame = tokio::time::timeout(Duration::from_secs(1), ws.next())
            .await
            .expect("a ping within a second")
            .expect("the socket is open")
            .expect("a valid frame");
        match frame {
            Message::Ping(payload) => {
                pings += 1;
                ws.send(Message::Pong(payload)).await.expect("pong");
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(pings >= 5, "{pings} pings in 3.5 s at a 200 ms interval");
}

/// One sample of `name` (labels included, as rendered) from the admin `/metrics`. The recorder is shared
/// by every server of this test binary, so tests compare readings, never absolutes.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mints_admissions_and_open_sockets_are_counted() {
    let server = TestServer::builder().start().await;
    let minted = metric(&server, "ticketgate_mints_total{outcome=\"ok\"}").await;
    let admitted = metric(&server, "ticketgate_admissions_total{outcome=\"ok\"}").await;
    let (_ws, _) = connected(&server).await;
    assert!(metric(&server, "ticketgate_mints_total{outcome=\"ok\"}").await > minted);
    assert!(metric(&server, "ticketgate_admissions_total{outcome=\"ok\"}").await > admitted);
    assert!(metric(&server, "ticketgate_connections").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_1001() {
    let server = TestServer::builder().start().await;
    let (mut ws, _) = connected(&server).await;
    let stop = tokio::spawn(server.stop());
    assert_eq!(close_code(&mut ws).await, Some(close::GOING_AWAY));
    stop.await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_answers_server_busy_without_burning_the_ticket() {
    let server = TestServer::builder()
        .config(|c| c.ws.max_connections = 1)
        .start()
        .await;
    let (client, session) = server.login_as("bob", ClientType::Mobile).await;
    let (mut first, _) = connected(&server).await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let err = client.connect(&session, &ticket).await.expect_err("busy");
    assert_eq!(api_error(err), (503, Some(ErrorCode::ServerBusy)));
    first.close(None).await.expect("close");
    while first.next().await.is_some() {}
    wait_until(|| server.state.registry.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .connect(&session, &ticket)
        .await
        .expect("the ticket was not burnt by the 503");
}

/// Redis down: mint and connect fail closed with 503, live sockets stay up, and the node
/// recovers by itself when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers() {
    let server = TestServer::builder().store(StoreKind::Redis).start().await;
    let (client, session) = server.login().await;
    let spare = client.mint_ticket(&session).await.expect("mint");
    let (mut live, _) = client
        .connect(&session, &client.mint_ticket(&session).await.expect("mint"))
        .await
        .expect("connect");

    server
        .redis
        .as_ref()
        .expect("redis")
        .lock()
        .expect("lock")
        .stop();
    let started = Instant::now();
    let err = client.mint_ticket(&session).await.expect_err("redis down");
    assert_eq!(api_error(err), (503, Some(ErrorCode::StoreUnavailable)));
    let err = client
        .connect(&session, &spare)
        .await
        .expect_err("redis down");
    assert_eq!(api_error(err), (503, Some(ErrorCode::StoreUnavailable)));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails fast, took {:?}",
        started.elapsed()
    );
    let ready = reqwest::get(format!("{}/readyz", server.url()))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);

    // The live socket is still served.
    live.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send");
    let pong = live.next().await.expect("frame").expect("ok");
    assert_eq!(
        pong.into_text().expect("text").as_str(),
        r#"{"type":"pong"}"#
    );

    server
        .redis
        .as_ref()
        .expect("redis")
        .lock()
        .expect("lock")
        .restart();
    // Redis restarted empty: the old session is gone, so log in again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client
            .login(
                "alice",
                support::PASSWORD,
                ticketgate_sdk::ClientType::Mobile,
            )
            .await
        {
            Ok(session) => {
                let ticket = client
                    .mint_ticket(&session)
                    .await
                    .expect("mint after recovery");
                client
                    .connect(&session, &ticket)
                    .await
                    .expect("connect after recovery");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(api_error(e).1, Some(ErrorCode::StoreUnavailable));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("did not recover: {e:?}"),
        }
    }
}

/// One device flooding mint gets 429 while another device is unaffected; forged mints
/// naming a victim's device do not cost the victim its quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mint_quota_is_per_device_and_charged_only_after_the_signature() {
    let server = TestServer::builder()
        .config(|c| c.rates.mint_device = ticketgate::config::Rate::parse("3/min").expect("rate"))
        .start()
        .await;
    let (flooder, flooder_session) = server.login().await;
    for _ in 0..3 {
        flooder
            .mint_ticket(&flooder_session)
            .await
            .expect("within quota");
    }
    match flooder
        .mint_ticket(&flooder_session)
        .await
        .expect_err("over quota")
    {
        ClientError::Api {
            status,
            code,
            retry_after,
            ..
        } => {
            assert_eq!((status, code), (429, Some(ErrorCode::RateLimited)));
            assert!(
                retry_after.is_some_and(|s| (1..=20).contains(&s)),
                "{retry_after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let (victim, victim_session) = server
        .login_as("bob", ticketgate_sdk::ClientType::Mobile)
        .await;
    // An attacker with a stolen access token but not the signing key, naming the
    // victim's device: every attempt fails the signature and costs the victim nothing.
    let mut forged = victim_session.clone();
    forged.signing_key = vec![0u8; 32];
    for _ in 0..10 {
        let err = victim.mint_ticket(&forged).await.expect_err("forged");
        assert_eq!(api_error(err), (401, Some(ErrorCode::BadSignature)));
    }
    for _ in 0..3 {
        victim
            .mint_ticket(&victim_session)
            .await
            .expect("victim keeps its quota");
    }
}

async fn connected(server: &TestServer) -> (Ws, ticketgate_sdk::Welcome) {
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    client.connect(&session, &ticket).await.expect("connect")
}

/// Redis data commands between two `INFO commandstats` readings (`info` itself and
/// connection housekeeping excluded).
fn data_commands(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    // Connection upkeep, and the hub's timers (the node heartbeat every 2 s, its own
    // liveness round trip): neither comes from a connect request.
    let ignore = [
        "info",
        "ping",
        "client",
        "hello",
        "select",
        "command",
        "cluster",
        "config",
        "zadd",
        "zremrangebyscore",
        "publish",
    ];
    after
        .iter()
        .filter(|(k, _)| {
            !ignore
                .iter()
                .any(|i| k.as_str() == *i || k.starts_with(&format!("{i}|")))
        })
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0))
        .sum()
}

/// Before a drain close the node offers a resume ticket, and another node of the
/// deployment admits it without a mint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_hands_out_resume_tickets_that_another_node_admits() {
    let (a, b) = support::two_nodes().await;
    let (client, session) = a.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let (mut ws, _) = client.connect(&session, &ticket).await.expect("connect");
    let stop = tokio::spawn(a.stop());
    let frame = ws.next().await.expect("frame").expect("ok");
    let resume: serde_json::Value =
        serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_eq!(resume["type"], "resume");
    assert_eq!(close_code(&mut ws).await, Some(close::GOING_AWAY));
    stop.await.expect("stopped");

    let mut resumed = ticket.clone();
    resumed.ticket = resume["ticket"].as_str().expect("ticket").to_owned();
    resumed.ws_url = format!("ws://{}/v1/connect", b.addr);
    let (_ws, welcome) = client
        .connect(&session, &resumed)
        .await
        .expect("resume admitted on b");
    assert_eq!(welcome.session_id, session.session_id);
    let err = client
        .connect(&session, &resumed)
        .await
        .expect_err("single use");
    assert_eq!(api_error(err), (401, Some(ErrorCode::TicketInvalid)));
}

/// The preflight a browser sends before a credentialed `POST /v1/tickets` from `origin`.
async fn preflight(server: &TestServer, origin: &'static str) -> reqwest::Response {
    reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/tickets", server.url()),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, x-tg-signature",
        )
        .send()
        .await
        .expect("sent")
}

/// Without an allow list no origin gets cross-origin access with credentials, and
/// `null` (sandboxed frames, `file:` pages) is never reflected, listed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_access_is_off_by_default_and_null_is_never_allowed() {
    let default = TestServer::builder().start().await;
    for origin in ["https://evil.example", "null"] {
        let answer = preflight(&default, origin).await;
        assert!(
            answer
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{origin}"
        );
        assert!(
            answer
                .headers()
                .get("access-control-allow-credentials")
                .is_none(),
            "{origin}"
        );
    }
    let listed = TestServer::builder()
        .config(|c| c.ws.allowed_origins = Some(vec!["https://app.example".into(), "null".into()]))
        .start()
        .await;
    let null = preflight(&listed, "null").await;
    assert!(null.headers().get("access-control-allow-origin").is_none());
    let app = preflight(&listed, "https://app.example").await;
    assert_eq!(
        app.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

/// Browsers: CORS on `/v1/*` follows the origin allow list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_origin_allow_list() {
    let server = TestServer::builder()
        .config(|c| c.ws.allowed_origins = Some(vec!["https://app.example".into()]))
        .start()
        .await;
    let allowed = preflight(&server, "https://app.example").await;
    let headers = allowed.headers();
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
    assert_eq!(
        headers
            .get("access-control-allow-credentials")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let refused = preflight(&server, "https://evil.example").await;
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    let login = reqwest::Client::new()
        .post(format!("{}/v1/login", server.url()))
        .header("origin", "https://app.example")
        .json(
            &serde_json::json!({"username": "alice", "password": support::PASSWORD,
            "device_id": uuid::Uuid::new_v4().to_string(), "client_type": "web"}),
        )
        .send()
        .await
        .expect("sent");
    let exposed = login
        .headers()
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        exposed.contains("x-new-token") && exposed.contains("retry-after"),
        "{exposed}"
    );
}

// A revocation that lands while a socket is being admitted still closes it: the
// connection is registered before its ticket is consumed.
every_store!(
    a_revocation_racing_an_admission_never_leaves_a_socket_open,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let state = server.state.clone();
        let mut opened = 0;
        for round in 0..60u64 {
            let (client, session) = server.login_as("carol", ClientType::Web).await;
            let ticket = client.mint_ticket(&session).await.expect("mint");
            let sid = session.session_id.clone();
            let connect = tokio::spawn(async move { client.connect(&session, &ticket).await });
            // Revoke while the upgrade is in flight, at varying points of it.
            tokio::time::sleep(Duration::from_micros((round % 12) * 400)).await;
            state
                .sessions
                .end("carol", vec![sid], close::REVOKED, None)
                .await
                .expect("revoke");
            match connect.await.expect("task") {
                Err(e) => assert_eq!(api_error(e), (401, Some(ErrorCode::TicketInvalid))),
                Ok((mut ws, _)) => {
                    opened += 1;
                    assert_eq!(
                        close_code(&mut ws).await,
                        Some(close::REVOKED),
                        "round {round}"
                    );
                }
            }
        }
        assert!(opened > 0, "the race was never hit; adjust the delays");
        wait_until(|| server.state.registry.is_empty()).await;
    }
);

/// Replaying one's own (consumed) ticket with a victim's device id must not drain the
/// victim's connect quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_tickets_naming_a_victim_device_do_not_cost_the_victim_its_connect_quota() {
    let server = TestServer::builder()
        .config(|c| {
            c.rates.connect_device = ticketgate::config::Rate::parse("3/min").expect("rate")
        })
        .start()
        .await;
    let (attacker, attacker_session) = server.login_as("alice", ClientType::Mobile).await;
    let (victim, victim_session) = server.login_as("bob", ClientType::Mobile).await;
    let used = attacker.mint_ticket(&attacker_session).await.expect("mint");
    let _ws = attacker
        .connect(&attacker_session, &used)
        .await
        .expect("connect");
    let mut posing = attacker_session.clone();
    posing.device_id = victim_session.device_id.clone();
    for _ in 0..5 {
        assert!(attacker.connect(&posing, &used).await.is_err());
    }
    let ticket = victim.mint_ticket(&victim_session).await.expect("mint");
    victim
        .connect(&victim_session, &ticket)
        .await
        .expect("the victim still connects");
}

/// A client that closes gets the server's close reply: the close handshake completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_with_a_close_frame() {
    let server = TestServer::builder().start().await;
    let (mut ws, _) = connected(&server).await;
    ws.send(Message::Close(None)).await.expect("close");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("in time");
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
}

// ---------------------------------------------------------------------------------------
// Caps on sockets per session and per user (PROTOCOL §8, "Caps"), counted per node
// ---------------------------------------------------------------------------------------

/// Opens every attempt at once (a barrier releases them together); the sockets that
/// opened. Every refusal must be 429 `too_many_connections`.
async fn race_connects(
    attempts: Vec<(
        ticketgate_sdk::Client,
        ticketgate_sdk::Session,
        ticketgate_sdk::Ticket,
    )>,
) -> Vec<ticketgate_sdk::WsStream> {
    let barrier = Arc::new(tokio::sync::Barrier::new(attempts.len()));
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(client, session, ticket)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client.connect(&session, &ticket).await
            })
        })
        .collect();
    let mut sockets = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok((ws, _)) => sockets.push(ws),
            Err(e) => assert_too_many(e),
        }
    }
    sockets
}

/// A refusal for a reached cap: 429 `too_many_connections` with a `Retry-After` hint.
#[track_caller]
fn assert_too_many(err: ClientError) {
    match err {
        ClientError::Api {
            status,
            code,
            retry_after,
            ..
        } => {
            assert_eq!((status, code), (429, Some(ErrorCode::TooManyConnections)));
            assert!(retry_after.is_some_and(|s| s > 0), "Retry-After missing");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Closes `ws` and waits until the node has let go of it.
async fn close_and_wait(server: &TestServer, mut ws: Ws, left: usize) {
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    wait_until(|| server.state.registry.len() == left).await;
}

every_store!(
    a_session_over_its_socket_cap_is_refused_without_burning_the_ticket,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| c.ws.max_sockets_per_session = 2)
            .start()
            .await;
        let (client, session) = server.login().await;
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let ticket = client.mint_ticket(&session).await.expect("mint");
            sockets.push(client.connect(&session, &ticket).await.expect("connect").0);
        }
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let err = client.connect(&session, &ticket).await.expect_err("capped");
        assert_too_many(err);
        // Another session of the same user has its own cap.
        let (other, other_session) = server.login_as("alice", ClientType::Web).await;
        let other_ticket = other.mint_ticket(&other_session).await.expect("mint");
        let _other = other
            .connect(&other_session, &other_ticket)
            .await
            .expect("another session");
        let first = sockets.remove(0);
        close_and_wait(&server, first, 2).await;
        client
            .connect(&session, &ticket)
            .await
            .expect("the ticket was not burnt by the 429");
    }
);

every_store!(
    a_user_over_the_socket_cap_is_refused_without_burning_the_ticket,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| {
                c.ws.max_sockets_per_session = 2;
                c.ws.max_sockets_per_user = 3;
            })
            .start()
            .await;
        let (web, web_session) = server.login_as("bob", ClientType::Web).await;
        let (mobile, mobile_session) = server.login_as("bob", ClientType::Mobile).await;
        let mut sockets = Vec::new();
        for (client, session) in [
            (&web, &web_session),
            (&web, &web_session),
            (&mobile, &mobile_session),
        ] {
            let ticket = client.mint_ticket(session).await.expect("mint");
            sockets.push(client.connect(session, &ticket).await.expect("connect").0);
        }
        let ticket = mobile.mint_ticket(&mobile_session).await.expect("mint");
        let err = mobile
            .connect(&mobile_session, &ticket)
            .await
            .expect_err("user capped");
        assert_too_many(err);
        // Another user (alice) is not affected.
        let _alice = connected(&server).await;
        let first = sockets.remove(0);
        close_and_wait(&server, first, 3).await;
        mobile
            .connect(&mobile_session, &ticket)
            .await
            .expect("the ticket was not burnt by the 429");
    }
);

every_store!(
    racing_connects_at_the_session_cap_admit_exactly_the_cap,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| c.ws.max_sockets_per_session = 3)
            .start()
            .await;
        let (client, session) = server.login().await;
        let mut tickets = Vec::new();
        for _ in 0..40 {
            tickets.push(client.mint_ticket(&session).await.expect("mint"));
        }
        let attempts = tickets
            .into_iter()
            .map(|ticket| (client.clone(), session.clone(), ticket))
            .collect();
        let sockets = race_connects(attempts).await;
        assert_eq!(sockets.len(), 3);
        assert_eq!(server.state.registry.len(), 3);
    }
);

every_store!(
    racing_first_sockets_of_a_users_sessions_admit_exactly_the_user_cap,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| c.ws.max_sockets_per_user = 2)
            .start()
            .await;
        // Two sessions, no socket yet: the node learns their user at admission.
        let (web, web_session) = server.login_as("carol", ClientType::Web).await;
        let (mobile, mobile_session) = server.login_as("carol", ClientType::Mobile).await;
        let mut attempts = Vec::new();
        for _ in 0..5 {
            for (client, session) in [(&web, &web_session), (&mobile, &mobile_session)] {
                let ticket = client.mint_ticket(session).await.expect("mint");
                attempts.push((client.clone(), session.clone(), ticket));
            }
        }
        let sockets = race_connects(attempts).await;
        assert_eq!(sockets.len(), 2);
        assert_eq!(server.state.registry.len(), 2);
    }
);

// ---------------------------------------------------------------------------------------
// The per-device connect quota is charged for admitted sockets only
// ---------------------------------------------------------------------------------------

both_stores!(
    replays_of_a_spent_ticket_cost_the_replaying_ip_not_the_victims_connect_quota,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| {
                c.rates.connect_device = ticketgate::config::Rate::parse("3/min").expect("rate");
                c.rates.fail_ip = ticketgate::config::Rate::parse("5/min").expect("rate");
            })
            .start()
            .await;
        let (victim, session) = server.login_as("bob", ClientType::Mobile).await;
        let spent = victim.mint_ticket(&session).await.expect("mint");
        let _first = victim.connect(&session, &spent).await.expect("connect");
        // The spent ticket, replayed (say, from a proxy log) with the victim's device:
        // failures, charged to the replaying IP until its failure quota turns them 429.
        let attacker = server.client();
        let mut answers = Vec::new();
        for _ in 0..8 {
            let err = attacker.connect(&session, &spent).await.expect_err("spent");
            answers.push(api_error(err));
        }
        let invalid = (401, Some(ErrorCode::TicketInvalid));
        let limited = (429, Some(ErrorCode::RateLimited));
        assert_eq!(answers[..5], [invalid; 5]);
        assert_eq!(answers[5..], [limited; 3]);
        // The victim's quota is whole: two more sockets (3 in the minute) ...
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let ticket = victim.mint_ticket(&session).await.expect("mint");
            let connected = victim.connect(&session, &ticket).await;
            sockets.push(connected.expect("the victim's quota was not drained").0);
        }
        // ... and it still bounds the device: a fourth is over it.
        let ticket = victim.mint_ticket(&session).await.expect("mint");
        let err = victim.connect(&session, &ticket).await.expect_err("over");
        assert_eq!(api_error(err), limited);
    }
);

both_stores!(
    a_device_over_its_connect_quota_is_refused_before_its_ticket_is_consumed,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| {
                c.rates.connect_device = ticketgate::config::Rate::parse("1/s").expect("rate")
            })
            .start()
            .await;
        let (client, session) = server.login().await;
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let _first = client.connect(&session, &ticket).await.expect("connect");
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let err = client.connect(&session, &ticket).await.expect_err("over");
        assert_eq!(api_error(err), (429, Some(ErrorCode::RateLimited)));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        client
            .connect(&session, &ticket)
            .await
            .expect("the ticket was not burnt by the 429");
    }
);

// ---------------------------------------------------------------------------------------
// A connect request with a body
// ---------------------------------------------------------------------------------------

/// A connect head for `ticket` with `extra` header lines, then `body`.
fn connect_with_body(
    session: &ticketgate_sdk::Session,
    ticket: &str,
    extra: &str,
    body: &str,
) -> Vec<u8> {
    format!(
        "GET /v1/connect?device_id={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\
         Sec-WebSocket-Protocol: ticketgate.v1, ticket.{ticket}\r\n{extra}\r\n{body}",
        session.device_id,
        support::raw::WS_KEY,
    )
    .into_bytes()
}

both_stores!(
    a_connect_request_with_a_body_is_refused_without_consuming_the_ticket,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let bodies = [
            ("Content-Length: 5\r\n", "hello"),
            ("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
        ];
        for (extra, body) in bodies {
            // First request of its connection (the direct path hands it to hyper), and
            // a later one (hyper and axum).
            for after_healthz in [false, true] {
                let mut conn = support::raw::Conn::open(&server).await;
                if after_healthz {
                    conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
                    assert_eq!(conn.answer().await.status, 200);
                }
                conn.send(&connect_with_body(&session, &ticket.ticket, extra, body))
                    .await;
                let answer = conn.answer().await;
                assert_eq!(
                    answer.status, 400,
                    "{extra} after_healthz={after_healthz}: {answer:?}"
                );
                assert_eq!(answer.json()["error"], "bad_request");
            }
        }
        client
            .connect(&session, &ticket)
            .await
            .expect("the ticket was not consumed");
    }
);
