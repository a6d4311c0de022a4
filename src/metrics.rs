//! Prometheus metrics. The recorder is process-wide (the `metrics` facade allows one),
//! so it is installed once and shared by every server in the process; each module
//! records its own metrics with the `metrics` macros or, on hot paths, with the handles
//! of [`hot`], resolved once.
//!
//! Every series is registered at zero, with its `# HELP`, when the recorder is
//! installed: a fresh node's `/metrics` already lists every counter and histogram, and
//! every label value the server can produce (every protocol error code, every close
//! code the server sends, every outcome). The gauges that describe a node's state
//! (sockets, sessions, limiter sizes, hub age) are set when `/metrics` is scraped
//! ([`Sample`]). The store's series are the store decorator's (`store::metered`).
//!
//! The catalogue, with the meaning of each series, is in docs/protocol.md ("Metrics").

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ticketgate_sdk::protocol::close;
use ticketgate_sdk::ErrorCode;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static HOT: OnceLock<Hot> = OnceLock::new();

/// Histogram buckets in seconds, for every latency: from 100 µs (a store round trip on
/// loopback) to 10 s (a login queued behind argon2 and a slow store).
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes (the
/// recorder buffers them until then).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Every close code the server sends, for `ticketgate_closes_total{code}`.
pub(crate) const CLOSE_CODES: [u16; 11] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::INVALID_PAYLOAD,
    close::POLICY,
    close::TOO_BIG,
    close::SESSION_EXPIRED,
    close::FLOOD,
    close::SLOW_CONSUMER,
    close::REVOKED,
    close::REPLACED,
];

