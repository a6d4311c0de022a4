//! Verification of signed requests (PROTOCOL §2). The canonical string itself is owned
//! by `ticketgate_sdk::signing`; this module parses the `X-TG-*` headers and checks
//! freshness and the signature, cheapest first. Nonces are checked by the store, after
//! the signature verified, so forgeries cannot burn nonces.

use std::time::Duration;

use axum::http::HeaderMap;
use ticketgate_sdk::protocol::{
    nonce_is_well_formed, HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use ticketgate_sdk::signing::{signature, signatures_equal, SignedParts};

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SigningError {
    /// A `X-TG-*` header is missing, repeated or malformed (400).
    #[error("header {0} missing or malformed")]
    BadHeader(&'static str),
    /// The timestamp is outside the allowed skew (401 `stale_request`).
    #[error("request timestamp outside the allowed skew")]
    Stale,
    /// The signature does not verify (401 `bad_signature`).
    #[error("signature does not verify")]
    BadSignature,
}

/// The parsed `X-TG-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignedHeaders {
    /// `X-TG-Device`, a hyphenated UUID, as sent.
    pub device_id: String,
    /// `X-TG-Timestamp`, unix seconds.
    pub timestamp: i64,
    /// `X-TG-Nonce`.
    pub nonce: String,
    /// `X-TG-Signature`, decoded.
    pub signature: [u8; 32],
}

/// True when `s` is a UUID in its hyphenated 36-character form.
pub(crate) fn is_device_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

fn single<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SigningError> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(SigningError::BadHeader(name));
    };
    value.to_str().map_err(|_| SigningError::BadHeader(name))
}

/// Parses and checks the form of the four `X-TG-*` headers.
pub(crate) fn parse_headers(headers: &HeaderMap) -> Result<SignedHeaders, SigningError> {
    let device_id = single(headers, HEADER_DEVICE)?;
    if !is_device_id(device_id) {
        return Err(SigningError::BadHeader(HEADER_DEVICE));
    }
    let timestamp = single(headers, HEADER_TIMESTAMP)?;
    // The canonical decimal only (what the client signed): digits, no leading zero.
    // `00<ts>` would parse to the same number and verify against `<ts>`.
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
        || (timestamp.len() > 1 && timestamp.starts_with('0'))
    {
        return Err(SigningError::BadHeader(HEADER_TIMESTAMP));
    }
    let timestamp: i64 = timestamp
        .parse()
        .map_err(|_| SigningError::BadHeader(HEADER_TIMESTAMP))?;
    let nonce = single(headers, HEADER_NONCE)?;
    if !nonce_is_well_formed(nonce) {
        return Err(SigningError::BadHeader(HEADER_NONCE));
    }
    let sig = single(headers, HEADER_SIGNATURE)?;
    let lower_hex = sig.len() == 64
        && sig
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut signature = [0u8; 32];
    if !lower_hex || hex::decode_to_slice(sig, &mut signature).is_err() {
        return Err(SigningError::BadHeader(HEADER_SIGNATURE));
    }
    Ok(SignedHeaders {
        device_id: device_id.to_owned(),
        timestamp,
        nonce: nonce.to_owned(),
        signature,
    })
}

/// Refuses a timestamp more than `skew` away from `now` (unix seconds).
pub(crate) fn check_fresh(
    signed: &SignedHeaders,
    now: i64,
    skew: Duration,
) -> Result<(), SigningError> {
    let skew = i64::try_from(skew.as_secs()).unwrap_or(i64::MAX);
    if signed.timestamp.abs_diff(now) > skew.unsigned_abs() {
        return Err(SigningError::Stale);
    }
    Ok(())
}

