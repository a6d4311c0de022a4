//! The SDK against a real node: login → ticket → socket → silent renewal → kick, and a
//! reconnect with a fresh ticket after a flood close. This is the README's client flow.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{TestServer, PASSWORD};
use ticketgate_sdk::protocol::{close, ServerFrame};
use ticketgate_sdk::{ClientType, ConnectOptions, Event, SessionHandle};

async fn next_event(conn: &mut ticketgate_sdk::ManagedConnection) -> Event {
    tokio::time::timeout(Duration::from_secs(10), conn.next())
        .await
        .expect("an event in time")
        .expect("the connection reports until it ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_ticket_socket_silent_renewal_then_kick() {
    let server = TestServer::builder()
        .config(|c| {
            c.ttl.access = Duration::from_secs(4);
            c.ttl.jwt_leeway = Duration::ZERO;
        })
        .start()
        .await;
    let client = server.client();
    let session = client
        .login("alice", PASSWORD, ClientType::Mobile)
        .await
        .expect("login");
    let handle = SessionHandle::new(client, session);
    let mut conn = handle.connect_with_reconnect(ConnectOptions::default());

    let Event::Welcome(welcome) = next_event(&mut conn).await else {
        panic!("welcome first");
    };
    // The server says `expiring`; the SDK refreshes and answers by itself.
    let renewed = loop {
        match next_event(&mut conn).await {
            Event::Frame(ServerFrame::Refreshed { expires_at }) => break expires_at,
            Event::Frame(ServerFrame::Expiring { .. }) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(renewed > welcome.expires_at, "the deadline moved");

    // An admin kick ends it: 4503, and the SDK does not reconnect.
    let kicked = reqwest::Client::new()
        .post(format!(
            "http://{}/admin/v1/users/alice/kick",
            server.admin_addr
        ))
        .bearer_auth(server.config.admin_key.as_deref().expect("key"))
        .json(&json!({}))
        .send()
        .await
        .expect("kick");
    assert_eq!(kicked.status(), 200);
    loop {
        match next_event(&mut conn).await {
            Event::Closed {
                code,
                will_reconnect,
                ..
            } => {
                assert_eq!((code, will_reconnect), (close::REVOKED, false));
                break;
            }
            Event::Frame(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(handle.mint_ticket().await.is_err(), "the session is over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flood_close_the_sdk_reconnects_with_a_fresh_ticket() {
    let server = TestServer::builder()
        .config(|c| c.rates.frames = ticketgate::config::Rate::parse("5/s").expect("rate"))
        .start()
        .await;
    let client = server.client();
    let session = client
        .login("bob", PASSWORD, ClientType::Web)
        .await
        .expect("login");
    let handle = SessionHandle::new(client, session);
    let mut conn = handle.connect_with_reconnect(ConnectOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
    });
    let Event::Welcome(first) = next_event(&mut conn).await else {
        panic!("welcome first");
    };
    for _ in 0..20 {
        let _ = conn.send(ticketgate_sdk::protocol::ClientFrame::Ping).await;
    }
    let mut saw_close = false;
    let second = loop {
        match next_event(&mut conn).await {
            Event::Closed {
                code,
                will_reconnect,
                ..
            } => {
                assert_eq!((code, will_reconnect), (close::FLOOD, true));
                saw_close = true;
            }
            Event::Welcome(w) => break w,
            _ => continue,
        }
    };
    assert!(saw_close);
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.conn_id, first.conn_id);
}
