//! POST /v1/tickets: signing (PROTOCOL §2). Stale timestamps, replayed nonces, wrong
//! keys, tampering, missing, malformed and repeated signing headers, and Bearer tokens
//! that do not verify.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use ticketgate_sdk::protocol::{HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use ticketgate_sdk::ClientType;

use crate::answers::{assert_error, assert_refused_as_malformed};
use crate::both_stores;
use crate::request::Req;
use crate::signed::{assert_minted, early_in_a_second, fresh_nonce, unix_now, Signed};
use crate::support::{StoreKind, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamp_outside_the_skew_is_stale() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for offset in [-61, 61, -3600, 3600, -unix_now()] {
        early_in_a_second().await;
        let mut signed = Signed::mint(&session);
        signed.timestamp = unix_now() + offset;
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 401, "stale_request");
    }
    // Within the skew is fine: the boundary is the skew, not something tighter.
    for offset in [-58, 58] {
        early_in_a_second().await;
        let mut signed = Signed::mint(&session);
        signed.timestamp = unix_now() + offset;
        assert_minted(&signed.request().send(&server).await);
    }
}

both_stores!(a_nonce_is_accepted_once, |kind| async move {
    let server = TestServer::builder().store(kind).start().await;
    let (_client, session) = server.login().await;
    let signed = Signed::mint(&session);
    assert_minted(&signed.request().send(&server).await);
    // The very same request again.
    assert_error(
        &signed.request().send(&server).await,
        401,
        "replayed_request",
    );
    // A new, correctly signed request that reuses the nonce.
    let mut again = signed.clone();
    again.timestamp += 1;
    again.body = br#"{"scope":"other"}"#.to_vec();
    assert_error(
        &again.request().send(&server).await,
        401,
        "replayed_request",
    );
});

both_stores!(
    requests_that_fail_before_the_nonce_check_do_not_burn_it,
    |kind| async move {
        let server = TestServer::builder().store(kind).start().await;
        let (_client, session) = server.login().await;
        let legit = Signed::mint(&session);

        let mut forged = legit.clone();
        forged.key = vec![7; 32];
        assert_error(&forged.request().send(&server).await, 401, "bad_signature");
        let mut stale = legit.clone();
        stale.timestamp -= 120;
        assert_error(&stale.request().send(&server).await, 401, "stale_request");
        let no_token = legit.request().without("authorization");
        assert_error(&no_token.send(&server).await, 401, "token_invalid");

        // None of those recorded the nonce: the holder of the key can still use it, once.
        assert_minted(&legit.request().send(&server).await);
        assert_error(
            &legit.request().send(&server).await,
            401,
            "replayed_request",
        );
    }
);

