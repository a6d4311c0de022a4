#![warn(missing_docs)]
//! # ticketgate-sdk
//!
//! The client side of the ticketgate wire protocol (see `docs/protocol.md` in the
//! repository), and the one home of the facts both sides must agree on.
//!
//! # Layout
//! - [`protocol`]: wire types (request and answer bodies, frames, error codes, close
//!   codes, header names). Always compiled; the server uses it with default features off.
//! - [`signing`]: the canonical string and its HMAC-SHA256 signature. Always compiled.
//! - `client` (feature `client`, on by default): [`Client`], one call per request:
//!   login, refresh, logout, ticket mint and the WebSocket connect, with request
//!   signing built in.
//! - `session_data` (feature `client`): the values those calls answer: [`Session`]
//!   (what a login answers, with [`Session::needs_refresh`]), [`Ticket`], [`Welcome`].
//! - `error` (feature `client`): [`ClientError`], what every SDK call fails with.
//! - `clock` (feature `client`): the wall clock in unix seconds, read in one place.
//! - `session` (feature `client`): [`SessionHandle`], a session shared by many tasks:
//!   renewal ahead of expiry, single-flight refresh, `X-New-Token`, and the
//!   [`EndReason`] once the user must log in again.
//! - `qr` (feature `client`): QR-code login, both directions, as [`Client`] calls
//!   (`qr_create_login_this`, `qr_create_login_other`, `qr_scan`, `qr_confirm`,
//!   `qr_poll`, `qr_wait`) answering [`QrLogin`], [`QrScan`], [`QrPoll`].
//! - `connection` (feature `client`): [`ManagedConnection`], a socket that answers
//!   `expiring` by itself and reconnects by close code ([`close_action`]) with
//!   jittered backoff ([`backoff_delay`]) and `resume` tickets.
//! - `calls` (feature `client`): business calls to the upstream (`send` → `reply`):
//!   [`ManagedConnection::request`], [`CallSocket`] over a plain socket, [`SendError`].
//!
//! # A whole client flow
//! ```no_run
//! # #[cfg(feature = "client")]
//! # async fn flow() -> Result<(), ticketgate_sdk::ClientError> {
//! use ticketgate_sdk::{Client, ClientType};
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let session = client
//!     .login("alice", "correct horse battery staple", ClientType::Mobile)
//!     .await?;
//! let ticket = client.mint_ticket(&session).await?;
//! let (socket, welcome) = client.connect(&session, &ticket).await?;
//! println!("admitted as connection {}", welcome.conn_id);
//! # drop(socket);
//! # Ok(())
//! # }
//! ```
//!
//! # A long-lived connection
//! The same, with renewal and reconnects handled by the SDK:
//! ```no_run
//! # #[cfg(feature = "client")]
//! # async fn flow() -> Result<(), ticketgate_sdk::ClientError> {
//! use ticketgate_sdk::{Client, ClientType, ConnectOptions, Event, SessionHandle};
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let session = client.login("alice", "secret", ClientType::Mobile).await?;
//! let handle = SessionHandle::new(client, session);
//! let mut connection = handle.connect_with_reconnect(ConnectOptions::default());
//! while let Some(event) = connection.next().await {
//!     match event {
//!         Event::Push { topic, data, .. } => println!("{topic}: {data}"),
//!         Event::Closed { code, will_reconnect: false, .. } => eprintln!("ended: {code}"),
//!         _ => {}
//!     }
//! }
//! if let Some(reason) = handle.ended() {
//!     eprintln!("log in again: {reason}");
//! }
//! # Ok(())
//! # }
//! ```

pub mod protocol;
pub mod signing;

#[cfg(feature = "client")]
mod calls;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod clock;
#[cfg(feature = "client")]
mod connection;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "client")]
mod qr;
#[cfg(feature = "client")]
mod session;
#[cfg(feature = "client")]
mod session_data;

#[cfg(feature = "client")]
pub use calls::{CallSocket, SendError, DEFAULT_CALL_TIMEOUT};
#[cfg(feature = "client")]
pub use client::{Client, WsStream};
#[cfg(feature = "client")]
pub use connection::{
    backoff_delay, close_action, CloseAction, ConnectOptions, ConnectionSender, Event,
    ManagedConnection,
};
#[cfg(feature = "client")]
pub use error::ClientError;
pub use protocol::{ClientType, ErrorCode};
#[cfg(feature = "client")]
pub use qr::{qr_id_of_payload, QrLogin, QrPoll, QrScan, DEFAULT_POLL_INTERVAL, QR_PAYLOAD_PREFIX};
#[cfg(feature = "client")]
pub use session::{EndReason, SessionHandle};
#[cfg(feature = "client")]
pub use session_data::{Session, Ticket, Welcome};
