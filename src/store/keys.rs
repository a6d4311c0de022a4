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
//!                                     (on a Cluster: tg:{<p>}:pushes:<user>, see below)
//! tg:hub                       pub/sub channel of cross-node events
//! tg:hub:{<p>}                 on a Cluster: one of 16 sharded channels instead
//! tg:nodes                     zset   node id → last heartbeat (ms)
//! tg:deployment                string fingerprint of the server secret, no TTL
//! ```
//!
//! The `{<sid>}` hash tag puts all keys of one session in one Redis Cluster slot; the
//! `{u:<user>}` tag does the same for a user's keys.
//!
//! On a Redis Cluster the hub uses sharded pub/sub over [`HUB_PARTITIONS`] channels
//! `tg:hub:{<p>}` whose tags `<p>` are picked so that their slots spread evenly over the
//! slot range; a message goes to the partition of its target (user, session or node),
//! [`hub_partition`]. A push is appended to its user's history and published in one
//! script, which may only touch one slot, so on a Cluster a user's history carries the
//! tag of the user's partition: `tg:{<p>}:pushes:<user>`.

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
/// `d` (data, JSON text). TTL = the history TTL after the last push. On a Cluster it
/// lives in the slot of the user's hub partition (see the module's doc).
pub(crate) fn push_history(user_id: &str, topology: Topology) -> String {
    match topology {
        Topology::Single => format!("tg:{{u:{user_id}}}:pushes"),
        Topology::Cluster => {
            let tag = hub_partition_tag(hub_partition(user_id));
            format!("tg:{{{tag}}}:pushes:{user_id}")
        }
    }
}

/// What the keys and channels are laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One Redis (standalone, or a Sentinel-watched primary): classic pub/sub.
    Single,
    /// A Redis Cluster: sharded pub/sub over the hub's partitions.
    Cluster,
}

/// The hub's partitions on a Redis Cluster. Each is a sharded channel, served by the
/// primary of its slot; more partitions than primaries spreads them over every one
/// (a Cluster of more than 16 primaries leaves some without hub traffic).
pub(crate) const HUB_PARTITIONS: usize = 16;

/// Redis Cluster's slots.
const SLOTS: usize = 16_384;

/// The partition of a hub message's target (a user, session or node id): its hash
/// slot, scaled down to the partitions. The same on every node.
pub(crate) fn hub_partition(target: &str) -> usize {
    usize::from(fred::util::redis_keyslot(target.as_bytes())) * HUB_PARTITIONS / SLOTS
}

/// The sharded channel of a hub partition: `tg:hub:{<tag>}`.
pub(crate) fn hub_partition_channel(partition: usize) -> String {
    format!("tg:hub:{{{}}}", hub_partition_tag(partition))
}

/// The partition whose channel this is (by its slot: partition `p`'s channel is in the
/// `p`th sixteenth of the slot range).
pub(crate) fn hub_partition_of_channel(channel: &str) -> usize {
    usize::from(fred::util::redis_keyslot(channel.as_bytes())) * HUB_PARTITIONS / SLOTS
}

/// The hash tag of partition `p`: the smallest number whose slot falls in the `p`th
/// sixteenth of the slot range, so the partitions' slots spread evenly over the range
/// (and over the primaries, which own contiguous ranges).
fn hub_partition_tag(partition: usize) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let width = SLOTS / HUB_PARTITIONS;
        (0..HUB_PARTITIONS)
            .map(|p| {
                (0u32..)
                    .map(|n| n.to_string())
                    .find(|tag| usize::from(fred::util::redis_keyslot(tag.as_bytes())) / width == p)
                    .unwrap_or_default()
            })
            .collect()
    });
    tags.get(partition % HUB_PARTITIONS)
        .map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_partitions_cover_the_slot_range_evenly() {
        let width = SLOTS / HUB_PARTITIONS;
        for p in 0..HUB_PARTITIONS {
            let channel = hub_partition_channel(p);
            let tag = hub_partition_tag(p);
            assert!(!tag.is_empty(), "partition {p} has a tag");
            assert_eq!(channel, format!("tg:hub:{{{tag}}}"));
            let slot = usize::from(fred::util::redis_keyslot(channel.as_bytes()));
            assert_eq!(slot / width, p, "{channel} is in slot {slot}");
            assert_eq!(hub_partition_of_channel(&channel), p);
        }
    }

    #[test]
    fn a_users_history_shares_the_slot_of_the_users_partition_on_a_cluster() {
        for user in ["alice", "bob", "carol", "u-123", "{odd}"] {
            let history = push_history(user, Topology::Cluster);
            let channel = hub_partition_channel(hub_partition(user));
            assert_eq!(
                fred::util::redis_keyslot(history.as_bytes()),
                fred::util::redis_keyslot(channel.as_bytes()),
                "{history} and {channel}"
            );
        }
        assert_eq!(
            push_history("alice", Topology::Single),
            "tg:{u:alice}:pushes"
        );
    }

    #[test]
    fn targets_spread_over_the_partitions() {
        let mut seen = [0usize; HUB_PARTITIONS];
        for n in 0..1600 {
            seen[hub_partition(&format!("user-{n}"))] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }
}
