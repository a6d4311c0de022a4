//! GET /v1/connect: malformed upgrades (PROTOCOL §4, §8 "Upgrade order"), and the
//! ways a good upgrade may be spelled.

use ticketgate_sdk::protocol::SUBPROTOCOL;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::answers::assert_error;
use crate::request::Req;
use crate::support::raw::{first_frame, LIMIT};
use crate::support::TestServer;
use crate::upgrade::{assert_admitted, open, ticket_for, upgrade};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_without_upgrade_headers_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let query = format!(
        "/v1/connect?device_id={}&ticket={}",
        session.device_id, ticket.ticket
    );
    assert_error(
        &Req::new("GET", &query).send(&server).await,
        400,
        "bad_request",
    );
    let half = upgrade(&session, &ticket).without("upgrade");
    assert_error(&half.send_raw(&server).await, 400, "bad_request");
    let half = upgrade(&session, &ticket).header("connection", "keep-alive");
    assert_error(&half.send_raw(&server).await, 400, "bad_request");
    let h2c = upgrade(&session, &ticket).header("upgrade", "h2c");
    assert_error(&h2c.send_raw(&server).await, 400, "bad_request");
    // Refused before the ticket was looked at: it still opens a socket.
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_version_other_than_13_gets_426() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    for version in ["8", "12", "14", "13, 8", "abc"] {
        let req = upgrade(&session, &ticket).header("sec-websocket-version", version);
        let answer = req.send_raw(&server).await;
        assert_error(&answer, 426, "bad_request");
        assert_eq!(
            answer.header("sec-websocket-version"),
            Some("13"),
            "{version}"
        );
    }
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_websocket_key_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let missing = upgrade(&session, &ticket).without("sec-websocket-key");
    assert_error(&missing.send_raw(&server).await, 400, "bad_request");
    for key in [
        "",
        "not base64!",
        "dGhlIHNhbXBsZQ==",
        "dGhlIHNhbXBsZSBub25jZSBpcyBsb25n",
    ] {
        let req = upgrade(&session, &ticket).header("sec-websocket-key", key);
        assert_error(&req.send_raw(&server).await, 400, "bad_request");
    }
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_outside_the_allow_list_is_refused_without_burning_the_ticket() {
    let server = TestServer::builder()
        .config(|c| c.ws.allowed_origins = Some(vec!["https://app.example".into()]))
        .start()
        .await;
    let (session, ticket) = ticket_for(&server).await;
    let origins: [&[u8]; 6] = [
        b"https://evil.example",
        b"http://app.example",
        b"https://app.example.evil",
        b"https://app.example:8443",
        b"null",
        b"https://app.example\xff",
    ];
    for origin in origins {
        let req = upgrade(&session, &ticket).header("origin", origin);
        let answer = req.send_raw(&server).await;
        assert_error(&answer, 403, "origin_forbidden");
    }
    let allowed = upgrade(&session, &ticket).header("origin", "https://app.example");
    assert_admitted(&server, &allowed, &session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_subprotocol_without_ticketgate_v1_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    for protocols in [
        format!("ticket.{}", ticket.ticket),
        format!("chat, ticket.{}", ticket.ticket),
        format!("ticketgate.v2, ticket.{}", ticket.ticket),
        format!("ticketgate.v1x, ticket.{}", ticket.ticket),
    ] {
        let req = upgrade(&session, &ticket).header("sec-websocket-protocol", protocols);
        assert_error(&req.send_raw(&server).await, 400, "bad_request");
    }
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_a_ticket_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let bare = upgrade(&session, &ticket).header("sec-websocket-protocol", SUBPROTOCOL);
    assert_error(&bare.send_raw(&server).await, 400, "bad_request");
    let none = upgrade(&session, &ticket).without("sec-websocket-protocol");
    assert_error(&none.send_raw(&server).await, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_needs_a_uuid_device_id() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let uuid = uuid::Uuid::parse_str(&session.device_id).expect("uuid");
    let targets = [
        "/v1/connect".to_owned(),
        "/v1/connect?device_id=".to_owned(),
        "/v1/connect?device_id=not-a-uuid".to_owned(),
        format!("/v1/connect?device_id={}", uuid.simple()),
        format!("/v1/connect?device_id={}", uuid.urn()),
        format!("/v1/connect?device={}", session.device_id),
        format!("/v1/connect?device_id={}%00", session.device_id),
    ];
    for target in targets {
        let req = upgrade(&session, &ticket).target(&target);
        let answer = req.send_raw(&server).await;
        assert_error(&answer, 400, "bad_request");
    }
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_ticket_opens_one_socket() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let target = format!(
        "/v1/connect?device_id={}&ticket={}",
        session.device_id, ticket.ticket
    );
    // A client that can set subprotocols but passes the ticket in the query.
    let req = upgrade(&session, &ticket)
        .target(&target)
        .header("sec-websocket-protocol", SUBPROTOCOL);
    assert_admitted(&server, &req, &session).await;
    let again = req.send_raw(&server).await;
    assert_error(&again, 401, "ticket_invalid");

    // A client that cannot set subprotocols at all.
    let (session, ticket) = ticket_for(&server).await;
    let target = format!(
        "/v1/connect?device_id={}&ticket={}",
        session.device_id, ticket.ticket
    );
    let req = upgrade(&session, &ticket)
        .target(&target)
        .without("sec-websocket-protocol");
    let (answer, ws) = open(&server, &req).await;
    assert_eq!(answer.status, 101, "{answer:?} {}", answer.text());
    assert_eq!(
        first_frame(&mut ws.expect("socket")).await["type"],
        "welcome"
    );
    assert_error(&req.send_raw(&server).await, 401, "ticket_invalid");
}

/// RFC 6455 §4.1: a client that offered no subprotocol must fail the connection when
/// the answer names one, and browsers do. `?ticket=` exists for exactly those clients
/// (§4), so their answer must not carry `Sec-WebSocket-Protocol`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_no_subprotocol_is_not_sent_one() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let url = format!(
        "ws://{}/v1/connect?device_id={}&ticket={}",
        server.addr, session.device_id, ticket.ticket
    );
    let request = url.into_client_request().expect("request");
    let connected = tokio::time::timeout(LIMIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time");
    let (mut ws, response) = connected.expect("a standard client accepts the answer");
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(first_frame(&mut ws).await["type"], "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_upgrade_names_ticketgate_v1_exactly() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    // Offered in the other order and with an extra protocol: the answer is still exactly
    // `ticketgate.v1`, never the ticket.
    let req = upgrade(&session, &ticket).header(
        "sec-websocket-protocol",
        format!("ticket.{}, chat, {SUBPROTOCOL}", ticket.ticket),
    );
    assert_admitted(&server, &req, &session).await;
    // Offered on two header lines (RFC 6455 allows it).
    let (session, ticket) = ticket_for(&server).await;
    let req = upgrade(&session, &ticket)
        .header("sec-websocket-protocol", SUBPROTOCOL)
        .append(
            "sec-websocket-protocol",
            format!("ticket.{}", ticket.ticket),
        );
    assert_admitted(&server, &req, &session).await;
}