/// How a call ended, for the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered with success.
    Ok,
    /// Refused: the caller's request or credentials (a 4xx answer).
    Refused,
    /// Failed on the server's side: store down, node busy, internal error (a 5xx).
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Refused, Outcome::Error];

    /// The outcome of an HTTP answer with `status`.
    pub(crate) fn of_status(status: u16) -> Outcome {
        match status {
            500.. => Outcome::Error,
            400.. => Outcome::Refused,
            _ => Outcome::Ok,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// One kind of call: its count by outcome and its latency.
pub(crate) struct Call {
    outcomes: [Counter; 3],
    seconds: Histogram,
}

impl Call {
    fn new(
        total: &'static str,
        seconds: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Call {
        let base = || labels.iter().map(|&(k, v)| metrics::Label::new(k, v));
        let outcomes = Outcome::ALL.map(|outcome| {
            let labels = base().chain([metrics::Label::new("outcome", outcome.as_str())]);
            metrics::counter!(total, labels.collect::<Vec<_>>())
        });
        Call {
            outcomes,
            seconds: metrics::histogram!(seconds, base().collect::<Vec<_>>()),
        }
    }

    /// Counts one call that ended with `outcome`.
    pub(crate) fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].increment(1);
    }

    /// Records the latency of one call that started at `started`.
    pub(crate) fn time(&self, started: Instant) {
        self.seconds.record(started.elapsed());
    }

    /// Counts and times one call.
    pub(crate) fn record(&self, outcome: Outcome, started: Instant) {
        self.count(outcome);
        self.time(started);
    }
}

/// The handles of the metrics recorded per request, per socket or per refusal,
/// resolved once: a macro call looks its key up in the recorder's registry each time
/// (and allocates its labels).
pub(crate) struct Hot {
    /// `ticketgate_logins_total{method="password"}` and its latency.
    pub(crate) password_logins: Call,
    /// `ticketgate_logins_total{method="app"}` and its latency.
    pub(crate) app_logins: Call,
    /// `ticketgate_mints_total` and `ticketgate_mint_duration_seconds`.
    pub(crate) mints: Call,
    /// `ticketgate_admissions_total` and `ticketgate_admission_duration_seconds`.
    pub(crate) admissions: Call,
    /// `ticketgate_refreshes_total` and `ticketgate_refresh_duration_seconds`.
    pub(crate) refreshes: Call,
    /// `ticketgate_refusals_total{code}`, indexed by `ErrorCode as usize`.
    refusals: Vec<Counter>,
    /// `ticketgate_closes_total{code}`, in the order of [`CLOSE_CODES`].
    closes: [Counter; CLOSE_CODES.len()],
    /// `ticketgate_qr_total{event}`, in the order of [`QR_EVENTS`].
    qr: [Counter; QR_EVENTS.len()],
    /// `ticketgate_push_acks_total`.
    pub(crate) push_acks: Counter,
    /// `ticketgate_push_recoveries_total{recovered}`: `[false, true]`.
    recoveries: [Counter; 2],
    /// `ticketgate_pushes_total`.
    pub(crate) pushes: Counter,
    /// `ticketgate_push_deliveries_total`.
    pub(crate) push_deliveries: Counter,
}

impl Hot {
    /// Counts an error answer (HTTP or socket frame) with `code`.
    pub(crate) fn refused(&self, code: ErrorCode) {
        if let Some(counter) = self.refusals.get(code as usize) {
            counter.increment(1);
        }
    }

    /// Counts a connect with `since`, by whether the history still held everything.
    pub(crate) fn recovery(&self, recovered: bool) {
        self.recoveries[usize::from(recovered)].increment(1);
    }

    /// Counts a QR login event, one of [`QR_EVENTS`].
    pub(crate) fn qr(&self, event: &str) {
        if let Some(i) = QR_EVENTS.iter().position(|&e| e == event) {
            self.qr[i].increment(1);
        }
    }

    /// Counts a socket the server closed with `code`.
    pub(crate) fn closed(&self, code: u16) {
        match CLOSE_CODES.iter().position(|&c| c == code) {
            Some(i) => self.closes[i].increment(1),
            // A code this list forgot: still counted, at the price of a lookup.
            None => metrics::counter!(CLOSES, "code" => code.to_string()).increment(1),
        }
    }
}

const LOGINS: &str = "ticketgate_logins_total";
const LOGIN_SECONDS: &str = "ticketgate_login_duration_seconds";
const MINTS: &str = "ticketgate_mints_total";
const MINT_SECONDS: &str = "ticketgate_mint_duration_seconds";
const ADMISSIONS: &str = "ticketgate_admissions_total";
const ADMISSION_SECONDS: &str = "ticketgate_admission_duration_seconds";
const REFRESHES: &str = "ticketgate_refreshes_total";
const REFRESH_SECONDS: &str = "ticketgate_refresh_duration_seconds";
const REFUSALS: &str = "ticketgate_refusals_total";
const CLOSES: &str = "ticketgate_closes_total";
const CONNECTIONS: &str = "ticketgate_connections";
const SESSIONS: &str = "ticketgate_sessions_connected";
const LIMITER_KEYS: &str = "ticketgate_limiter_keys";
const HUB_AGE: &str = "ticketgate_hub_last_message_age_seconds";
const QR: &str = "ticketgate_qr_total";
const PUSH_ACKS: &str = "ticketgate_push_acks_total";
const RECOVERIES: &str = "ticketgate_push_recoveries_total";
const PUSHES: &str = "ticketgate_pushes_total";
const PUSH_DELIVERIES: &str = "ticketgate_push_deliveries_total";

/// The events of a QR login, the `event` label of `ticketgate_qr_total`.
pub(crate) const QR_EVENTS: [&str; 5] = ["created", "scanned", "confirmed", "expired", "refused"];

/// The hot-path handles, bound to this process's recorder (installed first).
pub(crate) fn hot() -> &'static Hot {
    HOT.get_or_init(|| {
        HANDLE.get_or_init(install);
        Hot {
            password_logins: Call::new(LOGINS, LOGIN_SECONDS, &[("method", "password")]),
            app_logins: Call::new(LOGINS, LOGIN_SECONDS, &[("method", "app")]),
            mints: Call::new(MINTS, MINT_SECONDS, &[]),
            admissions: Call::new(ADMISSIONS, ADMISSION_SECONDS, &[]),
            refreshes: Call::new(REFRESHES, REFRESH_SECONDS, &[]),
            refusals: ErrorCode::ALL
                .iter()
                .map(|code| metrics::counter!(REFUSALS, "code" => code.as_str()))
                .collect(),
            closes: CLOSE_CODES.map(|code| metrics::counter!(CLOSES, "code" => code.to_string())),
            qr: QR_EVENTS.map(|event| metrics::counter!(QR, "event" => event)),
            push_acks: metrics::counter!(PUSH_ACKS),
            recoveries: ["false", "true"].map(|r| metrics::counter!(RECOVERIES, "recovered" => r)),
            pushes: metrics::counter!(PUSHES),
            push_deliveries: metrics::counter!(PUSH_DELIVERIES),
        }
    })
}