/// Verifies the signature over method, path, headers and body in constant time.
pub(crate) fn check_signature(
    key: &[u8],
    method: &str,
    path: &str,
    signed: &SignedHeaders,
    body: &[u8],
) -> Result<(), SigningError> {
    let expected = signature(
        key,
        &SignedParts {
            method,
            path,
            device_id: &signed.device_id,
            timestamp: signed.timestamp,
            nonce: &signed.nonce,
            body,
        },
    );
    if signatures_equal(&expected, &signed.signature) {
        Ok(())
    } else {
        Err(SigningError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use base64::Engine;

    #[derive(serde::Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }
    #[derive(serde::Deserialize)]
    struct Vector {
        name: String,
        method: String,
        path: String,
        device_id: String,
        timestamp: i64,
        nonce: String,
        body: String,
        key_b64url: String,
        signature: String,
    }

    fn headers(v: &Vector) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HEADER_DEVICE,
            HeaderValue::from_str(&v.device_id).expect("hv"),
        );
        h.insert(HEADER_TIMESTAMP, HeaderValue::from(v.timestamp));
        h.insert(HEADER_NONCE, HeaderValue::from_str(&v.nonce).expect("hv"));
        h.insert(
            HEADER_SIGNATURE,
            HeaderValue::from_str(&v.signature).expect("hv"),
        );
        h
    }

    fn vectors() -> Vec<Vector> {
        let text = include_str!("../../client-sdk/vectors/signing.json");
        serde_json::from_str::<Vectors>(text)
            .expect("vectors")
            .vectors
    }

    #[test]
    fn the_verifier_accepts_every_vector_and_rejects_tampering() {
        for v in vectors() {
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&v.key_b64url)
                .expect("key");
            let signed = parse_headers(&headers(&v)).expect(&v.name);
            check_signature(&key, &v.method, &v.path, &signed, v.body.as_bytes()).expect(&v.name);
            check_fresh(&signed, v.timestamp + 60, Duration::from_secs(60)).expect(&v.name);
            assert_eq!(
                check_fresh(&signed, v.timestamp + 61, Duration::from_secs(60)),
                Err(SigningError::Stale)
            );
            assert_eq!(
                check_fresh(&signed, v.timestamp - 61, Duration::from_secs(60)),
                Err(SigningError::Stale)
            );
            let bad = |m: &str, p: &str, b: &[u8], k: &[u8]| check_signature(k, m, p, &signed, b);
            assert_eq!(
                bad("GET", &v.path, v.body.as_bytes(), &key),
                Err(SigningError::BadSignature)
            );
            assert_eq!(
                bad(&v.method, "/v1/other", v.body.as_bytes(), &key),
                Err(SigningError::BadSignature)
            );
            assert_eq!(
                bad(&v.method, &v.path, b"{\"x\":1}", &key),
                Err(SigningError::BadSignature)
            );
            assert_eq!(
                bad(&v.method, &v.path, v.body.as_bytes(), b"wrong"),
                Err(SigningError::BadSignature)
            );
        }
    }

    #[test]
    fn malformed_headers_are_bad_requests() {
        let v = &vectors()[0];
        let cases: Vec<(&'static str, Option<&[u8]>)> = vec![
            (HEADER_DEVICE, None),
            (HEADER_DEVICE, Some(b"not-a-uuid")),
            (HEADER_DEVICE, Some(b"3f1c2a9e6b7d4e0f9a512c8d7e4b1f60")),
            (HEADER_TIMESTAMP, Some(b"12.5")),
            (HEADER_TIMESTAMP, Some(b"-5")),
            (HEADER_TIMESTAMP, Some(b"99999999999999999999")),
            // Not the canonical decimal the client signed: refused, not re-read.
            (HEADER_TIMESTAMP, Some(b"001700000000")),
            (HEADER_TIMESTAMP, Some(b"+1700000000")),
            (HEADER_NONCE, Some(b"short")),
            (HEADER_NONCE, Some(b"has space in it 0123456789")),
            (HEADER_NONCE, Some(&[0xff; 30])),
            (HEADER_NONCE, Some(b"tab\tinside0123456789012345")),
            (HEADER_SIGNATURE, Some(b"ABCDEF")),
            (HEADER_SIGNATURE, None),
        ];
        for (name, value) in cases {
            let mut h = headers(v);
            match value {
                None => {
                    h.remove(name);
                }
                Some(bytes) => {
                    h.insert(name, HeaderValue::from_bytes(bytes).expect("hv"));
                }
            }
            assert_eq!(
                parse_headers(&h),
                Err(SigningError::BadHeader(name)),
                "{name} = {value:?}"
            );
        }
        let upper = v.signature.to_ascii_uppercase();
        let mut h = headers(v);
        h.insert(HEADER_SIGNATURE, HeaderValue::from_str(&upper).expect("hv"));
        assert!(parse_headers(&h).is_err());
        let mut h = headers(v);
        h.append(
            HEADER_NONCE,
            HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAAAAA"),
        );
        assert_eq!(
            parse_headers(&h),
            Err(SigningError::BadHeader(HEADER_NONCE))
        );
    }
}
