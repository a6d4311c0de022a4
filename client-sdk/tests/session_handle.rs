//! `SessionHandle` against a fake server: single-flight refresh, renewal ahead of
//! expiry, the end of a session, `X-New-Token`, logout, and the raw refresh request.

#![cfg(feature = "client")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{
    client, login_answer, now, session_expiring_in, FakeHttp, Reply, DEVICE, KEY, LIFETIME,
};
use ticketgate_sdk::{
    ClientError, ConnectionSender, EndReason, ErrorCode, ManagedConnection, SessionHandle,
};
use tokio::sync::Barrier;

const REFRESH: &str = "/v1/token/refresh";
const TICKETS: &str = "/v1/tickets";
const LOGOUT: &str = "/v1/logout";
const CALLERS: usize = 50;
/// Long enough for every caller to be waiting before the first refresh is answered.
const SLOW: Duration = Duration::from_millis(500);

/// A fake whose refresh answers `at-2` / `sid1.r2` after [`SLOW`].
async fn refreshing_server() -> FakeHttp {
    FakeHttp::start(|request| match request.path.as_str() {
        REFRESH => Reply::json(200, login_answer("at-2", "sid1.r2")).after(SLOW),
        _ => Reply::error(404, "not_found"),
    })
    .await
}

/// Runs `CALLERS` copies of `call` at once (released together by a barrier).
async fn all_at_once<T, F, Fut>(handle: &SessionHandle, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(SessionHandle) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let call = call(handle.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                call.await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("caller task"));
    }
    results
}

#[test]
fn handles_can_be_shared_between_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    fn movable<T: Send + 'static>() {}
    shareable::<SessionHandle>();
    shareable::<ConnectionSender>();
    movable::<ManagedConnection>();
}

#[test]
fn the_renewal_window_is_the_smaller_of_five_minutes_and_30_percent() {
    let mut session = session_expiring_in(0);
    session.access_expires_at = 100_000;
    for (lifetime, window) in [(900, 270), (3_600, 300), (60, 18), (0, 0)] {
        session.access_lifetime = lifetime;
        assert!(
            !session.needs_refresh(100_000 - window - 1),
            "lifetime {lifetime}: not yet {window} s before expiry"
        );
        assert!(
            session.needs_refresh(100_000 - window),
            "lifetime {lifetime}: due {window} s before expiry"
        );
        assert!(session.needs_refresh(100_001), "an expired token is due");
    }
}

