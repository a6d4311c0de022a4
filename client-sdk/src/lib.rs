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
//! - `client` (feature `client`, on by default): a typed client for login, ticket mint
//!   and the WebSocket connect, with request signing built in.
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

pub mod protocol;
pub mod signing;

#[cfg(feature = "client")]
mod client;

#[cfg(feature = "client")]
pub use client::{Client, ClientError, Session, Ticket, Welcome, WsStream};
pub use protocol::{ClientType, ErrorCode};
