//! The shared state of a node, built once at start and handed to every handler.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::auth::ticket::TicketCodec;
use crate::auth::tokens::KeyStore;
use crate::config::Config;
use crate::handler::{Pusher, SessionHandler};
use crate::hub::Hub;
use crate::limits::Limits;
use crate::registry::Registry;
use crate::sessions::Sessions;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::ws::connection::SocketNode;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The fields behind [`AppState`].
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Server-side state.
    pub store: Arc<dyn Store>,
    /// The session layer: login, refresh, tickets, ending sessions.
    pub sessions: Sessions,
    /// Ticket verification at admission (no I/O).
    pub(crate) tickets: TicketCodec,
    /// Access token keys, reloaded from the data dir (JWKS, key sweeps).
    pub keys: KeyStore,
    /// Cross-node events.
    pub(crate) hub: Arc<Hub>,
    /// Anti-flood limiters.
    pub(crate) limits: Limits,
    /// Live connections of this node.
    pub registry: Registry,
    /// Connection slots (`max_connections`); a permit lives as long as its socket.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// What every socket of the node shares: settings, clock, drain signal.
    pub(crate) sockets: SocketNode,
    /// The shutdown signal, and the tracker every task of the node is spawned on.
    pub(crate) shutdown: Shutdown,
    /// The business behind the gate: `send` frames and socket events go to it.
    pub(crate) handler: Arc<dyn SessionHandler>,
    /// Pushes from inside the handler (the hub's publish path).
    pub(crate) pusher: Pusher,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Wraps the shared fields.
    pub(crate) fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}
