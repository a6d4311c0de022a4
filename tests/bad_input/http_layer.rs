//! The HTTP layer: slowloris, unknown paths, wrong methods.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::answers::{assert_error, assert_refused_as_malformed};
use crate::request::{exchange, Req};
use crate::support::raw::trickle_until_closed;
use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_finish_are_dropped_after_the_header_timeout() {
    let server = TestServer::builder()
        .config(|c| c.header_timeout = Duration::from_millis(500))
        .start()
        .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /v1/connect HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let tick = tokio::time::interval(Duration::from_millis(100));
    let mut line = 0;
    let closed_after =
        trickle_until_closed(&mut stream, started, Duration::from_secs(3), tick, || {
            line += 1;
            format!("X-Slow-{line}: y\r\n")
        })
        .await;
    assert!(
        closed_after >= Duration::from_millis(400),
        "closed after {closed_after:?}, before the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_not_found() {
    let server = TestServer::builder().start().await;
    for (method, target) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/v1/ticket"),
        ("POST", "/v1/tickets/extra"),
        ("GET", "/v2/connect"),
        ("POST", "/admin/v1/publish"),
        ("GET", "/%ff%00"),
    ] {
        let answer = Req::new(method, target).send(&server).await;
        assert_error(&answer, 404, "not_found");
    }
    // A path that is not even UTF-8: not found, or malformed; never a 5xx.
    let raw = exchange(
        server.addr,
        b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    )
    .await;
    if raw.status == 404 {
        assert_error(&raw, 404, "not_found");
    } else {
        assert_refused_as_malformed(&raw, &[400]);
    }
}

/// "Errors are always `{"error","message"}`" (§3): a known path with a method it does not
/// serve is an error answer too. The protocol names no code for it; `not_found` (no such
/// route) or `bad_request` are the candidates, with 404, or 405 and an `Allow` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_a_known_path_is_a_json_error() {
    let server = TestServer::builder().start().await;
    for (method, target) in [
        ("GET", "/v1/tickets"),
        ("DELETE", "/v1/login"),
        ("POST", "/v1/connect"),
        ("PUT", "/healthz"),
    ] {
        let answer = Req::new(method, target).send(&server).await;
        match answer.status {
            404 => assert_error(&answer, 404, "not_found"),
            405 => {
                assert!(answer.header("allow").is_some(), "405 without Allow");
                let code = answer.json()["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    ["not_found", "bad_request"].contains(&code.as_str()),
                    "{code}"
                );
                assert_error(&answer, 405, &code);
            }
            other => panic!("{method} {target}: {other} {}", answer.text()),
        }
    }
}
