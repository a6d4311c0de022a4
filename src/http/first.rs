//! The first request of a public connection, read before hyper sees it.
//!
//! Admissions are the hot path of a node: one per socket, and a whole fleet reconnects
//! at once after a deploy. Through hyper, an upgrade costs axum's routing and CORS
//! layers, a second task, a oneshot hand-over and a boxed transport, for a request that
//! needs none of them. So the accept loop reads the first request head itself (parsed
//! by `httparse`, hyper's own parser) and:
//! - a complete `GET /v1/connect` head is admitted here ([`admission::admit`], the same
//!   function the axum route calls); the 101 and the welcome frame are written as one
//!   buffer by the socket's own task;
//! - anything else (other paths and methods, a head cut short by the client, malformed
//!   or oversized requests, a GET with a body) goes to hyper together with the bytes
//!   already read, so hyper answers it exactly as it always did.
//!
//! A refused connect request is answered here (within the write timeout), and the
//! rest of the connection (keep-alive) goes to hyper. The header timeout covers this
//! read as it covers hyper's.
//!
//! [`Prefixed`] is written by hand because no crate hands hyper a connection whose
//! first bytes were already read: it is `AsyncRead`/`AsyncWrite` forwarding that serves
//! those bytes first.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::header::CONNECTION;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::admission;
use super::client_ip::client_ip;
use super::headers::{is_valid_value, Headers, Parsed as ParsedHeaders};
use crate::state::AppState;

/// The path served without hyper.
const CONNECT_PATH: &str = "/v1/connect";
/// Room for the first read: a connect request head is about 400 bytes.
const FIRST_READ_BYTES: usize = 2048;
/// Headers parsed in place: hyper's own limit, so that a head with more is one hyper
/// refuses at once (431), not one it would start reading again with a fresh timeout.
const MAX_HEADERS: usize = 100;
/// Largest error body read back from a refusal (they are small JSON objects).
const MAX_ERROR_BODY: usize = 16 * 1024;

/// What the first read of a connection found.
pub(crate) enum First {
    /// A complete `GET /v1/connect` request head.
    Connect(ConnectRequest),
    /// Anything else: these bytes go to hyper before the rest of the connection.
    Other(Vec<u8>),
    /// The client left before sending a complete head.
    Gone,
}

/// A connect request read off the socket: its bytes, parsed again where it is served
/// (the parsed headers borrow the bytes, and the admission awaits the store).
pub(crate) struct ConnectRequest {
    buf: Vec<u8>,
    /// Where the head ends; bytes after it were sent before the 101 (frames).
    head_len: usize,
}

/// Reads until the first request head is complete, `max_head` bytes were read, or the
/// client is gone. The caller bounds it in time (the header timeout).
pub(crate) async fn read(stream: &mut TcpStream, max_head: usize) -> First {
    let mut buf = Vec::with_capacity(FIRST_READ_BYTES);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        let before = buf.len();
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return First::Gone,
            Ok(_) => {}
        }
        // A head only changes meaning when a line ends: a client trickling bytes gets a
        // parse per line, not one per read (which cost O(n²) for a 16 KiB head).
        if !buf[before..].contains(&b'\n') && buf.len() < max_head {
            continue;
        }
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(&buf, &mut storage) {
            Parsed::Connect { head_len, .. } => {
                return First::Connect(ConnectRequest { buf, head_len });
            }
            Parsed::Partial if buf.len() < max_head => {}
            Parsed::Partial | Parsed::Other => return First::Other(buf),
        }
    }
}

enum Parsed<'h, 'b> {
    Connect {
        headers: &'h [httparse::Header<'b>],
        /// The target as hyper reads it (`http`'s parser: a fragment is dropped).
        target: PathAndQuery,
        head_len: usize,
    },
    Partial,
    Other,
}

fn parse<'h, 'b>(buf: &'b [u8], storage: &'h mut [httparse::Header<'b>]) -> Parsed<'h, 'b> {
    let mut request = httparse::Request::new(storage);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Malformed, or too many headers: hyper gives the answer it always gave.
        Err(_) => return Parsed::Other,
    };
    if request.method != Some(Method::GET.as_str()) || request.version != Some(1) {
        return Parsed::Other;
    }
    // Only origin-form targets `http` accepts; anything else is hyper's to answer.
    let Ok(target) = PathAndQuery::try_from(request.path.unwrap_or_default()) else {
        return Parsed::Other;
    };
    if target.path() != CONNECT_PATH || !request.path.unwrap_or_default().starts_with('/') {
        return Parsed::Other;
    }
    let headers = request.headers;
    for h in headers.iter() {
        // A GET with a body: framing is hyper's business. A value hyper's header
        // types refuse: hyper's answer too. (httparse accepts only token names.)
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
            || !is_valid_value(h.value)
        {
            return Parsed::Other;
        }
    }
    Parsed::Connect {
        headers,
        target,
        head_len,
    }
}

/// What a connection does after its first request.
pub(crate) enum Next {
    /// A connect request was admitted: the socket runs on `stream` (see
    /// [`admission::Admitted::answer_and_run`]); `rest` holds bytes read after the head.
    Socket {
        /// Boxed: an admission is large next to the other variants.
        admitted: Box<admission::Admitted>,
        stream: TcpStream,
        rest: Vec<u8>,
    },
    /// Anything else, or a refused connect request already answered: the connection
    /// goes on with hyper, which reads `read` first.
    Hyper { stream: TcpStream, read: Vec<u8> },
    /// The client is gone.
    Closed,
}

