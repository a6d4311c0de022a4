//! The wall clock, in the unix seconds the protocol counts in.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in unix seconds (0 before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
