//! Bad input at the public edge (PROTOCOL §2, §3, §4, §8): every malformed, forged,
//! stale, replayed, oversized or never-finished request gets the protocol's status and
//! JSON error code, never a 5xx, and within a bounded time.
//!
//! Requests are built by hand: reqwest where the bytes are ordinary, raw TCP where the
//! exact bytes matter (control characters, non-UTF-8 values, chunked bodies, huge heads,
//! headers that never finish, malformed upgrades). Every error answer goes through
//! [`assert_error`], which checks status, `Content-Type`, code and shape at once.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Value};
use support::raw::{
    assert_accepts, assert_welcome, first_frame, next_message, push_header_lines, read_answer,
    trickle_until_closed, Answer, Conn, LIMIT, WS_KEY,
};
use support::{StoreKind, TestServer};
use ticketgate::config::Rate;
use ticketgate_sdk::protocol::{
    HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, MAX_BODY_BYTES, SUBPROTOCOL,
};
use ticketgate_sdk::signing::{sign, SignedParts};
use ticketgate_sdk::{ClientType, Session, Ticket};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::WebSocketStream;

// ---------------------------------------------------------------------------------------
// The one error assertion (answers are read by `support::raw`)
// ---------------------------------------------------------------------------------------

/// The protocol's error answer: this status, `Content-Type: application/json` and a body
/// that is exactly `{"error": code, "message": <non-empty string>}`.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        answer.status,
        status,
        "expected {status} {code}, got {} {}",
        answer.status,
        answer.text()
    );
    let media_type = answer
        .header("content-type")
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    assert_eq!(media_type, Some("application/json"), "{answer:?}");
    let body = answer.json();
    let fields = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(fields.len(), 2, "error body has other fields: {body}");
    assert_eq!(
        fields.get("error").and_then(Value::as_str),
        Some(code),
        "{body}"
    );
    assert!(
        fields
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "error message missing: {body}"
    );
}

/// Malformed HTTP that the HTTP layer itself may refuse with a bodiless answer of one of
/// `layer_statuses` (PROTOCOL §8); if the handler answers instead, it must be the
/// protocol's 400 `bad_request`. Never a 5xx either way.
#[track_caller]
fn assert_refused_as_malformed(answer: &Answer, layer_statuses: &[u16]) {
    assert!(answer.status < 500, "server error: {answer:?}");
    if answer.body.is_empty() && layer_statuses.contains(&answer.status) {
        return;
    }
    assert_error(answer, 400, "bad_request");
}

// ---------------------------------------------------------------------------------------
// Requests spelled out, and how they are sent
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 request spelled out, header bytes and all. `Host` (and `Content-Length`,
/// for raw sends) are added when sent.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Sets `name` to `value`, replacing every earlier value.
    fn header(self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.without(name).append(name, value)
    }

    /// Adds one more `name: value` line.
    fn append(mut self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self
    }

    fn method(mut self, method: &str) -> Req {
        method.clone_into(&mut self.method);
        self
    }

    fn target(mut self, target: &str) -> Req {
        target.clone_into(&mut self.target);
        self
    }

    /// Sends with reqwest (every header value must be a valid `HeaderValue`).
    async fn send(&self, server: &TestServer) -> Answer {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).expect("method");
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{}", server.url(), self.target))
            .body(self.body.clone());
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            let value = HeaderValue::from_bytes(value).expect("use send_raw for these bytes");
            request = request.header(name, value);
        }
        let answer = async { Answer::from_reqwest(request.send().await.expect("answered")).await };
        tokio::time::timeout(LIMIT, answer)
            .await
            .unwrap_or_else(|_| panic!("{} {} not answered in {LIMIT:?}", self.method, self.target))
    }

    /// The exact bytes of the request.
    fn to_bytes(&self, host: SocketAddr) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            self.method, self.target
        )
        .into_bytes();
        push_header_lines(&mut out, &self.headers, b"\r\n");
        let framed = self
            .headers
            .iter()
            .any(|(n, _)| n == "content-length" || n == "transfer-encoding");
        if !framed && (!self.body.is_empty() || self.method == "POST") {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// Sends the exact bytes on a fresh TCP connection.
    async fn send_raw(&self, server: &TestServer) -> Answer {
        exchange(server.addr, self.to_bytes(server.addr)).await
    }
}

