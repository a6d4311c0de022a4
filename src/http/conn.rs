//! What a client may hold on a listener before it authenticates, and for how long:
//! the caps on connections not upgraded to a socket (total and per client IP), the
//! keep-alive and write deadlines of a connection, and the accept loop's backoff and
//! throttled warnings. `http/mod.rs` applies them; see its module documentation.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use dashmap::DashMap;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::config::Config;

/// At most one warning per this long for failed accepts, and one for refused
/// connections; the others are counted in the next one.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(5);
/// The first pause of the accept loop after a failed accept (out of file descriptors);
/// it doubles at each failure in a row, up to [`MAX_ACCEPT_BACKOFF`].
pub(super) const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause of the accept loop: once descriptors are free again, the node
/// serves within this long.
pub(super) const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Limits of the connections of a listener, the same on both listeners.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// A request head must be complete within this long (slowloris guard).
    pub header_timeout: Duration,
    /// After the shutdown signal, the request in flight gets this long to finish.
    pub grace: Duration,
    /// A request body must be complete within this long of its head.
    pub body_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub keepalive_timeout: Duration,
    /// A connection whose answer cannot be written for this long is closed.
    pub write_timeout: Duration,
    /// Connections not upgraded to a socket.
    pub max_connections: usize,
    /// Connections not upgraded to a socket, per client IP (IPv6: per /64).
    pub max_connections_per_ip: usize,
}

impl ConnLimits {
    /// The limits `config` sets.
    pub(crate) fn of(config: &Config) -> ConnLimits {
        ConnLimits {
            header_timeout: config.header_timeout,
            grace: config.shutdown_grace,
            body_timeout: config.http.body_timeout,
            keepalive_timeout: config.http.keepalive_timeout,
            write_timeout: config.http.write_timeout,
            max_connections: config.http.max_connections,
            max_connections_per_ip: config.http.max_connections_per_ip,
        }
    }
}

/// Whether a failed accept concerns only the connection being accepted (it was reset
/// or aborted in the queue), so that the next one may succeed at once.
pub(super) fn about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The pause of the accept loop after failures in a row: doubling from
/// [`MIN_ACCEPT_BACKOFF`] up to [`MAX_ACCEPT_BACKOFF`], reset by an accepted connection.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            next: MIN_ACCEPT_BACKOFF,
        }
    }

    /// The pause after one more failure.
    pub(super) fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_ACCEPT_BACKOFF);
        pause
    }

    pub(super) fn reset(&mut self) {
        self.next = MIN_ACCEPT_BACKOFF;
    }
}

/// Rate limit of a warning: at most one per period; the others are counted and the
/// count goes with the next one logged.
#[derive(Debug)]
pub(super) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub(super) fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One more occurrence at `now`: `Some(left out since the last one logged)` if this
    /// one is to be logged.
    pub(super) fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The door of a listener: counts its connections that are not sockets, refuses those
/// over a cap with a canned answer, and rate-limits the warning about it. Used by the
/// accept loop only (one task), so it needs no lock of its own.
pub(super) struct Gate {
    cap: Arc<HttpCap>,
    /// The status line and headers of the canned 503 (no date), and its body.
    busy: (Vec<u8>, Bytes),
    warnings: Throttle,
}

impl Gate {
    /// A gate with the caps of `limits`; peers in `exempt` count only in the total.
    pub(super) async fn new(limits: &ConnLimits, exempt: Vec<IpNet>) -> Gate {
        let mut busy = super::error::ApiError::ServerBusy.uncounted_response();
        busy.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Gate {
            cap: Arc::new(HttpCap {
                total: AtomicUsize::new(0),
                max: limits.max_connections,
                per_ip: DashMap::new(),
                max_per_ip: limits.max_connections_per_ip,
                exempt,
            }),
            busy: super::first::encode(busy).await,
            warnings: Throttle::new(WARN_EVERY),
        }
    }

    /// A place for the connection from `peer`; none when a cap is reached, and then the
    /// client got a 503 `server_busy` if its socket took it at once (no wait: the
    /// answer is small, and a refusal must cost next to nothing).
    pub(super) fn admit(&mut self, stream: &TcpStream, peer: SocketAddr) -> Option<HttpSlot> {
        if let Some(slot) = self.cap.acquire(peer.ip()) {
            return Some(slot);
        }
        let (head, body) = &self.busy;
        // Dropped by the caller right after: closed at once, whatever was written.
        let _ = stream.try_write(&super::first::finish(head, body));
        crate::metrics::hot().refused(ticketgate_sdk::ErrorCode::ServerBusy);
        if let Some(suppressed) = self.warnings.hit(Instant::now()) {
            tracing::warn!(
                suppressed,
                max = self.cap.max,
                max_per_ip = self.cap.max_per_ip,
                "connection refused: too many HTTP connections"
            );
        }
        None
    }
}

/// The count of a listener's connections that are not sockets, in total (one atomic)
/// and per client IP (an entry only while the IP has connections).
pub(super) struct HttpCap {
    total: AtomicUsize,
    max: usize,
    per_ip: DashMap<IpAddr, usize>,
    max_per_ip: usize,
    /// Peers counted only in the total: trusted proxies speak for many clients.
    exempt: Vec<IpNet>,
}

impl HttpCap {
    /// A place for one more connection from `ip`, if both caps allow it.
    pub(super) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<HttpSlot> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let ip = client_key(ip);
        let counted = if self.exempt.iter().any(|net| net.contains(&ip)) {
            None
        } else {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(count);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            *count += 1;
            Some(ip)
        };
        Some(HttpSlot {
            cap: Arc::clone(self),
            ip: counted,
        })
    }
}

