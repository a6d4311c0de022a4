//! Sessions and tokens: refresh rotation and reuse, the one-session policy, logout,
//! kick and block across nodes, renewal on the socket and at the gateway,
//! introspection, app login and the admin key.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{
    close_code, close_frame, error_of, two_nodes, Signed, StoreKind, TestServer, PASSWORD,
};
use ticketgate_sdk::protocol::{close, LoginResponse};
use ticketgate_sdk::{ClientType, Session};
use tokio_tungstenite::tungstenite::Message;

type Ws = ticketgate_sdk::WsStream;

/// Two nodes of one deployment: one Redis, one data dir.
async fn refresh(server: &TestServer, session: &Session, token: &str) -> reqwest::Response {
    Signed {
        server,
        path: "/v1/token/refresh",
        key: &session.signing_key,
        device_id: &session.device_id,
        bearer: None,
        body: &json!({ "refresh_token": token }).to_string(),
    }
    .send()
    .await
}

async fn refreshed(server: &TestServer, session: &Session, token: &str) -> LoginResponse {
    let response = refresh(server, session, token).await;
    assert_eq!(response.status(), 200, "refresh");
    response.json().await.expect("login body")
}

/// Logout, Bearer + signed with `session`'s key.
async fn logout(server: &TestServer, session: &Session) -> reqwest::Response {
    Signed {
        server,
        path: "/v1/logout",
        key: &session.signing_key,
        device_id: &session.device_id,
        bearer: Some(&session.access_token),
        body: "{}",
    }
    .send()
    .await
}

async fn admin(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}{path}", server.admin_addr))
        .bearer_auth(server.config.admin_key.as_deref().expect("admin key"))
        .json(&body)
        .send()
        .await
        .expect("admin call")
}

async fn socket(server: &TestServer, client: &ticketgate_sdk::Client, session: &Session) -> Ws {
    let _ = server;
    let ticket = client.mint_ticket(session).await.expect("mint");
    client.connect(session, &ticket).await.expect("connect").0
}