/// Writes `bytes` on a fresh connection while reading the answer: the server may answer
/// (413, 431) before it has read everything, and then stop reading.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        // A server that has refused may close before reading it all: not an error here.
        let _ = writer.write_all(&bytes).await;
        writer // kept open until the answer is read: a half-close would end the request
    });
    let answer = tokio::time::timeout(LIMIT, read_answer(&mut reader, &mut Vec::new()))
        .await
        .expect("answered within the limit")
        .expect("an HTTP answer, not a dropped connection");
    writing.abort();
    answer
}

// ---------------------------------------------------------------------------------------
// Signed requests (PROTOCOL §2)
// ---------------------------------------------------------------------------------------

/// What a signed call is made of. `request()` signs exactly these parts; a test changes
/// one part, or the request after signing, to break it in one way only.
#[derive(Clone)]
struct Signed {
    key: Vec<u8>,
    access_token: String,
    method: String,
    path: String,
    device: String,
    timestamp: i64,
    nonce: String,
    body: Vec<u8>,
}

impl Signed {
    /// A correct `POST /v1/tickets` for `session`, signed now with a fresh nonce.
    fn mint(session: &Session) -> Signed {
        Signed {
            key: session.signing_key.clone(),
            access_token: session.access_token.clone(),
            method: "POST".into(),
            path: "/v1/tickets".into(),
            device: session.device_id.clone(),
            timestamp: unix_now(),
            nonce: fresh_nonce(),
            body: b"{}".to_vec(),
        }
    }

    fn signature(&self) -> String {
        sign(
            &self.key,
            &SignedParts {
                method: &self.method,
                path: &self.path,
                device_id: &self.device,
                timestamp: self.timestamp,
                nonce: &self.nonce,
                body: &self.body,
            },
        )
    }

    /// The request as signed: Bearer, JSON, and the four `X-TG-*` headers.
    fn request(&self) -> Req {
        Req::new(&self.method, &self.path)
            .header("authorization", format!("Bearer {}", self.access_token))
            .header("content-type", "application/json")
            .header(HEADER_DEVICE, &self.device)
            .header(HEADER_TIMESTAMP, self.timestamp.to_string())
            .header(HEADER_NONCE, &self.nonce)
            .header(HEADER_SIGNATURE, self.signature())
            .body(self.body.clone())
    }
}

fn fresh_nonce() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

fn unix_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(now.as_secs()).expect("seconds")
}

/// Waits until the current second has at least half of it left, so that a timestamp
/// computed now is still "now" on the server when the request arrives.
async fn early_in_a_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    if now.subsec_millis() > 500 {
        tokio::time::sleep(Duration::from_millis(
            u64::from(1000 - now.subsec_millis()) + 5,
        ))
        .await;
    }
}

/// A 201 with a ticket.
#[track_caller]
fn assert_minted(answer: &Answer) {
    assert_eq!(answer.status, 201, "expected a ticket: {}", answer.text());
    let body = answer.json();
    let ticket = body["ticket"].as_str().unwrap_or_default();
    assert!(!ticket.is_empty(), "{body}");
}

// ---------------------------------------------------------------------------------------
// WebSocket upgrades (PROTOCOL §4)
// ---------------------------------------------------------------------------------------

/// The upgrade request the SDK sends for `ticket`, spelled out.
fn upgrade(session: &Session, ticket: &Ticket) -> Req {
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
async fn open(server: &TestServer, req: &Req) -> (Answer, Option<WebSocketStream<TcpStream>>) {
    let mut conn = Conn::open(server).await;
    let answer = exchange_on(&mut conn, server.addr, req).await;
    if answer.status != 101 {
        return (answer, None);
    }
    (answer, Some(conn.into_ws().await))
}

/// The upgrade succeeds the way §4 says: 101, subprotocol `ticketgate.v1` exactly, a
/// correct accept key, then a `welcome` frame for the session.
async fn assert_admitted(server: &TestServer, req: &Req, session: &Session) {
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
async fn ticket_for(server: &TestServer) -> (Session, Ticket) {
    let (client, session) = server.login().await;
    let ticket = client.mint_ticket(&session).await.expect("mint");
    (session, ticket)
}

// ---------------------------------------------------------------------------------------
// POST /v1/tickets: signing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamp_outside_the_skew_is_stale() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for offset in [-61, 61, -3600, 3600, -unix_now()] {
        early_in_a_second().await;
        let mut signed = Signed::mint(&session);
        signed.timestamp = unix_now() + offset;
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 401, "stale_request");
    }
    // Within the skew is fine: the boundary is the skew, not something tighter.
    for offset in [-58, 58] {
        early_in_a_second().await;
        let mut signed = Signed::mint(&session);
        signed.timestamp = unix_now() + offset;
        assert_minted(&signed.request().send(&server).await);
    }
}