/// What counts as one client: the address, IPv4 in IPv6 as IPv4, and an IPv6 address
/// by its /64 (one host is given a whole /64).
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// A connection's place in its listener's [`HttpCap`], given back on drop (the IP's
/// entry goes with its last connection).
pub(super) struct HttpSlot {
    cap: Arc<HttpCap>,
    /// The IP it is counted for; `None` when counted in the total only.
    ip: Option<IpAddr>,
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            if let dashmap::Entry::Occupied(mut entry) = self.cap.per_ip.entry(ip) {
                let count = entry.get_mut();
                *count = count.saturating_sub(1);
                if *count == 0 {
                    entry.remove();
                }
            }
        }
        self.cap.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection of the public listener: its first request read by [`first`], then
/// a socket or hyper.
/// What the keep-alive timer of a connection needs: requests in flight, and since when
/// there has been none. Shared by the connection's task and its service (hyper calls
/// the service from that task, but the service must be `Send`).
pub(super) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// When the last request in flight was answered, in ms after `born`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// A request begins; it ends when the guard drops (its answer is ready).
    pub(super) fn begin(this: &Arc<Activity>) -> InFlight {
        this.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(this))
    }

    /// When the connection will have been idle for `timeout`; `None` while a request
    /// is in flight.
    pub(super) fn idle_until(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.born + since + timeout)
    }
}

/// A request in flight on a connection ([`Activity::begin`]).
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.born.elapsed().as_millis();
        self.0
            .idle_since_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A transport whose writes may not stay blocked longer than a timeout: once one has
/// waited that long (the client reads nothing, its window is shut), it fails with
/// `TimedOut` and hyper closes the connection. Time spent writing while the client
/// does read is not counted; the clock starts at the first write that must wait.
pub(crate) struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Made at the first blocked write, and reused.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether a write is blocked now (the timer runs).
    blocked: bool,
}

impl<S> WriteDeadline<S> {
    /// `inner`, whose writes may stay blocked up to `timeout`.
    pub(crate) fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            timer: None,
            blocked: false,
        }
    }

    /// Passes on a write's outcome; a write still blocked after the timeout fails.
    pub(super) fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.blocked = false;
            return poll;
        }
        let deadline = Instant::now() + self.timeout;
        let timer = match &mut self.timer {
            Some(timer) => {
                if !self.blocked {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.blocked = true;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_backoff_doubles_up_to_a_second_and_resets() {
        let mut backoff = Backoff::new();
        let pauses: Vec<u64> = (0..10)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.failed(), MIN_ACCEPT_BACKOFF);
    }

    #[test]
    fn a_throttled_warning_is_logged_once_per_period_with_the_count_left_out() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut throttle = Throttle::new(Duration::from_secs(5));
        assert_eq!(throttle.hit(at(0)), Some(0));
        // 20 a second for 4.95 s: none logged.
        let logged = (1..100).filter_map(|i| throttle.hit(at(i * 50))).count();
        assert_eq!(logged, 0);
        assert_eq!(throttle.hit(at(5_000)), Some(99));
        assert_eq!(throttle.hit(at(5_001)), None);
        assert_eq!(throttle.hit(at(20_000)), Some(1));
    }

    fn cap(max: usize, max_per_ip: usize, exempt: &[&str]) -> Arc<HttpCap> {
        Arc::new(HttpCap {
            total: AtomicUsize::new(0),
            max,
            per_ip: DashMap::new(),
            max_per_ip,
            exempt: exempt.iter().filter_map(|n| n.parse().ok()).collect(),
        })
    }

    #[test]
    fn the_cap_counts_per_ip_and_in_total_and_forgets_empty_ips() {
        let cap = cap(3, 2, &[]);
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0; 4]));
        let a1 = cap.acquire(a);
        let a2 = cap.acquire(a);
        assert!(a1.is_some() && a2.is_some());
        assert!(cap.acquire(a).is_none(), "per IP");
        let b1 = cap.acquire(b);
        assert!(b1.is_some());
        assert!(cap.acquire(b).is_none(), "in total");
        assert_eq!(cap.total.load(Ordering::Acquire), 3);
        drop((a1, a2));
        assert!(
            !cap.per_ip.contains_key(&a),
            "an IP without connections is forgotten"
        );
        drop(b1);
        assert_eq!(cap.total.load(Ordering::Acquire), 0);
        assert!(cap.per_ip.is_empty());
    }

    #[test]
    fn trusted_proxies_count_in_the_total_only_and_ipv6_counts_by_64() {
        let cap = cap(10, 1, &["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap_or(IpAddr::from([0; 4]));
        let slots: Vec<_> = (0..5).filter_map(|_| cap.acquire(proxy)).collect();
        assert_eq!(slots.len(), 5);
        assert!(cap.per_ip.is_empty());
        let host = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0; 4]));
        let first = cap.acquire(host("2001:db8::1"));
        assert!(first.is_some());
        assert!(cap.acquire(host("2001:db8::ffff")).is_none(), "same /64");
        assert!(
            cap.acquire(host("2001:db8:0:1::1")).is_some(),
            "another /64"
        );
        assert_eq!(
            client_key(host("::ffff:192.0.2.1")),
            host("192.0.2.1"),
            "IPv4 in IPv6 is IPv4"
        );
    }

    #[tokio::test(start_paused = true)]
    pub(super) async fn a_write_blocked_past_the_deadline_fails() {
        let (client, server) = tokio::io::duplex(16);
        let mut io = WriteDeadline::new(server, Duration::from_secs(2));
        use tokio::io::AsyncWriteExt as _;
        // Fills the pipe; the client reads nothing.
        io.write_all(&[0; 16]).await.expect("room for 16 bytes");
        let started = Instant::now();
        let err = io.write_all(b"more").await.expect_err("blocked for good");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        drop(client);
    }
}
