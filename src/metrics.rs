//! Prometheus metrics. The recorder is process-wide (the `metrics` facade allows one),
//! so it is installed once and shared by every server in the process; each module
//! records its own metrics with the `metrics` macros.

use std::sync::OnceLock;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static HOT: OnceLock<Hot> = OnceLock::new();

/// The metrics recorded on every admission, mint and socket, resolved once: a macro
/// call looks its key up in the recorder's registry each time.
pub(crate) struct Hot {
    /// `ticketgate_admissions_total`.
    pub admissions: Counter,
    /// `ticketgate_tickets_minted_total`.
    pub minted: Counter,
    /// `ticketgate_connections`: this node's open sockets.
    pub connections: Gauge,
}

/// The hot-path handles, bound to this process's recorder (installed first).
pub(crate) fn hot() -> &'static Hot {
    HOT.get_or_init(|| {
        let _ = handle();
        Hot {
            admissions: metrics::counter!("ticketgate_admissions_total"),
            minted: metrics::counter!("ticketgate_tickets_minted_total"),
            connections: metrics::gauge!("ticketgate_connections"),
        }
    })
}

/// The process's Prometheus handle, installing the recorder on first use.
pub(crate) fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays
            // unused and /metrics shows nothing, which is visible and harmless.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
