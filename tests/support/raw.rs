//! Raw HTTP/1.1 over TCP, for the tests where the exact bytes matter (`bad_input`,
//! `direct_path`): a connection that keeps what it has read but not yet consumed, the
//! answers read off it byte for byte, the WebSocket frames after a 101, and a head
//! trickled in line by line.
//!
//! Not every test binary uses all of it: dead code is allowed for the whole `support`
//! module by the `#![allow(dead_code, ...)]` at the top of `support/mod.rs`.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use ticketgate_sdk::Session;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Interval;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::TestServer;

/// Every exchange must be answered within this long; a hang is a failure.
pub const LIMIT: Duration = Duration::from_secs(10);
/// The `Sec-WebSocket-Key` of RFC 6455's example.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// An HTTP answer, from reqwest or read off a raw socket.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Every header line, in order, repeats kept (names are case-insensitive).
    pub headers: HeaderMap,
    /// The body, exactly `Content-Length` bytes (empty after a 101).
    pub body: Vec<u8>,
}

impl Answer {
    /// Status, headers and the whole body of a reqwest response.
    pub async fn from_reqwest(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("answer body").to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// The first value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// How many lines of header `name` the answer has.
    pub fn count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }

    /// The body as text (invalid UTF-8 replaced), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test if it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} answer is not JSON ({e}): {}", self.status, self.text()))
    }
}

/// Reads more bytes from `reader` onto `buf`; false at EOF or on an error (a reset).
pub async fn read_more(reader: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match reader.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one HTTP/1.x answer: the head, then a `Content-Length` body (none after a 101).
///
/// `buf` holds the bytes already read and not yet consumed; on return it holds those
/// read past the answer (the first WebSocket frames after a 101, a pipelined answer).
/// `None` when the connection ends before a complete answer. The head must be UTF-8
/// and start with an HTTP/1.1 or HTTP/1.0 status line; a chunked answer fails the test.
pub async fn read_answer(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Option<Answer> {
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(reader, buf).await {
            return None;
        }
    };
    let rest = buf.split_off(head_len);
    let head = String::from_utf8(std::mem::replace(buf, rest)).expect("a UTF-8 answer head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "),
        "not a status line: {status_line:?}"
    );
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').expect("a header line");
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
            HeaderValue::from_str(value.trim()).expect("header value"),
        );
    }
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 101 {
        return Some(answer);
    }
    assert!(
        answer.headers.get("transfer-encoding").is_none(),
        "chunked answers are not expected: {head}"
    );
    let len: usize = answer
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("answer without Content-Length: {head}"));
    while buf.len() < len {
        if !read_more(reader, buf).await {
            return None;
        }
    }
    let rest = buf.split_off(len);
    answer.body = std::mem::replace(buf, rest);
    Some(answer)
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Appends one `name: value` line per header, each ended by `eol`, bytes as they are.
pub fn push_header_lines(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)], eol: &[u8]) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(eol);
    }
}

// ---------------------------------------------------------------------------------------
// A raw connection
// ---------------------------------------------------------------------------------------

/// One TCP connection to the node, with the bytes read but not yet consumed.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Read off the socket, not yet consumed by an answer.
    pub buf: Vec<u8>,
}

impl Conn {
    /// A fresh connection to the node's public listener (`TCP_NODELAY`: every write is
    /// sent at once).
    pub async fn open(server: &TestServer) -> Conn {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// A fresh connection to the node's public listener from the loopback address
    /// `source` (Linux routes all of 127/8 to loopback): another client IP for the
    /// node.
    pub async fn open_from(server: &TestServer, source: std::net::Ipv4Addr) -> Conn {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from((source, 0)))
            .expect("bind the source address");
        let stream = socket.connect(server.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Reads more bytes; false at EOF or on a reset.
    pub async fn fill(&mut self) -> bool {
        read_more(&mut self.stream, &mut self.buf).await
    }

    /// The next answer, or `None` when the server closed before a complete one.
    pub async fn try_answer(&mut self) -> Option<Answer> {
        tokio::time::timeout(LIMIT, read_answer(&mut self.stream, &mut self.buf))
            .await
            .expect("an answer or a close within the limit")
    }

    /// The next answer; fails the test when the server closes or hangs.
    pub async fn answer(&mut self) -> Answer {
        self.try_answer()
            .await
            .expect("an HTTP answer, not a closed connection")
    }

    /// Reads until the server closes the connection; everything received after what was
    /// already consumed. Fails the test if it is still open after `within`.
    pub async fn closed_within(&mut self, within: Duration) -> Vec<u8> {
        tokio::time::timeout(within, async { while self.fill().await {} })
            .await
            .unwrap_or_else(|_| panic!("the connection is still open after {within:?}"));
        std::mem::take(&mut self.buf)
    }

    /// The socket after a 101, with the bytes already read after the answer.
    pub async fn into_ws(self) -> WebSocketStream<TcpStream> {
        WebSocketStream::from_partially_read(self.stream, self.buf, Role::Client, None).await
    }
}

/// Trickles a head that never ends: one more line from `next_line` at each tick of
/// `tick`, until the server closes the connection (what it sends before that, e.g. a
/// 408, is read and dropped). Returns how long after `started` it closed; fails the
/// test once `bound` has passed with the connection still open.
pub async fn trickle_until_closed(
    stream: &mut TcpStream,
    started: Instant,
    bound: Duration,
    mut tick: Interval,
    mut next_line: impl FnMut() -> String,
) -> Duration {
    let (mut reader, mut writer) = stream.split();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            started.elapsed() < bound,
            "a never-finished head still holds its connection after {:?}",
            started.elapsed()
        );
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break started.elapsed(),
                Ok(_) => continue, // e.g. a 408 before the close
            },
            _ = tick.tick() => {
                if writer.write_all(next_line().as_bytes()).await.is_err() {
                    break started.elapsed();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Upgrades and frames
// ---------------------------------------------------------------------------------------

/// The upgrade head the SDK sends for `session`, with `ticket` in the subprotocol and
/// [`WS_KEY`] as its key.
pub fn connect_head(session: &Session, ticket: &str) -> Vec<u8> {
    format!(
        "GET /v1/connect?device_id={} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Protocol: {}, ticket.{ticket}\r\n\r\n",
        session.device_id,
        ticketgate_sdk::protocol::SUBPROTOCOL,
    )
    .into_bytes()
}

/// A 101 whose `Sec-WebSocket-Accept` answers `key` (RFC 6455 §4.2.2).
#[track_caller]
pub fn assert_accepts(answer: &Answer, key: &str) {
    assert_eq!(
        answer.status,
        101,
        "expected an upgrade: {answer:?} {}",
        answer.text()
    );
    assert_eq!(
        answer.header("sec-websocket-accept"),
        Some(derive_accept_key(key.as_bytes()).as_str()),
        "{answer:?}"
    );
}

/// The next message; fails the test on a hang, the end of the stream or a bad frame.
pub async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Message {
    tokio::time::timeout(LIMIT, ws.next())
        .await
        .expect("a frame in time")
        .expect("a frame, not the end")
        .expect("a valid frame")
}

/// The next message, as JSON (it must be a text frame).
pub async fn first_frame<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    let frame = next_message(ws).await;
    serde_json::from_str(frame.to_text().expect("a text frame")).expect("a JSON frame")
}

/// The next frame is the `welcome` of `session`.
pub async fn assert_welcome<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    session: &Session,
) {
    let welcome = first_frame(ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["session_id"], session.session_id.as_str());
    assert_eq!(welcome["device_id"], session.device_id.as_str());
}