both_stores!(a_nonce_is_accepted_once, |kind| async move {
    let server = TestServer::builder().store(kind).start().await;
    let (_client, session) = server.login().await;
    let signed = Signed::mint(&session);
    assert_minted(&signed.request().send(&server).await);
    // The very same request again.
    assert_error(
        &signed.request().send(&server).await,
        401,
        "replayed_request",
    );
    // A new, correctly signed request that reuses the nonce.
    let mut again = signed.clone();
    again.timestamp += 1;
    again.body = br#"{"scope":"other"}"#.to_vec();
    assert_error(
        &again.request().send(&server).await,
        401,
        "replayed_request",
    );
});

both_stores!(
    requests_that_fail_before_the_nonce_check_do_not_burn_it,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (_client, session) = server.login().await;
        let legit = Signed::mint(&session);

        let mut forged = legit.clone();
        forged.key = vec![7; 32];
        assert_error(&forged.request().send(&server).await, 401, "bad_signature");
        let mut stale = legit.clone();
        stale.timestamp -= 120;
        assert_error(&stale.request().send(&server).await, 401, "stale_request");
        let no_token = legit.request().without("authorization");
        assert_error(&no_token.send(&server).await, 401, "token_invalid");

        // None of those recorded the nonce: the holder of the key can still use it, once.
        assert_minted(&legit.request().send(&server).await);
        assert_error(
            &legit.request().send(&server).await,
            401,
            "replayed_request",
        );
    }
);