#[test]
fn a_huge_lifetime_from_the_server_caps_the_window_instead_of_panicking() {
    let mut session = session_expiring_in(0);
    session.access_expires_at = 100_000;
    session.access_lifetime = u64::MAX;
    assert!(
        !session.needs_refresh(100_000 - 301),
        "the window is at most 5 minutes"
    );
    assert!(session.needs_refresh(100_000 - 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_send_one_request_and_share_its_answer() {
    let http = refreshing_server().await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(800));

    let results = all_at_once(&handle, |h| async move { h.refresh().await }).await;

    assert_eq!(http.count(REFRESH), 1, "one refresh for {CALLERS} callers");
    for result in results {
        let session = result.expect("every caller gets the refreshed session");
        assert_eq!(session.access_token, "at-2");
        assert_eq!(session.refresh_token.as_deref(), Some("sid1.r2"));
    }
    let stored = handle.session();
    assert_eq!(stored.access_token, "at-2");
    assert_eq!(stored.refresh_token.as_deref(), Some("sid1.r2"));
    assert_eq!(stored.device_id, DEVICE);
    assert_eq!(stored.access_lifetime, LIFETIME);
    assert!(stored.access_expires_at.abs_diff(now() + LIFETIME) <= 5);

    let request = &http.requests_to(REFRESH)[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.json(),
        serde_json::json!({"refresh_token": "sid1.r1"})
    );
    assert_eq!(
        request.header("authorization"),
        None,
        "refresh needs no Bearer"
    );
    request.assert_signed_with(&KEY, DEVICE);

    // The next refresh is a new one, with the rotated token.
    handle.refresh().await.expect("second refresh");
    assert_eq!(http.count(REFRESH), 2);
    assert_eq!(
        http.requests_to(REFRESH)[1].json(),
        serde_json::json!({"refresh_token": "sid1.r2"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_inside_the_renewal_window_share_one_refresh() {
    let http = refreshing_server().await;
    // 60 s left of 900: inside the 270 s window.
    let handle = SessionHandle::new(client(&http), session_expiring_in(60));

    let tokens = all_at_once(&handle, |h| async move { h.access_token().await }).await;

    assert_eq!(http.count(REFRESH), 1, "one refresh for {CALLERS} callers");
    for token in tokens {
        assert_eq!(token.expect("a token"), "at-2");
    }
    // The renewed token has its whole lifetime ahead: no further request.
    assert_eq!(handle.access_token().await.expect("token"), "at-2");
    assert_eq!(http.count(REFRESH), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_refresh_still_lands_and_is_not_repeated() {
    let http = refreshing_server().await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(60));

    // The caller gives up while the request is in flight…
    let gave_up = tokio::time::timeout(SLOW / 5, handle.refresh()).await;
    assert!(gave_up.is_err(), "the refresh was still in flight");
    // …and the next caller gets that refresh's answer instead of presenting the
    // (already rotated) refresh token again.
    let session = handle.refresh().await.expect("the refresh in flight lands");
    assert_eq!(session.access_token, "at-2");
    assert_eq!(http.count(REFRESH), 1);
}

#[tokio::test]
async fn a_token_outside_the_window_needs_no_request() {
    let http = refreshing_server().await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(800));

    assert_eq!(handle.access_token().await.expect("token"), "at-1");
    assert_eq!(http.count(REFRESH), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_end_the_session_end_the_handle() {
    for (code, reason) in [
        ("refresh_reused", EndReason::RefreshReused),
        ("refresh_limit", EndReason::RefreshLimit),
        ("token_revoked", EndReason::Revoked),
    ] {
        let http = FakeHttp::start(move |request| match request.path.as_str() {
            REFRESH => Reply::error(401, code).after(SLOW),
            _ => Reply::error(500, "internal"),
        })
        .await;
        let handle = SessionHandle::new(client(&http), session_expiring_in(60));

        let results = all_at_once(&handle, |h| async move { h.refresh().await }).await;
        assert_eq!(http.count(REFRESH), 1, "{code}: one request");
        for result in results {
            assert!(
                matches!(result, Err(ClientError::SessionEnded(r)) if r == reason),
                "{code}: {result:?}"
            );
        }
        assert_eq!(handle.ended(), Some(reason));

        // Dead: later calls fail fast, without a request.
        assert!(matches!(
            handle.refresh().await,
            Err(ClientError::SessionEnded(_))
        ));
        assert!(matches!(
            handle.access_token().await,
            Err(ClientError::SessionEnded(_))
        ));
        assert!(matches!(
            handle.mint_ticket().await,
            Err(ClientError::SessionEnded(_))
        ));
        handle
            .logout()
            .await
            .expect("logging out an ended session is a no-op");
        assert_eq!(http.count(REFRESH), 1, "{code}: no request after the end");
        assert_eq!(http.count(TICKETS), 0);
        assert_eq!(http.count(LOGOUT), 0);
    }
}

#[tokio::test]
async fn an_expired_refresh_token_ends_the_handle_without_a_request() {
    let http = refreshing_server().await;
    let mut session = session_expiring_in(60);
    session.refresh_expires_at = now() - 1;
    let handle = SessionHandle::new(client(&http), session);

    let err = handle.refresh().await.expect_err("expired");
    assert!(matches!(err, ClientError::SessionEnded(EndReason::Expired)));
    assert_eq!(http.count(REFRESH), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_failure_is_shared_and_keeps_the_session() {
    let http = FakeHttp::start(|request| match request.path.as_str() {
        REFRESH => Reply::error(503, "store_unavailable").after(SLOW),
        _ => Reply::error(500, "internal"),
    })
    .await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(60));

    let results = all_at_once(&handle, |h| async move { h.refresh().await }).await;
    assert_eq!(http.count(REFRESH), 1, "the failure is shared, not retried");
    for result in results {
        let err = result.expect_err("the refresh failed");
        assert!(matches!(err, ClientError::RefreshFailed(_)), "{err:?}");
        assert_eq!(err.code(), Some(ErrorCode::StoreUnavailable));
    }
    assert_eq!(handle.ended(), None, "a 503 does not end the session");

    // Renewal is early: while the current token works, access_token still answers.
    assert_eq!(handle.access_token().await.expect("token"), "at-1");
    assert_eq!(http.count(REFRESH), 2, "a later call tries again");
}

#[tokio::test]
async fn x_new_token_from_a_mint_is_adopted() {
    let http = FakeHttp::start(|request| match request.path.as_str() {
        TICKETS => Reply::json(
            201,
            r#"{"ticket":"tk-1","expires_in":30,"ws_url":"ws://127.0.0.1:1/v1/connect"}"#,
        )
        .with_header("X-New-Token", "at-new"),
        _ => Reply::error(500, "internal"),
    })
    .await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(800));

    let ticket = handle.mint_ticket().await.expect("mint");
    assert_eq!(ticket.ticket, "tk-1");
    let session = handle.session();
    assert_eq!(session.access_token, "at-new");
    assert_eq!(
        session.refresh_token.as_deref(),
        Some("sid1.r1"),
        "the refresh token stays"
    );
    assert!(session.access_expires_at.abs_diff(now() + LIFETIME) <= 5);

    handle.mint_ticket().await.expect("second mint");
    let mints = http.requests_to(TICKETS);
    assert_eq!(mints[0].header("authorization"), Some("Bearer at-1"));
    assert_eq!(mints[1].header("authorization"), Some("Bearer at-new"));
    mints[1].assert_signed_with(&KEY, DEVICE);
    assert_eq!(http.count(REFRESH), 0);
}

#[tokio::test]
async fn a_revoked_mint_ends_the_handle() {
    let http = FakeHttp::start(|_| Reply::error(401, "token_revoked")).await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(800));

    let err = handle.mint_ticket().await.expect_err("revoked");
    assert_eq!(err.code(), Some(ErrorCode::TokenRevoked));
    assert_eq!(handle.ended(), Some(EndReason::Revoked));
}

#[tokio::test]
async fn logout_is_signed_and_ends_the_handle() {
    let http = FakeHttp::start(|request| match request.path.as_str() {
        LOGOUT => Reply::no_content(),
        _ => Reply::error(500, "internal"),
    })
    .await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(800));

    handle.logout().await.expect("logout");
    assert_eq!(handle.ended(), Some(EndReason::LoggedOut));
    let request = &http.requests_to(LOGOUT)[0];
    assert_eq!(request.body, b"{}");
    assert_eq!(request.header("authorization"), Some("Bearer at-1"));
    request.assert_signed_with(&KEY, DEVICE);

    assert!(matches!(
        handle.access_token().await,
        Err(ClientError::SessionEnded(EndReason::LoggedOut))
    ));
    handle.logout().await.expect("a second logout is a no-op");
    assert_eq!(http.count(LOGOUT), 1);
}

#[tokio::test]
async fn a_failed_logout_keeps_the_session() {
    let http = FakeHttp::start(|_| Reply::error(429, "rate_limited")).await;
    let handle = SessionHandle::new(client(&http), session_expiring_in(800));

    let err = handle.logout().await.expect_err("429");
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
    assert_eq!(handle.ended(), None);
}

#[tokio::test]
async fn client_refresh_checks_the_session_id() {
    let http = FakeHttp::start(|_| {
        Reply::json(
            200,
            login_answer("at-2", "sid1.r2").replace("\"sid1\"", "\"other\""),
        )
    })
    .await;
    let err = client(&http)
        .refresh(&session_expiring_in(60))
        .await
        .expect_err("another session's answer");
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
}
