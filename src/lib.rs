//! ticketgate: a WebSocket long-connection gateway whose connections are admitted by
//! one-time tickets minted by signed requests.
//!
//! # Layout
//! - [`config`]: every setting, default, env variable and config-file key.
//! - [`server`]: builds a node and runs it until shutdown.
//! - [`shutdown`]: the shutdown signal and the tracker of the node's tasks.
//! - [`http`]: accept loop, public and admin routers, error mapping.
//! - [`ws`]: admission (ticket → socket), the connection loop, the registry.
//! - [`clock`]: the wall clock, read in one place.
//! - [`auth`]: secrets, access tokens, request signing, tickets, users, sessions.
//! - [`sessions`]: the session layer's use cases (login, refresh, tickets, ending).
//! - [`store`]: all server-side state, Redis or embedded, behind one trait.
//! - [`hub`]: cross-node revocations, pushes and queries (Redis pub/sub or in-process).
//! - [`limits`]: governor-based anti-flood limits.
//! - [`metrics`]: the Prometheus recorder.
//!
//! See ARCHITECTURE.md for the path of a handshake and the invariants.

pub mod auth;
pub mod clock;
pub mod config;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod ws;

pub use config::Config;
pub use server::Server;
