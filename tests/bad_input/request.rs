//! Requests spelled out, and how they are sent: with reqwest where the bytes are
//! ordinary, as exact bytes on a fresh TCP connection, or on a connection kept open.

use std::net::SocketAddr;

use reqwest::header::{HeaderName, HeaderValue};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::raw::{push_header_lines, read_answer, Answer, Conn, LIMIT};
use crate::support::TestServer;

/// An HTTP/1.1 request spelled out, header bytes and all. `Host` (and `Content-Length`,
/// for raw sends) are added when sent.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
}

impl Req {
    pub(crate) fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Sets `name` to `value`, replacing every earlier value.
    pub(crate) fn header(self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.without(name).append(name, value)
    }

    /// Adds one more `name: value` line.
    pub(crate) fn append(mut self, name: &str, value: impl AsRef<[u8]>) -> Req {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    pub(crate) fn without(mut self, name: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub(crate) fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self
    }

    pub(crate) fn method(mut self, method: &str) -> Req {
        method.clone_into(&mut self.method);
        self
    }

    pub(crate) fn target(mut self, target: &str) -> Req {
        target.clone_into(&mut self.target);
        self
    }

    /// Sends with reqwest (every header value must be a valid `HeaderValue`).
    pub(crate) async fn send(&self, server: &TestServer) -> Answer {
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
    pub(crate) fn to_bytes(&self, host: SocketAddr) -> Vec<u8> {
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
    pub(crate) async fn send_raw(&self, server: &TestServer) -> Answer {
        exchange(server.addr, self.to_bytes(server.addr)).await
    }
}

/// Writes `bytes` on a fresh connection while reading the answer: the server may answer
/// (413, 431) before it has read everything, and then stop reading.
pub(crate) async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> Answer {
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

/// Sends `req` on an open connection and reads one answer (what came after it stays in
/// the connection's buffer).
pub(crate) async fn exchange_on(conn: &mut Conn, addr: SocketAddr, req: &Req) -> Answer {
    conn.send(&req.to_bytes(addr)).await;
    conn.answer().await
}
