//! The shared signing test vectors (`vectors/signing.json`, protocol §2) and the nonce
//! and comparison rules every client and the server rely on.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use ticketgate_sdk::protocol::nonce_is_well_formed;
use ticketgate_sdk::signing::{canonical_string, sign, signatures_equal, SignedParts};

fn vectors() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/signing.json");
    let text = std::fs::read_to_string(path).expect("vectors/signing.json is readable");
    let file: Value = serde_json::from_str(&text).expect("vectors/signing.json is JSON");
    file["vectors"]
        .as_array()
        .expect("the file has a `vectors` array")
        .clone()
}

fn field<'a>(vector: &'a Value, name: &str) -> &'a str {
    vector[name]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {name} is a string: {vector}"))
}

#[test]
fn every_vector_matches() {
    let vectors = vectors();
    assert!(!vectors.is_empty(), "the vector file holds vectors");
    for vector in &vectors {
        let name = field(vector, "name");
        let key = URL_SAFE_NO_PAD
            .decode(field(vector, "key_b64url"))
            .expect("key_b64url is base64url without padding");
        let parts = SignedParts {
            method: field(vector, "method"),
            path: field(vector, "path"),
            device_id: field(vector, "device_id"),
            timestamp: vector["timestamp"].as_i64().expect("timestamp is a number"),
            nonce: field(vector, "nonce"),
            body: field(vector, "body").as_bytes(),
        };
        assert_eq!(
            canonical_string(&parts),
            field(vector, "canonical"),
            "canonical string of {name:?}"
        );
        assert_eq!(
            sign(&key, &parts),
            field(vector, "signature"),
            "signature of {name:?}"
        );
        assert!(
            nonce_is_well_formed(parts.nonce),
            "nonce of {name:?} is well formed"
        );
    }
}

#[test]
fn nonce_is_well_formed_accepts_22_to_64_url_safe_chars() {
    for len in 22..=64 {
        assert!(nonce_is_well_formed(&"a".repeat(len)), "length {len}");
    }
    assert!(nonce_is_well_formed("ABCxyz0189_-ABCxyz0189_-"));
    assert!(!nonce_is_well_formed(&"a".repeat(21)));
    assert!(!nonce_is_well_formed(&"a".repeat(65)));
    assert!(!nonce_is_well_formed(""));
    for bad in ['+', '=', '.', '/', ' ', '\n', 'ä'] {
        let nonce = format!("{}{bad}", "a".repeat(30));
        assert!(!nonce_is_well_formed(&nonce), "{bad:?} is refused");
    }
}

#[test]
fn canonical_upper_cases_the_method() {
    let parts = |method| SignedParts {
        method,
        path: "/v1/tickets",
        device_id: "3f1c2a9e-6b7d-4e0f-9a51-2c8d7e4b1f60",
        timestamp: 1_795_000_000,
        nonce: "Zk3n9QpL2vX8rT5yW1aB7c",
        body: b"{}",
    };
    let lower = canonical_string(&parts("post"));
    assert_eq!(lower, canonical_string(&parts("POST")));
    assert!(lower.starts_with("TG1-HMAC-SHA256\nPOST\n/v1/tickets\n"));
    assert_eq!(sign(b"k", &parts("post")), sign(b"k", &parts("POST")));
}

#[test]
fn canonical_has_seven_lines_and_no_trailing_newline() {
    let canonical = canonical_string(&SignedParts {
        method: "POST",
        path: "/v1/logout",
        device_id: "d",
        timestamp: 1,
        nonce: "n",
        body: b"",
    });
    assert_eq!(canonical.split('\n').count(), 7);
    assert!(canonical.ends_with("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
}

#[test]
fn signatures_equal_compares_exactly() {
    let a = sign(
        b"key",
        &SignedParts {
            method: "POST",
            path: "/v1/tickets",
            device_id: "d",
            timestamp: 1,
            nonce: "n",
            body: b"{}",
        },
    );
    let mut b = a.clone().into_bytes();
    assert!(signatures_equal(a.as_bytes(), &b));
    b[10] ^= 1;
    assert!(!signatures_equal(a.as_bytes(), &b));
    assert!(!signatures_equal(a.as_bytes(), &a.as_bytes()[..63]));
    assert!(!signatures_equal(a.as_bytes(), b""));
}

/// The upstream signature vectors (`vectors/upstream.json`, protocol §9).
#[test]
fn every_upstream_vector_matches() {
    use ticketgate_sdk::signing::upstream_signature;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/upstream.json");
    let text = std::fs::read_to_string(path).expect("vectors/upstream.json is readable");
    let file: Value = serde_json::from_str(&text).expect("vectors/upstream.json is JSON");
    let vectors = file["vectors"].as_array().expect("a `vectors` array");
    assert!(!vectors.is_empty(), "the vector file holds vectors");
    for vector in vectors {
        let name = field(vector, "name");
        let timestamp = vector["timestamp"].as_i64().expect("timestamp is a number");
        let body = field(vector, "body");
        assert_eq!(
            format!("{timestamp}.{body}"),
            field(vector, "signed"),
            "signed string of {name:?}"
        );
        assert_eq!(
            upstream_signature(
                field(vector, "secret").as_bytes(),
                timestamp,
                body.as_bytes()
            ),
            field(vector, "signature"),
            "signature of {name:?}"
        );
    }
}