both_stores!(
    racing_copies_of_one_signed_request_mint_once,
    |kind| async move {
        let server = std::sync::Arc::new(TestServer::builder().store(kind).start().await);
        let (_client, session) = server.login().await;
        let req = Signed::mint(&session).request();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (server, req, barrier) = (server.clone(), req.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    req.send(&server).await
                })
            })
            .collect();
        let mut minted = 0;
        for task in tasks {
            let answer = task.await.expect("task");
            if answer.status == 201 {
                minted += 1;
            } else {
                assert_error(&answer, 401, "replayed_request");
            }
        }
        assert_eq!(minted, 1, "one nonce, one ticket");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_a_bad_signature() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let (_bob, bob) = server.login_as("bob", ClientType::Mobile).await;
    for key in [
        vec![0u8; 32],
        b"wrong".to_vec(),
        Vec::new(),
        bob.signing_key.clone(),
    ] {
        let mut signed = Signed::mint(&session);
        signed.key = key;
        assert_error(&signed.request().send(&server).await, 401, "bad_signature");
    }
    // The app-secret form of a key (its UTF-8 text) is not the session key either.
    let mut signed = Signed::mint(&session);
    signed.key = URL_SAFE_NO_PAD.encode(&session.signing_key).into_bytes();
    assert_error(&signed.request().send(&server).await, 401, "bad_signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_after_signing_is_a_bad_signature() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let fresh = || Signed::mint(&session);

    let body = fresh().request().body(br#"{"scope":"admin"}"#.to_vec());
    assert_error(&body.send(&server).await, 401, "bad_signature");
    let trailing_space = fresh().request().body(b"{} ".to_vec());
    assert_error(&trailing_space.send(&server).await, 401, "bad_signature");
    for signed_path in [
        "/v1/logout",
        "/v1/tickets/",
        "/V1/TICKETS",
        "/v1/tickets?x=1",
    ] {
        let mut signed = fresh();
        signed.path = signed_path.into();
        let req = signed.request().target("/v1/tickets");
        assert_error(&req.send(&server).await, 401, "bad_signature");
    }
    for signed_method in ["GET", "PUT", "DELETE"] {
        let mut signed = fresh();
        signed.method = signed_method.into();
        let req = signed.request().method("POST");
        assert_error(&req.send(&server).await, 401, "bad_signature");
    }
    let signed = fresh();
    let timestamp = signed
        .request()
        .header(HEADER_TIMESTAMP, (signed.timestamp - 1).to_string());
    assert_error(&timestamp.send(&server).await, 401, "bad_signature");
    let nonce = signed.request().header(HEADER_NONCE, fresh_nonce());
    assert_error(&nonce.send(&server).await, 401, "bad_signature");
    let device = signed
        .request()
        .header(HEADER_DEVICE, uuid::Uuid::new_v4().to_string());
    assert_error(&device.send(&server).await, 401, "bad_signature");

    // The query string is not signed (§2): adding one breaks nothing.
    let query = fresh().request().target("/v1/tickets?from=test");
    assert_minted(&query.send(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signing_header_is_required() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for name in [
        HEADER_DEVICE,
        HEADER_TIMESTAMP,
        HEADER_NONCE,
        HEADER_SIGNATURE,
    ] {
        let req = Signed::mint(&session).request().without(name);
        assert_error(&req.send(&server).await, 400, "bad_request");
    }
    let none = Req::new("POST", "/v1/tickets")
        .header("authorization", format!("Bearer {}", session.access_token))
        .body("{}");
    assert_error(&none.send(&server).await, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_signing_headers_are_bad_requests() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;

    // Devices and nonces that are not well formed, each signed correctly: only the form
    // check can refuse them.
    let uuid = uuid::Uuid::new_v4();
    let bad_devices = [
        "not-a-uuid".to_owned(),
        uuid.simple().to_string(),
        format!("{{{uuid}}}"),
        uuid.urn().to_string(),
        format!("{uuid}0"),
        session.device_id[..35].to_owned(),
        String::new(),
    ];
    for device in bad_devices {
        let mut signed = Signed::mint(&session);
        signed.device = device.clone();
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 400, "bad_request");
    }
    let bad_nonces = [
        "a".repeat(21),
        "a".repeat(65),
        String::new(),
        format!("{}+", "a".repeat(22)),
        format!("{}/", "a".repeat(22)),
        format!("{}=", "a".repeat(22)),
        format!("{}.", "a".repeat(22)),
        format!("{}~", "a".repeat(22)),
        format!("{} x", "a".repeat(22)),
        format!("{}é", "a".repeat(22)),
    ];
    for nonce in bad_nonces {
        let mut signed = Signed::mint(&session);
        signed.nonce = nonce.clone();
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 400, "bad_request");
    }
    // The bounds themselves are fine.
    for nonce in ["A".repeat(22), "z".repeat(64), "aZ09_-".repeat(4)] {
        let mut signed = Signed::mint(&session);
        signed.nonce = nonce;
        assert_minted(&signed.request().send(&server).await);
    }

    // Timestamps that are not plain decimal. `+<now>` would parse as a number and verify.
    let now = unix_now();
    let bad_timestamps = [
        format!("+{now}"),
        format!("{now}.0"),
        format!("{now} 1"),
        "12.5".to_owned(),
        "-5".to_owned(),
        "0x10".to_owned(),
        "1e9".to_owned(),
        "99999999999999999999".to_owned(),
        "abc".to_owned(),
        String::new(),
    ];
    for timestamp in bad_timestamps {
        let req = Signed::mint(&session)
            .request()
            .header(HEADER_TIMESTAMP, timestamp);
        assert_error(&req.send(&server).await, 400, "bad_request");
    }

    // Signatures: the correct one upper-cased must still be refused (§2: lowercase hex).
    let signed = Signed::mint(&session);
    let good = signed.signature();
    let bad_signatures = [
        good.to_ascii_uppercase(),
        good[..63].to_owned(),
        format!("{good}0"),
        good[..62].to_owned(),
        format!("{good}{good}"),
        "z".repeat(64),
        format!("{}g", &good[..63]),
        format!(" {}", &good[..63]),
        URL_SAFE_NO_PAD.encode(hex::decode(&good).expect("hex")),
        String::new(),
    ];
    for signature in bad_signatures {
        let req = signed.request().header(HEADER_SIGNATURE, signature);
        assert_error(&req.send(&server).await, 400, "bad_request");
    }
    // None of those burnt the nonce: the correct request still goes through.
    assert_minted(&signed.request().send(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_non_utf8_in_header_values_are_refused() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let nonce_with = |bytes: &[u8]| {
        let mut value = b"aaaaaaaaaaaa".to_vec();
        value.extend_from_slice(bytes);
        value.extend_from_slice(b"aaaaaaaaaaaa");
        value
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (HEADER_NONCE, nonce_with(b"\x01")),
        (HEADER_NONCE, nonce_with(b"\x00")),
        (HEADER_NONCE, nonce_with(b"\x1b")),
        (HEADER_NONCE, nonce_with(b"\x7f")),
        (HEADER_NONCE, nonce_with(b"\t")),
        (HEADER_NONCE, nonce_with(b"\r")),
        (HEADER_NONCE, nonce_with(b"\xff\xfe")),
        (HEADER_NONCE, nonce_with("é".as_bytes())),
        (HEADER_NONCE, nonce_with(b"\xc3")),
        (HEADER_DEVICE, {
            let mut d = session.device_id.clone().into_bytes();
            d[8] = 0x0b;
            d
        }),
        (HEADER_DEVICE, {
            let mut d = session.device_id.clone().into_bytes();
            d[0] = 0x80;
            d
        }),
        (HEADER_TIMESTAMP, {
            let mut t = unix_now().to_string().into_bytes();
            t.insert(3, b'\t');
            t
        }),
        (HEADER_TIMESTAMP, {
            let mut t = unix_now().to_string().into_bytes();
            t.push(0xff);
            t
        }),
        (HEADER_SIGNATURE, {
            let mut s = Signed::mint(&session).signature().into_bytes();
            s[10] = 0x08;
            s
        }),
        (HEADER_SIGNATURE, {
            let mut s = Signed::mint(&session).signature().into_bytes();
            s[10] = 0xe9;
            s
        }),
    ];
    for (name, value) in cases {
        let req = Signed::mint(&session).request().header(name, &value);
        let answer = req.send_raw(&server).await;
        assert_refused_as_malformed(&answer, &[400]);
        assert_ne!(answer.status, 201, "{name}: {value:?}");
    }
    // A control character in a header name is the HTTP layer's to refuse.
    let req = Signed::mint(&session).request().append("x-te\x01st", "1");
    assert_refused_as_malformed(&req.send_raw(&server).await, &[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_signing_header_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for name in [
        HEADER_NONCE,
        HEADER_DEVICE,
        HEADER_TIMESTAMP,
        HEADER_SIGNATURE,
    ] {
        // The same, correct value twice: a server taking the first would mint.
        let signed = Signed::mint(&session);
        let req = signed.request();
        let value = req
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .expect("signed header");
        let twice = req.append(name, &value);
        assert_error(&twice.send(&server).await, 400, "bad_request");
        // Two different values, the second one the correct one.
        let req = signed.request();
        let mut headers = req.headers.clone();
        let position = headers.iter().position(|(n, _)| n == name).expect("header");
        headers.insert(position, (name.to_owned(), b"0".to_vec()));
        let mixed = Req { headers, ..req };
        assert_error(&mixed.send_raw(&server).await, 400, "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_device_than_the_tokens_is_refused_even_when_signed() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let (_bob_client, bob) = server.login_as("bob", ClientType::Mobile).await;
    for device in [uuid::Uuid::new_v4().to_string(), bob.device_id.clone()] {
        let mut signed = Signed::mint(&session);
        signed.device = device;
        assert_error(
            &signed.request().send(&server).await,
            403,
            "device_mismatch",
        );
    }
}

/// A Bearer token that is valid except for `alg`: the real claims, a forged header.
fn with_header(token: &str, header: &Value, signature: &str) -> String {
    let mut parts = token.split('.');
    let (_, claims) = (parts.next(), parts.next().expect("claims"));
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    format!("{header}.{claims}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_that_does_not_verify_is_token_invalid() {
    let server = TestServer::builder().start().await;
    let other = TestServer::builder().start().await; // another deployment's keys
    let (_client, session) = server.login().await;
    let (_other_client, foreign) = other.login().await;

    let token = session.access_token.clone();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header"))
            .expect("base64url header"),
    )
    .expect("JSON header");
    let kid = header["kid"].clone();
    let jwks = reqwest::get(format!("{}/.well-known/jwks.json", server.url()))
        .await
        .expect("jwks")
        .json::<Value>()
        .await
        .expect("jwks json");
    let public_key = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().expect("x"))
        .expect("x bytes");
    // HS256 "signed" with the public key: the classic algorithm-confusion forgery.
    let hs256 = {
        use hmac::Mac as _;
        let unsigned = with_header(
            &token,
            &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
            "",
        );
        let unsigned = unsigned.trim_end_matches('.');
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public_key).expect("hmac");
        mac.update(unsigned.as_bytes());
        format!(
            "{unsigned}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    };
    let (head, rest) = token.split_once('.').expect("jwt");
    let (claims, signature) = rest.split_once('.').expect("jwt");
    let mut claims_json: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("claims")).expect("json");
    claims_json["sub"] = json!("bob");
    let other_claims = URL_SAFE_NO_PAD.encode(claims_json.to_string());

    let bad_authorizations = [
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer garbage".to_owned()),
        Some("Bearer a.b.c".to_owned()),
        Some(format!(
            "Basic {}",
            URL_SAFE_NO_PAD.encode("alice:password")
        )),
        Some(format!("Token {token}")),
        Some(format!(
            "Bearer {}",
            with_header(
                &token,
                &json!({"alg": "none", "typ": "JWT", "kid": kid}),
                ""
            )
        )),
        Some(format!(
            "Bearer {}",
            with_header(&token, &json!({"alg": "none", "typ": "JWT"}), signature)
        )),
        Some(format!(
            "Bearer {}",
            with_header(
                &token,
                &json!({"alg": "EdDSA", "typ": "JWT", "kid": "nope"}),
                signature
            )
        )),
        Some(format!(
            "Bearer {}",
            with_header(&token, &json!({"alg": "EdDSA", "typ": "JWT"}), signature)
        )),
        Some(format!("Bearer {hs256}")),
        Some(format!("Bearer {head}.{other_claims}.{signature}")),
        Some(format!("Bearer {}", &token[..token.len() - 2])),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", foreign.access_token)),
        Some(format!("Bearer {}", "a".repeat(8000))),
    ];
    for authorization in bad_authorizations {
        let req = Signed::mint(&session).request();
        let req = match &authorization {
            None => req.without("authorization"),
            Some(value) => req.header("authorization", value),
        };
        let answer = req.send(&server).await;
        assert_error(&answer, 401, "token_invalid");
    }
    // The unmodified token works: the refusals above were about the token alone.
    assert_minted(&Signed::mint(&session).request().send(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_64_kib_is_refused_with_413() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;

    // Exactly the limit is accepted (`{}` padded with whitespace is valid JSON).
    let mut at_limit = Signed::mint(&session);
    at_limit.body = format!("{{}}{}", " ".repeat(MAX_BODY_BYTES - 2)).into_bytes();
    assert_minted(&at_limit.request().send(&server).await);

    // One byte more, announced by Content-Length, signed correctly.
    let mut over = Signed::mint(&session);
    over.body = format!("{{}}{}", " ".repeat(MAX_BODY_BYTES - 1)).into_bytes();
    assert_error(
        &over.request().send(&server).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &over.request().send_raw(&server).await,
        413,
        "payload_too_large",
    );

    // A Content-Length far beyond the limit, with no body following at all.
    let lying = Signed::mint(&session)
        .request()
        .header("content-length", (1u64 << 40).to_string());
    assert_error(&lying.send_raw(&server).await, 413, "payload_too_large");

    // Chunked, with no length announced: refused while reading.
    let mut chunked = Signed::mint(&session);
    chunked.body = format!("{{}}{}", " ".repeat(70 * 1024 - 2)).into_bytes();
    let mut encoded = Vec::new();
    for chunk in chunked.body.chunks(8 * 1024) {
        encoded.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        encoded.extend_from_slice(chunk);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    let req = chunked
        .request()
        .header("transfer-encoding", "chunked")
        .body(encoded);
    assert_error(&req.send_raw(&server).await, 413, "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_json_body_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let bodies: [&[u8]; 8] = [
        b"{",
        b"not json",
        b"null",
        b"\"scope\"",
        br#"{"scope": 5}"#,
        br#"{"scope": "a"} trailing"#,
        b"\xff\xfe{}",
        b"{\"scope\": \"\xff\"}",
    ];
    for body in bodies {
        let mut signed = Signed::mint(&session);
        signed.body = body.to_vec();
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 400, "bad_request");
    }
    let mut long_scope = Signed::mint(&session);
    long_scope.body = json!({ "scope": "s".repeat(257) }).to_string().into_bytes();
    assert_error(
        &long_scope.request().send(&server).await,
        400,
        "bad_request",
    );
}

/// §3: bodies are JSON objects. serde's derived structs also accept a JSON array of the
/// fields in order, so `[]` mints and `["alice", <password>, <device>, "mobile"]` logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_is_not_a_body() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for body in [&b"[]"[..], br#"["scope"]"#] {
        let mut signed = Signed::mint(&session);
        signed.body = body.to_vec();
        assert_error(&signed.request().send(&server).await, 400, "bad_request");
    }
    let device = uuid::Uuid::new_v4().to_string();
    let body = json!(["alice", support::PASSWORD, device, "mobile"]).to_string();
    assert_error(&post_login(&server, body).await, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused_by_the_http_layer() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let huge_value = Signed::mint(&session)
        .request()
        .header("x-padding", "a".repeat(100 * 1024));
    assert_refused_as_malformed(&huge_value.send_raw(&server).await, &[400, 431]);
    let huge_target = Signed::mint(&session)
        .request()
        .target(&format!("/v1/tickets?{}", "a".repeat(100 * 1024)));
    assert_refused_as_malformed(&huge_target.send_raw(&server).await, &[400, 414, 431]);
    let mut many = Signed::mint(&session).request();
    for i in 0..500 {
        many = many.append(&format!("x-h{i}"), "v");
    }
    assert_refused_as_malformed(&many.send_raw(&server).await, &[400, 431]);
    // The node is still serving.
    assert_minted(&Signed::mint(&session).request().send(&server).await);
}

// ---------------------------------------------------------------------------------------
// POST /v1/login
// ---------------------------------------------------------------------------------------

async fn post_login(server: &TestServer, body: impl Into<Vec<u8>>) -> Answer {
    Req::new("POST", "/v1/login")
        .header("content-type", "application/json")
        .body(body)
        .send(server)
        .await
}

fn login_body(username: &str, password: &str) -> Value {
    json!({
        "username": username,
        "password": password,
        "device_id": uuid::Uuid::new_v4().to_string(),
        "client_type": "mobile",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_logins_are_bad_requests() {
    let server = TestServer::builder().start().await;
    let malformed: [&[u8]; 8] = [
        b"",
        b"{",
        b"not json",
        b"[]",
        b"null",
        b"\xff\xfe",
        br#"{"username": 5, "password": "x", "device_id": "x", "client_type": "web"}"#,
        br#"{"username": "alice"} {}"#,
    ];
    for body in malformed {
        assert_error(&post_login(&server, body).await, 400, "bad_request");
    }
    for field in ["username", "password", "device_id", "client_type"] {
        let mut body = login_body("alice", support::PASSWORD);
        body.as_object_mut().expect("object").remove(field);
        let answer = post_login(&server, body.to_string()).await;
        assert_error(&answer, 400, "bad_request");
    }
    let uuid = uuid::Uuid::new_v4();
    for device in [
        "not-a-uuid".to_owned(),
        uuid.simple().to_string(),
        format!("{{{uuid}}}"),
        String::new(),
    ] {
        let mut body = login_body("alice", support::PASSWORD);
        body["device_id"] = json!(device);
        assert_error(
            &post_login(&server, body.to_string()).await,
            400,
            "bad_request",
        );
    }
    for client_type in [
        json!("api"),
        json!("desktop"),
        json!("Mobile"),
        json!(""),
        json!(1),
    ] {
        let mut body = login_body("alice", support::PASSWORD);
        body["client_type"] = client_type;
        assert_error(
            &post_login(&server, body.to_string()).await,
            400,
            "bad_request",
        );
    }
    // The same body with the right values logs in: the refusals were about the field.
    let answer = post_login(&server, login_body("alice", support::PASSWORD).to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_user_answer_alike() {
    let server = TestServer::builder().start().await;
    let wrong_password = post_login(&server, login_body("alice", "wrong").to_string()).await;
    assert_error(&wrong_password, 401, "bad_credentials");
    for user in ["mallory", "", "../alice", "ALICE", &"x".repeat(300)] {
        let unknown = post_login(&server, login_body(user, support::PASSWORD).to_string()).await;
        assert_error(&unknown, 401, "bad_credentials");
        assert_eq!(unknown.body, wrong_password.body, "user {user:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_body_over_64_kib_is_refused_with_413() {
    let server = TestServer::builder().start().await;
    let body = login_body("alice", &"p".repeat(70 * 1024)).to_string();
    assert_error(
        &post_login(&server, body.clone()).await,
        413,
        "payload_too_large",
    );
    let req = Req::new("POST", "/v1/login")
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()));
    assert_error(&req.send_raw(&server).await, 413, "payload_too_large");
}

// ---------------------------------------------------------------------------------------
// GET /v1/connect: malformed upgrades (PROTOCOL §4, §8 "Upgrade order")
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// The HTTP layer: slowloris, unknown paths
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_finish_are_dropped_after_the_header_timeout() {
    let server = TestServer::builder()
        .config(|c| c.header_timeout = Duration::from_millis(500))
        .start()
        .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /v1/connect HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let tick = tokio::time::interval(Duration::from_millis(100));
    let mut line = 0;
    let closed_after =
        trickle_until_closed(&mut stream, started, Duration::from_secs(3), tick, || {
            line += 1;
            format!("X-Slow-{line}: y\r\n")
        })
        .await;
    assert!(
        closed_after >= Duration::from_millis(400),
        "closed after {closed_after:?}, before the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_not_found() {
    let server = TestServer::builder().start().await;
    for (method, target) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/v1/ticket"),
        ("POST", "/v1/tickets/extra"),
        ("GET", "/v2/connect"),
        ("POST", "/admin/v1/publish"),
        ("GET", "/%ff%00"),
    ] {
        let answer = Req::new(method, target).send(&server).await;
        assert_error(&answer, 404, "not_found");
    }
    // A path that is not even UTF-8: not found, or malformed; never a 5xx.
    let raw = exchange(
        server.addr,
        b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    )
    .await;
    if raw.status == 404 {
        assert_error(&raw, 404, "not_found");
    } else {
        assert_refused_as_malformed(&raw, &[400]);
    }
}

/// "Errors are always `{"error","message"}`" (§3): a known path with a method it does not
/// serve is an error answer too. The protocol names no code for it; `not_found` (no such
/// route) or `bad_request` are the candidates, with 404, or 405 and an `Allow` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_a_known_path_is_a_json_error() {
    let server = TestServer::builder().start().await;
    for (method, target) in [
        ("GET", "/v1/tickets"),
        ("DELETE", "/v1/login"),
        ("POST", "/v1/connect"),
        ("PUT", "/healthz"),
    ] {
        let answer = Req::new(method, target).send(&server).await;
        match answer.status {
            404 => assert_error(&answer, 404, "not_found"),
            405 => {
                assert!(answer.header("allow").is_some(), "405 without Allow");
                let code = answer.json()["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    ["not_found", "bad_request"].contains(&code.as_str()),
                    "{code}"
                );
                assert_error(&answer, 405, &code);
            }
            other => panic!("{method} {target}: {other} {}", answer.text()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The two ways in: the first request of a connection is read without hyper; a connect
// request later on a kept-alive connection goes through hyper. Both must behave alike.
// ---------------------------------------------------------------------------------------

/// Sends `req` on an open connection and reads one answer (what came after it stays in
/// the connection's buffer).
async fn exchange_on(conn: &mut Conn, addr: SocketAddr, req: &Req) -> Answer {
    conn.send(&req.to_bytes(addr)).await;
    conn.answer().await
}

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

// ---------------------------------------------------------------------------------------
// Per-IP failure quota
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_over_the_ip_budget_get_429_but_valid_calls_go_through() {
    let server = TestServer::builder()
        .config(|c| c.rates.fail_ip = Rate::parse("5/min").expect("rate"))
        .start()
        .await;
    let (session, ticket) = ticket_for(&server).await;
    let forged = || {
        let mut signed = Signed::mint(&session);
        signed.key = vec![0; 32];
        signed.request()
    };
    for _ in 0..5 {
        assert_error(&forged().send(&server).await, 401, "bad_signature");
    }
    let answer = forged().send(&server).await;
    assert_error(&answer, 429, "rate_limited");
    let retry_after = answer
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "Retry-After: {retry_after:?}"
    );
    // A forged ticket from the same IP is a failure too.
    let mut fake = ticket.clone();
    fake.ticket = format!(
        "1.{}.9999999999999.x.{}",
        session.session_id,
        "A".repeat(22)
    );
    let answer = upgrade(&session, &fake).send_raw(&server).await;
    assert_error(&answer, 429, "rate_limited");
    assert!(answer.header("retry-after").is_some());

    // Valid calls are not failures: a correct mint and a real ticket still work.
    assert_minted(&Signed::mint(&session).request().send(&server).await);
    assert_admitted(&server, &upgrade(&session, &ticket), &session).await;
    // And failures are still refused.
    assert_error(&forged().send(&server).await, 429, "rate_limited");
}