/// A node's state as `/metrics` reports it, read at scrape time.
pub(crate) struct Sample<'a> {
    /// Sockets open on this node (admitted or being admitted).
    pub(crate) connections: usize,
    /// Sessions with at least one socket on this node.
    pub(crate) sessions: usize,
    /// Keys held by each keyed limiter, by limiter name.
    pub(crate) limiter_keys: &'a [(&'static str, usize)],
    /// Time since the hub last heard a message; `None` without a hub link (embedded
    /// store), reported as 0.
    pub(crate) hub_age: Option<Duration>,
}

/// Sets the gauges from `sample` and renders every series as Prometheus text.
pub(crate) fn render(sample: &Sample<'_>) -> String {
    // Gauges of unsigned counts: f64 holds them exactly up to 2^53.
    metrics::gauge!(CONNECTIONS).set(sample.connections as f64);
    metrics::gauge!(SESSIONS).set(sample.sessions as f64);
    for &(limiter, keys) in sample.limiter_keys {
        metrics::gauge!(LIMITER_KEYS, "limiter" => limiter).set(keys as f64);
    }
    metrics::gauge!(HUB_AGE).set(sample.hub_age.unwrap_or_default());
    handle().render()
}

/// The process's Prometheus handle, installing the recorder on first use, with every
/// description and every series of this module at zero.
pub(crate) fn handle() -> PrometheusHandle {
    let handle = HANDLE.get_or_init(install).clone();
    let _ = hot();
    handle
}

fn install() -> PrometheusHandle {
    // `set_buckets` fails only on an empty list, which BUCKETS is not; the fallback
    // (summaries instead of histograms) keeps every series anyway.
    let builder = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // Fails only if another recorder was installed first; then ours stays unused and
    // /metrics shows nothing, which is visible and harmless.
    let _ = metrics::set_global_recorder(recorder);
    describe();
    for gauge in [CONNECTIONS, SESSIONS, HUB_AGE] {
        metrics::gauge!(gauge).set(0.0);
    }
    // Histogram samples wait in the recorder until folded into buckets: without a
    // scraper they would pile up. `PrometheusBuilder::install` runs this upkeep too,
    // but also wants its own HTTP listener; ours is the admin router's.
    let upkeep = handle.clone();
    let _ = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    handle
}

/// The `# HELP` line of every series of this module.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        LOGINS,
        "Logins (method: password, app) by outcome: ok, refused (4xx), error (5xx)."
    );
    describe_histogram!(
        LOGIN_SECONDS,
        Unit::Seconds,
        "Login latency, password check included."
    );
    describe_counter!(
        MINTS,
        "Ticket mints (POST /v1/tickets) by outcome: ok, refused (4xx), error (5xx)."
    );
    describe_histogram!(MINT_SECONDS, Unit::Seconds, "Ticket mint latency.");
    describe_counter!(
        ADMISSIONS,
        "WebSocket admissions (GET /v1/connect) by outcome: ok (101), refused (4xx), error (5xx)."
    );
    describe_histogram!(
        ADMISSION_SECONDS,
        Unit::Seconds,
        "Admission latency, from the request head to the ticket's consumption or refusal."
    );
    describe_counter!(
        REFRESHES,
        "Refresh token rotations by outcome: ok, refused (4xx), error (5xx)."
    );
    describe_histogram!(REFRESH_SECONDS, Unit::Seconds, "Refresh latency.");
    describe_counter!(
        REFUSALS,
        "Error answers (HTTP bodies, socket error frames, the connection cap's 503) by protocol error code."
    );
    describe_counter!(
        CLOSES,
        "Sockets closed by the server, by the close code it sent."
    );
    describe_counter!(
        QR,
        "QR-code login events: created, scanned, confirmed, expired (or rotated away, unknown), refused (approver gone)."
    );
    describe_counter!(
        PUSH_ACKS,
        "Push acks received from clients (counted only; delivery is decided by since)."
    );
    describe_counter!(
        RECOVERIES,
        "Connects with since, by whether the push history still held everything after it."
    );
    describe_counter!(
        PUSHES,
        "Pushes published from this node (admin publish and handlers), kept in history or not."
    );
    describe_counter!(
        PUSH_DELIVERIES,
        "Sockets on every node that the pushes published from this node reached at once."
    );
    describe_gauge!(CONNECTIONS, "Sockets open on this node.");
    describe_gauge!(SESSIONS, "Sessions with at least one socket on this node.");
    describe_gauge!(
        LIMITER_KEYS,
        "Keys held by each rate limiter (IPs, users, devices, sessions being limited)."
    );
    describe_gauge!(
        HUB_AGE,
        Unit::Seconds,
        "Time since this node last heard a hub message (0 on the embedded store, which has no hub link)."
    );
}
