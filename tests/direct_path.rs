//! The direct path (`src/http/first.rs`): the first request head of a public connection
//! is read with `httparse` before hyper; a `GET /v1/connect` head is admitted there,
//! everything else goes to hyper with the bytes already read (`Prefixed`).
//!
//! These tests pin what must hold on that path, over raw TCP on loopback: request
//! boundaries (nothing after a head is served twice, lost, or served as the wrong
//! protocol), header parsing alike on both ways in (direct, and hyper for a later
//! request on a kept-alive connection), the size and time bounds of the head, single
//! use of tickets, and shutdown.
//!
//! "Through hyper" below means: the connect request is the second request of its
//! connection, after a `GET /healthz`, so axum's route admits it.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use support::raw::{
    assert_accepts, assert_welcome, first_frame, next_message, push_header_lines,
    trickle_until_closed, Answer, Conn, LIMIT, WS_KEY,
};
use support::TestServer;
use ticketgate_sdk::protocol::SUBPROTOCOL;
use ticketgate_sdk::{Client, Session};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Another valid key (16 bytes, base64).
const OTHER_KEY: &str = "AAECAwQFBgcICQoLDA0ODw==";
/// The server's limit on a request head (`MAX_HEAD_BYTES` in `src/http/mod.rs`).
const MAX_HEAD: usize = 16 * 1024;
/// A request hyper answers with 200 and no side effect.
const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
/// The same, asking the server to close after answering.
const HEALTHZ_CLOSE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

// ---------------------------------------------------------------------------------------
// Requests spelled out
// ---------------------------------------------------------------------------------------

/// A request head spelled out byte for byte.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, Vec<u8>)>,
    /// Line ending: `\r\n`, or `\n` for the lenient form.
    eol: &'static str,
}

impl Req {
    fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_owned(),
            target: target.to_owned(),
            version: "HTTP/1.1".to_owned(),
            headers: vec![("Host".to_owned(), b"t".to_vec())],
            eol: "\r\n",
        }
    }

    /// The upgrade the SDK sends, with the ticket in the subprotocol.
    fn connect(session: &Session, ticket: &str) -> Req {
        Req::new(
            "GET",
            &format!("/v1/connect?device_id={}", session.device_id),
        )
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", WS_KEY)
        .header(
            "Sec-WebSocket-Protocol",
            format!("{SUBPROTOCOL}, ticket.{ticket}"),
        )
    }

    /// Appends one `name: value` line (duplicates allowed, case kept).
    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Removes every line named `name` (any case).
    fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces every line named `name` by one.
    fn set(self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.without(name).header(name, value)
    }

    fn target(mut self, target: &str) -> Req {
        target.clone_into(&mut self.target);
        self
    }

    fn version(mut self, version: &str) -> Req {
        version.clone_into(&mut self.version);
        self
    }

    fn eol(mut self, eol: &'static str) -> Req {
        self.eol = eol;
        self
    }

    /// The exact head bytes, ending with the empty line.
    fn bytes(&self) -> Vec<u8> {
        let eol = self.eol.as_bytes();
        let mut out = format!("{} {} {}", self.method, self.target, self.version).into_bytes();
        out.extend_from_slice(eol);
        push_header_lines(&mut out, &self.headers, eol);
        out.extend_from_slice(eol);
        out
    }

    /// This request with an `X-Pad` header that makes the head exactly `len` bytes.
    fn padded_to(self, len: usize) -> Req {
        let base = self.clone().header("X-Pad", "").bytes().len();
        assert!(base <= len, "head is already {base} bytes");
        let padded = self.header("X-Pad", "p".repeat(len - base));
        assert_eq!(padded.bytes().len(), len);
        padded
    }
}

// ---------------------------------------------------------------------------------------
// Answers (read by `support::raw`) and the two ways in
// ---------------------------------------------------------------------------------------

/// The protocol's error answer: status, JSON content type, `{"error", "message"}`.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        answer.status,
        status,
        "expected {status} {code}, got {answer:?} {}",
        answer.text()
    );
    assert_eq!(
        answer
            .header("content-type")
            .and_then(|v| v.split(';').next()),
        Some("application/json"),
        "{answer:?}"
    );
    let body = answer.json();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A refusal by the HTTP layer itself or by the handler, never a 5xx, never a socket.
#[track_caller]
fn assert_refused(answer: &Answer, statuses: &[u16]) {
    assert!(
        statuses.contains(&answer.status),
        "expected one of {statuses:?}, got {answer:?} {}",
        answer.text()
    );
}

/// Exactly one `Content-Length`, and it is the length of the body read.
#[track_caller]
fn assert_framed(answer: &Answer, what: &str) {
    assert_eq!(answer.count("content-length"), 1, "{what}: {answer:?}");
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str()),
        "{what}"
    );
}

