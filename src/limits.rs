//! Anti-flood limits with `governor`: keyed limiters per IP, user and device, and a
//! direct limiter per connection for frames.
//!
//! Charging order is part of the security design (see ARCHITECTURE.md): device ids are
//! public, so per-device quotas are charged only after the request proved it holds the
//! device's key (mint: the signature verified). Failures before that are charged to
//! the client IP (`fail_ip`). The per-device connect quota is the registry's: it must
//! be checked before the ticket is consumed and charged only once the socket is
//! admitted, which governor's check-and-charge cannot do (`registry::Pace`).
//!
//! Keyed state is bounded: [`Limits::retain_recent`] runs on a timer and drops keys whose
//! quota has fully replenished.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{Rate, RateConfig};

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The request was over a quota; retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryAfter(pub Duration);

/// Converts a configured rate to a governor quota: `count` per `period`, burst `count`.
pub(crate) fn quota(rate: Rate) -> Quota {
    let per_cell = rate.period / rate.count.get();
    Quota::with_period(per_cell.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(rate.count))
        .allow_burst(rate.count)
}

/// Which keyed quota to charge.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limit<'a> {
    /// Login attempts from an IP.
    LoginIp(IpAddr),
    /// Login attempts for a username.
    LoginUser(&'a str),
    /// Login attempts from a device.
    LoginDevice(&'a str),
    /// Requests from an IP that failed before authentication.
    FailIp(IpAddr),
    /// Mints by a device (after its signature verified).
    MintDevice(&'a str),
    /// Connects from an IP.
    ConnectIp(IpAddr),
    /// Refresh and logout calls of a session (after the request's signature verified).
    Session(&'a str),
    /// QR logins created from an IP.
    QrIp(IpAddr),
}

/// Every keyed limiter of a node.
pub(crate) struct Limits<C: Clock + Clone = DefaultClock> {
    login_ip: Keyed<IpAddr, C>,
    login_user: Keyed<String, C>,
    login_device: Keyed<String, C>,
    fail_ip: Keyed<IpAddr, C>,
    mint_device: Keyed<String, C>,
    connect_ip: Keyed<IpAddr, C>,
    session: Keyed<String, C>,
    qr_ip: Keyed<IpAddr, C>,
    clock: C,
}

impl<C: Clock + Clone> Limits<C> {
    /// The clock every limiter of this node runs on.
    pub(crate) fn clock(&self) -> &C {
        &self.clock
    }
}

fn keyed<K: Hash + Eq + Clone, C: Clock + Clone>(rate: Rate, clock: &C) -> Keyed<K, C> {
    RateLimiter::dashmap_with_clock(quota(rate), clock.clone())
}

impl Limits<DefaultClock> {
    /// Limiters on the real clock.
    pub(crate) fn new(rates: &RateConfig) -> Self {
        Limits::with_clock(rates, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// Limiters on the given clock (tests use `FakeRelativeClock`).
    pub(crate) fn with_clock(rates: &RateConfig, clock: C) -> Self {
        Limits {
            login_ip: keyed(rates.login_ip, &clock),
            login_user: keyed(rates.login_user, &clock),
            login_device: keyed(rates.login_device, &clock),
            fail_ip: keyed(rates.fail_ip, &clock),
            mint_device: keyed(rates.mint_device, &clock),
            connect_ip: keyed(rates.connect_ip, &clock),
            session: keyed(rates.session, &clock),
            qr_ip: keyed(rates.qr_ip, &clock),
            clock,
        }
    }

    /// Charges one cell of `limit`.
    ///
    /// # Errors
    /// [`RetryAfter`] when over the quota; nothing is charged then.
    pub(crate) fn check(&self, limit: Limit<'_>) -> Result<(), RetryAfter> {
        let verdict = match limit {
            Limit::LoginIp(ip) => self.login_ip.check_key(&ip),
            Limit::LoginUser(u) => self.login_user.check_key(&u.to_owned()),
            Limit::LoginDevice(d) => self.login_device.check_key(&d.to_owned()),
            Limit::FailIp(ip) => self.fail_ip.check_key(&ip),
            Limit::MintDevice(d) => self.mint_device.check_key(&d.to_owned()),
            Limit::ConnectIp(ip) => self.connect_ip.check_key(&ip),
            Limit::Session(s) => self.session.check_key(&s.to_owned()),
            Limit::QrIp(ip) => self.qr_ip.check_key(&ip),
        };
        verdict.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            // Retry-After is whole seconds; never advertise 0.
            RetryAfter(Duration::from_secs(
                wait.as_secs().max(1) + u64::from(wait.subsec_nanos() > 0),
            ))
        })
    }

    /// Drops the state of keys whose quota is full again, bounding memory.
    pub(crate) fn retain_recent(&self) {
        self.login_ip.retain_recent();
        self.login_user.retain_recent();
        self.login_device.retain_recent();
        self.fail_ip.retain_recent();
        self.mint_device.retain_recent();
        self.connect_ip.retain_recent();
        self.session.retain_recent();
        self.qr_ip.retain_recent();
        self.login_ip.shrink_to_fit();
        self.login_user.shrink_to_fit();
        self.login_device.shrink_to_fit();
        self.fail_ip.shrink_to_fit();
        self.mint_device.shrink_to_fit();
        self.connect_ip.shrink_to_fit();
        self.session.shrink_to_fit();
        self.qr_ip.shrink_to_fit();
    }

    /// Keys held by each limiter, by name (for `/metrics`).
    pub(crate) fn sizes(&self) -> [(&'static str, usize); 8] {
        [
            ("login_ip", self.login_ip.len()),
            ("login_user", self.login_user.len()),
            ("login_device", self.login_device.len()),
            ("fail_ip", self.fail_ip.len()),
            ("mint_device", self.mint_device.len()),
            ("connect_ip", self.connect_ip.len()),
            ("session", self.session.len()),
            ("qr_ip", self.qr_ip.len()),
        ]
    }

    /// Keys held across every limiter.
    #[cfg(test)]
    pub(crate) fn tracked_keys(&self) -> usize {
        self.sizes().iter().map(|&(_, keys)| keys).sum()
    }
}

/// The per-connection frame limiter.
pub(crate) type FrameLimiter = governor::DefaultDirectRateLimiter;

/// A new frame limiter for one connection, on a clock shared by all of them (a new
/// `quanta` clock per connection would calibrate itself, CPUID included, every time).
pub(crate) fn frame_limiter(rate: Rate, clock: &DefaultClock) -> FrameLimiter {
    RateLimiter::direct_with_clock(quota(rate), clock.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use governor::clock::FakeRelativeClock;

    fn limits(f: impl FnOnce(&mut RateConfig)) -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let mut rates = Config::defaults().rates;
        f(&mut rates);
        let clock = FakeRelativeClock::default();
        (Limits::with_clock(&rates, clock.clone()), clock)
    }

    #[test]
    fn a_flooding_device_is_limited_and_another_device_is_not() {
        let (l, _clock) = limits(|r| r.mint_device = Rate::parse("3/min").expect("rate"));
        for _ in 0..3 {
            assert!(l.check(Limit::MintDevice("flooder")).is_ok());
        }
        let RetryAfter(wait) = l.check(Limit::MintDevice("flooder")).expect_err("limited");
        assert_eq!(wait, Duration::from_secs(20));
        assert!(l.check(Limit::MintDevice("honest")).is_ok());
    }

    #[test]
    fn quota_replenishes_with_time_and_retain_recent_drops_idle_keys() {
        let (l, clock) = limits(|r| r.connect_ip = Rate::parse("2/s").expect("rate"));
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(l.check(Limit::ConnectIp(ip)).is_ok());
        assert!(l.check(Limit::ConnectIp(ip)).is_ok());
        assert!(l.check(Limit::ConnectIp(ip)).is_err());
        clock.advance(Duration::from_millis(500));
        assert!(l.check(Limit::ConnectIp(ip)).is_ok());
        assert_eq!(l.tracked_keys(), 1);
        clock.advance(Duration::from_secs(5));
        l.retain_recent();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn each_limit_has_its_own_state() {
        let (l, _clock) = limits(|r| r.fail_ip = Rate::parse("1/min").expect("rate"));
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert!(l.check(Limit::FailIp(ip)).is_ok());
        assert!(l.check(Limit::FailIp(ip)).is_err());
        assert!(l.check(Limit::ConnectIp(ip)).is_ok());
        assert!(l.check(Limit::LoginIp(ip)).is_ok());
    }
}
