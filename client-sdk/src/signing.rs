//! Request signing: the canonical string and its HMAC-SHA256 signature.
//!
//! This module is the single owner of the canonical string. The server verifies with
//! [`signature`] and [`signatures_equal`]; the client signs with [`sign`].
//!
//! ```text
//! TG1-HMAC-SHA256
//! <METHOD>
//! <path, no query>
//! <device_id>
//! <timestamp>
//! <nonce>
//! <lowercase hex SHA-256 of the raw body>
//! ```

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The first line of the canonical string; names the scheme and its version.
pub const SCHEME: &str = "TG1-HMAC-SHA256";

/// The parts of a request that are signed.
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    /// HTTP method; upper-cased when the canonical string is built.
    pub method: &'a str,
    /// Request path without the query string, e.g. `/v1/tickets`.
    pub path: &'a str,
    /// The `X-TG-Device` value.
    pub device_id: &'a str,
    /// The `X-TG-Timestamp` value, unix seconds.
    pub timestamp: i64,
    /// The `X-TG-Nonce` value.
    pub nonce: &'a str,
    /// The raw request body (empty when there is none).
    pub body: &'a [u8],
}

/// Lowercase hex SHA-256 of `body`.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Builds the canonical string of a request: seven lines joined by `\n`, no trailing
/// newline.
///
/// ```
/// use ticketgate_sdk::signing::{canonical_string, SignedParts};
/// let c = canonical_string(&SignedParts {
///     method: "post", path: "/v1/tickets", device_id: "d", timestamp: 1,
///     nonce: "n", body: b"",
/// });
/// assert!(c.starts_with("TG1-HMAC-SHA256\nPOST\n/v1/tickets\nd\n1\nn\n"));
/// ```
pub fn canonical_string(parts: &SignedParts<'_>) -> String {
    format!(
        "{SCHEME}\n{}\n{}\n{}\n{}\n{}\n{}",
        parts.method.to_ascii_uppercase(),
        parts.path,
        parts.device_id,
        parts.timestamp,
        parts.nonce,
        body_hash(parts.body)
    )
}

/// The raw 32-byte HMAC-SHA256 of the canonical string under `key`.
pub fn signature(key: &[u8], parts: &SignedParts<'_>) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(canonical_string(parts).as_bytes());
    mac.finalize().into_bytes().into()
}

#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 takes keys of any length")
}

/// The `X-TG-Signature` header value: lowercase hex of [`signature`].
///
/// ```
/// use ticketgate_sdk::signing::{sign, SignedParts};
/// let sig = sign(b"key", &SignedParts {
///     method: "POST", path: "/v1/tickets", device_id: "d", timestamp: 1,
///     nonce: "n", body: b"{}",
/// });
/// assert_eq!(sig.len(), 64);
/// ```
pub fn sign(key: &[u8], parts: &SignedParts<'_>) -> String {
    hex::encode(signature(key, parts))
}

/// The `X-TG-Upstream-Signature` of a call from ticketgate to the upstream
/// (PROTOCOL §9): lowercase hex HMAC-SHA256 under the shared secret over
/// `"<timestamp>.<raw body>"`. An upstream verifies a call by computing it over the
/// body it received and the `X-TG-Upstream-Timestamp` header, comparing in constant
/// time ([`signatures_equal`]), and refusing a timestamp too far from its clock.
///
/// ```
/// use ticketgate_sdk::signing::upstream_signature;
/// let sig = upstream_signature(b"secret", 1795000000, br#"{"event":"connect"}"#);
/// assert_eq!(sig.len(), 64);
/// ```
pub fn upstream_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Compares two signatures in constant time (the length is not secret).
pub fn signatures_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}