/// The server closes `conn` within [`LIMIT`] without sending anything more.
async fn assert_nothing_more(conn: &mut Conn, what: &str) {
    let after = conn.closed_within(LIMIT).await;
    assert!(
        after.is_empty(),
        "{what}: {:?}",
        String::from_utf8_lossy(&after)
    );
}

/// Sends `head` as the first request of a fresh connection (the direct path); its
/// answer, or `None` when the server closed without one.
async fn try_direct(server: &TestServer, head: &[u8]) -> (Option<Answer>, Conn) {
    let mut conn = Conn::open(server).await;
    conn.send(head).await;
    let answer = conn.try_answer().await;
    (answer, conn)
}

/// Sends `head` as the first request of a fresh connection (the direct path).
async fn direct(server: &TestServer, head: &[u8]) -> (Answer, Conn) {
    let (answer, conn) = try_direct(server, head).await;
    let answer = answer.expect("an HTTP answer, not a closed connection");
    (answer, conn)
}

/// A fresh connection on which a `/healthz` was answered 200: a request sent on it now
/// goes through hyper.
async fn after_healthz(server: &TestServer) -> Conn {
    let mut conn = Conn::open(server).await;
    conn.send(HEALTHZ).await;
    let health = conn.answer().await;
    assert_eq!(health.status, 200, "{}", health.text());
    conn
}

/// Sends `head` as the second request of a connection, after a `/healthz` (through hyper).
async fn through_hyper(server: &TestServer, head: &[u8]) -> (Answer, Conn) {
    let mut conn = after_healthz(server).await;
    conn.send(head).await;
    let answer = conn.answer().await;
    (answer, conn)
}

/// The same connect, changed by `change`, each way in with a ticket of its own (minted
/// first, both): the direct path's answer and hyper's (`None`: closed without one),
/// with their connections.
async fn try_both_ways(
    server: &TestServer,
    client: &Client,
    session: &Session,
    change: &dyn Fn(Req) -> Req,
) -> ((Option<Answer>, Conn), (Option<Answer>, Conn)) {
    let direct_ticket = mint(client, session).await;
    let hyper_ticket = mint(client, session).await;
    let a = try_direct(
        server,
        &change(Req::connect(session, &direct_ticket)).bytes(),
    )
    .await;
    let mut b_conn = after_healthz(server).await;
    b_conn
        .send(&change(Req::connect(session, &hyper_ticket)).bytes())
        .await;
    let b = b_conn.try_answer().await;
    (a, (b, b_conn))
}

/// [`try_both_ways`] where both ways must answer: (direct, hyper), with their connections.
async fn both_ways(
    server: &TestServer,
    client: &Client,
    session: &Session,
    change: &dyn Fn(Req) -> Req,
) -> ((Answer, Conn), (Answer, Conn)) {
    let ((a, a_conn), (b, b_conn)) = try_both_ways(server, client, session, change).await;
    let answered = "an HTTP answer, not a closed connection";
    ((a.expect(answered), a_conn), (b.expect(answered), b_conn))
}

/// A change to a request, for tables of variants.
type Change = Box<dyn Fn(Req) -> Req>;

// ---------------------------------------------------------------------------------------
// Sessions, tickets and sockets
// ---------------------------------------------------------------------------------------

async fn mint(client: &Client, session: &Session) -> String {
    client.mint_ticket(session).await.expect("mint").ticket
}

/// Logs alice in from a fresh device and mints one ticket.
async fn login_and_mint(server: &TestServer) -> (Client, Session, String) {
    let (client, session) = server.login().await;
    let ticket = mint(&client, &session).await;
    (client, session, ticket)
}

/// A node whose header timeout is `timeout`.
async fn with_header_timeout(timeout: Duration) -> TestServer {
    TestServer::builder()
        .config(move |c| c.header_timeout = timeout)
        .start()
        .await
}

/// A 101 of §4 for `key`, then the session's welcome frame.
async fn assert_socket(
    answer: &Answer,
    conn: Conn,
    session: &Session,
    key: &str,
) -> WebSocketStream<TcpStream> {
    assert_accepts(answer, key);
    let mut ws = conn.into_ws().await;
    assert_welcome(&mut ws, session).await;
    ws
}

/// `answer` is a 101, and the socket after it starts with a welcome.
async fn welcomed(answer: &Answer, conn: Conn) -> WebSocketStream<TcpStream> {
    assert_eq!(answer.status, 101, "{answer:?}");
    let mut ws = conn.into_ws().await;
    assert_eq!(first_frame(&mut ws).await["type"], "welcome");
    ws
}

/// A socket opened with `ticket` on the direct path, its welcome read.
async fn open_socket(
    server: &TestServer,
    session: &Session,
    ticket: &str,
) -> WebSocketStream<TcpStream> {
    let (answer, conn) = direct(server, &Req::connect(session, ticket).bytes()).await;
    welcomed(&answer, conn).await
}

/// The ticket was not consumed: it opens a socket now (and is spent by that).
async fn assert_ticket_unused(server: &TestServer, session: &Session, ticket: &str) {
    let (answer, conn) = direct(server, &Req::connect(session, ticket).bytes()).await;
    assert_socket(&answer, conn, session, WS_KEY).await;
}

