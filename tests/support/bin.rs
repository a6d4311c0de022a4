//! The real `ticketgate` binary in a test: a command confined to one directory, free
//! ports for its listeners, and its users added through its own CLI. Shared by the
//! suites that run the binary (`cli`, `shutdown`); it needs nothing else of `support`.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// The binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ticketgate");

/// `ticketgate` with a clean environment, its users file and data dir in `dir`.
pub fn ticketgate(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TICKETGATE_USERS_FILE", dir.join("users.toml"))
        .env("TICKETGATE_DATA_DIR", dir.join("data"));
    cmd
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Adds `name` with `password` through `ticketgate user add --password-stdin`.
pub fn add_user(dir: &Path, name: &str, password: &str) {
    let mut add = ticketgate(dir)
        .args(["user", "add", name, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    add.stdin
        .take()
        .expect("stdin")
        .write_all(password.as_bytes())
        .expect("write");
    assert!(add.wait().expect("wait").success());
}

/// Waits until the node at `base` (`http://host:port`) answers `GET /healthz`; fails
/// the test after `limit`.
pub async fn wait_until_up(base: &str, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "server at {base} did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
