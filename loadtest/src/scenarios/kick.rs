//! `kick`: kick-to-close latency across nodes. A user holds `size` sockets on one node
//! (or spread over several); the kick goes to another node's admin API
//! (`POST /admin/v1/users/{user_id}/kick`), which must reach them through the
//! cross-node hub. Latency is from sending the kick to each socket's 4503 close frame.
//!
//! A kick ends the user's sessions, so every repetition logs the user in again
//! (one argon2 login each: keep repetitions few).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use ticketgate_sdk::ClientType;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::admit_spread;
use crate::stats::{Figures, Recorder};
use crate::target::{login, mint_many, Admin};
use crate::ws::{Dialer, Ws};

/// Close code of a kick (PROTOCOL §4).
const KICKED: u16 = 4503;
/// How long sockets may take to close after a kick.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// Pause between the last welcome and the kick, so every node has registered its
/// sockets.
const SETTLE: Duration = Duration::from_millis(200);
/// Workers minting and connecting.
const CONCURRENCY: usize = 32;

/// Who is kicked, and where.
pub struct KickSetup<'a> {
    /// Where the user logs in and mints.
    pub public_url: &'a str,
    /// The user to kick.
    pub user: &'a str,
    /// Their password.
    pub password: &'a str,
    /// The admin API the kick is sent to.
    pub admin: &'a Admin,
    /// The nodes the user's sockets are on (round-robin).
    pub socket_nodes: &'a [Arc<Dialer>],
}

/// `reps` kicks of a user with `size` sockets. `Ok(None)` when the server has no kick
/// endpoint (404).
///
/// # Errors
/// When the login fails or the kick call errs (other than 404).
pub async fn run(
    label: &str,
    setup: &KickSetup<'_>,
    size: usize,
    reps: usize,
) -> anyhow::Result<Option<Figures>> {
    let started = Instant::now();
    let mut record = Recorder::new();
    for _ in 0..reps {
        match one_kick(label, setup, size, &mut record).await? {
            Some(()) => {}
            None => return Ok(None),
        }
    }
    Ok(Some(record.figures(label, started.elapsed())))
}

async fn one_kick(
    label: &str,
    setup: &KickSetup<'_>,
    size: usize,
    record: &mut Recorder,
) -> anyhow::Result<Option<()>> {
    let device = login(
        setup.public_url,
        setup.user,
        setup.password,
        ClientType::Web,
    )
    .await?;
    let concurrency = CONCURRENCY.min(size);
    let (tickets, mint) = mint_many(
        &format!("{label}: mint"),
        std::slice::from_ref(&device),
        size,
        concurrency,
        Duration::from_secs(60),
    )
    .await;
    if mint.error_count() > 0 {
        for kind in mint.errors.keys() {
            record.error(format!("mint {kind}"));
        }
    }
    let (sockets, admitted) = admit_spread(
        &format!("{label}: connect"),
        Arc::new(tickets),
        setup.socket_nodes,
        concurrency,
    )
    .await;
    for _ in 0..admitted.error_count() {
        record.error("connect failed");
    }
    let readers: Vec<JoinHandle<(Instant, u16)>> = sockets.into_iter().map(watch_close).collect();
    tokio::time::sleep(SETTLE).await;

    let kicked_at = Instant::now();
    let answer = setup.admin.kick(setup.user).await;
    match answer {
        Ok(Some(_)) => {}
        Ok(None) => {
            abort_all(&readers);
            return Ok(None);
        }
        Err(e) => {
            abort_all(&readers);
            return Err(e);
        }
    }
    let deadline = tokio::time::Instant::from(kicked_at + CLOSE_LIMIT);
    for reader in readers {
        let abort = reader.abort_handle();
        match tokio::time::timeout_at(deadline, reader).await {
            Ok(Ok((at, KICKED))) => record.ok(at.duration_since(kicked_at)),
            Ok(Ok((_, code))) => record.error(format!("closed with {code}")),
            Ok(Err(_)) => record.error("reader failed"),
            Err(_) => {
                abort.abort();
                record.error("not closed within 5 s");
            }
        }
    }
    Ok(Some(()))
}

/// Reads a socket until it closes; returns when and with which code (1006 when it
/// ended without a close frame).
fn watch_close(mut socket: Ws) -> JoinHandle<(Instant, u16)> {
    tokio::spawn(async move {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return (Instant::now(), code);
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        (Instant::now(), 1006)
    })
}

fn abort_all<T>(readers: &[JoinHandle<T>]) {
    for r in readers {
        r.abort();
    }
}