/// The ticket is spent: presenting it again is 401 `ticket_invalid`, on both ways in.
async fn assert_ticket_spent(server: &TestServer, session: &Session, ticket: &str) {
    let head = Req::connect(session, ticket).bytes();
    assert_error(&direct(server, &head).await.0, 401, "ticket_invalid");
    assert_error(&through_hyper(server, &head).await.0, 401, "ticket_invalid");
}

/// A masked client frame (RFC 6455 §5.2), payload under 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x5a, 0x17, 0xc3, 0x88];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads frames until the server closes; the close code, or `None` for a close without a
/// frame. Also returns every text frame seen before it.
async fn until_close(ws: &mut WebSocketStream<TcpStream>) -> (Option<u16>, Vec<String>) {
    tokio::time::timeout(LIMIT, async {
        let mut texts = Vec::new();
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(frame)) => return (frame.map(|f| u16::from(f.code)), texts),
                Ok(Message::Text(t)) => texts.push(t.as_str().to_owned()),
                Ok(_) => {}
                Err(_) => return (None, texts),
            }
        }
        (None, texts)
    })
    .await
    .expect("the server closed the socket in time")
}

// ---------------------------------------------------------------------------------------
// The direct path admits, once
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connect_request_is_admitted_with_101_and_welcome() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let (answer, conn) = direct(&server, &Req::connect(&session, &ticket).bytes()).await;
    assert_eq!(answer.header("sec-websocket-protocol"), Some(SUBPROTOCOL));
    assert_eq!(answer.count("sec-websocket-protocol"), 1, "{answer:?}");
    assert!(
        answer
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{answer:?}"
    );
    // Held open: a dropped client socket leaves the registry as soon as the server
    // reads its EOF.
    let _ws = assert_socket(&answer, conn, &session, WS_KEY).await;
    assert_eq!(server.state.registry.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_spent_on_the_direct_path_is_refused_on_both_paths() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    assert_ticket_unused(&server, &session, &ticket).await;
    assert_ticket_spent(&server, &session, &ticket).await;
    // The query form of the same ticket is the same ticket.
    let query = Req::connect(&session, "")
        .set("Sec-WebSocket-Protocol", SUBPROTOCOL)
        .target(&format!(
            "/v1/connect?device_id={}&ticket={ticket}",
            session.device_id
        ));
    assert_error(
        &direct(&server, &query.bytes()).await.0,
        401,
        "ticket_invalid",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_spent_through_hyper_is_refused_on_the_direct_path() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let (answer, conn) = through_hyper(&server, &Req::connect(&session, &ticket).bytes()).await;
    assert_socket(&answer, conn, &session, WS_KEY).await;
    assert_ticket_spent(&server, &session, &ticket).await;
}

/// Two connections race with one ticket, both on the direct path: one socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ticket_presented_twice_at_once_opens_one_socket() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    for _ in 0..5 {
        let ticket = mint(&client, &session).await;
        let head = Req::connect(&session, &ticket).bytes();
        let (a, b) = tokio::join!(direct(&server, &head), direct(&server, &head));
        let mut statuses = [a.0.status, b.0.status];
        statuses.sort_unstable();
        assert_eq!(statuses, [101, 401], "{:?} {:?}", a.0, b.0);
    }
}

// ---------------------------------------------------------------------------------------
// Request boundaries: pipelining and bytes after a head
// ---------------------------------------------------------------------------------------

/// A refused connect and two requests pipelined behind it in the same write: one answer
/// each, in order, and nothing else on the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_and_pipelined_requests_get_one_answer_each() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let forged = format!("{ticket}x");
    let mut bytes = Req::connect(&session, &forged).bytes();
    bytes.extend_from_slice(HEALTHZ);
    bytes.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    bytes.extend_from_slice(HEALTHZ_CLOSE);
    let (refused, mut conn) = direct(&server, &bytes).await;
    assert_error(&refused, 401, "ticket_invalid");
    assert_framed(&refused, "the refusal");
    let health = conn.answer().await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_error(&conn.answer().await, 404, "not_found");
    let last = conn.answer().await;
    assert_eq!(last.status, 200, "{last:?}");
    assert_nothing_more(&mut conn, "bytes after the last answer").await;
    // The real ticket was not touched.
    assert_ticket_unused(&server, &session, &ticket).await;
}

/// A refused connect with a valid connect pipelined behind it: the second is admitted
/// (through hyper) and its socket works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_pipelined_after_a_refused_connect_opens_its_socket() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut bytes = Req::connect(&session, &format!("{ticket}x")).bytes();
    bytes.extend_from_slice(
        &Req::connect(&session, &ticket)
            .set("Sec-WebSocket-Key", OTHER_KEY)
            .bytes(),
    );
    let (refused, mut conn) = direct(&server, &bytes).await;
    assert_error(&refused, 401, "ticket_invalid");
    let answer = conn.answer().await;
    assert_socket(&answer, conn, &session, OTHER_KEY).await;
    assert_ticket_spent(&server, &session, &ticket).await;
}

