//! Client tests that need no ticketgate server: each runs a one-shot fake on
//! `127.0.0.1:0` that records the request it gets and plays back a canned answer.

#![cfg(feature = "client")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::SinkExt as _;
use ticketgate_sdk::protocol::nonce_is_well_formed;
use ticketgate_sdk::signing::{sign, SignedParts};
use ticketgate_sdk::{Client, ClientError, ClientType, ErrorCode, Session, Ticket};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const DEVICE: &str = "3f1c2a9e-6b7d-4e0f-9a51-2c8d7e4b1f60";
const KEY: [u8; 32] = [
    0xde, 0xad, 0xbe, 0xef, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7,
];

/// One HTTP request as the fake server saw it; header names lower-cased.
#[derive(Debug)]
struct Captured {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("header {name} was sent: {self:?}"))
    }

    /// Recomputes the signature from what arrived on the wire, as the server will.
    fn assert_signed_with(&self, key: &[u8]) {
        let timestamp: i64 = self
            .header("x-tg-timestamp")
            .parse()
            .expect("X-TG-Timestamp is decimal");
        assert!(
            (timestamp - now()).abs() <= 5,
            "timestamp {timestamp} is now"
        );
        let nonce = self.header("x-tg-nonce");
        assert!(nonce_is_well_formed(nonce), "nonce {nonce:?}");
        assert!(nonce.len() >= 32 && nonce.bytes().all(|b| b.is_ascii_alphanumeric()));
        let expected = sign(
            key,
            &SignedParts {
                method: &self.method,
                path: &self.path,
                device_id: self.header("x-tg-device"),
                timestamp,
                nonce,
                body: &self.body,
            },
        );
        assert_eq!(self.header("x-tg-signature"), expected);
        assert_eq!(self.header("content-type"), "application/json");
    }
}

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit in i64")
}

/// A session as a login would have produced it.
fn session() -> Session {
    Session {
        access_token: "eyJhbGciOiJFZERTQSJ9.access-secret.sig".to_owned(),
        refresh_token: Some("sid123.refresh-secret".to_owned()),
        signing_key: KEY.to_vec(),
        session_id: "sid123".to_owned(),
        device_id: DEVICE.to_owned(),
        access_expires_at: 1_795_000_900,
        access_lifetime: 900,
        refresh_expires_at: 1_797_592_000,
    }
}

fn ticket(ticket: &str, ws_url: &str) -> Ticket {
    Ticket {
        ticket: ticket.to_owned(),
        expires_in: 30,
        ws_url: ws_url.to_owned(),
        new_access_token: None,
    }
}

/// An HTTP/1.1 answer with a JSON body and the given extra header lines.
fn answer(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

/// Accepts one connection, reads one request, writes `reply`, and hands back the request.
async fn serve_once(reply: String) -> (SocketAddr, JoinHandle<Captured>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let captured = read_request(&mut stream).await;
        stream.write_all(reply.as_bytes()).await.expect("write");
        stream.shutdown().await.expect("shutdown");
        captured
    });
    (addr, task)
}

async fn read_request(stream: &mut TcpStream) -> Captured {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the request ended inside its headers");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("headers are UTF-8");
    let mut lines = head.split("\r\n");
    let request_line = lines.next().expect("a request line");
    let mut words = request_line.split(' ');
    let method = words.next().expect("a method").to_owned();
    let target = words.next().expect("a target");
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().expect("Content-Length is decimal"));
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the request ended inside its body");
        body.extend_from_slice(&chunk[..n]);
    }
    Captured {
        method,
        path,
        headers,
        body,
    }
}

#[test]
fn session_debug_hides_secrets() {
    let shown = format!("{:?} {:#?}", session(), session());
    for secret in [
        "access-secret",
        "refresh-secret",
        "222, 173",
        "deadbeef",
        "3q2-7",
    ] {
        assert!(!shown.contains(secret), "{secret:?} leaked in {shown}");
    }
    assert!(shown.contains("sid123"), "the session id is shown: {shown}");
    assert!(shown.contains(DEVICE));
}

#[test]
fn ticket_debug_hides_secrets() {
    let mut t = ticket("tk1.secret-ticket-part", "ws://127.0.0.1:1/v1/connect");
    t.new_access_token = Some("renewed-access-secret".to_owned());
    let shown = format!("{t:?}");
    assert!(!shown.contains("secret"), "a secret leaked in {shown}");
    assert!(shown.contains("ws://127.0.0.1:1/v1/connect"));
}

