//! The bench's phases, one module each, in the order [`run`](super::run) calls them
//! (see the parent module for what each measures). Each phase is a method of
//! [`Bench`](super::Bench): it starts the extra processes it needs, runs its scenarios,
//! records their runs in the report and their key figures in the findings of the bar,
//! and stops its processes before it returns.

mod cluster;
mod idle;
mod limits;
mod rates;
mod setup;
mod storm;
