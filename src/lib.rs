//! ticketgate: a WebSocket long-connection gateway whose connections are admitted by
//! one-time tickets minted by signed requests.
//!
//! # The library surface
//! A node is built and run with [`Server`] from a [`Config`]. What else is public is
//! what a caller of the library, or the project's own test suites, needs:
//! - [`config`]: every setting, default, env variable and config-file key.
//! - [`server`]: builds a node and runs it until shutdown; [`shutdown::os_signal`].
//! - [`store`]: the `Store` trait and its two implementations (the store suite runs
//!   against both).
//! - [`state`], [`registry`], [`sessions`]: a running node's handles, its live
//!   connections, and ending sessions.
//! - [`auth::users`] and [`auth::tokens`]: the users file and key rotation (the CLI).
//! - [`ws::ws_config_for`]: the WebSocket settings (the load harness's baseline).
//! - [`handler`]: the business behind the gate: the [`SessionHandler`] trait (a
//!   socket's `connect`, each `send` as a `message`, `disconnect`, with the verified
//!   [`handler::Identity`]) and the [`handler::Pusher`]; run a node with your own
//!   through [`Server::builder`]. [`upstream`]: the handler that forwards to
//!   `TICKETGATE_UPSTREAM_URL` (what `ticketgate serve` runs when it is set).
//!
//! Everything else is `pub(crate)`; ARCHITECTURE.md has the whole map, the path of a
//! handshake and the invariants.

pub mod auth;
pub(crate) mod clock;
pub mod config;
pub mod handler;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod limits;
pub(crate) mod metrics;
pub mod registry;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod upstream;
pub mod ws;

/// The attribute a [`SessionHandler`] implementation carries (`#[ticketgate::async_trait]`).
pub use async_trait::async_trait;
pub use config::Config;
pub use handler::SessionHandler;
pub use server::Server;
