//! The one error assertion: what a refusal must look like (PROTOCOL §3, §8). Answers
//! are read by `support::raw`.

use serde_json::Value;

use crate::support::raw::Answer;

/// The protocol's error answer: this status, `Content-Type: application/json` and a body
/// that is exactly `{"error": code, "message": <non-empty string>}`.
#[track_caller]
pub(crate) fn assert_error(answer: &Answer, status: u16, code: &str) {
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
pub(crate) fn assert_refused_as_malformed(answer: &Answer, layer_statuses: &[u16]) {
    assert!(answer.status < 500, "server error: {answer:?}");
    if answer.body.is_empty() && layer_statuses.contains(&answer.status) {
        return;
    }
    assert_error(answer, 400, "bad_request");
}
