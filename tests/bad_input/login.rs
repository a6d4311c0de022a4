//! POST /v1/login: malformed bodies, and wrong credentials that all answer alike.

use serde_json::{json, Value};

use crate::answers::assert_error;
use crate::request::Req;
use crate::support;
use crate::support::raw::Answer;
use crate::support::TestServer;

pub(crate) async fn post_login(server: &TestServer, body: impl Into<Vec<u8>>) -> Answer {
    Req::new("POST", "/v1/login")
        .header("content-type", "application/json")
        .body(body)
        .send(server)
        .await
}

fn login_body(username: &str, password: &str) -> Value {
    json!({
        "username": username,
        "password": password,
        "device_id": uuid::Uuid::new_v4().to_string(),
        "client_type": "mobile",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_logins_are_bad_requests() {
    let server = TestServer::builder().start().await;
    let malformed: [&[u8]; 8] = [
        b"",
        b"{",
        b"not json",
        b"[]",
        b"null",
        b"\xff\xfe",
        br#"{"username": 5, "password": "x", "device_id": "x", "client_type": "web"}"#,
        br#"{"username": "alice"} {}"#,
    ];
    for body in malformed {
        assert_error(&post_login(&server, body).await, 400, "bad_request");
    }
    for field in ["username", "password", "device_id", "client_type"] {
        let mut body = login_body("alice", support::PASSWORD);
        body.as_object_mut().expect("object").remove(field);
        let answer = post_login(&server, body.to_string()).await;
        assert_error(&answer, 400, "bad_request");
    }
    let uuid = uuid::Uuid::new_v4();
    for device in [
        "not-a-uuid".to_owned(),
        uuid.simple().to_string(),
        format!("{{{uuid}}}"),
        String::new(),
    ] {
        let mut body = login_body("alice", support::PASSWORD);
        body["device_id"] = json!(device);
        assert_error(
            &post_login(&server, body.to_string()).await,
            400,
            "bad_request",
        );
    }
    for client_type in [
        json!("api"),
        json!("desktop"),
        json!("Mobile"),
        json!(""),
        json!(1),
    ] {
        let mut body = login_body("alice", support::PASSWORD);
        body["client_type"] = client_type;
        assert_error(
            &post_login(&server, body.to_string()).await,
            400,
            "bad_request",
        );
    }
    // The same body with the right values logs in: the refusals were about the field.
    let answer = post_login(&server, login_body("alice", support::PASSWORD).to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unknown_user_answer_alike() {
    let server = TestServer::builder().start().await;
    let wrong_password = post_login(&server, login_body("alice", "wrong").to_string()).await;
    assert_error(&wrong_password, 401, "bad_credentials");
    for user in ["mallory", "", "../alice", "ALICE", &"x".repeat(300)] {
        let unknown = post_login(&server, login_body(user, support::PASSWORD).to_string()).await;
        assert_error(&unknown, 401, "bad_credentials");
        assert_eq!(unknown.body, wrong_password.body, "user {user:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_body_over_64_kib_is_refused_with_413() {
    let server = TestServer::builder().start().await;
    let body = login_body("alice", &"p".repeat(70 * 1024)).to_string();
    assert_error(
        &post_login(&server, body.clone()).await,
        413,
        "payload_too_large",
    );
    let req = Req::new("POST", "/v1/login")
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()));
    assert_error(&req.send_raw(&server).await, 413, "payload_too_large");
}
