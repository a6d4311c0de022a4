//! Test harness shared by the integration tests: real `redis-server` processes on free
//! loopback ports, and ticketgate servers started in-process.
#![allow(dead_code, unreachable_pub)]

pub mod redis;