#[test]
fn client_new_wants_an_http_base_url() {
    for bad in [
        "not a url",
        "ftp://example.com",
        "ws://127.0.0.1:8080",
        "http://h/?q=1",
    ] {
        assert!(
            matches!(Client::new(bad), Err(ClientError::InvalidUrl(_))),
            "{bad:?} is refused"
        );
    }
    let client = Client::new("http://127.0.0.1:8080").expect("an http URL is fine");
    assert!(uuid::Uuid::parse_str(client.device_id()).is_ok());
    assert_ne!(
        client.device_id(),
        Client::new("http://127.0.0.1:8080")
            .expect("client")
            .device_id(),
        "each client gets a fresh device id"
    );
    assert_eq!(client.with_device_id(DEVICE).device_id(), DEVICE);
}

#[tokio::test]
async fn mint_request_is_signed_and_bearer_authenticated() {
    let body =
        r#"{"ticket":"tk1.abc-DEF_09","expires_in":30,"ws_url":"ws://127.0.0.1:1/v1/connect"}"#;
    let (addr, server) = serve_once(answer("201 Created", "X-New-Token: renewed\r\n", body)).await;
    let client = Client::new(&format!("http://{addr}"))
        .expect("client")
        .with_device_id("some-other-device");
    let session = session();

    let ticket = client.mint_ticket(&session).await.expect("mint");
    let request = server.await.expect("fake server");

    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/tickets");
    assert_eq!(request.body, b"{}");
    assert_eq!(
        request.header("authorization"),
        format!("Bearer {}", session.access_token)
    );
    assert_eq!(
        request.header("x-tg-device"),
        DEVICE,
        "a session's calls carry the session's device"
    );
    request.assert_signed_with(&KEY);

    assert_eq!(ticket.ticket, "tk1.abc-DEF_09");
    assert_eq!(ticket.expires_in, 30);
    assert_eq!(ticket.ws_url, "ws://127.0.0.1:1/v1/connect");
    assert_eq!(ticket.new_access_token.as_deref(), Some("renewed"));
}

