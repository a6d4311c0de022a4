//! The `ticketgate` binary: config validation, user management and keys. Its shutdown
//! on SIGTERM is tested in `tests/shutdown.rs`.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ticketgate");

fn ticketgate(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TICKETGATE_USERS_FILE", dir.join("users.toml"))
        .env("TICKETGATE_DATA_DIR", dir.join("data"));
    cmd
}

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
