//! Reading request bodies: the protocol's 64 KiB cap, before any parsing, and the
//! deadline a whole body must arrive within ([`Deadline`], set on every request by the
//! connection that reads it).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, SizeHint};
use serde::de::DeserializeOwned;
use ticketgate_sdk::protocol::MAX_BODY_BYTES;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// The error of a body that did not arrive within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(crate) struct BodyTimedOut;

/// A request body that must end by a deadline: past it, reading fails with
/// [`BodyTimedOut`] (a client sending a `Content-Length` and then nothing would hold
/// its connection, and the handler's task, for as long as it liked).
///
/// The timer is made at the first read that waits, so a body read at once (or never)
/// costs none.
pub(crate) struct Deadline<B> {
    inner: B,
    until: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadline<B> {
    /// `inner`, to be read whole within `timeout` from now.
    pub(crate) fn new(inner: B, timeout: Duration) -> Deadline<B> {
        Deadline {
            inner,
            until: Instant::now() + timeout,
            timer: None,
        }
    }
}

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let until = this.until;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `err`, or an error it wraps, is [`BodyTimedOut`].
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Reads the whole body, refusing more than 64 KiB with 413 (by `Content-Length` first,
/// then while reading, for chunked bodies). A body that does not arrive within the
/// body timeout ([`Deadline`]) is refused with 400, and its connection closes (hyper
/// does not keep a connection whose body was not read to its end).
pub(crate) async fn read_limited(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into()))?;
        if len > MAX_BODY_BYTES as u64 {
            return Err(ApiError::PayloadTooLarge);
        }
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Err(e) if timed_out(e.as_ref()) => Err(ApiError::BadRequest(BodyTimedOut.to_string())),
        Err(_) => Err(ApiError::BadRequest(
            "request body could not be read".into(),
        )),
    }
}

/// Parses a JSON object body; an empty body parses as `{}`. Anything but an object is
/// refused (serde would otherwise accept the array form of a struct).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