#[tokio::test]
async fn app_login_is_signed_with_the_app_secret() {
    let body = r#"{"access_token":"at","refresh_token":"sid9.rt","signing_key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8","session_id":"sid9","access_expires_in":900,"refresh_expires_in":604800}"#;
    let (addr, server) = serve_once(answer("200 OK", "", body)).await;
    // A base URL with a path prefix: the signed path is the path actually sent.
    let client = Client::new(&format!("http://{addr}/gw/"))
        .expect("client")
        .with_device_id(DEVICE);

    let session = client
        .app_login("billing-service", "s3cr3t-app-secret-ü")
        .await
        .expect("app login");
    let request = server.await.expect("fake server");

    assert_eq!(request.path, "/gw/v1/app/login");
    assert_eq!(request.body, br#"{"app_id":"billing-service"}"#);
    assert_eq!(request.header("x-tg-device"), DEVICE);
    assert!(!request.headers.contains_key("authorization"));
    request.assert_signed_with("s3cr3t-app-secret-ü".as_bytes());

    assert_eq!(session.signing_key, (0u8..32).collect::<Vec<_>>());
    assert_eq!(session.session_id, "sid9");
    assert_eq!(session.device_id, DEVICE);
    assert_eq!(session.refresh_token.as_deref(), Some("sid9.rt"));
    let now = u64::try_from(now()).expect("positive");
    assert!(session.access_expires_at.abs_diff(now + 900) <= 5);
    assert!(session.refresh_expires_at.abs_diff(now + 604_800) <= 5);
}

#[tokio::test]
async fn login_sends_credentials_and_device_unsigned() {
    let body = r#"{"access_token":"at","signing_key":"AAEC","session_id":"s","access_expires_in":900,"refresh_expires_in":86400}"#;
    let (addr, server) = serve_once(answer("200 OK", "", body)).await;
    let client = Client::new(&format!("http://{addr}"))
        .expect("client")
        .with_device_id(DEVICE);

    let session = client
        .login("alice", "pw", ClientType::Web)
        .await
        .expect("login");
    let request = server.await.expect("fake server");

    assert_eq!(request.path, "/v1/login");
    let sent: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(
        sent,
        serde_json::json!({"username": "alice", "password": "pw", "device_id": DEVICE, "client_type": "web"})
    );
    assert_eq!(
        session.refresh_token, None,
        "cookie mode has no refresh token"
    );
    assert_eq!(session.signing_key, [0, 1, 2]);
}

#[tokio::test]
async fn rate_limited_answer_becomes_api_error() {
    let body = r#"{"error":"rate_limited","message":"too many login attempts"}"#;
    let (addr, server) =
        serve_once(answer("429 Too Many Requests", "Retry-After: 7\r\n", body)).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");

    let err = client
        .login("alice", "pw", ClientType::Mobile)
        .await
        .expect_err("a 429 is an error");
    server.await.expect("fake server");

    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
    match err {
        ClientError::Api {
            status,
            code,
            raw_code,
            message,
            retry_after,
        } => {
            assert_eq!(status, 429);
            assert_eq!(code, Some(ErrorCode::RateLimited));
            assert_eq!(raw_code, "rate_limited");
            assert_eq!(message, "too many login attempts");
            assert_eq!(retry_after, Some(7));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_codes_and_bodiless_errors_are_kept() {
    let body = r#"{"error":"brand_new_code","message":"from a newer server"}"#;
    let (addr, server) = serve_once(answer("401 Unauthorized", "", body)).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let err = client.mint_ticket(&session()).await.expect_err("401");
    server.await.expect("fake server");
    assert!(matches!(
        &err,
        ClientError::Api { status: 401, code: None, raw_code, retry_after: None, .. }
            if raw_code == "brand_new_code"
    ));
    assert_eq!(err.code(), None);

    let (addr, server) = serve_once(answer("400 Bad Request", "", "")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let err = client.mint_ticket(&session()).await.expect_err("400");
    server.await.expect("fake server");
    assert!(matches!(
        &err,
        ClientError::Api { status: 400, code: None, raw_code, message, .. }
            if raw_code.is_empty() && message == "Bad Request"
    ));
}

#[tokio::test]
async fn refused_upgrade_becomes_api_error() {
    let body = r#"{"error":"ticket_invalid","message":"the ticket is not valid"}"#;
    let (addr, server) = serve_once(answer("401 Unauthorized", "", body)).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");

    // An empty ws_url means the base URL's /v1/connect.
    let err = client
        .connect(&session(), &ticket("tk1.used", ""))
        .await
        .expect_err("a 401 refuses admission");
    let request = server.await.expect("fake server");

    assert_eq!(request.method, "GET");
    assert_eq!(request.path, "/v1/connect");
    assert_eq!(
        request.header("sec-websocket-protocol"),
        "ticketgate.v1, ticket.tk1.used"
    );
    assert!(matches!(
        err,
        ClientError::Api {
            status: 401,
            code: Some(ErrorCode::TicketInvalid),
            ..
        }
    ));
}

#[tokio::test]
async fn connect_offers_the_ticket_and_returns_the_welcome() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Mutex::new(None::<(String, String)>));
    let seen_by_server = Arc::clone(&seen);
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        // The callback's error type is tungstenite's, not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback = move |request: &Request, mut response: Response| {
            let protocols = request
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            *seen_by_server.lock().expect("lock") = Some((request.uri().to_string(), protocols));
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static("ticketgate.v1"),
            );
            Ok(response)
        };
        let mut socket = tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .expect("handshake");
        let welcome = format!(
            r#"{{"type":"welcome","session_id":"sid123","conn_id":"c1","user_id":"alice","device_id":"{DEVICE}","expires_at":1795000900}}"#
        );
        socket.send(Message::text(welcome)).await.expect("send");
        socket.close(None).await.expect("close");
    });
    let client = Client::new("http://127.0.0.1:9").expect("client");

    let ws_url = format!("ws://{addr}/v1/connect");
    let (_socket, welcome) = client
        .connect(&session(), &ticket("tk1.abc-DEF_09", &ws_url))
        .await
        .expect("connect");
    server.await.expect("fake server");

    let (uri, protocols) = seen.lock().expect("lock").clone().expect("a request came");
    assert_eq!(uri, format!("/v1/connect?device_id={DEVICE}"));
    assert_eq!(protocols, "ticketgate.v1, ticket.tk1.abc-DEF_09");
    assert_eq!(welcome.session_id, "sid123");
    assert_eq!(welcome.conn_id, "c1");
    assert_eq!(welcome.user_id, "alice");
    assert_eq!(welcome.device_id, DEVICE);
    assert_eq!(welcome.expires_at, 1_795_000_900);
}

#[tokio::test]
async fn connect_refuses_a_malformed_ticket_without_dialing() {
    let client = Client::new("http://127.0.0.1:9").expect("client");
    for bad in ["", "a,b", "a b", "a\r\nX: y", "tk+1"] {
        let err = client
            .connect(&session(), &ticket(bad, ""))
            .await
            .expect_err("malformed ticket");
        assert!(matches!(err, ClientError::Protocol(_)), "{bad:?}: {err:?}");
    }
}

/// A redirect is an error, and the signed request is not sent where it points.
#[tokio::test]
async fn a_redirect_is_not_followed() {
    let elsewhere = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let location = format!(
        "Location: http://{}/v1/tickets\r\n",
        elsewhere.local_addr().expect("local addr")
    );
    let (addr, server) = serve_once(answer("307 Temporary Redirect", &location, "{}")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    client
        .mint_ticket(&session())
        .await
        .expect_err("a redirect is not a ticket");
    server.await.expect("fake server");
    let followed =
        tokio::time::timeout(std::time::Duration::from_millis(300), elsewhere.accept()).await;
    assert!(followed.is_err(), "the SDK followed the redirect");
}
