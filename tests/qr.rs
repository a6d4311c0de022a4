//! QR-code login, both directions, end to end on every store: the happy paths end in
//! a socket on the new device; a QR is redeemed once; of concurrent confirms one
//! wins; rotation and expiry answer 410 (with `next_qr_id` to the owner only); a
//! wrong secret or device learns nothing; fast polling gets `slow_down`; a kicked or
//! blocked approver cannot confirm; a creation flood from one IP gets 429; the image.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{error_of, StoreKind, TestServer};
use ticketgate_sdk::{Client, ClientType, ErrorCode, QrLogin, QrPoll, Session};

/// Short poll interval for tests that poll in a loop (the pace has its own test).
const FAST: Duration = Duration::from_millis(10);

async fn server(kind: StoreKind) -> TestServer {
    TestServer::builder()
        .store(kind)
        .config(|c| c.qr.poll_interval = Duration::ZERO)
        .start()
        .await
}

/// Mints a ticket with `session` and opens a socket; the welcome's user and device.
async fn connects_as(client: &Client, session: &Session) -> (String, String) {
    let ticket = client
        .mint_ticket(session)
        .await
        .expect("mint with the QR session");
    let (_socket, welcome) = client.connect(session, &ticket).await.expect("connect");
    (welcome.user_id, welcome.device_id)
}

async fn raw_poll(server: &TestServer, qr_id: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/qr/{qr_id}/poll", server.url()))
        .json(&body)
        .send()
        .await
        .expect("poll sent")
}

fn poll_body(qr: &QrLogin, device_id: &str, client_type: &str) -> Value {
    json!({"poll_secret": qr.poll_secret, "device_id": device_id, "client_type": client_type})
}

