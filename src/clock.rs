//! Time, read in one place: the wall clock in unix seconds and milliseconds.
//!
//! A leaf: it imports nothing of the crate, so every room (the store included) can read
//! the time without reaching into `auth`. Code whose timers need tests takes a
//! [`Clock`] instead of calling [`unix_now`], so a test can drive it from tokio's
//! paused clock (see `ws::connection`'s tests).

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub(crate) trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn unix_ms(&self) -> i64;

    /// Unix time in whole seconds.
    fn unix(&self) -> i64 {
        self.unix_ms().div_euclid(1000)
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> i64 {
        unix_now_ms()
    }
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Current unix time in milliseconds.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