/// A connect head with a second HTTP request behind it in the same write: after the 101
/// those bytes are WebSocket input (a protocol error), never an HTTP request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_behind_an_admitted_connect_is_not_served_as_http() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut bytes = Req::connect(&session, &ticket).bytes();
    bytes.extend_from_slice(HEALTHZ);
    let (answer, mut conn) = direct(&server, &bytes).await;
    assert_eq!(answer.status, 101, "{answer:?}");
    // Everything the server sends from here on: frames, never an HTTP answer.
    let rest = conn.closed_within(LIMIT).await;
    assert!(
        !rest.windows(8).any(|w| w == b"HTTP/1.1"),
        "an HTTP answer after the 101: {:?}",
        String::from_utf8_lossy(&rest)
    );
    // Read the frames back from what was received (the server has closed by now).
    let (mut feed, io) = tokio::io::duplex(rest.len() + 1024);
    feed.write_all(&rest).await.expect("feed");
    drop(feed);
    let mut ws = WebSocketStream::from_partially_read(io, Vec::new(), Role::Client, None).await;
    let welcome = next_message(&mut ws).await;
    assert!(welcome.to_text().expect("text").contains("\"welcome\""));
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1002),
        other => panic!("expected a close 1002, got {other:?}"),
    }
    assert_ticket_spent(&server, &session, &ticket).await;
}

/// Two connects in one write: the first opens a socket; the second is WebSocket input to
/// it and must not spend its ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_behind_an_admitted_connect_does_not_spend_its_ticket() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let first = mint(&client, &session).await;
    let second = mint(&client, &session).await;
    let mut bytes = Req::connect(&session, &first).bytes();
    bytes.extend_from_slice(&Req::connect(&session, &second).bytes());
    let (answer, conn) = direct(&server, &bytes).await;
    let mut ws = welcomed(&answer, conn).await;
    let (code, _) = until_close(&mut ws).await;
    assert_eq!(code, Some(1002));
    assert_ticket_unused(&server, &session, &second).await;
}

/// Frames sent with the head (before the 101 arrives) are served after the welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_head_are_served_in_order() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut bytes = Req::connect(&session, &ticket).bytes();
    bytes.extend_from_slice(&client_frame(0x1, br#"{"type":"ping"}"#));
    bytes.extend_from_slice(&client_frame(0x9, b"hi"));
    let (answer, conn) = direct(&server, &bytes).await;
    let mut ws = welcomed(&answer, conn).await;
    assert_eq!(first_frame(&mut ws).await["type"], "pong");
    let pong = next_message(&mut ws).await;
    assert_eq!(pong, Message::Pong(b"hi".to_vec().into()));
}

/// What the direct read took off the socket reaches hyper whole and in order, across
/// several of hyper's reads (a 12 KiB first request), and on into an upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_read_ahead_reach_hyper_and_the_upgrade_in_order() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut bytes = Req::new("GET", "/healthz").padded_to(12 * 1024).bytes();
    bytes.extend_from_slice(&Req::connect(&session, &ticket).bytes());
    bytes.extend_from_slice(&client_frame(0x1, br#"{"type":"ping"}"#));
    let (health, mut conn) = direct(&server, &bytes).await;
    assert_eq!(health.status, 200, "{health:?}");
    let answer = conn.answer().await;
    let mut ws = welcomed(&answer, conn).await;
    assert_eq!(first_frame(&mut ws).await["type"], "pong");
}

// ---------------------------------------------------------------------------------------
// Header parsing: the direct path reads a head as hyper does
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_and_tokens_in_odd_case_are_the_same_headers() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let head = Req::new(
        "GET",
        &format!("/v1/connect?device_id={}", session.device_id),
    )
    .header("uPGRADE", "WebSocket")
    .header("CONNECTION", "keep-alive, UPGRADE")
    .header("sec-WEBSOCKET-version", "13")
    .header("SEC-WEBSOCKET-KEY", WS_KEY)
    .header(
        "Sec-Websocket-Protocol",
        format!("{SUBPROTOCOL}, ticket.{ticket}"),
    );
    let (answer, conn) = direct(&server, &head.bytes()).await;
    assert_eq!(answer.header("sec-websocket-protocol"), Some(SUBPROTOCOL));
    assert_socket(&answer, conn, &session, WS_KEY).await;
}

/// `ticketgate.v1` and the ticket on separate `Sec-WebSocket-Protocol` lines, and the
/// upgrade tokens on separate `Connection` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_list_headers_are_read_as_one_list() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let head = Req::connect(&session, &ticket)
        .set("Connection", "keep-alive")
        .header("Connection", "Upgrade")
        .set("Sec-WebSocket-Protocol", SUBPROTOCOL)
        .header("Sec-WebSocket-Protocol", format!("ticket.{ticket}"));
    let (answer, conn) = direct(&server, &head.bytes()).await;
    assert_socket(&answer, conn, &session, WS_KEY).await;
}

