//! Store key names. The only place that builds them.
//!
//! ```text
//! tg:{<sid>}:session           hash   the session record        TTL = refresh lifetime
//! tg:{<sid>}:nonce:<nonce>     string "1"                        TTL = 2 × skew
//! tg:{<sid>}:ticket:<id>       string TicketGrant::encode()      TTL = ticket lifetime
//! ```
//!
//! The `{<sid>}` hash tag puts all keys of one session in one Redis Cluster slot.

/// The session record's key.
pub fn session(session_id: &str) -> String {
    format!("tg:{{{session_id}}}:session")
}

/// A seen nonce's key.
pub fn nonce(session_id: &str, nonce: &str) -> String {
    format!("tg:{{{session_id}}}:nonce:{nonce}")
}

/// A ticket's key.
pub fn ticket(session_id: &str, ticket_id: &str) -> String {
    format!("tg:{{{session_id}}}:ticket:{ticket_id}")
}