both_stores!(
    racing_copies_of_one_signed_request_mint_once,
    |kind| async move {
        let server = std::sync::Arc::new(TestServer::builder().store(kind).start().await);
        let (_client, session) = server.login().await;
        let req = Signed::mint(&session).request();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (server, req, barrier) = (server.clone(), req.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    req.send(&server).await
                })
            })
            .collect();
        let mut minted = 0;
        for task in tasks {
            let answer = task.await.expect("task");
            if answer.status == 201 {
                minted += 1;
            } else {
                assert_error(&answer, 401, "replayed_request");
            }
        }
        assert_eq!(minted, 1, "one nonce, one ticket");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_a_bad_signature() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let (_bob, bob) = server.login_as("bob", ClientType::Mobile).await;
    for key in [
        vec![0u8; 32],
        b"wrong".to_vec(),
        Vec::new(),
        bob.signing_key.clone(),
    ] {
        let mut signed = Signed::mint(&session);
        signed.key = key;
        assert_error(&signed.request().send(&server).await, 401, "bad_signature");
    }
    // The app-secret form of a key (its UTF-8 text) is not the session key either.
    let mut signed = Signed::mint(&session);
    signed.key = URL_SAFE_NO_PAD.encode(&session.signing_key).into_bytes();
    assert_error(&signed.request().send(&server).await, 401, "bad_signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_after_signing_is_a_bad_signature() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let fresh = || Signed::mint(&session);

    let body = fresh().request().body(br#"{"scope":"admin"}"#.to_vec());
    assert_error(&body.send(&server).await, 401, "bad_signature");
    let trailing_space = fresh().request().body(b"{} ".to_vec());
    assert_error(&trailing_space.send(&server).await, 401, "bad_signature");
    for signed_path in [
        "/v1/logout",
        "/v1/tickets/",
        "/V1/TICKETS",
        "/v1/tickets?x=1",
    ] {
        let mut signed = fresh();
        signed.path = signed_path.into();
        let req = signed.request().target("/v1/tickets");
        assert_error(&req.send(&server).await, 401, "bad_signature");
    }
    for signed_method in ["GET", "PUT", "DELETE"] {
        let mut signed = fresh();
        signed.method = signed_method.into();
        let req = signed.request().method("POST");
        assert_error(&req.send(&server).await, 401, "bad_signature");
    }
    let signed = fresh();
    let timestamp = signed
        .request()
        .header(HEADER_TIMESTAMP, (signed.timestamp - 1).to_string());
    assert_error(&timestamp.send(&server).await, 401, "bad_signature");
    let nonce = signed.request().header(HEADER_NONCE, fresh_nonce());
    assert_error(&nonce.send(&server).await, 401, "bad_signature");
    let device = signed
        .request()
        .header(HEADER_DEVICE, uuid::Uuid::new_v4().to_string());
    assert_error(&device.send(&server).await, 401, "bad_signature");

    // The query string is not signed (§2): adding one breaks nothing.
    let query = fresh().request().target("/v1/tickets?from=test");
    assert_minted(&query.send(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signing_header_is_required() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for name in [
        HEADER_DEVICE,
        HEADER_TIMESTAMP,
        HEADER_NONCE,
        HEADER_SIGNATURE,
    ] {
        let req = Signed::mint(&session).request().without(name);
        assert_error(&req.send(&server).await, 400, "bad_request");
    }
    let none = Req::new("POST", "/v1/tickets")
        .header("authorization", format!("Bearer {}", session.access_token))
        .body("{}");
    assert_error(&none.send(&server).await, 400, "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_signing_headers_are_bad_requests() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;

    // Devices and nonces that are not well formed, each signed correctly: only the form
    // check can refuse them.
    let uuid = uuid::Uuid::new_v4();
    let bad_devices = [
        "not-a-uuid".to_owned(),
        uuid.simple().to_string(),
        format!("{{{uuid}}}"),
        uuid.urn().to_string(),
        format!("{uuid}0"),
        session.device_id[..35].to_owned(),
        String::new(),
    ];
    for device in bad_devices {
        let mut signed = Signed::mint(&session);
        signed.device = device.clone();
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 400, "bad_request");
    }
    let bad_nonces = [
        "a".repeat(21),
        "a".repeat(65),
        String::new(),
        format!("{}+", "a".repeat(22)),
        format!("{}/", "a".repeat(22)),
        format!("{}=", "a".repeat(22)),
        format!("{}.", "a".repeat(22)),
        format!("{}~", "a".repeat(22)),
        format!("{} x", "a".repeat(22)),
        format!("{}é", "a".repeat(22)),
    ];
    for nonce in bad_nonces {
        let mut signed = Signed::mint(&session);
        signed.nonce = nonce.clone();
        let answer = signed.request().send(&server).await;
        assert_error(&answer, 400, "bad_request");
    }
    // The bounds themselves are fine.
    for nonce in ["A".repeat(22), "z".repeat(64), "aZ09_-".repeat(4)] {
        let mut signed = Signed::mint(&session);
        signed.nonce = nonce;
        assert_minted(&signed.request().send(&server).await);
    }

    // Timestamps that are not plain decimal. `+<now>` would parse as a number and verify.
    let now = unix_now();
    let bad_timestamps = [
        format!("+{now}"),
        format!("{now}.0"),
        format!("{now} 1"),
        "12.5".to_owned(),
        "-5".to_owned(),
        "0x10".to_owned(),
        "1e9".to_owned(),
        "99999999999999999999".to_owned(),
        "abc".to_owned(),
        String::new(),
    ];
    for timestamp in bad_timestamps {
        let req = Signed::mint(&session)
            .request()
            .header(HEADER_TIMESTAMP, timestamp);
        assert_error(&req.send(&server).await, 400, "bad_request");
    }

    // Signatures: the correct one upper-cased must still be refused (§2: lowercase hex).
    let signed = Signed::mint(&session);
    let good = signed.signature();
    let bad_signatures = [
        good.to_ascii_uppercase(),
        good[..63].to_owned(),
        format!("{good}0"),
        good[..62].to_owned(),
        format!("{good}{good}"),
        "z".repeat(64),
        format!("{}g", &good[..63]),
        format!(" {}", &good[..63]),
        URL_SAFE_NO_PAD.encode(hex::decode(&good).expect("hex")),
        String::new(),
    ];
    for signature in bad_signatures {
        let req = signed.request().header(HEADER_SIGNATURE, signature);
        assert_error(&req.send(&server).await, 400, "bad_request");
    }
    // None of those burnt the nonce: the correct request still goes through.
    assert_minted(&signed.request().send(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_non_utf8_in_header_values_are_refused() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let nonce_with = |bytes: &[u8]| {
        let mut value = b"aaaaaaaaaaaa".to_vec();
        value.extend_from_slice(bytes);
        value.extend_from_slice(b"aaaaaaaaaaaa");
        value
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (HEADER_NONCE, nonce_with(b"\x01")),
        (HEADER_NONCE, nonce_with(b"\x00")),
        (HEADER_NONCE, nonce_with(b"\x1b")),
        (HEADER_NONCE, nonce_with(b"\x7f")),
        (HEADER_NONCE, nonce_with(b"\t")),
        (HEADER_NONCE, nonce_with(b"\r")),
        (HEADER_NONCE, nonce_with(b"\xff\xfe")),
        (HEADER_NONCE, nonce_with("é".as_bytes())),
        (HEADER_NONCE, nonce_with(b"\xc3")),
        (HEADER_DEVICE, {
            let mut d = session.device_id.clone().into_bytes();
            d[8] = 0x0b;
            d
        }),
        (HEADER_DEVICE, {
            let mut d = session.device_id.clone().into_bytes();
            d[0] = 0x80;
            d
        }),
        (HEADER_TIMESTAMP, {
            let mut t = unix_now().to_string().into_bytes();
            t.insert(3, b'\t');
            t
        }),
        (HEADER_TIMESTAMP, {
            let mut t = unix_now().to_string().into_bytes();
            t.push(0xff);
            t
        }),
        (HEADER_SIGNATURE, {
            let mut s = Signed::mint(&session).signature().into_bytes();
            s[10] = 0x08;
            s
        }),
        (HEADER_SIGNATURE, {
            let mut s = Signed::mint(&session).signature().into_bytes();
            s[10] = 0xe9;
            s
        }),
    ];
    for (name, value) in cases {
        let req = Signed::mint(&session).request().header(name, &value);
        let answer = req.send_raw(&server).await;
        assert_refused_as_malformed(&answer, &[400]);
        assert_ne!(answer.status, 201, "{name}: {value:?}");
    }
    // A control character in a header name is the HTTP layer's to refuse.
    let req = Signed::mint(&session).request().append("x-te\x01st", "1");
    assert_refused_as_malformed(&req.send_raw(&server).await, &[400]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_signing_header_is_a_bad_request() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    for name in [
        HEADER_NONCE,
        HEADER_DEVICE,
        HEADER_TIMESTAMP,
        HEADER_SIGNATURE,
    ] {
        // The same, correct value twice: a server taking the first would mint.
        let signed = Signed::mint(&session);
        let req = signed.request();
        let value = req
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .expect("signed header");
        let twice = req.append(name, &value);
        assert_error(&twice.send(&server).await, 400, "bad_request");
        // Two different values, the second one the correct one.
        let req = signed.request();
        let mut headers = req.headers.clone();
        let position = headers.iter().position(|(n, _)| n == name).expect("header");
        headers.insert(position, (name.to_owned(), b"0".to_vec()));
        let mixed = Req { headers, ..req };
        assert_error(&mixed.send_raw(&server).await, 400, "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_device_than_the_tokens_is_refused_even_when_signed() {
    let server = TestServer::builder().start().await;
    let (_client, session) = server.login().await;
    let (_bob_client, bob) = server.login_as("bob", ClientType::Mobile).await;
    for device in [uuid::Uuid::new_v4().to_string(), bob.device_id.clone()] {
        let mut signed = Signed::mint(&session);
        signed.device = device;
        assert_error(
            &signed.request().send(&server).await,
            403,
            "device_mismatch",
        );
    }
}

/// A Bearer token that is valid except for `alg`: the real claims, a forged header.
fn with_header(token: &str, header: &Value, signature: &str) -> String {
    let mut parts = token.split('.');
    let (_, claims) = (parts.next(), parts.next().expect("claims"));
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    format!("{header}.{claims}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_that_does_not_verify_is_token_invalid() {
    let server = TestServer::builder().start().await;
    let other = TestServer::builder().start().await; // another deployment's keys
    let (_client, session) = server.login().await;
    let (_other_client, foreign) = other.login().await;

    let token = session.access_token.clone();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header"))
            .expect("base64url header"),
    )
    .expect("JSON header");
    let kid = header["kid"].clone();
    let jwks = reqwest::get(format!("{}/.well-known/jwks.json", server.url()))
        .await
        .expect("jwks")
        .json::<Value>()
        .await
        .expect("jwks json");
    let public_key = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().expect("x"))
        .expect("x bytes");
    // HS256 "signed" with the public key: the classic algorithm-confusion forgery.
    let hs256 = {
        use hmac::Mac as _;
        let unsigned = with_header(
            &token,
            &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
            "",
        );
        let unsigned = unsigned.trim_end_matches('.');
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public_key).expect("hmac");
        mac.update(unsigned.as_bytes());
        format!(
            "{unsigned}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    };
    let (head, rest) = token.split_once('.').expect("jwt");
    let (claims, signature) = rest.split_once('.').expect("jwt");
    let mut claims_json: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("claims")).expect("json");
    claims_json["sub"] = json!("bob");
    let other_claims = URL_SAFE_NO_PAD.encode(claims_json.to_string());

    let bad_authorizations = [
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer garbage".to_owned()),
        Some("Bearer a.b.c".to_owned()),
        Some(format!(
            "Basic {}",
            URL_SAFE_NO_PAD.encode("alice:password")
        )),
        Some(format!("Token {token}")),
        Some(format!(
            "Bearer {}",
            with_header(
                &token,
                &json!({"alg": "none", "typ": "JWT", "kid": kid}),
                ""
            )
        )),
        Some(format!(
            "Bearer {}",
            with_header(&token, &json!({"alg": "none", "typ": "JWT"}), signature)
        )),
        Some(format!(
            "Bearer {}",
            with_header(
                &token,
                &json!({"alg": "EdDSA", "typ": "JWT", "kid": "nope"}),
                signature
            )
        )),
        Some(format!(
            "Bearer {}",
            with_header(&token, &json!({"alg": "EdDSA", "typ": "JWT"}), signature)
        )),
        Some(format!("Bearer {hs256}")),
        Some(format!("Bearer {head}.{other_claims}.{signature}")),
        Some(format!("Bearer {}", &token[..token.len() - 2])),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", foreign.access_token)),
        Some(format!("Bearer {}", "a".repeat(8000))),
    ];
    for authorization in bad_authorizations {
        let req = Signed::mint(&session).request();
        let req = match &authorization {
            None => req.without("authorization"),
            Some(value) => req.header("authorization", value),
        };
        let answer = req.send(&server).await;
        assert_error(&answer, 401, "token_invalid");
    }
    // The unmodified token works: the refusals above were about the token alone.
    assert_minted(&Signed::mint(&session).request().send(&server).await);
}