/// Duplicate handshake headers and query parameters: 400 `bad_request` on both ways in,
/// never one copy read here and another by a proxy in front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_handshake_headers_are_refused_alike_on_both_paths() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let variants: Vec<(&str, Change)> = vec![
        (
            "two keys",
            Box::new(|r: Req| r.header("Sec-WebSocket-Key", OTHER_KEY)),
        ),
        (
            "a bad key after a good one",
            Box::new(|r: Req| r.header("Sec-WebSocket-Key", "short")),
        ),
        (
            "versions 13 and 8",
            Box::new(|r: Req| r.header("Sec-WebSocket-Version", "8")),
        ),
        (
            "versions 8 and 13",
            Box::new(|r: Req| {
                r.set("Sec-WebSocket-Version", "8")
                    .header("Sec-WebSocket-Version", "13")
            }),
        ),
        (
            "two device ids in the query",
            Box::new(|r: Req| {
                let target = format!("{}&device_id={}", r.target, uuid::Uuid::new_v4());
                r.target(&target)
            }),
        ),
    ];
    for (what, change) in variants {
        let ((a, _conn_a), (b, _conn_b)) = both_ways(&server, &client, &session, &change).await;
        assert_eq!(a.status, b.status, "{what}: direct {a:?} vs hyper {b:?}");
        assert_eq!(
            a.header("sec-websocket-accept"),
            b.header("sec-websocket-accept"),
            "{what}"
        );
        assert_eq!(
            a.header("sec-websocket-version"),
            b.header("sec-websocket-version"),
            "{what}"
        );
        if a.status != 101 {
            assert_eq!(a.json()["error"], b.json()["error"], "{what}");
        }
        // Each may appear once (RFC 6455 §11.3): refused, never read one way here and
        // another way by a proxy in front.
        assert_eq!(a.status, 400, "{what}: {a:?}");
        assert_eq!(a.json()["error"], "bad_request", "{what}");
    }
}

/// Heads that are not plain HTTP/1.1 syntax: the direct path leaves them to hyper, which
/// refuses them; nothing is admitted, no ticket spent, no 5xx, and the node still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_heads_are_refused_and_keep_the_ticket() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let good = Req::connect(&session, &ticket).bytes();
    let replace = |from: &[u8], to: &[u8]| -> Vec<u8> {
        let at = good
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern in head");
        let mut out = good[..at].to_vec();
        out.extend_from_slice(to);
        out.extend_from_slice(&good[at + from.len()..]);
        out
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // obs-fold: the ticket on a continuation line.
        ("obs-fold", replace(b", ticket.", b",\r\n ticket.")),
        (
            "a control byte in a value",
            replace(b"websocket\r\n", b"web\x01socket\r\n"),
        ),
        ("NUL in a value", replace(b"Upgrade\r\n", b"Upg\0rade\r\n")),
        (
            "DEL in a value",
            replace(b"Upgrade\r\n", b"Upgrade\x7f\r\n"),
        ),
        (
            "a space before the colon",
            replace(b"Upgrade: ", b"Upgrade : "),
        ),
        ("a bad byte in a name", replace(b"Upgrade: ", b"Upg(rade: ")),
        (
            "a bare CR in a value",
            replace(b"websocket\r\n", b"web\rsocket\r\n"),
        ),
        (
            "two spaces in the request line",
            replace(b"GET /", b"GET  /"),
        ),
        ("HTTP/1.2", replace(b"HTTP/1.1", b"HTTP/1.2")),
        ("no version", replace(b" HTTP/1.1", b"")),
        (
            "a space in the target",
            replace(b"/v1/connect?", b"/v1/connect ?"),
        ),
    ];
    for (what, head) in cases {
        let (answer, _conn) = try_direct(&server, &head).await;
        match answer {
            // Closing without an answer is a refusal too.
            None => {}
            Some(answer) => {
                assert!(
                    answer.status != 101 && answer.status < 500,
                    "{what}: {answer:?} {}",
                    answer.text()
                );
            }
        }
    }
    assert_ticket_unused(&server, &session, &ticket).await;
}

