//! Store key names. The only place that builds them.
//!
//! ```text
//! tg:{<sid>}:session           hash   the session record        TTL = refresh lifetime
//! tg:{<sid>}:nonce:<nonce>     string "1"                        TTL = 2 × skew
//! tg:{<sid>}:ticket:<id>       string TicketGrant::encode()      TTL = ticket lifetime
//! tg:{<sid>}:renewed:<jti>     string "1"                        TTL = the token's remaining life
//! tg:{<sid>}:reused            string "1"                        TTL = the session's remaining life
//! tg:{u:<user>}:sessions       hash   sid → "ctp|created|expires" TTL = latest session expiry
//! tg:{u:<user>}:blocked        string "1"                        no TTL
//! tg:{qr:<family>}:qr          hash   one QR login (store/qr.rs)  TTL = the QR's life
//! tg:{u:<user>}:pushes         stream the push history            TTL = history TTL after the last push
//! tg:hub                       pub/sub channel of cross-node events
//! tg:nodes                     zset   node id → last heartbeat (ms)
//! tg:deployment                string fingerprint of the server secret, no TTL
//! ```
//!
//! The `{<sid>}` hash tag puts all keys of one session in one Redis Cluster slot; the
//! `{u:<user>}` tag does the same for a user's keys.

/// The session record's key.
pub(crate) fn session(session_id: &str) -> String {
    format!("tg:{{{session_id}}}:session")
}

/// A seen nonce's key.
pub(crate) fn nonce(session_id: &str, nonce: &str) -> String {
    format!("tg:{{{session_id}}}:nonce:{nonce}")
}

/// A ticket's key.
pub(crate) fn ticket(session_id: &str, ticket_id: &str) -> String {
    format!("tg:{{{session_id}}}:ticket:{ticket_id}")
}

/// The marker of a session revoked for refresh-token reuse; it lives as long as the
/// session would have, so every later refresh of that family answers "reused".
pub(crate) fn reused(session_id: &str) -> String {
    format!("tg:{{{session_id}}}:reused")
}

/// A renewed access token's marker.
pub(crate) fn renewed(session_id: &str, jti: &str) -> String {
    format!("tg:{{{session_id}}}:renewed:{jti}")
}

/// A user's session index.
pub(crate) fn user_sessions(user_id: &str) -> String {
    format!("tg:{{u:{user_id}}}:sessions")
}

/// A user's blocked flag.
pub(crate) fn blocked(user_id: &str) -> String {
    format!("tg:{{u:{user_id}}}:blocked")
}

/// A QR login's record (every generation of its `qr_id` shares it).
pub(crate) fn qr(family: &str) -> String {
    format!("tg:{{qr:{family}}}:qr")
}

/// The cross-node event channel.
pub(crate) const HUB_CHANNEL: &str = "tg:hub";

/// The fingerprint of the server secret of the deployment using this Redis.
pub(crate) const DEPLOYMENT: &str = "tg:deployment";

/// The live nodes' heartbeats.
pub(crate) const NODES: &str = "tg:nodes";

/// A user's push history (PROTOCOL §10): a stream whose entry ids are `<seq>-0` and
/// whose entries hold `e` (the epoch), `s` (the session, or empty), `t` (topic) and
/// `d` (data, JSON text). TTL = the history TTL after the last push.
pub(crate) fn push_history(user_id: &str) -> String {
    format!("tg:{{u:{user_id}}}:pushes")
}
