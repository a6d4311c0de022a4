//! Request bodies and heads (PROTOCOL §3, §8): bodies over 64 KiB however they are
//! framed, bodies that are not the JSON object asked for, and oversized request heads.

use serde_json::json;
use ticketgate_sdk::protocol::MAX_BODY_BYTES;

use crate::answers::{assert_error, assert_refused_as_malformed};
use crate::login::post_login;
use crate::signed::{assert_minted, Signed};
use crate::support;
use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_64_kib_is_refused_with_413() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;

    // Exactly the limit is accepted (`{}` padded with whitespace is valid JSON).
    let mut at_limit = Signed::mint(&session);
    at_limit.body = format!("{{}}{}", " ".repeat(MAX_BODY_BYTES - 2)).into_bytes();
    assert_minted(&at_limit.request().send(&server).await);

    // One byte more, announced by Content-Length, signed correctly.
    let mut over = Signed::mint(&session);
    over.body = format!("{{}}{}", " ".repeat(MAX_BODY_BYTES - 1)).into_bytes();
    assert_error(
        &over.request().send(&server).await,
        413,
        "payload_too_large",
    );
    assert_error(
        &over.request().send_raw(&server).await,
        413,
        "payload_too_large",
    );

    // A Content-Length far beyond the limit, with no body following at all.
    let lying = Signed::mint(&session)
        .request()
        .header("content-length", (1u64 << 40).to_string());
    assert_error(&lying.send_raw(&server).await, 413, "payload_too_large");

    // Chunked, with no length announced: refused while reading.
    let mut chunked = Signed::mint(&session);
    chunked.body = format!("{{}}{}", " ".repeat(70 * 1024 - 2)).into_bytes();
    let mut encoded = Vec::new();
    for chunk in chunked.body.chunks(8 * 1024) {
        encoded.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        encoded.extend_from_slice(chunk);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    let req = chunked
        .request()
        .header("transfer-encoding", "chunked")
        .body(encoded);
    assert_error(&req.send_raw(&server).await, 413, "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_json_body_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let bodies: [&[u8]; 8] = [
        b"{",
        b"not json",
        b"null",
        b"\"scope\"",
        br#"{"scope": 5}"#,
        br#"{"scope": "a"} trailing"#,
        b"\xff\xfe{}",
        b"{\"scope\": \"\xff\"}",
    ];
    for body in bodies {
        let mut signed = Signed::mint(&session);
        signed.body = body.to_vec();
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 400, "bad_request");
    }
    let mut long_scope = Signed::mint(&session);
    long_scope.body = json!({ "scope": "s".repeat(257) }).to_string().into_bytes();
    assert_error(
        &long_scope.request().send(&server).await,
        400,
        "bad_request",
    );
}

/// §3: bodies are JSON objects. serde's derived structs also accept a JSON array of the
/// fields in order, so `[]` mints and `["alice", <password>, <device>, "mobile"]` logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_is_not_a_body() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for body in [&b"[]"[..], br#"["scope"]"#] {
        let mut signed = Signed::mint(&session);
        signed.body = body.to_vec();
        assert_error(&signed.request().send(&server).await, 400, "bad_request");
    }
    let device = uuid::Uuid::new_v4().to_string();
    let body = json!(["alice", support::PASSWORD, device, "mobile"]).to_string();
    assert_error(&post_login(&server, body).await, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused_by_the_http_layer() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let huge_value = Signed::mint(&session)
        .request()
        .header("x-padding", "a".repeat(100 * 1024));
    assert_refused_as_malformed(&huge_value.send_raw(&server).await, &[400, 431]);
    let huge_target = Signed::mint(&session)
        .request()
        .target(&format!("/v1/tickets?{}", "a".repeat(100 * 1024)));
    assert_refused_as_malformed(&huge_target.send_raw(&server).await, &[400, 414, 431]);
    let mut many = Signed::mint(&session).request();
    for i in 0..500 {
        many = many.append(&format!("x-h{i}"), "v");
    }
    assert_refused_as_malformed(&many.send_raw(&server).await, &[400, 431]);
    // The node is still serving.
    assert_minted(&Signed::mint(&session).request().send(&server).await);
}
