//! `ManagedConnection` against fake HTTP and WebSocket servers: the `expiring` answer,
//! the reconnect policy by close code, fresh tickets on reconnect, `resume` tickets,
//! and the pure backoff and close-code functions.

#![cfg(feature = "client")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng as _;
use support::{
    assert_stream_ends, client, login_answer, next_event, session_expiring_in, FakeHttp, FakeWs,
    Reply,
};
use ticketgate_sdk::protocol::{ClientFrame, ServerFrame};
use ticketgate_sdk::{
    backoff_delay, close_action, ClientError, CloseAction, ConnectOptions, EndReason, Event,
    ManagedConnection, SessionHandle,
};

const TICKETS: &str = "/v1/tickets";
const REFRESH: &str = "/v1/token/refresh";
const BASE: Duration = Duration::from_millis(20);

fn options() -> ConnectOptions {
    ConnectOptions {
        backoff_base: BASE,
        backoff_cap: Duration::from_millis(200),
    }
}

/// A fake API whose mints answer `tk-1`, `tk-2`, … pointing at `ws`, and whose refresh
/// answers `at-2`.
async fn api_for(ws: &FakeWs) -> FakeHttp {
    let ws_url = ws.url();
    let minted = AtomicUsize::new(0);
    FakeHttp::start(move |request| match request.path.as_str() {
        TICKETS => {
            let n = minted.fetch_add(1, Ordering::SeqCst) + 1;
            let body = serde_json::json!({"ticket": format!("tk-{n}"), "expires_in": 30, "ws_url": ws_url});
            Reply::json(201, body.to_string())
        }
        REFRESH => Reply::json(200, login_answer("at-2", "sid1.r2")),
        _ => Reply::error(404, "not_found"),
    })
    .await
}

/// A handle whose access token `at-1` is far from its renewal window.
fn handle(http: &FakeHttp) -> SessionHandle {
    SessionHandle::new(client(http), session_expiring_in(800))
}

async fn expect_welcome(connection: &mut ManagedConnection, conn_id: &str) {
    match next_event(connection).await {
        Event::Welcome(welcome) => assert_eq!(welcome.conn_id, conn_id),
        other => panic!("expected the welcome of {conn_id}, got {other:?}"),
    }
}

async fn expect_closed(connection: &mut ManagedConnection, code: u16, reconnect: bool) {
    match next_event(connection).await {
        Event::Closed {
            code: got,
            will_reconnect,
            ..
        } => {
            assert_eq!(got, code);
            assert_eq!(will_reconnect, reconnect, "will_reconnect after {code}");
        }
        other => panic!("expected a close with {code}, got {other:?}"),
    }
}

async fn expect_reconnecting(connection: &mut ManagedConnection, attempt: u32) {
    match next_event(connection).await {
        Event::Reconnecting {
            attempt: got,
            delay,
        } => {
            assert_eq!(got, attempt);
            assert!(delay <= BASE * 2u32.pow(attempt - 1), "delay {delay:?}");
        }
        other => panic!("expected reconnect attempt {attempt}, got {other:?}"),
    }
}

#[test]
fn backoff_is_full_jitter_under_a_doubling_ceiling() {
    let base = Duration::from_millis(100);
    let cap = Duration::from_secs(2);
    let mut rng = StdRng::seed_from_u64(0x7469_636b);
    let mut previous_mean = Duration::ZERO;
    for attempt in 1..=10u32 {
        let ceiling = (base * 2u32.pow(attempt - 1)).min(cap);
        let samples: Vec<Duration> = (0..400)
            .map(|_| backoff_delay(attempt, base, cap, &mut rng))
            .collect();
        let max = samples.iter().max().copied().unwrap_or_default();
        let min = samples.iter().min().copied().unwrap_or_default();
        assert!(max <= ceiling, "attempt {attempt}: {max:?} > {ceiling:?}");
        // Jittered over the whole interval, not clustered at the ceiling.
        assert!(max > ceiling * 9 / 10, "attempt {attempt}: max {max:?}");
        assert!(min < ceiling / 10, "attempt {attempt}: min {min:?}");
        let mean = samples.iter().sum::<Duration>() / 400;
        if ceiling < cap {
            assert!(
                mean > previous_mean * 3 / 2,
                "attempt {attempt}: the delays grow ({previous_mean:?} → {mean:?})"
            );
        }
        previous_mean = mean;
    }
    assert!(
        backoff_delay(0, base, cap, &mut rng) <= base,
        "0 counts as 1"
    );
    assert!(
        backoff_delay(u32::MAX, base, cap, &mut rng) <= cap,
        "no overflow"
    );
    assert_eq!(
        backoff_delay(5, Duration::ZERO, cap, &mut rng),
        Duration::ZERO
    );
}