async fn admin(server: &TestServer, path: &str) {
    let response = reqwest::Client::new()
        .post(format!("http://{}{path}", server.admin_addr))
        .bearer_auth("test-admin-key-0123456789")
        .json(&json!({}))
        .send()
        .await
        .expect("admin call");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

fn is_code(
    result: &Result<impl std::fmt::Debug, ticketgate_sdk::ClientError>,
    code: ErrorCode,
) -> bool {
    matches!(result, Err(e) if e.code() == Some(code))
}

both_stores!(
    login_this_gives_the_pc_a_session_of_the_phone_user,
    |kind| async move {
        let server = server(kind).await;
        // Alice's older web session: the QR login is a login like any other and replaces it.
        let (old_web_client, old_web) = server.login_as("alice", ClientType::Web).await;
        let (phone, phone_session) = server.login().await;
        let pc = server.client();

        let mut qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        assert_eq!(qr.mode, "login_this");
        assert_eq!((qr.expires_in, qr.rotate_in), (120, 60));
        assert!(matches!(
            pc.qr_poll(&qr, ClientType::Web).await,
            Ok(QrPoll::Pending)
        ));

        let scan = phone
            .qr_scan(Some(&phone_session), &qr.qr_id)
            .await
            .expect("scan");
        assert_eq!(
            (scan.state.as_str(), scan.mode.as_str()),
            ("scanned", "login_this")
        );
        assert_eq!(
            scan.client_type,
            ClientType::Web,
            "the scan shows where the login goes"
        );
        assert_eq!(scan.ip, "127.0.0.1");
        assert!(
            scan.poll_secret.is_none(),
            "the approver gets no poll secret"
        );
        // The PC learns nothing about the approving phone.
        assert!(matches!(
            pc.qr_poll(&qr, ClientType::Web).await,
            Ok(QrPoll::Scanned {
                scanner_ip: None,
                scanned_at: None
            })
        ));
        phone
            .qr_confirm(&phone_session, &qr.qr_id)
            .await
            .expect("confirm");

        let session = pc
            .qr_wait_every(&mut qr, ClientType::Web, FAST, |_| {})
            .await
            .expect("the PC logs in");
        assert_eq!(session.device_id, pc.device_id());
        let (user, device) = connects_as(&pc, &session).await;
        assert_eq!((user.as_str(), device.as_str()), ("alice", pc.device_id()));

        // Redeemed once: the next poll finds nothing.
        assert!(is_code(
            &pc.qr_poll(&qr, ClientType::Web).await,
            ErrorCode::QrExpired
        ));
        // One session per (user, client type): the older web session ended.
        assert!(is_code(
            &old_web_client.mint_ticket(&old_web).await,
            ErrorCode::TokenRevoked
        ));
    }
);

both_stores!(
    login_other_gives_the_phone_a_session_of_the_pc_user,
    |kind| async move {
        let server = server(kind).await;
        let (pc, pc_session) = server.login_as("bob", ClientType::Web).await;
        let phone = server.client();

        let watch = pc.qr_create_login_other(&pc_session).await.expect("create");
        assert_eq!(watch.mode, "login_other");
        let scan = phone.qr_scan(None, &watch.qr_id).await.expect("scan");
        assert_eq!(
            (scan.client_type, scan.ip.as_str()),
            (ClientType::Web, "127.0.0.1")
        );
        let mut mine = scan
            .into_login(&watch.qr_id)
            .expect("the first scanner gets a secret");
        assert_ne!(mine.poll_secret, watch.poll_secret);
        // Later scans get nothing.
        let again = server.client().qr_scan(None, &watch.qr_id).await;
        assert!(
            matches!(&again, Err(e) if e.code() == Some(ErrorCode::QrExpired)),
            "{again:?}"
        );

        // The approving PC is told who scanned, to show before it confirms.
        match pc.qr_poll(&watch, ClientType::Web).await {
            Ok(QrPoll::Scanned {
                scanner_ip: Some(ip),
                scanned_at: Some(_),
            }) => assert_eq!(ip, "127.0.0.1"),
            other => panic!("expected scanned with the scanner, got {other:?}"),
        }
        // Only the PC's session approves: not another user's session.
        let (eve, eve_session) = server.login_as("alice", ClientType::Web).await;
        let refused = eve.qr_confirm(&eve_session, &watch.qr_id).await;
        assert!(is_code(&refused, ErrorCode::QrExpired), "{refused:?}");
        pc.qr_confirm(&pc_session, &watch.qr_id)
            .await
            .expect("confirm");
        assert!(matches!(
            pc.qr_poll(&watch, ClientType::Web).await,
            Ok(QrPoll::Confirmed)
        ));

        let session = phone
            .qr_wait_every(&mut mine, ClientType::Mobile, FAST, |_| {})
            .await
            .expect("the phone logs in");
        let (user, device) = connects_as(&phone, &session).await;
        assert_eq!((user.as_str(), device.as_str()), ("bob", phone.device_id()));
        assert!(is_code(
            &phone.qr_poll(&mine, ClientType::Mobile).await,
            ErrorCode::QrExpired
        ));
        // The PC's own session is untouched.
        connects_as(&pc, &pc_session).await;
    }
);

both_stores!(concurrent_confirms_have_one_winner, |kind| async move {
    let server = server(kind).await;
    let (phone, phone_session) = server.login().await;
    let pc = server.client();
    let qr = pc
        .qr_create_login_this(ClientType::Web)
        .await
        .expect("create");
    phone
        .qr_scan(Some(&phone_session), &qr.qr_id)
        .await
        .expect("scan");
    let confirms: Vec<_> = (0..8)
        .map(|_| {
            let (phone, session, id) = (phone.clone(), phone_session.clone(), qr.qr_id.clone());
            tokio::spawn(async move { phone.qr_confirm(&session, &id).await })
        })
        .collect();
    let mut won = 0;
    for confirm in confirms {
        match confirm.await.expect("task") {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::QrExpired), "{e}"),
        }
    }
    assert_eq!(won, 1);
});

both_stores!(
    rotation_names_the_next_id_to_the_owner_only,
    |kind| async move {
        let server = TestServer::builder()
            .store(kind)
            .config(|c| {
                c.qr.poll_interval = Duration::ZERO;
                c.qr.rotate = Duration::from_millis(300);
            })
            .start()
            .await;
        let (phone, phone_session) = server.login().await;
        let pc = server.client();
        let qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        tokio::time::sleep(Duration::from_millis(400)).await;

        // The old id cannot be scanned any more, even before anyone polled.
        let stale = phone.qr_scan(Some(&phone_session), &qr.qr_id).await;
        assert!(is_code(&stale, ErrorCode::QrExpired), "{stale:?}");
        // A stranger polling the old id learns nothing.
        let stranger = raw_poll(
            &server,
            &qr.qr_id,
            poll_body(&qr, server.client().device_id(), "web"),
        )
        .await;
        assert_eq!(stranger.status(), 410);
        let body: Value = stranger.json().await.expect("json");
        assert!(body.get("next_qr_id").is_none(), "{body}");

        let answer = raw_poll(&server, &qr.qr_id, poll_body(&qr, pc.device_id(), "web")).await;
        assert_eq!(answer.status(), 410);
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["error"], "qr_expired");
        let next = body["next_qr_id"].as_str().expect("next_qr_id").to_owned();
        assert_ne!(next, qr.qr_id);
        // Same secret, new id: pending, and the phone scans the new one.
        let moved = QrLogin {
            qr_id: next.clone(),
            ..qr.clone()
        };
        assert!(matches!(
            pc.qr_poll(&moved, ClientType::Web).await,
            Ok(QrPoll::Pending)
        ));
        phone
            .qr_scan(Some(&phone_session), &next)
            .await
            .expect("scan the new id");
    }
);