/// Heads the direct path hands to hyper on purpose (a body, an absolute-form target, a
/// method other than GET) or takes although they are unusual (bare LF, no Host): answered exactly as hyper answers them when they come second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_left_to_hyper_are_answered_as_hyper_answers_them() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let variants: Vec<(&str, Change)> = vec![
        (
            "Content-Length: 0",
            Box::new(|r: Req| r.header("Content-Length", "0")),
        ),
        (
            "absolute form",
            Box::new(|r: Req| {
                let target = format!("http://t{}", r.target);
                r.target(&target)
            }),
        ),
        (
            "lower-case method",
            Box::new(|r: Req| Req {
                method: "get".into(),
                ..r
            }),
        ),
        (
            "POST",
            Box::new(|r: Req| {
                Req {
                    method: "POST".into(),
                    ..r
                }
                .header("Content-Length", "0")
            }),
        ),
        ("bare LF line ends", Box::new(|r: Req| r.eol("\n"))),
        ("no Host", Box::new(|r: Req| r.without("Host"))),
    ];
    for (what, change) in variants {
        let ((a, a_conn), (b, _b_conn)) = try_both_ways(&server, &client, &session, &change).await;
        let (a_status, b_status) = (a.as_ref().map(|a| a.status), b.as_ref().map(|b| b.status));
        assert_eq!(a_status, b_status, "{what}: direct {a:?} vs hyper {b:?}");
        if a_status == Some(101) {
            let mut ws = a_conn.into_ws().await;
            assert_eq!(first_frame(&mut ws).await["type"], "welcome", "{what}");
        }
    }
}

/// An HTTP/1.0 upgrade cannot switch protocols (hyper answers `HTTP/1.0 101` and closes):
/// it must be refused as plain HTTP before the ticket is consumed (§4: a refused upgrade
/// is answered as plain HTTP, never as a socket, and keeps its ticket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_connect_is_refused_and_keeps_its_ticket() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let head = Req::connect(&session, &ticket).version("HTTP/1.0").bytes();
    let (answer, _conn) = try_direct(&server, &head).await;
    match answer {
        None => {}
        Some(answer) => assert!(
            (400..500).contains(&answer.status),
            "expected a refusal, got {answer:?}"
        ),
    }
    assert_ticket_unused(&server, &session, &ticket).await;
}

/// A head with more headers than the direct parser holds (64) is still a connect
/// request: hyper admits it (it allows 100), and more than hyper allows is refused
/// without spending the ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_headers_are_admitted_up_to_hyper_s_limit() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    for n in [55, 58, 59, 60, 70, 90] {
        let ticket = mint(&client, &session).await;
        let mut req = Req::connect(&session, &ticket);
        for i in 0..n {
            req = req.header(&format!("X-H{i}"), "v");
        }
        let (answer, conn) = direct(&server, &req.bytes()).await;
        assert_socket(&answer, conn, &session, WS_KEY).await;
    }
    let ticket = mint(&client, &session).await;
    let mut req = Req::connect(&session, &ticket);
    for i in 0..120 {
        req = req.header(&format!("X-H{i}"), "v");
    }
    let (answer, _conn) = direct(&server, &req.bytes()).await;
    assert_refused(&answer, &[400, 431]);
    assert_ticket_unused(&server, &session, &ticket).await;
}

// ---------------------------------------------------------------------------------------
// Size bounds of the head
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_head_of_exactly_the_limit_is_admitted() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let head = Req::connect(&session, &ticket).padded_to(MAX_HEAD).bytes();
    assert_eq!(head.len(), MAX_HEAD);
    let (answer, conn) = direct(&server, &head).await;
    assert_socket(&answer, conn, &session, WS_KEY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_head_one_byte_over_the_limit_is_431_and_keeps_the_ticket() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let head = Req::connect(&session, &ticket)
        .padded_to(MAX_HEAD + 1)
        .bytes();
    let (answer, mut conn) = direct(&server, &head).await;
    assert_refused(&answer, &[431]);
    conn.closed_within(LIMIT).await;
    assert_ticket_unused(&server, &session, &ticket).await;
}

/// A head that never ends, sent as fast as possible: refused once the limit is reached,
/// the connection closed, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_connect_head_is_cut_off_at_the_limit() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut head = Req::connect(&session, &ticket).bytes();
    head.truncate(head.len() - 2); // no empty line
    head.extend_from_slice(b"X-Endless: ");
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&head).await;
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = head.len();
        // Up to 64 MiB: far more than any buffer the server may keep for a head.
        while sent < 64 * 1024 * 1024 {
            if writer.write_all(&chunk).await.is_err() {
                return (sent, true);
            }
            sent += chunk.len();
        }
        (sent, false)
    });
    let mut conn_buf = Vec::new();
    let closed = tokio::time::timeout(LIMIT, reader.read_to_end(&mut conn_buf)).await;
    assert!(closed.is_ok(), "the connection is still open");
    let text = String::from_utf8_lossy(&conn_buf);
    assert!(
        text.starts_with("HTTP/1.1 431") || text.is_empty(),
        "expected a 431 or a bare close: {text:?}"
    );
    let (sent, stopped) = tokio::time::timeout(LIMIT, writing)
        .await
        .expect("the writer stopped in time")
        .expect("writer task");
    assert!(
        stopped,
        "the server read all {sent} bytes of an endless head"
    );
    assert_ticket_unused(&server, &session, &ticket).await;
}

// ---------------------------------------------------------------------------------------
// Time bounds of the head (slowloris)
// ---------------------------------------------------------------------------------------

