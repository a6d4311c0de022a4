//! The shared state of a node, built once at start and handed to every handler.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::auth::apps::Apps;
use crate::auth::secrets::Secrets;
use crate::auth::ticket::TicketCodec;
use crate::auth::tokens::KeyStore;
use crate::auth::users::Users;
use crate::config::Config;
use crate::http::error::ApiError;
use crate::hub::Hub;
use crate::limits::{Limit, Limits};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::ws::registry::Registry;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The fields behind [`AppState`].
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Server-side state.
    pub store: Arc<dyn Store>,
    /// Per-purpose subkeys of the server secret.
    pub secrets: Secrets,
    /// Ticket mint/verify.
    pub tickets: TicketCodec,
    /// Access token keys, reloaded from the data dir.
    pub keys: KeyStore,
    /// The users file.
    pub users: Users,
    /// The API apps file.
    pub apps: Apps,
    /// Cross-node events.
    pub hub: Arc<Hub>,
    /// Anti-flood limiters.
    pub limits: Limits,
    /// Live connections of this node.
    pub registry: Registry,
    /// Connection slots (`max_connections`); a permit lives as long as its socket.
    pub connection_slots: Arc<Semaphore>,
    /// The shutdown signal, and the tracker every task of the node is spawned on.
    pub shutdown: Shutdown,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Wraps the shared fields.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }

    /// Charges a failure that happened before authentication to the IP's failure
    /// quota. Over the quota, the answer becomes 429 instead of the error itself.
    pub fn charge_failure(&self, ip: IpAddr, err: ApiError) -> ApiError {
        if !err.is_unauthenticated_failure() {
            return err;
        }
        match self.limits.check(Limit::FailIp(ip)) {
            Ok(()) => err,
            Err(retry) => retry.into(),
        }
    }
}
