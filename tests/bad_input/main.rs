//! Bad input at the public edge (PROTOCOL §2, §3, §4, §8): every malformed, forged,
//! stale, replayed, oversized or never-finished request gets the protocol's status and
//! JSON error code, never a 5xx, and within a bounded time.
//!
//! Requests are built by hand: reqwest where the bytes are ordinary, raw TCP where the
//! exact bytes matter (control characters, non-UTF-8 values, chunked bodies, huge heads,
//! headers that never finish, malformed upgrades). Every error answer goes through
//! [`answers::assert_error`], which checks status, `Content-Type`, code and shape at once.
//!
//! One test binary, one module per group of tests; the helpers shared by the groups are
//! modules of their own.

#[path = "../support/mod.rs"]
mod support;

// Helpers
mod answers;
mod request;
mod signed;
mod upgrade;

// Tests, one module per group
mod bodies;
mod connect;
mod http_layer;
mod ip_failure_quota;
mod login;
mod signing;
mod two_ways_in;