fn mint_error(err: ticketgate_sdk::ClientError) -> (u16, String) {
    match err {
        ticketgate_sdk::ClientError::Api {
            status, raw_code, ..
        } => (status, raw_code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

both_stores!(
    a_used_refresh_token_revokes_the_whole_session,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let first = session.refresh_token.clone().expect("refresh token");
        let mut ws = socket(&server, &client, &session).await;
        let next = refreshed(&server, &session, &first).await;
        assert_eq!(next.session_id, session.session_id);
        assert_ne!(next.refresh_token.as_deref(), Some(first.as_str()));
        assert_ne!(next.access_token, session.access_token);

        // The old token again: theft. 401 refresh_reused, the socket closes with 4503 ...
        assert_eq!(
            error_of(refresh(&server, &session, &first).await).await,
            (401, "refresh_reused".into())
        );
        assert_eq!(close_code(&mut ws).await, Some(close::REVOKED));
        // ... and the whole family is dead: the newest refresh token (reuse, too) and
        // the access tokens.
        let newest = next.refresh_token.expect("rotated");
        assert_eq!(
            error_of(refresh(&server, &session, &newest).await).await,
            (401, "refresh_reused".into())
        );
        let err = client.mint_ticket(&session).await.expect_err("revoked");
        assert_eq!(mint_error(err), (401, "token_revoked".into()));
    }
);

both_stores!(
    concurrent_refreshes_with_one_token_have_exactly_one_winner,
    |kind| async move {
        // The race, not the per-session quota, is under test here.
        let server = Arc::new(
            TestServer::builder()
                .store(kind)
                .config(|c| {
                    c.rates.session = ticketgate::config::Rate::parse("1000/min").expect("rate")
                })
                .start()
                .await,
        );
        let (_client, session) = server.login().await;
        let token = session.refresh_token.clone().expect("refresh token");
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (server, session, token, barrier) = (
                    server.clone(),
                    session.clone(),
                    token.clone(),
                    barrier.clone(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    let response = refresh(&server, &session, &token).await;
                    if response.status() == 200 {
                        (200, String::new())
                    } else {
                        error_of(response).await
                    }
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("task"));
        }
        // With the defaults (no grace) the losers are reuse, and the family is revoked.
        assert_eq!(
            answers.iter().filter(|a| a.0 == 200).count(),
            1,
            "{answers:?}"
        );
        let reused = answers
            .iter()
            .filter(|a| **a == (401, "refresh_reused".to_owned()))
            .count();
        assert_eq!(reused, 49, "{answers:?}");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_request_is_refused_without_revoking_the_session() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let token = session.refresh_token.clone().expect("refresh token");
    let request = Signed {
        server: &server,
        path: "/v1/token/refresh",
        key: &session.signing_key,
        device_id: &session.device_id,
        bearer: None,
        body: &json!({ "refresh_token": token }).to_string(),
    };
    let nonce = support::fresh_nonce();
    assert_eq!(request.send_with_nonce(&nonce).await.status(), 200);
    assert_eq!(
        error_of(request.send_with_nonce(&nonce).await).await,
        (401, "replayed_request".into())
    );
    client.mint_ticket(&session).await.expect("session alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_with_an_old_refresh_token_but_not_the_key_cannot_revoke_the_session() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let old = session.refresh_token.clone().expect("refresh token");
    refreshed(&server, &session, &old).await;
    let mut thief = session.clone();
    thief.signing_key = vec![7; 32];
    assert_eq!(
        error_of(refresh(&server, &thief, &old).await).await,
        (401, "bad_signature".into())
    );
    client.mint_ticket(&session).await.expect("session alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_window_accepts_the_immediate_parent_only_when_configured() {
    let server = TestServer::builder()
        .config(|c| c.refresh_grace = Duration::from_secs(5))
        .start()
        .await;
    let (_client, session) = server.login().await;
    let t0 = session.refresh_token.clone().expect("refresh token");
    let t1 = refreshed(&server, &session, &t0)
        .await
        .refresh_token
        .expect("t1");
    // The response with t1 was "lost": t0 again within grace works.
    let t2 = refreshed(&server, &session, &t0)
        .await
        .refresh_token
        .expect("t2");
    // t1 is no longer current and not the parent: reuse, and the family is revoked.
    assert_eq!(
        error_of(refresh(&server, &session, &t1).await).await,
        (401, "refresh_reused".into())
    );
    assert_eq!(
        error_of(refresh(&server, &session, &t2).await).await,
        (401, "refresh_reused".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_refresh_cap_answers_refresh_limit() {
    let server = TestServer::builder()
        .config(|c| c.refresh_cap_per_day = 2)
        .start()
        .await;
    let (_client, session) = server.login().await;
    let mut token = session.refresh_token.clone().expect("refresh token");
    for _ in 0..2 {
        token = refreshed(&server, &session, &token)
            .await
            .refresh_token
            .expect("rotated");
    }
    assert_eq!(
        error_of(refresh(&server, &session, &token).await).await,
        (401, "refresh_limit".into())
    );
}

/// Kick on node A closes a socket held by node B, with the admin's reason as the close
/// frame's text (cut to 123 bytes on a character boundary), and the session can no
/// longer mint or refresh; block stops login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_on_one_node_closes_sockets_on_another_and_block_stops_login() {
    let (a, b) = two_nodes().await;
    let (client_b, session) = b.login_as("bob", ClientType::Mobile).await;
    let mut ws = socket(&b, &client_b, &session).await;
    let started = Instant::now();
    let reason = format!("maintenance {}", "é".repeat(100));
    let answer: Value = admin(&a, "/admin/v1/users/bob/kick", json!({ "reason": reason }))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer, json!({"sessions": 1, "connections": 1}));
    let (code, text) = close_frame(&mut ws).await.expect("a close frame");
    assert_eq!(code, close::REVOKED);
    assert!(
        reason.starts_with(&text) && (122..=123).contains(&text.len()),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = client_b.mint_ticket(&session).await.expect_err("kicked");
    assert_eq!(mint_error(err), (401, "token_revoked".into()));
    let token = session.refresh_token.clone().expect("refresh token");
    assert_eq!(
        error_of(refresh(&b, &session, &token).await).await,
        (401, "token_revoked".into())
    );

    let answer: Value = admin(&a, "/admin/v1/users/bob/block", json!({}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["blocked"], true);
    let err = b
        .client()
        .login("bob", PASSWORD, ClientType::Mobile)
        .await
        .expect_err("blocked");
    assert_eq!(mint_error(err), (401, "bad_credentials".into()));
    admin(&b, "/admin/v1/users/bob/unblock", json!({})).await;
    b.client()
        .login("bob", PASSWORD, ClientType::Mobile)
        .await
        .expect("unblocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_closes_live_sockets_and_kick_by_client_type_spares_the_others() {
    let (a, b) = two_nodes().await;
    let (web_client, web) = a.login_as("carol", ClientType::Web).await;
    let (mobile_client, mobile) = b.login_as("carol", ClientType::Mobile).await;
    let mut web_ws = socket(&a, &web_client, &web).await;
    let mut mobile_ws = socket(&b, &mobile_client, &mobile).await;
    let answer: Value = admin(
        &a,
        "/admin/v1/users/carol/kick",
        json!({"client_type": "web"}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(answer, json!({"sessions": 1, "connections": 1}));
    assert_eq!(close_code(&mut web_ws).await, Some(close::REVOKED));
    mobile_client
        .mint_ticket(&mobile)
        .await
        .expect("mobile untouched");
    let answer: Value = admin(&b, "/admin/v1/users/carol/block", json!({}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["connections"], 1);
    assert_eq!(close_code(&mut mobile_ws).await, Some(close::REVOKED));
}

both_stores!(
    logout_closes_own_sockets_and_kills_the_refresh_token,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (client, session) = server.login().await;
        let mut ws = socket(&server, &client, &session).await;
        assert_eq!(logout(&server, &session).await.status(), 204);
        assert_eq!(close_code(&mut ws).await, Some(close::REVOKED));
        let token = session.refresh_token.clone().expect("refresh token");
        assert_eq!(
            error_of(refresh(&server, &session, &token).await).await,
            (401, "token_revoked".into())
        );
    }
);

/// Answers that carry a token, a ticket or a key are never cached (RFC 6749 §5.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_tokens_or_tickets_are_not_cached() {
    let server = TestServer::builder().start().await;
    let login = reqwest::Client::new()
        .post(format!("{}/v1/login", server.url()))
        .json(&json!({
            "username": "alice", "password": PASSWORD, "client_type": "mobile",
            "device_id": uuid::Uuid::new_v4().to_string(),
        }))
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["cache-control"], "no-store");
    let (_client, session) = server.login().await;
    let minted = Signed {
        server: &server,
        path: "/v1/tickets",
        key: &session.signing_key,
        device_id: &session.device_id,
        bearer: Some(&session.access_token),
        body: "{}",
    }
    .send()
    .await;
    assert_eq!(minted.status(), 201);
    assert_eq!(minted.headers()["cache-control"], "no-store");
    let token = session.refresh_token.clone().expect("refresh token");
    let refreshed = refresh(&server, &session, &token).await;
    assert_eq!(refreshed.status(), 200);
    assert_eq!(refreshed.headers()["cache-control"], "no-store");
}

both_stores!(
    logout_of_an_ended_session_answers_token_revoked_and_touches_nothing,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (_client, session) = server.login().await;
        assert_eq!(logout(&server, &session).await.status(), 204);
        let before = matches!(kind, StoreKind::Redis).then(|| server.redis_stats());
        for _ in 0..5 {
            assert_eq!(
                error_of(logout(&server, &session).await).await,
                (401, "token_revoked".into())
            );
        }
        if let Some(before) = before {
            let after = server.redis_stats();
            let count = |stats: &std::collections::HashMap<String, u64>, cmd: &str| {
                stats.get(cmd).copied().unwrap_or(0)
            };
            for cmd in ["publish", "hdel", "zrem", "zcount"] {
                assert_eq!(
                    count(&before, cmd),
                    count(&after, cmd),
                    "{cmd} sent for an ended session"
                );
            }
        }
    }
);

both_stores!(
    refresh_and_logout_are_limited_per_session_after_the_signature,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| c.rates.session = ticketgate::config::Rate::parse("3/min").expect("rate"))
            .start()
            .await;
        let (_client, session) = server.login().await;
        // A forged signature is not the session's: it never uses the session's quota.
        let forged = Session {
            signing_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            ..session.clone()
        };
        let mut token = session.refresh_token.clone().expect("refresh token");
        for _ in 0..5 {
            let response = refresh(&server, &forged, &token).await;
            assert_eq!(error_of(response).await, (401, "bad_signature".into()));
        }
        for _ in 0..3 {
            token = refreshed(&server, &session, &token)
                .await
                .refresh_token
                .expect("rotated");
        }
        let over = refresh(&server, &session, &token).await;
        assert!(over.headers().contains_key("retry-after"));
        assert_eq!(error_of(over).await, (429, "rate_limited".into()));
        assert_eq!(logout(&server, &session).await.status(), 429);
    }
);

both_stores!(
    a_second_login_on_the_same_client_type_replaces_the_first,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (first_client, first) = server.login_as("alice", ClientType::Mobile).await;
        let (web_client, web) = server.login_as("alice", ClientType::Web).await;
        let mut first_ws = socket(&server, &first_client, &first).await;
        let mut web_ws = socket(&server, &web_client, &web).await;

        let (second_client, second) = server.login_as("alice", ClientType::Mobile).await;
        assert_eq!(close_code(&mut first_ws).await, Some(close::REPLACED));
        let token = first.refresh_token.clone().expect("refresh token");
        assert_eq!(
            error_of(refresh(&server, &first, &token).await).await,
            (401, "token_revoked".into())
        );
        second_client
            .mint_ticket(&second)
            .await
            .expect("the new session works");
        // The web session is untouched.
        web_ws
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .expect("send");
        let pong = web_ws.next().await.expect("frame").expect("ok");
        assert_eq!(
            pong.into_text().expect("text").as_str(),
            r#"{"type":"pong"}"#
        );
        web_client.mint_ticket(&web).await.expect("web still works");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_can_allow_several_sessions_per_client_type() {
    let server = TestServer::builder()
        .config(|c| c.sessions_per_type = 2)
        .start()
        .await;
    let (c1, s1) = server.login().await;
    let (c2, s2) = server.login().await;
    c1.mint_ticket(&s1).await.expect("first still alive");
    let (_c3, _s3) = server.login().await;
    let err = c1.mint_ticket(&s1).await.expect_err("oldest replaced");
    assert_eq!(mint_error(err), (401, "token_revoked".into()));
    c2.mint_ticket(&s2).await.expect("second still alive");
}

/// The socket asks for renewal, a refresh frame moves its deadline; without it 4004.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_frame_extends_the_connection() {
    let server = TestServer::builder()
        .config(|c| {
            // Long enough that a loaded machine (a second or two late) still sends
            // its ping before the renewed token's own deadline.
            c.ttl.access = Duration::from_secs(8);
            c.ttl.jwt_leeway = Duration::ZERO;
        })
        .start()
        .await;
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    let (mut ws, welcome) = client.connect(&session, &ticket).await.expect("connect");
    // `expiring` arrives in the renewal window (the last 30 % = 2.4 s).
    let frame = tokio::time::timeout(Duration::from_secs(9), ws.next())
        .await
        .expect("in time")
        .expect("frame")
        .expect("ok");
    let frame: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_eq!(frame["type"], "expiring");
    // `expiring` comes 5.6-6.6 s after login, so a token issued now has a later `exp`
    // (whole seconds) than the one the socket was admitted with.
    let renewed = refreshed(
        &server,
        &session,
        session.refresh_token.as_deref().expect("rt"),
    )
    .await;
    ws.send(Message::text(
        json!({"type": "refresh", "access_token": renewed.access_token}).to_string(),
    ))
    .await
    .expect("send");
    let frame = ws.next().await.expect("frame").expect("ok");
    let frame: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_eq!(frame["type"], "refreshed");
    assert!(frame["expires_at"].as_i64().expect("exp") > welcome.expires_at);
    // Past the old deadline the socket is still open.
    let until_old_exp = welcome.expires_at - support_now() + 1;
    tokio::time::sleep(Duration::from_secs(until_old_exp.max(0) as u64)).await;
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("still open");
    let pong = next_but_expiring(&mut ws, welcome.expires_at).await;
    assert_eq!(pong, json!({"type": "pong"}));

    // A token of another session is refused with an error frame; the socket stays.
    let (_other_client, other) = server.login_as("bob", ClientType::Mobile).await;
    ws.send(Message::text(
        json!({"type": "refresh", "access_token": other.access_token}).to_string(),
    ))
    .await
    .expect("send");
    let frame = next_but_expiring(&mut ws, welcome.expires_at).await;
    assert_eq!(
        (frame["type"].as_str(), frame["error"].as_str()),
        (Some("error"), Some("token_invalid"))
    );
    // And without another refresh: 4004 at the new exp.
    assert_eq!(close_code(&mut ws).await, Some(close::SESSION_EXPIRED));
}

/// The next JSON frame, past the renewed token's own `expiring` (its window may open
/// while the test runs; it must be about a later `exp` than `admitted_exp`).
async fn next_but_expiring(ws: &mut ticketgate_sdk::WsStream, admitted_exp: i64) -> Value {
    loop {
        let frame = ws.next().await.expect("frame").expect("ok");
        let value: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
        if value["type"] != "expiring" {
            return value;
        }
        assert!(value["expires_at"].as_i64().expect("exp") > admitted_exp);
    }
}

fn support_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// `X-New-Token` only inside the renewal window, once per presented token, and not
/// past the daily cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_renewal_appears_only_in_the_window_and_stops_at_the_cap() {
    let server = TestServer::builder()
        .config(|c| {
            c.ttl.access = Duration::from_secs(4);
            c.refresh_cap_per_day = 1;
        })
        .start()
        .await;
    let (client, session) = server.login().await;
    let early = client.mint_ticket(&session).await.expect("mint");
    assert!(early.new_access_token.is_none(), "outside the window");
    tokio::time::sleep(Duration::from_millis(3200)).await; // 0.8 s left of 4 s: in the window
    let late = client.mint_ticket(&session).await.expect("mint");
    let renewed = late.new_access_token.expect("X-New-Token in the window");
    let mut next = session.clone();
    next.access_token = renewed;
    client
        .mint_ticket(&next)
        .await
        .expect("the new token works");
    // Same presented token again: no second renewal.
    assert!(client
        .mint_ticket(&session)
        .await
        .expect("mint")
        .new_access_token
        .is_none());
    // The cap (1) is used up: a refresh now fails and no header is sent.
    let token = session.refresh_token.clone().expect("rt");
    assert_eq!(
        error_of(refresh(&server, &session, &token).await).await,
        (401, "refresh_limit".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_answers_inactive_for_revoked_expired_and_foreign_tokens() {
    let server = TestServer::builder()
        .config(|c| c.ttl.jwt_leeway = Duration::ZERO)
        .start()
        .await;
    let other = TestServer::builder().start().await;
    let introspect = |token: String| {
        let server = &server;
        async move {
            admin(server, "/admin/v1/introspect", json!({ "token": token }))
                .await
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let (_client, session) = server.login().await;
    let answer = introspect(session.access_token.clone()).await;
    assert_eq!(
        (answer["active"].as_bool(), answer["sub"].as_str()),
        (Some(true), Some("alice"))
    );
    assert_eq!(answer["sid"].as_str(), Some(session.session_id.as_str()));
    let rt = session.refresh_token.clone().expect("rt");
    assert_eq!(introspect(rt.clone()).await["active"], true);
    let next = refreshed(&server, &session, &rt).await;
    assert_eq!(
        introspect(rt).await["active"],
        false,
        "rotated refresh token"
    );
    let (_oc, foreign) = other.login().await;
    assert_eq!(
        introspect(foreign.access_token).await["active"],
        false,
        "foreign"
    );
    assert_eq!(introspect("garbage".into()).await["active"], false);
    admin(&server, "/admin/v1/users/alice/kick", json!({})).await;
    assert_eq!(
        introspect(next.access_token).await["active"],
        false,
        "revoked"
    );

    let short = TestServer::builder()
        .config(|c| {
            c.ttl.access = Duration::from_secs(1);
            c.ttl.jwt_leeway = Duration::ZERO;
        })
        .start()
        .await;
    let (_sc, s) = short.login().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let answer: Value = admin(
        &short,
        "/admin/v1/introspect",
        json!({"token": s.access_token}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(answer["active"], false, "expired");
}

/// Guessing the admin key is charged to the IP's failure quota: past it, 429, and the
/// right key still works from elsewhere (the quota is per IP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_keys_are_rate_limited_per_ip() {
    let server = TestServer::builder()
        .config(|c| c.rates.fail_ip = ticketgate::config::Rate::parse("5/min").expect("rate"))
        .start()
        .await;
    let guess = || {
        reqwest::Client::new()
            .post(format!("http://{}/admin/v1/publish", server.admin_addr))
            .bearer_auth("a-guess-at-the-admin-key")
            .json(&json!({}))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(error_of(guess().await.expect("sent")).await.0, 401);
    }
    let over = guess().await.expect("sent");
    assert!(over.headers().contains_key("retry-after"));
    assert_eq!(error_of(over).await, (429, "rate_limited".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_or_with_a_wrong_key_are_refused() {
    let server = TestServer::builder().start().await;
    let keyless = TestServer::builder()
        .config(|c| c.admin_key = None)
        .start()
        .await;
    let paths = [
        "/admin/v1/users/alice/kick",
        "/admin/v1/publish",
        "/admin/v1/introspect",
    ];
    for (node, key) in [
        (&server, None),
        (&server, Some("wrong-key-wrong-key")),
        (&keyless, Some("anything-at-all-x")),
    ] {
        for path in paths {
            let mut req = reqwest::Client::new()
                .post(format!("http://{}{path}", node.admin_addr))
                .json(&json!({}));
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            let (status, code) = error_of(req.send().await.expect("sent")).await;
            assert_eq!(
                (status, code.as_str()),
                (401, "token_invalid"),
                "{path} with {key:?}"
            );
        }
        let metrics = reqwest::get(format!("http://{}/metrics", node.admin_addr))
            .await
            .expect("sent");
        assert_eq!(metrics.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_connection_lists_reach_every_node() {
    let (a, b) = two_nodes().await;
    let (ca, sa) = a.login_as("alice", ClientType::Web).await;
    let (cb, sb) = b.login_as("alice", ClientType::Mobile).await;
    let mut wa = socket(&a, &ca, &sa).await;
    let mut wb = socket(&b, &cb, &sb).await;
    let answer: Value = admin(
        &a,
        "/admin/v1/publish",
        json!({"user_id": "alice", "topic": "news", "data": {"n": 1}}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(answer["delivered"], 2);
    for ws in [&mut wa, &mut wb] {
        let frame = ws.next().await.expect("frame").expect("ok");
        let frame: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
        assert_eq!(
            (frame["type"].as_str(), frame["topic"].as_str()),
            (Some("push"), Some("news"))
        );
        assert_eq!(frame["data"], json!({"n": 1}));
    }
    let list: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/admin/v1/users/alice/connections",
            b.admin_addr
        ))
        .bearer_auth(b.config.admin_key.as_deref().expect("key"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let nodes: Vec<&str> = list["connections"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["node_id"].as_str())
        .collect();
    assert_eq!(nodes.len(), 2);
    assert!(
        nodes.contains(&a.config.node_id.as_str()) && nodes.contains(&b.config.node_id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_apps_log_in_with_their_secret_and_are_never_replaced() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let apps = dir.path().join("apps.toml");
    std::fs::write(
        &apps,
        "[apps.billing]\nsecret = \"billing-secret-0123456789\"\n",
    )
    .expect("write");
    let server = TestServer::builder()
        .data_dir(dir)
        .config(move |c| c.apps_file = Some(apps))
        .start()
        .await;
    let login = |secret: &'static str, device: String| {
        let server = &server;
        async move {
            Signed {
                server,
                path: "/v1/app/login",
                key: secret.as_bytes(),
                device_id: &device,
                bearer: None,
                body: r#"{"app_id":"billing"}"#,
            }
            .send()
            .await
        }
    };
    let device = || uuid::Uuid::new_v4().to_string();
    let first: LoginResponse = login("billing-secret-0123456789", device())
        .await
        .json()
        .await
        .expect("login");
    let second = login("billing-secret-0123456789", device()).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.headers()["cache-control"],
        "no-store",
        "RFC 6749 §5.1"
    );
    assert_eq!(
        error_of(login("wrong-secret", device()).await).await,
        (401, "bad_credentials".into())
    );
    // Replicas of one app do not evict each other.
    let answer: Value = admin(
        &server,
        "/admin/v1/introspect",
        json!({"token": first.access_token}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(
        (
            answer["active"].as_bool(),
            answer["sub"].as_str(),
            answer["ctp"].as_str()
        ),
        (Some(true), Some("app:billing"), Some("api"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_can_keep_the_refresh_token_in_a_cookie() {
    let server = TestServer::builder().start().await;
    let device = uuid::Uuid::new_v4().to_string();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/login", server.url()))
        .json(&json!({"username": "alice", "password": PASSWORD, "device_id": device, "client_type": "web", "refresh_in_cookie": true}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("cookie")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cookie.starts_with("tg_refresh=")
            && cookie.contains("HttpOnly")
            && cookie.contains("Secure")
    );
    assert!(cookie.contains("SameSite=Strict") && cookie.contains("Path=/v1/token"));
    let body: Value = response.json().await.expect("json");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let key = base64_decode(body["signing_key"].as_str().expect("key"));
    let value = cookie.split(';').next().expect("pair").to_owned();
    // Refresh with the cookie and an empty body.
    let timestamp = support_now();
    let nonce = support::fresh_nonce();
    let signature = ticketgate_sdk::signing::sign(
        &key,
        &ticketgate_sdk::signing::SignedParts {
            method: "POST",
            path: "/v1/token/refresh",
            device_id: &device,
            timestamp,
            nonce: &nonce,
            body: b"{}",
        },
    );
    let response = reqwest::Client::new()
        .post(format!("{}/v1/token/refresh", server.url()))
        .header("cookie", value)
        .header("x-tg-device", &device)
        .header("x-tg-timestamp", timestamp.to_string())
        .header("x-tg-nonce", nonce)
        .header("x-tg-signature", signature)
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let rotated = response
        .headers()
        .get("set-cookie")
        .expect("new cookie")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_ne!(rotated.split(';').next(), cookie.split(';').next());
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_keys_rotate_old_tokens_still_mint() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    ticketgate::auth::tokens::KeyRing::rotate(&server.config.data_dir, None).expect("rotate");
    server.state.keys.reload().expect("reload");
    client
        .mint_ticket(&session)
        .await
        .expect("old token verifies");
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", server.url()))
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
}

/// Two logins of one user and client type racing each other: the newer survives, they
/// never end each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_logins_leave_one_live_session() {
    let server = Arc::new(TestServer::builder().start().await);
    for _ in 0..10 {
        let (s1, s2) = (server.clone(), server.clone());
        let (a, b) = tokio::join!(
            tokio::spawn(async move { s1.login_as("carol", ClientType::Mobile).await }),
            tokio::spawn(async move { s2.login_as("carol", ClientType::Mobile).await }),
        );
        let ((ca, sa), (cb, sb)) = (a.expect("task"), b.expect("task"));
        let alive = [
            ca.mint_ticket(&sa).await.is_ok(),
            cb.mint_ticket(&sb).await.is_ok(),
        ];
        assert_eq!(alive.iter().filter(|a| **a).count(), 1, "{alive:?}");
    }
}

/// A client that stops reading is closed as a slow consumer and leaves the registry;
/// pushes to it are not counted as delivered once its inbox is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let _ws = socket(&server, &client, &session).await; // never read again
    let payload = "x".repeat(50_000);
    let mut undelivered = 0;
    for _ in 0..600 {
        let answer: Value = admin(
            &server,
            "/admin/v1/publish",
            json!({"user_id": "alice", "topic": "t", "data": payload}),
        )
        .await
        .json()
        .await
        .expect("json");
        if answer["delivered"] == 0 {
            undelivered += 1;
            if undelivered > 3 {
                break;
            }
        }
    }
    assert!(undelivered > 0, "the inbox never filled");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.state.registry.is_empty() {
        assert!(Instant::now() < deadline, "slow consumer still registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node with one API app, `billing`, capped at `cap` live sessions.
async fn app_node(kind: StoreKind, cap: usize) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps = dir.path().join("apps.toml");
    std::fs::write(
        &apps,
        "[apps.billing]\nsecret = \"billing-secret-0123456789\"\n",
    )
    .expect("write");
    let server = TestServer::builder()
        .store(kind)
        .config(move |c| {
            c.apps_file = Some(apps);
            c.max_sessions_per_app = cap;
        })
        .start()
        .await;
    (server, dir)
}

/// `billing` logs in from a fresh device.
async fn app_login(server: &TestServer) -> reqwest::Response {
    Signed {
        server,
        path: "/v1/app/login",
        key: b"billing-secret-0123456789",
        device_id: &uuid::Uuid::new_v4().to_string(),
        bearer: None,
        body: r#"{"app_id":"billing"}"#,
    }
    .send()
    .await
}

both_stores!(
    an_app_past_its_session_cap_is_refused_until_a_session_ends,
    |kind| async move {
        let (server, _dir) = app_node(kind, 3).await;
        for _ in 0..3 {
            assert_eq!(app_login(&server).await.status(), 200);
        }
        let refused = app_login(&server).await;
        assert!(
            refused
                .headers()
                .get("retry-after")
                .is_some_and(|v| v != "0"),
            "{refused:?}"
        );
        assert_eq!(
            error_of(refused).await,
            (429, "too_many_connections".into())
        );
        let kicked = admin(&server, "/admin/v1/users/app:billing/kick", json!({})).await;
        assert_eq!(kicked.status(), 200);
        assert_eq!(app_login(&server).await.status(), 200);
    }
);

both_stores!(
    racing_app_logins_at_the_cap_open_exactly_the_cap,
    |kind| async move {
        let (server, _dir) = app_node(kind, 3).await;
        let server = Arc::new(server);
        let barrier = Arc::new(tokio::sync::Barrier::new(12));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (server, barrier) = (server.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let answer = app_login(&server).await;
                    answer.status().as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.expect("task"));
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [[200; 3].as_slice(), &[429; 9]].concat());
        let live = server
            .state
            .store
            .user_sessions("app:billing")
            .await
            .expect("index");
        assert_eq!(live.len(), 3);
    }
);