/// A connect head sent one byte per segment is still one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_head_sent_byte_by_byte_is_admitted() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let head = Req::connect(&session, &ticket).bytes();
    let mut conn = Conn::open(&server).await;
    let started = Instant::now();
    for byte in &head {
        conn.send(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        started.elapsed() < server.config.header_timeout / 2,
        "the client was too slow for this test to mean anything"
    );
    let answer = conn.answer().await;
    assert_socket(&answer, conn, &session, WS_KEY).await;
}

/// Closes within [timeout - 20 %, 3 × timeout] of `started`, with nothing or a 408
/// before, or fails.
async fn assert_closed_in_time(conn: &mut Conn, started: Instant, timeout: Duration) {
    let upper = timeout * 3;
    let rest = conn.closed_within(upper + Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout.mul_f32(0.8),
        "closed after {elapsed:?}, before the header timeout {timeout:?}"
    );
    assert!(
        elapsed <= upper,
        "closed after {elapsed:?}, header timeout {timeout:?}"
    );
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_dropped_after_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let server = with_header_timeout(timeout).await;
    let mut conn = Conn::open(&server).await;
    assert_closed_in_time(&mut conn, Instant::now(), timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_head_never_finished_is_dropped_after_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let server = with_header_timeout(timeout).await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let head = Req::connect(&session, &ticket).bytes();
    let mut conn = Conn::open(&server).await;
    let started = Instant::now();
    conn.send(&head[..head.len() - 1]).await;
    assert_closed_in_time(&mut conn, started, timeout).await;
    assert_ticket_unused(&server, &session, &ticket).await;
}

/// After a refused connect, hyper's own header timeout guards the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_finished_after_a_refused_connect_is_dropped_in_time() {
    let timeout = Duration::from_secs(1);
    let server = with_header_timeout(timeout).await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut bytes = Req::connect(&session, &format!("{ticket}x")).bytes();
    bytes.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
    let (refused, mut conn) = direct(&server, &bytes).await;
    assert_error(&refused, 401, "ticket_invalid");
    assert_closed_in_time(&mut conn, Instant::now(), timeout).await;
}

/// A head trickled in one line at a time gets one header timeout in all, also when it
/// grows past the 64 headers the direct parser holds and is handed to hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_with_many_headers_gets_one_header_timeout() {
    let timeout = Duration::from_secs(3);
    let server = with_header_timeout(timeout).await;
    let mut conn = Conn::open(&server).await;
    let started = Instant::now();
    let mut head = b"GET /v1/connect?device_id=x HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..55 {
        head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    conn.send(&head).await;
    let tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(300),
        Duration::from_millis(300),
    );
    let mut line = 55;
    let elapsed = trickle_until_closed(&mut conn.stream, started, timeout * 3, tick, || {
        line += 1;
        // The 65th header line arrives at about 2.7 s of 3 s.
        format!("X-H{line}: v\r\n")
    })
    .await;
    assert!(
        elapsed >= timeout.mul_f32(0.8),
        "closed after {elapsed:?}, before the header timeout"
    );
    assert!(
        elapsed <= timeout + Duration::from_millis(1500),
        "closed after {elapsed:?}: more than one header timeout ({timeout:?})"
    );
}

// ---------------------------------------------------------------------------------------
// Refusals written by the direct path
// ---------------------------------------------------------------------------------------

/// A refusal written raw carries what hyper's answer to the same request carries:
/// status, JSON code, the protocol's extra headers, and one `Content-Length` that
/// frames the body exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_on_the_direct_path_is_framed_like_hyper_s() {
    let server = TestServer::builder()
        .config(|c| c.ws.allowed_origins = Some(vec!["https://ok.example".into()]))
        .start()
        .await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let good = Req::connect(&session, &ticket);
    let other_device = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(&str, Req, u16, &str)> = vec![
        (
            "no upgrade",
            good.clone().without("Upgrade"),
            400,
            "bad_request",
        ),
        (
            "version 8",
            good.clone().set("Sec-WebSocket-Version", "8"),
            426,
            "bad_request",
        ),
        (
            "bad origin",
            good.clone().header("Origin", "https://evil.example"),
            403,
            "origin_forbidden",
        ),
        (
            "no device",
            good.clone().target("/v1/connect"),
            400,
            "bad_request",
        ),
        (
            "forged ticket",
            Req::connect(&session, &format!("{ticket}x")),
            401,
            "ticket_invalid",
        ),
        (
            "bad device id",
            good.clone()
                .target(&format!("/v1/connect?device_id={other_device}x")),
            400,
            "bad_request",
        ),
    ];
    for (what, req, status, code) in cases {
        let (a, _a) = direct(&server, &req.bytes()).await;
        let (b, _b) = through_hyper(&server, &req.bytes()).await;
        for (way, answer) in [("direct", &a), ("hyper", &b)] {
            assert_error(answer, status, code);
            assert_framed(answer, &format!("{what} {way}"));
            assert_eq!(answer.count("date"), 1, "{what} {way}: {answer:?}");
        }
        assert_eq!(
            a.header("cache-control"),
            b.header("cache-control"),
            "{what}"
        );
        assert_eq!(
            a.header("sec-websocket-version"),
            b.header("sec-websocket-version"),
            "{what}"
        );
        assert!(a.header("sec-websocket-accept").is_none(), "{what}: {a:?}");
    }
    assert_eq!(
        direct(
            &server,
            &good.clone().set("Sec-WebSocket-Version", "8").bytes()
        )
        .await
        .0
        .header("sec-websocket-version"),
        Some("13")
    );
    // None of the refusals spent the ticket.
    assert_ticket_unused(&server, &session, &ticket).await;
}

