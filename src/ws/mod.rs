//! WebSocket: admission (the upgrade that consumes a ticket), the connection's frame
//! loop, and the registry of live connections.

pub mod admission;
pub mod connection;
pub mod inbox;
pub mod registry;