#[test]
fn close_codes_decide_reconnects() {
    for code in [
        4000, 4004, 4008, 4010, 4499, 1001, 1005, 1006, 1011, 1012, 1013,
    ] {
        assert_eq!(close_action(code), CloseAction::Reconnect, "{code}");
    }
    for code in [
        4500, 4503, 4509, 4999, 1000, 1002, 1003, 1008, 1009, 3000, 5000,
    ] {
        assert_eq!(close_action(code), CloseAction::Stop, "{code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_is_answered_with_a_newer_token_and_4503_stops() {
    let mut ws = FakeWs::start(&[]).await;
    let http = api_for(&ws).await;
    let handle = handle(&http);
    let mut connection = handle.connect_with_reconnect(options());

    let mut server = ws.next_socket().await;
    assert_eq!(server.ticket, "tk-1");
    server.send_welcome("c1").await;
    expect_welcome(&mut connection, "c1").await;

    server
        .send_json(
            serde_json::json!({"type": "push", "id": "m1", "topic": "news", "data": {"n": 1}}),
        )
        .await;
    match next_event(&mut connection).await {
        Event::Push { id, topic, data } => {
            assert_eq!((id.as_str(), topic.as_str()), ("m1", "news"));
            assert_eq!(data, serde_json::json!({"n": 1}));
        }
        other => panic!("expected the push, got {other:?}"),
    }

    server
        .send_json(serde_json::json!({"type": "expiring", "expires_at": 1_795_000_900}))
        .await;
    assert_eq!(
        server.recv_json().await,
        serde_json::json!({"type": "refresh", "access_token": "at-2"}),
        "the client renews the session and sends the newer token"
    );
    assert_eq!(http.count(REFRESH), 1);
    assert!(matches!(
        next_event(&mut connection).await,
        Event::Frame(ServerFrame::Expiring { .. })
    ));

    server
        .send_json(serde_json::json!({"type": "refreshed", "expires_at": 1_795_001_800}))
        .await;
    assert!(matches!(
        next_event(&mut connection).await,
        Event::Frame(ServerFrame::Refreshed {
            expires_at: 1_795_001_800
        })
    ));

    server.close_with(4503, "logged out").await;
    expect_closed(&mut connection, 4503, false).await;
    assert_stream_ends(&mut connection).await;

    assert!(
        !ws.admits_within(Duration::from_millis(300)).await,
        "no reconnect after 4503"
    );
    assert_eq!(http.count(TICKETS), 1, "no mint after 4503");
    assert_eq!(handle.ended(), Some(EndReason::Revoked));
    assert!(matches!(
        connection.send(ClientFrame::Ping).await,
        Err(ClientError::Stopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4008_reconnects_with_a_fresh_ticket() {
    let mut ws = FakeWs::start(&[]).await;
    let http = api_for(&ws).await;
    let mut connection = handle(&http).connect_with_reconnect(options());

    let mut first = ws.next_socket().await;
    first.send_welcome("c1").await;
    expect_welcome(&mut connection, "c1").await;
    first.close_with(4008, "message flood").await;
    expect_closed(&mut connection, 4008, true).await;
    expect_reconnecting(&mut connection, 1).await;

    let mut second = ws.next_socket().await;
    assert_eq!(
        (first.ticket.as_str(), second.ticket.as_str()),
        ("tk-1", "tk-2"),
        "a reconnect mints a new ticket"
    );
    assert_eq!(http.count(TICKETS), 2);
    second.send_welcome("c2").await;
    expect_welcome(&mut connection, "c2").await;

    // Frames go to the current socket.
    connection
        .send(ClientFrame::Ack {
            id: "m7".to_owned(),
        })
        .await
        .expect("send");
    assert_eq!(
        second.recv_json().await,
        serde_json::json!({"type": "ack", "id": "m7"})
    );

    connection.close();
    assert_stream_ends(&mut connection).await;
    assert!(!ws.admits_within(Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_socket_reconnects() {
    let mut ws = FakeWs::start(&[]).await;
    let http = api_for(&ws).await;
    let mut connection = handle(&http).connect_with_reconnect(options());

    let mut first = ws.next_socket().await;
    first.send_welcome("c1").await;
    expect_welcome(&mut connection, "c1").await;
    drop(first); // the TCP connection goes away without a close frame

    expect_closed(&mut connection, 1006, true).await;
    expect_reconnecting(&mut connection, 1).await;
    let mut second = ws.next_socket().await;
    assert_eq!(second.ticket, "tk-2");
    second.send_welcome("c2").await;
    expect_welcome(&mut connection, "c2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_ticket_before_1001_reconnects_without_a_mint() {
    let mut ws = FakeWs::start(&[]).await;
    let http = api_for(&ws).await;
    let mut connection = handle(&http).connect_with_reconnect(options());

    let mut first = ws.next_socket().await;
    first.send_welcome("c1").await;
    expect_welcome(&mut connection, "c1").await;
    first
        .send_json(serde_json::json!({"type": "resume", "ticket": "rs-1", "expires_in": 30}))
        .await;
    first.close_with(1001, "draining").await;
    expect_closed(&mut connection, 1001, true).await;
    expect_reconnecting(&mut connection, 1).await;

    let mut second = ws.next_socket().await;
    assert_eq!(second.ticket, "rs-1");
    second.send_welcome("c2").await;
    expect_welcome(&mut connection, "c2").await;
    assert_eq!(http.count(TICKETS), 1, "the resume ticket replaced a mint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resume_ticket_falls_back_to_a_mint() {
    let mut ws = FakeWs::start(&["rs-1"]).await;
    let http = api_for(&ws).await;
    let mut connection = handle(&http).connect_with_reconnect(options());

    let mut first = ws.next_socket().await;
    first.send_welcome("c1").await;
    expect_welcome(&mut connection, "c1").await;
    first
        .send_json(serde_json::json!({"type": "resume", "ticket": "rs-1", "expires_in": 30}))
        .await;
    first.close_with(1001, "draining").await;
    expect_closed(&mut connection, 1001, true).await;
    expect_reconnecting(&mut connection, 1).await;

    let mut second = ws.next_socket().await;
    assert_eq!(second.ticket, "tk-2");
    assert_eq!(ws.offered(), ["tk-1", "rs-1", "tk-2"]);
    second.send_welcome("c2").await;
    expect_welcome(&mut connection, "c2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_mint_is_retried_unless_the_session_is_over() {
    let mut ws = FakeWs::start(&[]).await;
    let ws_url = ws.url();
    let minted = Arc::new(AtomicUsize::new(0));
    let mints = Arc::clone(&minted);
    let http = FakeHttp::start(move |_| match mints.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::error(503, "store_unavailable"),
        1 => Reply::json(
            201,
            serde_json::json!({"ticket": "tk-2", "expires_in": 30, "ws_url": ws_url}).to_string(),
        ),
        _ => Reply::error(401, "token_revoked"),
    })
    .await;
    let handle = handle(&http);
    let mut connection = handle.connect_with_reconnect(options());

    match next_event(&mut connection).await {
        Event::ConnectFailed {
            error,
            will_reconnect: true,
        } => assert_eq!(
            error.code(),
            Some(ticketgate_sdk::ErrorCode::StoreUnavailable)
        ),
        other => panic!("expected a retried failure, got {other:?}"),
    }
    expect_reconnecting(&mut connection, 1).await;
    let mut server = ws.next_socket().await;
    assert_eq!(server.ticket, "tk-2");
    server.send_welcome("c1").await;
    expect_welcome(&mut connection, "c1").await;

    // The next mint is refused for good: the task reports it and stops.
    server.close_with(4010, "slow consumer").await;
    expect_closed(&mut connection, 4010, true).await;
    expect_reconnecting(&mut connection, 2).await;
    match next_event(&mut connection).await {
        Event::ConnectFailed {
            will_reconnect: false,
            ..
        } => {}
        other => panic!("expected a final failure, got {other:?}"),
    }
    assert_stream_ends(&mut connection).await;
    assert_eq!(handle.ended(), Some(EndReason::Revoked));
    assert_eq!(minted.load(Ordering::SeqCst), 3);
}

/// Every reconnect asks for the pushes after the last one handed to the app (resume
/// tickets included); a `recovered: false` welcome is reported as `PushesLost` and the
/// connection continues from the server's head; the last id can be read and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_ask_for_the_pushes_after_the_last_one_and_report_losses() {
    let mut ws = FakeWs::start(&[]).await;
    let http = api_for(&ws).await;
    let mut connection =
        handle(&http).connect_with_reconnect_since(options(), Some("ep:3".to_owned()));
    assert_eq!(
        connection.last_id(),
        Some("ep:3"),
        "restored before any push"
    );

    let mut first = ws.next_socket().await;
    assert_eq!(
        first.since.as_deref(),
        Some("ep:3"),
        "the first connect continues"
    );
    first.send_welcome("c1").await;
    expect_welcome(&mut connection, "c1").await;
    first
        .send_json(serde_json::json!({"type": "push", "id": "ep:4", "topic": "t", "data": 1}))
        .await;
    assert!(matches!(next_event(&mut connection).await, Event::Push { id, .. } if id == "ep:4"));
    assert_eq!(connection.last_id(), Some("ep:4"));
    first
        .send_json(serde_json::json!({"type": "resume", "ticket": "rs-1", "expires_in": 30}))
        .await;
    first.close_with(1001, "draining").await;
    expect_closed(&mut connection, 1001, true).await;
    expect_reconnecting(&mut connection, 1).await;

    let mut second = ws.next_socket().await;
    assert_eq!(second.ticket, "rs-1");
    assert_eq!(
        second.since.as_deref(),
        Some("ep:4"),
        "resume tickets send it too"
    );
    second
        .send_json(serde_json::json!({
            "type": "welcome", "session_id": "sid1", "conn_id": "c2", "user_id": "alice",
            "device_id": "d", "expires_at": 4_000_000_000i64, "recovered": false, "last_id": "nq:9",
        }))
        .await;
    match next_event(&mut connection).await {
        Event::Welcome(w) => assert_eq!(
            (w.recovered, w.last_id.as_deref()),
            (Some(false), Some("nq:9"))
        ),
        other => panic!("expected a welcome, got {other:?}"),
    }
    match next_event(&mut connection).await {
        Event::PushesLost { last_id } => assert_eq!(last_id.as_deref(), Some("nq:9")),
        other => panic!("expected PushesLost, got {other:?}"),
    }
    assert_eq!(connection.last_id(), Some("nq:9"));
    second.close_with(4008, "flood").await;
    expect_closed(&mut connection, 4008, true).await;
    expect_reconnecting(&mut connection, 2).await;
    let third = ws.next_socket().await;
    assert_eq!(
        third.since.as_deref(),
        Some("nq:9"),
        "continues from the server's head"
    );
}
