//! The `ticketgate` binary: config validation, user management and keys. Its shutdown
//! on SIGTERM is tested in `tests/shutdown.rs`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[path = "support/bin.rs"]
mod bin;

use bin::{add_user, free_port, ticketgate, wait_until_up};

#[test]
fn every_config_error_is_reported_at_once_with_exit_code_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ticketgate(dir.path())
        .args(["serve"])
        .env("TICKETGATE_TICKET_TTL", "soon")
        .env("TICKETGATE_RATE_MINT_DEVICE", "30/week")
        .env("TICKETGATE_LISTEN", "nowhere")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for name in [
        "TICKETGATE_TICKET_TTL",
        "TICKETGATE_RATE_MINT_DEVICE",
        "TICKETGATE_LISTEN",
    ] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
}

/// A misspelled key in any of the operator's files stops the start with exit code 78,
/// naming the file, the key and the key that was probably meant.
#[test]
fn misspelled_keys_in_config_users_and_apps_files_stop_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    add_user(dir.path(), "alice", "pw-alice-1234");
    let users = std::fs::read_to_string(dir.path().join("users.toml")).expect("users");
    let apps_ok = "[apps.billing]\nsecret = \"0123456789abcdef0123\"\n";
    let cases = [
        (
            "ticketgate.toml",
            "tiket_ttl = \"10s\"\n",
            "(did you mean `ticket_ttl`?)",
        ),
        (
            "apps.toml",
            "[app.billing]\nsecret = \"0123456789abcdef0123\"\n",
            "(did you mean `apps`?)",
        ),
        (
            "users.toml",
            &users.replace("password", "passwd"),
            "(did you mean `password`?)",
        ),
    ];
    for (file, text, hint) in cases {
        let path = dir.path().join(file);
        let keep = std::fs::read_to_string(&path).ok();
        std::fs::write(&path, text).expect("write");
        if file != "apps.toml" {
            std::fs::write(dir.path().join("apps.toml"), apps_ok).expect("apps");
        }
        let out = ticketgate(dir.path())
            .args(["serve", "--config"])
            .arg(dir.path().join("ticketgate.toml"))
            .env("TICKETGATE_APPS_FILE", dir.path().join("apps.toml"))
            .env("TICKETGATE_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env(
                "TICKETGATE_ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{file}: {err}");
        assert!(err.contains(file) && err.contains(hint), "{file}: {err}");
        match keep {
            Some(text) => std::fs::write(&path, text).expect("restore"),
            None => std::fs::write(&path, "").expect("empty"),
        }
    }
}

/// At start the node says what it is, one line each: node id, store, listeners (a host
/// name is a valid listen address), and warns when the admin API has no key. Written
/// to a file, the lines carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_lines_say_what_the_node_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin) = (free_port(), free_port());
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut server = ticketgate(dir.path())
        .arg("serve")
        .env("TICKETGATE_LISTEN", format!("localhost:{port}"))
        .env("TICKETGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("TICKETGATE_NODE_ID", "node-under-test")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("spawn server");
    wait_until_up(&format!("http://127.0.0.1:{port}"), Duration::from_secs(10)).await;
    let kill = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    server.wait().expect("exit");

    let log = std::fs::read_to_string(&log_path).expect("the log");
    assert!(!log.contains('\u{1b}'), "colour codes in a file: {log}");
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in: {log}"))
            .to_owned()
    };
    assert!(line("node_id=node-under-test").contains("INFO"));
    assert!(line(" store ").contains("embedded"));
    let listening = line("listening");
    assert!(
        listening.contains(&format!("public=127.0.0.1:{port}"))
            && listening.contains(&format!("admin=127.0.0.1:{admin}")),
        "{listening}"
    );
    let warning = line("admin API disabled");
    assert!(
        warning.contains("WARN") && warning.contains("TICKETGATE_ADMIN_KEY"),
        "{warning}"
    );
}

