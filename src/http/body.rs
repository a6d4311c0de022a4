//! Reading request bodies with the protocol's 64 KiB cap, before any parsing.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use ticketgate_sdk::protocol::MAX_BODY_BYTES;

use super::error::ApiError;

/// Reads the whole body, refusing more than 64 KiB with 413 (by `Content-Length` first,
/// then while reading, for chunked bodies).
pub async fn read_limited(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
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
        Err(_) => Err(ApiError::BadRequest(
            "request body could not be read".into(),
        )),
    }
}

/// Parses a JSON object body; an empty body parses as `{}`. Anything but an object is
/// refused (serde would otherwise accept the array form of a struct).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
