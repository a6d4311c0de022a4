//! How the bench's ticketgate nodes are configured: the environment of node-a (and of
//! the nodes started with the same settings), its variants for node-e and node-l, and
//! a node's settings as the report shows them, the admin key masked.

use std::path::Path;

use crate::report::NodeSettings;
use crate::spawn::{self, Node};

/// A rate that never limits anything here.
const UNLIMITED: &str = "1000000/s";
/// Ticket lifetime on node L, so that expired tickets are at hand quickly.
const SHORT_TICKET_TTL: &str = "1s";

/// More than any phase uses: the caps guard a node against one client, and the bench
/// is thousands of clients on a few loopback addresses.
const UNCAPPED: &str = "1000000";

/// `(variable, value)` pairs for a node, `TICKETGATE_RATE_*` and the caps raised.
pub(crate) fn main_env(redis_url: &str, dir: &Path, admin_key: &str) -> Vec<(String, String)> {
    let path = |p: &str| dir.join(p).to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        ("TICKETGATE_REDIS_URL".into(), redis_url.into()),
        ("TICKETGATE_DATA_DIR".into(), path("data")),
        ("TICKETGATE_USERS_FILE".into(), path("users.toml")),
        ("TICKETGATE_ADMIN_KEY".into(), admin_key.into()),
        ("TICKETGATE_LOG_FORMAT".into(), "text".into()),
    ];
    for rate in [
        "LOGIN_IP",
        "LOGIN_USER",
        "LOGIN_DEVICE",
        "FAIL_IP",
        "MINT_DEVICE",
        "CONNECT_DEVICE",
        "CONNECT_IP",
        "SESSION",
    ] {
        env.push((format!("TICKETGATE_RATE_{rate}"), UNLIMITED.into()));
    }
    for cap in [
        "MAX_HTTP_CONNECTIONS",
        "MAX_HTTP_CONNECTIONS_PER_IP",
        "MAX_SOCKETS_PER_SESSION",
        "MAX_SOCKETS_PER_USER",
        "MAX_SESSIONS_PER_APP",
    ] {
        env.push((format!("TICKETGATE_{cap}"), UNCAPPED.into()));
    }
    env
}

/// Node-e's environment: `env` without a Redis URL, so the node runs on its embedded
/// store.
pub(super) fn embedded_env(env: &[(String, String)]) -> Vec<(String, String)> {
    env.iter()
        .filter(|(k, _)| k != "TICKETGATE_REDIS_URL")
        .cloned()
        .collect()
}

/// Node-l's environment: `env` with the mint quota left at its default and 1 s
/// tickets.
pub(super) fn limits_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| k != "TICKETGATE_RATE_MINT_DEVICE")
        .cloned()
        .collect();
    env.push(("TICKETGATE_TICKET_TTL".into(), SHORT_TICKET_TTL.into()));
    env
}

/// A node's settings for the report, the admin key masked.
pub(super) fn settings(node: &Node, role: &str) -> NodeSettings {
    let env = node
        .env
        .iter()
        .map(|(k, v)| {
            let v = if k == "TICKETGATE_ADMIN_KEY" {
                format!("<random, {} characters>", v.len())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect::<Vec<_>>();
    let mut env = env;
    for var in spawn::REMOVED_VARS {
        env.push((var.to_owned(), "(removed from the environment)".to_owned()));
    }
    NodeSettings {
        node: node.name.clone(),
        role: role.to_owned(),
        env,
    }
}