both_stores!(an_expired_qr_is_gone_without_a_next_id, |kind| async move {
    let server = TestServer::builder()
        .store(kind)
        .config(|c| {
            c.qr.poll_interval = Duration::ZERO;
            c.qr.ttl = Duration::from_millis(300);
        })
        .start()
        .await;
    let pc = server.client();
    let qr = pc
        .qr_create_login_this(ClientType::Web)
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = raw_poll(&server, &qr.qr_id, poll_body(&qr, pc.device_id(), "web")).await;
    assert_eq!(answer.status(), 410);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["error"], "qr_expired");
    assert!(body.get("next_qr_id").is_none(), "{body}");
});

both_stores!(a_wrong_secret_or_device_learns_nothing, |kind| async move {
    let server = server(kind).await;
    let (phone, phone_session) = server.login().await;
    let pc = server.client();
    let qr = pc
        .qr_create_login_this(ClientType::Web)
        .await
        .expect("create");
    phone
        .qr_scan(Some(&phone_session), &qr.qr_id)
        .await
        .expect("scan");
    phone
        .qr_confirm(&phone_session, &qr.qr_id)
        .await
        .expect("confirm");

    let other_device = server.client();
    let unknown_id = format!("{}.{}", "A".repeat(22), "B".repeat(12));
    let tries = [
        (
            qr.qr_id.clone(),
            json!({"poll_secret": "guess", "device_id": pc.device_id(), "client_type": "web"}),
        ),
        (
            qr.qr_id.clone(),
            poll_body(&qr, other_device.device_id(), "web"),
        ),
        (qr.qr_id.clone(), poll_body(&qr, pc.device_id(), "mobile")),
        (unknown_id.clone(), poll_body(&qr, pc.device_id(), "web")),
    ];
    let mut answers = Vec::new();
    for (id, body) in tries {
        let response = raw_poll(&server, &id, body).await;
        assert_eq!(response.status(), 410);
        answers.push(response.json::<Value>().await.expect("json"));
    }
    assert!(answers.iter().all(|a| *a == answers[3]), "{answers:?}");
    // None of that touched the confirmed QR: its owner redeems it.
    let session = pc
        .qr_wait_every(&mut qr.clone(), ClientType::Web, FAST, |_| {})
        .await
        .expect("the owner still logs in");
    connects_as(&pc, &session).await;
});

both_stores!(
    polling_faster_than_the_interval_is_slow_down,
    |kind| async move {
        // The default pace: 2 s between polls.
        let server = TestServer::builder().store(kind).start().await;
        let pc = server.client();
        let qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        assert!(matches!(
            pc.qr_poll(&qr, ClientType::Web).await,
            Ok(QrPoll::Pending)
        ));
        // A guesser is not paced: it only ever learns "expired".
        let guess = raw_poll(
            &server,
            &qr.qr_id,
            json!({"poll_secret": "guess", "device_id": pc.device_id(), "client_type": "web"}),
        )
        .await;
        assert_eq!(guess.status(), 410);
        let fast = raw_poll(&server, &qr.qr_id, poll_body(&qr, pc.device_id(), "web")).await;
        assert_eq!(fast.status(), 429);
        let retry_after: u64 = fast.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=2).contains(&retry_after), "{retry_after}");
        assert_eq!(error_of(fast).await, (429, "slow_down".to_owned()));
    }
);

