//! The two ways in: the first request of a connection is read without hyper; a connect
//! request later on a kept-alive connection goes through hyper. Both must behave alike.

use std::time::Duration;

use ticketgate_sdk::protocol::SUBPROTOCOL;
use ticketgate_sdk::Ticket;

use crate::answers::assert_error;
use crate::request::{exchange_on, Req};
use crate::signed::{assert_minted, Signed};
use crate::support::raw::{first_frame, next_message, Conn};
use crate::support::TestServer;
use crate::upgrade::{assert_admitted, ticket_for, upgrade};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_after_a_mint_on_the_same_connection_is_admitted() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let mut conn = Conn::open(&server).await;
    let minted = exchange_on(&mut conn, server.addr, &Signed::mint(&session).request()).await;
    assert_minted(&minted);
    let ticket = Ticket {
        ticket: minted.json()["ticket"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        expires_in: 30,
        ws_url: String::new(),
        new_access_token: None,
    };
    let answer = exchange_on(&mut conn, server.addr, &upgrade(&session, &ticket)).await;
    assert_eq!(answer.status, 101, "{answer:?} {}", answer.text());
    assert_eq!(answer.header("sec-websocket-protocol"), Some(SUBPROTOCOL));
    let mut ws = conn.into_ws().await;
    let welcome = first_frame(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["session_id"], session.session_id.as_str());
    // Single use holds on this path too.
    assert_error(
        &upgrade(&session, &ticket).send_raw(&server).await,
        401,
        "ticket_invalid",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_leaves_the_connection_open_for_the_next_request() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let forged = Ticket {
        ticket: format!("{}x", ticket.ticket),
        ..ticket.clone()
    };
    let mut conn = Conn::open(&server).await;
    let refused = exchange_on(&mut conn, server.addr, &upgrade(&session, &forged)).await;
    assert_error(&refused, 401, "ticket_invalid");
    assert!(refused.header("date").is_some(), "{refused:?}");
    let health = exchange_on(&mut conn, server.addr, &Req::new("GET", "/healthz")).await;
    assert_eq!(health.status, 200, "{}", health.text());
    // And the real ticket was not touched by the refusal.
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
}

/// A head that arrives in pieces is still one request; frames a client sends right
/// after its head, before the 101 arrives, are not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_pieces_and_a_frame_before_the_101_are_both_served() {
    let server = TestServer::builder().start().await;
    let (session, ticket) = ticket_for(&server).await;
    let mut bytes = upgrade(&session, &ticket).to_bytes(server.addr);
    // A masked ping "hi" (RFC 6455 §5.5.2), sent with the last piece of the head.
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x89, 0x82]);
    bytes.extend_from_slice(&mask);
    bytes.extend_from_slice(&[b'h' ^ mask[0], b'i' ^ mask[1]]);
    let mut conn = Conn::open(&server).await;
    let (first, second) = bytes.split_at(20);
    let (second, third) = second.split_at(second.len() / 2);
    for piece in [first, second, third] {
        conn.send(piece).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = conn.answer().await;
    assert_eq!(answer.status, 101, "{answer:?} {}", answer.text());
    let mut ws = conn.into_ws().await;
    assert_eq!(first_frame(&mut ws).await["type"], "welcome");
    let pong = next_message(&mut ws).await;
    assert_eq!(
        pong,
        tokio_tungstenite::tungstenite::Message::Pong(b"hi".to_vec().into())
    );
}
