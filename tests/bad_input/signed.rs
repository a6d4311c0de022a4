//! Signed requests (PROTOCOL §2): a correct signed mint, taken apart one piece at a
//! time by the tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::Rng as _;
use ticketgate_sdk::protocol::{HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use ticketgate_sdk::signing::{sign, SignedParts};
use ticketgate_sdk::Session;

use crate::request::Req;
use crate::support::raw::Answer;

/// What a signed call is made of. `request()` signs exactly these parts; a test changes
/// one part, or the request after signing, to break it in one way only.
#[derive(Clone)]
pub(crate) struct Signed {
    pub(crate) key: Vec<u8>,
    pub(crate) access_token: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) device: String,
    pub(crate) timestamp: i64,
    pub(crate) nonce: String,
    pub(crate) body: Vec<u8>,
}

impl Signed {
    /// A correct `POST /v1/tickets` for `session`, signed now with a fresh nonce.
    pub(crate) fn mint(session: &Session) -> Signed {
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

    pub(crate) fn signature(&self) -> String {
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
    pub(crate) fn request(&self) -> Req {
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

pub(crate) fn fresh_nonce() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

pub(crate) fn unix_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(now.as_secs()).expect("seconds")
}

/// Waits until the current second has at least half of it left, so that a timestamp
/// computed now is still "now" on the server when the request arrives.
pub(crate) async fn early_in_a_second() {
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
pub(crate) fn assert_minted(answer: &Answer) {
    assert_eq!(answer.status, 201, "expected a ticket: {}", answer.text());
    let body = answer.json();
    let ticket = body["ticket"].as_str().unwrap_or_default();
    assert!(!ticket.is_empty(), "{body}");
}