both_stores!(
    a_kicked_or_blocked_approver_cannot_confirm,
    |kind| async move {
        let server = server(kind).await;
        let pc = server.client();

        // Kicked between scan and confirm.
        let (phone, phone_session) = server.login_as("alice", ClientType::Mobile).await;
        let qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        phone
            .qr_scan(Some(&phone_session), &qr.qr_id)
            .await
            .expect("scan");
        admin(&server, "/admin/v1/users/alice/kick").await;
        let refused = phone.qr_confirm(&phone_session, &qr.qr_id).await;
        assert!(is_code(&refused, ErrorCode::TokenRevoked), "{refused:?}");

        // Logged out between scan and confirm.
        let (phone, phone_session) = server.login_as("bob", ClientType::Mobile).await;
        let qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        phone
            .qr_scan(Some(&phone_session), &qr.qr_id)
            .await
            .expect("scan");
        phone.logout(&phone_session).await.expect("logout");
        let refused = phone.qr_confirm(&phone_session, &qr.qr_id).await;
        assert!(is_code(&refused, ErrorCode::TokenRevoked), "{refused:?}");

        // Blocked between confirm and redemption: the PC gets no session.
        let (phone, phone_session) = server.login_as("carol", ClientType::Mobile).await;
        let mut qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        phone
            .qr_scan(Some(&phone_session), &qr.qr_id)
            .await
            .expect("scan");
        phone
            .qr_confirm(&phone_session, &qr.qr_id)
            .await
            .expect("confirm");
        admin(&server, "/admin/v1/users/carol/block").await;
        let polled = pc
            .qr_wait_every(&mut qr, ClientType::Web, FAST, |_| {})
            .await;
        assert!(
            is_code(&polled, ErrorCode::QrExpired),
            "{:?}",
            polled.map(|_| ())
        );

        // A blocked user's phone cannot even scan.
        let qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        let scan = phone.qr_scan(Some(&phone_session), &qr.qr_id).await;
        assert!(scan.is_err(), "{scan:?}");
    }
);

both_stores!(a_creation_flood_from_one_ip_is_limited, |kind| async move {
    let server = TestServer::builder()
        .store(kind)
        .config(|c| c.rates.qr_ip = ticketgate::config::Rate::parse("3/min").expect("rate"))
        .start()
        .await;
    let pc = server.client();
    for _ in 0..3 {
        pc.qr_create_login_this(ClientType::Web)
            .await
            .expect("within the quota");
    }
    let flood = pc.qr_create_login_this(ClientType::Web).await;
    match flood {
        Err(ticketgate_sdk::ClientError::Api {
            status: 429,
            code: Some(ErrorCode::RateLimited),
            retry_after: Some(s),
            ..
        }) => assert!(s >= 1),
        other => panic!("expected 429 rate_limited, got {:?}", other.map(|_| ())),
    }
    // A logged-in PC on the same IP is limited the same way.
    let (bob, bob_session) = server.login_as("bob", ClientType::Web).await;
    assert!(is_code(
        &bob.qr_create_login_other(&bob_session).await,
        ErrorCode::RateLimited
    ));
});

both_stores!(
    the_qr_image_is_served_and_bad_ids_are_404,
    |kind| async move {
        let server = server(kind).await;
        let pc = server.client();
        let qr = pc
            .qr_create_login_this(ClientType::Web)
            .await
            .expect("create");
        let http = reqwest::Client::new();
        let image = http
            .get(format!("{}/v1/qr/{}/qr.svg", server.url(), qr.qr_id))
            .send()
            .await
            .expect("image");
        assert_eq!(image.status(), 200);
        assert_eq!(image.headers()["content-type"], "image/svg+xml");
        let svg = image.text().await.expect("svg");
        assert!(svg.contains("<svg"), "{svg}");
        for bad in ["nope", "%ff%fe", "a.b", &format!("{}x", qr.qr_id)] {
            let answer = http
                .get(format!("{}/v1/qr/{bad}/qr.svg", server.url()))
                .send()
                .await
                .expect("image");
            assert_eq!(
                error_of(answer).await,
                (404, "not_found".to_owned()),
                "{bad}"
            );
            let poll = raw_poll(&server, bad, poll_body(&qr, pc.device_id(), "web")).await;
            assert_eq!(poll.status(), 404, "{bad}");
        }
        // Bad bodies are 400, not a panic.
        let create = http
            .post(format!("{}/v1/qr", server.url()))
            .json(&json!({"device_id": "not-a-uuid", "client_type": "web"}))
            .send()
            .await
            .expect("create");
        assert_eq!(error_of(create).await, (400, "bad_request".to_owned()));
        let create = http
            .post(format!("{}/v1/qr", server.url()))
            .json(&json!({"mode": "login_other"}))
            .send()
            .await
            .expect("create");
        assert_eq!(error_of(create).await.0, 401, "login_other needs a session");
    }
);

