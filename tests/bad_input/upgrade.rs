//! WebSocket upgrades (PROTOCOL §4): the upgrade request the SDK sends, and what a
//! successful one looks like.

use ticketgate_sdk::protocol::SUBPROTOCOL;
use ticketgate_sdk::{Session, Ticket};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

use crate::request::{exchange_on, Req};
use crate::support::raw::{assert_accepts, assert_welcome, Answer, Conn, WS_KEY};
use crate::support::TestServer;

/// The upgrade request the SDK sends for `ticket`, spelled out.
pub(crate) fn upgrade(session: &Session, ticket: &Ticket) -> Req {
    Req::new(
        "GET",
        &format!("/v1/connect?device_id={}", session.device_id),
    )
    .header("upgrade", "websocket")
    .header("connection", "Upgrade")
    .header("sec-websocket-version", "13")
    .header("sec-websocket-key", WS_KEY)
    .header(
        "sec-websocket-protocol",
        format!("{SUBPROTOCOL}, ticket.{}", ticket.ticket),
    )
}

/// Sends an upgrade request on a fresh connection; on 101 also hands back the socket.
pub(crate) async fn open(
    server: &TestServer,
    req: &Req,
) -> (Answer, Option<WebSocketStream<TcpStream>>) {
    let mut conn = Conn::open(server).await;
    let answer = exchange_on(&mut conn, server.addr, req).await;
    if answer.status != 101 {
        return (answer, None);
    }
    (answer, Some(conn.into_ws().await))
}

/// The upgrade succeeds the way §4 says: 101, subprotocol `ticketgate.v1` exactly, a
/// correct accept key, then a `welcome` frame for the session.
pub(crate) async fn assert_admitted(server: &TestServer, req: &Req, session: &Session) {
    let (answer, ws) = open(server, req).await;
    assert_accepts(&answer, WS_KEY);
    let protocols: Vec<_> = answer
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .collect();
    assert_eq!(protocols, [SUBPROTOCOL], "the chosen subprotocol");
    let mut ws = ws.expect("socket");
    assert_welcome(&mut ws, session).await;
}

/// Logs alice in and mints one ticket through the SDK.
pub(crate) async fn ticket_for(server: &TestServer) -> (Session, Ticket) {
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    (session, ticket)
}