/// Admits `request`, or answers its refusal and hands the connection on to hyper.
pub(crate) async fn serve_connect(
    state: &AppState,
    mut stream: TcpStream,
    peer: SocketAddr,
    request: ConnectRequest,
) -> Next {
    let ConnectRequest { mut buf, head_len } = request;
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let admission = match parse(&buf, &mut storage) {
        Parsed::Connect {
            headers, target, ..
        } => {
            let headers = ParsedHeaders(headers);
            let ip = client_ip(peer, &headers, &state.config.trusted_proxies);
            let closing = headers.has_token("connection", "close");
            let admission = admission::admit(state, ip, &headers, target.query()).await;
            Some((ip, closing, admission))
        }
        // The same bytes parsed the same way in `read`: not reached.
        Parsed::Partial | Parsed::Other => None,
    };
    let Some((ip, closing, admission)) = admission else {
        return Next::Hyper { stream, read: buf };
    };
    let rest = buf.split_off(head_len);
    drop(buf);
    match admission {
        Ok(admitted) => Next::Socket {
            admitted: Box::new(admitted),
            stream,
            rest,
        },
        Err(err) => {
            let mut response = admission::refused(state, ip, err).into_response();
            if closing {
                // RFC 9112 §9.6: the client's last request; nothing after it is served.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // A client that does not read its answer is not waited for.
            let write_timeout = state.config.http.write_timeout;
            let written =
                tokio::time::timeout(write_timeout, write_response(&mut stream, response)).await;
            match written {
                Ok(Ok(())) if !closing => Next::Hyper { stream, read: rest },
                Ok(_) | Err(_) => Next::Closed,
            }
        }
    }
}

/// Writes `response` as HTTP/1.1 in one buffer, with `content-length` and `date` as
/// hyper would add them.
async fn write_response(stream: &mut TcpStream, response: Response) -> io::Result<()> {
    let (head, body) = encode(response).await;
    stream.write_all(&finish(&head, &body)).await
}

/// `response` as HTTP/1.1: the status line and headers up to `content-length`
/// included, and the body. [`finish`] adds the date and puts them together.
pub(crate) async fn encode(response: Response) -> (Vec<u8>, Bytes) {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    (out, body)
}

/// The answer [`encode`] gave `head` and `body` for, dated now, in one buffer.
pub(crate) fn finish(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + 64 + body.len());
    out.extend_from_slice(head);
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// A transport whose first bytes were already read: they are served first, then the
/// rest comes from `inner`. Writes go straight to `inner` (vectored writes included, so
/// hyper keeps writing headers and body in one call).
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Served: the memory goes back now, not when the connection ends.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `parse` with room for its headers.
    fn parsed(bytes: &[u8], check: impl FnOnce(Parsed<'_, '_>)) {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        check(parse(bytes, &mut storage));
    }

    fn connect_head(extra: &str) -> String {
        format!(
            "GET /v1/connect?device_id=d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{extra}\r\n"
        )
    }

    #[test]
    fn a_connect_head_is_taken_with_its_query_and_headers() {
        let head = connect_head("");
        parsed(head.as_bytes(), |p| match p {
            Parsed::Connect {
                headers,
                target,
                head_len,
            } => {
                assert_eq!(target.query(), Some("device_id=d"));
                assert_eq!(
                    crate::http::headers::Headers::first(&ParsedHeaders(headers), "upgrade"),
                    Some(&b"websocket"[..])
                );
                assert_eq!(head_len, head.len());
            }
            _ => panic!("not taken"),
        });
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for other in [
            "POST /v1/connect HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "GET /v1/connectx HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "GET /v1/tickets HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            "GET /v1/connect HTTP/1.0\r\nHost: x\r\n\r\n".to_owned(),
            "GET http://x/v1/connect HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            connect_head("Content-Length: 0\r\n"),
            connect_head("Transfer-Encoding: chunked\r\n"),
            "GET /v1/connect HTTP/1.1\r\nBad Header: x\r\n\r\n".to_owned(),
            "\u{1}\u{2}garbage\r\n\r\n".to_owned(),
            connect_head("X-Ctl: a\u{7f}b\r\n"),
        ] {
            parsed(other.as_bytes(), |p| {
                assert!(matches!(p, Parsed::Other), "{other:?}");
            });
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        parsed(connect_head(&many).as_bytes(), |p| {
            assert!(matches!(p, Parsed::Other));
        });
    }

    #[test]
    fn the_target_is_read_as_http_reads_it() {
        let head = "GET /v1/connect?device_id=d#&x=y HTTP/1.1\r\nHost: x\r\n\r\n";
        parsed(head.as_bytes(), |p| match p {
            Parsed::Connect { target, .. } => assert_eq!(target.query(), Some("device_id=d")),
            _ => panic!("not taken"),
        });
        let bad = "GET /v1/connect?device_id=d&x=<b> HTTP/1.1\r\nHost: x\r\n\r\n";
        parsed(bad.as_bytes(), |p| assert!(matches!(p, Parsed::Other)));
    }

    #[test]
    fn connection_close_is_found_in_any_list() {
        for (value, close) in [
            ("close", true),
            ("Upgrade, Close", true),
            ("upgrade", false),
        ] {
            let raw = [httparse::Header {
                name: "Connection",
                value: value.as_bytes(),
            }];
            assert_eq!(
                ParsedHeaders(&raw).has_token("connection", "close"),
                close,
                "{value}"
            );
        }
    }

    #[test]
    fn a_head_cut_short_is_partial() {
        let head = connect_head("");
        for cut in [1, 10, head.len() - 1] {
            parsed(&head.as_bytes()[..cut], |p| {
                assert!(matches!(p, Parsed::Partial), "{cut}");
            });
        }
    }

    #[tokio::test]
    async fn prefixed_serves_the_prefix_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        drop(client);
        let mut prefixed = Prefixed::new(b"hello".to_vec(), server);
        let mut all = String::new();
        prefixed.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
    }
}