/// A `login_this` QR of a new device of `client_type`, scanned and confirmed by a
/// logged-in phone; the new device's poll with `"refresh_in_cookie": true`.
async fn confirmed_poll_in_cookie_mode(
    server: &TestServer,
    client_type: ClientType,
    client_type_name: &str,
) -> reqwest::Response {
    let (phone, phone_session) = server.login().await;
    let pc = server.client();
    let qr = pc.qr_create_login_this(client_type).await.expect("create");
    phone
        .qr_scan(Some(&phone_session), &qr.qr_id)
        .await
        .expect("scan");
    phone
        .qr_confirm(&phone_session, &qr.qr_id)
        .await
        .expect("confirm");
    let mut body = poll_body(&qr, pc.device_id(), client_type_name);
    body["refresh_in_cookie"] = json!(true);
    raw_poll(server, &qr.qr_id, body).await
}

both_stores!(
    a_web_device_polls_in_cookie_mode_and_gets_the_refresh_token_as_a_cookie,
    |kind| async move {
        let server = server(kind).await;
        let response = confirmed_poll_in_cookie_mode(&server, ClientType::Web, "web").await;
        assert_eq!(response.status(), 200);
        let cookie = response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("the refresh token comes as the cookie");
        assert!(cookie.starts_with("tg_refresh="), "{cookie}");
        assert!(cookie.contains("HttpOnly; Secure; SameSite=Strict; Path=/v1/token"));
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["state"], "confirmed");
        assert!(answer["access_token"].is_string() && answer["signing_key"].is_string());
        assert!(
            answer.get("refresh_token").is_none(),
            "cookie mode keeps the refresh token out of the body: {answer}"
        );
    }
);

both_stores!(
    cookie_mode_on_a_qr_poll_is_for_web_devices_only,
    |kind| async move {
        let server = server(kind).await;
        let response = confirmed_poll_in_cookie_mode(&server, ClientType::Mobile, "mobile").await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().get("set-cookie").is_none());
        let answer: Value = response.json().await.expect("json");
        assert!(answer["refresh_token"].is_string(), "{answer}");
    }
);

/// On Redis a QR login is one key with the QR's life as its TTL, holding hashes of the
/// poll secrets but never the secrets, and every transition is one script call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_one_key_without_secrets_and_one_script_per_transition() {
    let server = server(StoreKind::Redis).await;
    let redis = server.redis.clone().expect("redis");
    let evalsha = || {
        server
            .redis_stats()
            .get("evalsha")
            .copied()
            .unwrap_or_default()
    };
    let (pc, pc_session) = server.login_as("bob", ClientType::Web).await;
    let phone = server.client();

    let before = evalsha();
    let watch = pc.qr_create_login_other(&pc_session).await.expect("create");
    assert_eq!(evalsha() - before, 1, "create is one script");
    let before = evalsha();
    let scan = phone.qr_scan(None, &watch.qr_id).await.expect("scan");
    assert_eq!(evalsha() - before, 1, "scan is one script");
    let phone_secret = scan.poll_secret.clone().expect("secret");

    let family = watch.qr_id.split('.').next().expect("family").to_owned();
    let key = format!("tg:{{qr:{family}}}:qr");
    let (fields, ttl) = {
        let redis = redis.lock().expect("redis lock");
        (
            redis.command(&["HGETALL", &key]),
            redis.command(&["PTTL", &key]),
        )
    };
    let support::redis::Reply::Array(Some(fields)) = fields else {
        panic!("the QR record is a hash");
    };
    assert!(!fields.is_empty());
    for field in &fields {
        let support::redis::Reply::Bulk(Some(bytes)) = field else {
            panic!("hash fields are strings");
        };
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(&watch.poll_secret),
            "the PC's secret is stored: {text}"
        );
        assert!(
            !text.contains(&phone_secret),
            "the phone's secret is stored: {text}"
        );
    }
    let support::redis::Reply::Integer(ttl_ms) = ttl else {
        panic!("PTTL answers an integer");
    };
    assert!((1..=120_000).contains(&ttl_ms), "{ttl_ms}");

    let before = evalsha();
    pc.qr_confirm(&pc_session, &watch.qr_id)
        .await
        .expect("confirm");
    assert_eq!(evalsha() - before, 1, "confirm is one script");
    let mut mine = scan.into_login(&watch.qr_id).expect("login");
    let before = evalsha();
    assert!(matches!(
        phone.qr_poll(&mine, ClientType::Mobile).await,
        Ok(QrPoll::LoggedIn(_))
    ));
    // The redemption is one script; the session it opens costs what a login costs.
    assert!(evalsha() - before >= 1);
    assert!(is_code(
        &phone
            .qr_wait_every(&mut mine, ClientType::Mobile, FAST, |_| {})
            .await,
        ErrorCode::QrExpired
    ));
}