/// Through hyper, a refused connect that asked to close is answered and the connection
/// closed: a request pipelined behind it is not served (RFC 9112 §9.6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_asking_to_close_is_the_last_request_through_hyper() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let mut bytes = Req::connect(&session, "nope")
        .set("Connection", "close")
        .bytes();
    bytes.extend_from_slice(HEALTHZ);
    let mut conn = after_healthz(&server).await;
    conn.send(&bytes).await;
    assert_error(&conn.answer().await, 400, "bad_request");
    assert_nothing_more(&mut conn, "served after Connection: close").await;
}

/// The same on the direct path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_asking_to_close_is_the_last_request_on_the_direct_path() {
    // A short header timeout, so that a connection left open ends well within LIMIT.
    let server = with_header_timeout(Duration::from_secs(2)).await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    for connection in ["close", "Upgrade, close", "close, Upgrade"] {
        // Refused: the first has no upgrade token, the others a forged ticket.
        let mut bytes = Req::connect(&session, &format!("{ticket}x"))
            .set("Connection", connection)
            .bytes();
        bytes.extend_from_slice(HEALTHZ);
        let (refused, mut conn) = direct(&server, &bytes).await;
        assert!(
            refused.status == 400 || refused.status == 401,
            "{connection}: {refused:?}"
        );
        let what = format!("{connection}: served after Connection: close");
        assert_nothing_more(&mut conn, &what).await;
    }
}

/// The request target is read as hyper reads it (`http::Uri`): a target hyper refuses as
/// malformed is not admitted on the direct path either, and a fragment is not part of
/// the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_target_is_read_as_hyper_reads_it() {
    let server = TestServer::builder().start().await;
    let (client, session) = server.login().await;
    let device = session.device_id.clone();
    let targets = [
        format!("/v1/connect?device_id={device}&x=<b>"),
        format!("/v1/connect?device_id={device}&x=\"q\""),
        format!("/v1/connect?device_id={device}#frag"),
        format!("/v1/connect?x=1#&device_id={device}"),
    ];
    for target in targets {
        let ((a, _a), (b, _b)) =
            both_ways(&server, &client, &session, &|r: Req| r.target(&target)).await;
        assert_eq!(a.status, b.status, "{target}: direct {a:?} vs hyper {b:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

/// At shutdown: a socket opened on the direct path gets a resume ticket and 1001; a head
/// still being read and a kept-alive connection after a refusal are closed; the node
/// stops within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_kind_of_public_connection() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut ws = open_socket(&server, &session, &ticket).await;

    let mut partial = Conn::open(&server).await;
    partial
        .send(b"GET /v1/connect?device_id=x HTTP/1.1\r\nHost: t\r\n")
        .await;
    let (refused, mut kept) = direct(&server, &Req::connect(&session, "nope").bytes()).await;
    // Accepted in order: `kept` was answered, so `partial` is in the accept loop's hands.
    assert_error(&refused, 401, "ticket_invalid");

    let grace = server.config.shutdown_grace;
    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    let (code, texts) = until_close(&mut ws).await;
    assert_eq!(code, Some(1001), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("\"resume\"")),
        "no resume ticket before the close: {texts:?}"
    );
    assert_nothing_more(&mut partial, "a head still being read").await;
    kept.closed_within(LIMIT).await;
    tokio::time::timeout(grace + LIMIT, stopping)
        .await
        .expect("the node stopped in time")
        .expect("stop task");
    assert!(started.elapsed() < grace + LIMIT);
}

/// A socket opened on the direct path answers frames and closes cleanly on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_socket_completes_the_close_handshake_and_leaves_the_registry() {
    let server = TestServer::builder().start().await;
    let (_client, session, ticket) = login_and_mint(&server).await;
    let mut ws = open_socket(&server, &session, &ticket).await;
    assert_eq!(server.state.registry.len(), 1);
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send");
    assert_eq!(first_frame(&mut ws).await["type"], "pong");
    ws.close(None).await.expect("close");
    let (code, _) = until_close(&mut ws).await;
    assert!(
        code.is_none() || code == Some(1000) || code == Some(1005),
        "{code:?}"
    );
    let state = server.state.clone();
    support::wait_until(move || state.registry.is_empty()).await;
}
