//! The README's client flow, compiled with the SDK so the README cannot drift from it
//! (`client-sdk/tests/readme.rs` checks they are the same). Run a node first:
//! `cargo run -- serve`, add `alice`, then `cargo run -p ticketgate-sdk --example flow`.

use ticketgate_sdk::protocol::ServerFrame;
use ticketgate_sdk::{Client, ClientType, ConnectOptions, Event, SessionHandle};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the device id for the installation's lifetime; tickets are bound to it.
    let client = Client::new("http://127.0.0.1:8080")?
        .with_device_id("3f1c2a9e-6b7d-4e0f-9a51-2c8d7e4b1f60");

    // 1. Log in: access token, refresh token, per-session signing key.
    let session = client
        .login("alice", "correct horse battery staple", ClientType::Mobile)
        .await?;

    // 2. A handle renews the access token ahead of expiry (one refresh at a time,
    //    however many callers) and adopts X-New-Token answers.
    let handle = SessionHandle::new(client, session);

    // 3. A managed socket: it mints a one-time ticket (a signed POST /v1/tickets),
    //    connects with it, answers `expiring` with a renewed token by itself, and
    //    reconnects with a fresh ticket (or a resume ticket), backoff and jitter after
    //    a close or a failed connect that a new socket can cure.
    let mut conn = handle.connect_with_reconnect(ConnectOptions::default());
    while let Some(event) = conn.next().await {
        match event {
            Event::Welcome(w) => println!("connection {} open until {}", w.conn_id, w.expires_at),
            Event::Push { id, topic, data } => println!("push {id} {topic}: {data}"),
            // Pushes published while this client was away are no longer all held:
            // reload the state from your own service.
            Event::PushesLost { last_id } => println!("pushes lost; continuing from {last_id:?}"),
            Event::Frame(ServerFrame::Refreshed { expires_at }) => {
                println!("renewed until {expires_at}")
            }
            Event::Frame(ServerFrame::Error { error, message, .. }) => {
                eprintln!("the server refused a frame: {error}: {message}")
            }
            Event::Frame(_) => {}
            Event::RenewFailed { error } => {
                eprintln!("renewal failed ({error}); the socket lasts until its deadline")
            }
            Event::Reconnecting { attempt, delay } => {
                println!("reconnect attempt {attempt} in {delay:?}")
            }
            Event::Closed {
                code,
                reason,
                will_reconnect: true,
            } => {
                println!("closed with {code} ({reason}); reconnecting")
            }
            Event::ConnectFailed {
                error,
                will_reconnect: true,
            } => {
                eprintln!("connect failed ({error}); retrying")
            }
            // The last event of the stream: 4503 after an admin kick (the reason is the
            // admin's text), 4509 when a newer login of this client type replaced the
            // session, a revoked or expired session at mint... The session is over:
            // log in again (or stop).
            Event::Closed {
                code,
                reason,
                will_reconnect: false,
            } => {
                eprintln!("closed for good with {code}: {reason}")
            }
            Event::ConnectFailed {
                error,
                will_reconnect: false,
            } => {
                eprintln!("cannot connect again: {error}")
            }
        }
    }
    // The stream ends after one of the two "for good" events (or `conn.close()`).
    println!("connection over: log in again to continue");
    Ok(())
}