#[test]
fn users_are_added_from_stdin_and_blocked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = ticketgate(dir.path())
        .args(["user", "add", "alice", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret-pass\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    let text = std::fs::read_to_string(dir.path().join("users.toml")).expect("users file");
    assert!(text.contains("$argon2id$") && !text.contains("s3cret-pass"));
    let status = ticketgate(dir.path())
        .args(["user", "block", "alice"])
        .stdout(Stdio::null())
        .status()
        .expect("run");
    assert!(status.success());
    assert!(std::fs::read_to_string(dir.path().join("users.toml"))
        .expect("read")
        .contains("blocked = true"));
    let status = ticketgate(dir.path())
        .args(["user", "block", "nobody"])
        .stderr(Stdio::null())
        .status()
        .expect("run");
    assert_eq!(status.code(), Some(65));
    // An empty password is refused.
    let out = ticketgate(dir.path())
        .args(["user", "add", "bob", "--password-stdin"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn keys_rotate_adds_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..2 {
        let status = ticketgate(dir.path())
            .args(["keys", "rotate"])
            .stdout(Stdio::null())
            .status()
            .expect("run");
        assert!(status.success());
    }
    let keys = std::fs::read_dir(dir.path().join("data/jwt"))
        .expect("jwt dir")
        .count();
    assert_eq!(keys, 2);
}

/// Dependencies are capped whatever `RUST_LOG` says: at trace, tungstenite prints every
/// frame (a `refresh` frame carries an access token) and hyper the request heads (a
/// ticket). Run the binary with every directive lifted, log in, mint, connect, refresh
/// over the socket, stop it: neither secret is in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_cannot_lift_the_cap_on_dependencies() {
    // Each with a line of ticketgate's own that it lets through.
    for (rust_log, own_line) in [
        (
            "trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace",
            "connection admitted",
        ),
        (
            "info,tungstenite::protocol=trace,tokio_tungstenite::compat=trace,hyper::proto=trace",
            "session opened",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        add_user(dir.path(), "alice", "pw-alice-1234");

        let (port, admin) = (free_port(), free_port());
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut server = ticketgate(dir.path())
            .arg("serve")
            .env("RUST_LOG", rust_log)
            .env("TICKETGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("TICKETGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("TICKETGATE_SHUTDOWN_GRACE", "1s")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn server");
        let url = format!("http://127.0.0.1:{port}");
        wait_until_up(&url, Duration::from_secs(10)).await;
        let client = ticketgate_sdk::Client::new(&url).expect("client");
        let session = client
            .login("alice", "pw-alice-1234", ticketgate_sdk::ClientType::Mobile)
            .await
            .expect("login");
        let ticket = client.mint_ticket(&session).await.expect("mint");
        let (mut ws, _) = client.connect(&session, &ticket).await.expect("connect");
        let refresh = serde_json::json!({"type": "refresh", "access_token": session.access_token});
        ws.send(Message::text(refresh.to_string()))
            .await
            .expect("send");
        let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer in time")
            .expect("a frame")
            .expect("ok");
        // The same token again is refused (`error`): either way the frame was read.
        assert!(
            answer.to_text().expect("text").contains("\"type\""),
            "{answer:?}"
        );

        let kill = Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status()
            .expect("kill");
        assert!(kill.success());
        while ws.next().await.is_some() {}
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }

        let log = std::fs::read_to_string(&log_path).expect("the log");
        assert!(
            log.contains(own_line),
            "RUST_LOG={rust_log} applies to ticketgate itself: {log}"
        );
        for (secret, value) in [
            ("access token", session.access_token.as_str()),
            ("ticket", ticket.ticket.as_str()),
        ] {
            if let Some(at) = log.find(value) {
                let line = log[..at].rsplit('\n').next().unwrap_or_default();
                panic!("RUST_LOG={rust_log}: the {secret} is in the log, after: {line}");
            }
        }
    }
}
