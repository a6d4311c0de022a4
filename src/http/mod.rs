//! HTTP: the public and admin routers, the accept loop, and error mapping.
//!
//! `axum::serve` cannot set a header read timeout, so [`serve_public`] and
//! [`serve_admin`] run their own accept loops on hyper's HTTP/1 connection builder: a
//! client that never finishes its headers is dropped after `TICKETGATE_HEADER_TIMEOUT`
//! (slowloris guard). On the public listener the first request of a connection is read
//! by [`first`] before hyper (connect requests are admitted there).
//!
//! What a client holds before it authenticates is bounded ([`ConnLimits`]):
//! - connections not upgraded to a socket are counted per listener, in total and per
//!   client IP; past a cap a new connection gets a canned 503 `server_busy` and is
//!   closed at once, before any task is spawned for it. A connection stops counting
//!   when it becomes a socket (sockets have their own cap, `connection_slots`);
//! - a request body must arrive within the body timeout ([`body::Deadline`]);
//! - a kept-alive connection with no request for the keep-alive timeout is closed;
//! - a connection whose answer cannot be written for the write timeout is closed
//!   ([`WriteDeadline`]): a client that pipelines requests and never reads;
//! - out of file descriptors, the accept loop backs off (up to a second) and warns at
//!   most once per [`WARN_EVERY`], with the number of warnings left out.
//!
//! Every connection, and every socket admitted on one, is a task on the node's
//! [`Shutdown`] tracker. At the signal the loops stop accepting, requests in flight
//! finish and are answered, idle connections close, and the node waits for all of it.

pub(crate) mod admin;
pub(crate) mod admission;
pub(crate) mod body;
pub(crate) mod client_ip;
mod conn;
mod cookie;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod first;
pub(crate) mod headers;
pub(crate) mod pages;
pub(crate) mod public;
pub(crate) mod qr;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ticketgate_sdk::protocol::{
    HEADER_DEVICE, HEADER_NEW_TOKEN, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::metrics::Outcome;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use client_ip::PeerAddr;
pub(crate) use conn::ConnLimits;
use conn::{
    about_one_connection, Activity, Backoff, Gate, HttpSlot, Throttle, WriteDeadline, WARN_EVERY,
};

/// Largest request head (request line + headers) accepted; larger gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// CORS for browsers, from the WebSocket origin allow list (credentials allowed,
/// `X-New-Token` and `Retry-After` readable by scripts). Without a list there is no
/// cross-origin access at all: no CORS headers.
fn cors(state: &AppState) -> Option<CorsLayer> {
    // No list: no origin gets cross-origin access (credentials make mirroring any
    // origin as good as no same-origin policy). `null` is the origin of sandboxed
    // frames and `file:` pages, which any attacker can produce: never allowed.
    let values: Vec<HeaderValue> = state
        .config
        .ws
        .allowed_origins
        .iter()
        .flatten()
        .filter(|o| !o.eq_ignore_ascii_case("null"))
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    let origins = AllowOrigin::list(values);
    let layer = CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static(HEADER_DEVICE),
            HeaderName::from_static(HEADER_TIMESTAMP),
            HeaderName::from_static(HEADER_NONCE),
            HeaderName::from_static(HEADER_SIGNATURE),
        ])
        .expose_headers([
            HeaderName::from_static(HEADER_NEW_TOKEN),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600));
    Some(layer)
}

/// The public router.
pub(crate) fn router(state: AppState) -> Router {
    let cors = cors(&state);
    let hot = crate::metrics::hot();
    let router = Router::new()
        .route(
            "/v1/login",
            metered(post(public::login), &hot.password_logins),
        )
        .route("/v1/tickets", metered(post(public::mint), &hot.mints))
        .route(
            "/v1/token/refresh",
            metered(post(public::refresh), &hot.refreshes),
        )
        .route("/v1/logout", post(public::logout))
        .route(
            "/v1/app/login",
            metered(post(public::app_login), &hot.app_logins),
        )
        .route("/v1/connect", get(admission::connect))
        .route("/v1/qr", post(qr::create))
        .route("/v1/qr/{qr_id}/scan", post(qr::scan))
        .route("/v1/qr/{qr_id}/confirm", post(qr::confirm))
        .route("/v1/qr/{qr_id}/poll", post(qr::poll))
        .route("/v1/qr/{qr_id}/qr.svg", get(qr::image))
        .route("/.well-known/jwks.json", get(public::jwks))
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(public::readyz))
        .merge(pages::demo(state.config.demo))
        .fallback(public::not_found)
        .method_not_allowed_fallback(public::not_found)
        .with_state(state);
    match cors {
        // Outermost, so preflight `OPTIONS` is answered before routing.
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// `route`, with the outcome of each call (by its status) counted and its latency
/// recorded in `call`; extractor refusals (a bad signature) included.
fn metered(
    route: MethodRouter<AppState>,
    call: &'static crate::metrics::Call,
) -> MethodRouter<AppState> {
    route.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let started = std::time::Instant::now();
            let response = next.run(req).await;
            call.record(Outcome::of_status(response.status().as_u16()), started);
            response
        },
    ))
}

/// Serves the public API on `listener` until `state.shutdown` is signalled; then stops
/// accepting. Every connection is a task on the shutdown tracker, and so is every
/// socket admitted on one: the node waits for them.
///
/// The first request of each connection is read by [`first`]: a connect request is
/// admitted without hyper, anything else goes on to hyper with the bytes already read.
pub(crate) async fn serve_public(listener: TcpListener, state: AppState) {
    let router = router(state.clone());
    let limits = ConnLimits::of(&state.config);
    let mut gate = Gate::new(&limits, state.config.trusted_proxies.clone()).await;
    accept(&listener, &state.shutdown, |stream, peer| {
        let slot = gate.admit(&stream, peer)?;
        Some(public_connection(
            state.clone(),
            router.clone(),
            stream,
            peer,
            limits,
            slot,
        ))
    })
    .await;
}

/// Serves `router` (the admin API) on `listener` until `shutdown` is signalled; then
/// stops accepting. Every connection is a task on the shutdown tracker.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: Shutdown,
) {
    let mut gate = Gate::new(&limits, Vec::new()).await;
    accept(&listener, &shutdown, |stream, peer| {
        let slot = gate.admit(&stream, peer)?;
        let io = first::Prefixed::new(Vec::new(), stream);
        let served = serve_hyper(io, peer, router.clone(), limits, shutdown.clone());
        Some(async move {
            served.await;
            drop(slot);
        })
    })
    .await;
}

/// Accepts connections until the signal, each served by the task `connection` returns
/// (none: refused), spawned on the shutdown tracker.
///
/// A failed accept that is not about one connection (out of file descriptors, out of
/// memory) pauses the loop, longer at each failure in a row, and is logged at most
/// once per [`WARN_EVERY`]: retrying at once would spin and flood the log while
/// nothing can change until connections close.
async fn accept<F, C>(listener: &TcpListener, shutdown: &Shutdown, mut connection: C)
where
    C: FnMut(TcpStream, SocketAddr) -> Option<F>,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new();
    let mut warnings = Throttle::new(WARN_EVERY);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            // The client gave up while queued: nothing to wait for.
            Err(e) if about_one_connection(&e) => continue,
            Err(e) => {
                let pause = backoff.failed();
                if let Some(suppressed) = warnings.hit(Instant::now()) {
                    tracing::warn!(
                        cause = %e,
                        suppressed,
                        pause_ms = pause.as_millis() as u64,
                        "accept failed; backing off"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        backoff.reset();
        // TCP_NODELAY comes from the listener (`server::bind`).
        if let Some(task) = connection(stream, peer) {
            shutdown.spawn(task);
        }
    }
}

async fn public_connection(
    state: AppState,
    router: Router,
    stream: TcpStream,
    peer: SocketAddr,
    limits: ConnLimits,
    slot: HttpSlot,
) {
    // Boxed: hyper's state machine is large, and the first request's state holds its
    // headers; this task allocates room for neither.
    let next = Box::pin(serve_first(&state, stream, peer, limits.header_timeout)).await;
    match next {
        first::Next::Socket {
            admitted,
            stream,
            rest,
        } => {
            // A socket now: it counts in the socket cap, not in this one.
            drop(slot);
            // A task of its own, sized for the socket alone (this one ends here): run
            // inline, the socket kept this task's other states too, 1.4 KiB more per
            // idle socket.
            let shutdown = state.shutdown.clone();
            shutdown.spawn(admitted.answer_and_run(state, stream, rest));
        }
        first::Next::Hyper { stream, read } => {
            let io = first::Prefixed::new(read, stream);
            let shutdown = state.shutdown.clone();
            // An upgrade through hyper ends `serve_hyper`: the slot goes with it.
            Box::pin(serve_hyper(io, peer, router, limits, shutdown)).await;
            drop(slot);
        }
        first::Next::Closed => {}
    }
}

/// The first request of a public connection, read by [`first`] and admitted when it is
/// a connect request (bounded by the header timeout). A head still arriving at the
/// shutdown signal is dropped with its connection: no request was made yet.
async fn serve_first(
    state: &AppState,
    mut stream: TcpStream,
    peer: SocketAddr,
    header_timeout: Duration,
) -> first::Next {
    let read = tokio::select! {
        read = tokio::time::timeout(header_timeout, first::read(&mut stream, MAX_HEAD_BYTES)) => read,
        () = state.shutdown.cancelled() => return first::Next::Closed,
    };
    match read {
        Err(_) | Ok(first::First::Gone) => first::Next::Closed,
        Ok(first::First::Other(read)) => first::Next::Hyper { stream, read },
        Ok(first::First::Connect(request)) => {
            first::serve_connect(state, stream, peer, request).await
        }
    }
}

/// hyper's HTTP/1 on one connection, with upgrades and the connection's time limits,
/// until the client leaves, the connection has been idle for the keep-alive timeout,
/// or the shutdown signal. Then the request in flight (its body may still be arriving)
/// gets up to the grace period to finish and be answered, and the connection closes;
/// an idle connection closes at once.
async fn serve_hyper(
    io: first::Prefixed<TcpStream>,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    shutdown: Shutdown,
) {
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let in_flight = Activity::begin(&activity);
            let mut req = req.map(|body| body::Deadline::new(body, limits.body_timeout));
            req.extensions_mut().insert(PeerAddr(peer));
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await.unwrap_or_else(|e| match e {});
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let io = WriteDeadline::new(io, limits.write_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let idle = tokio::time::sleep(limits.keepalive_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            // The connection first: hyper closes a connection it has read nothing from
            // at once, so a request already read by the first-request path must reach
            // it before the signal is acted on.
            biased;
            _ = &mut conn => return,
            () = shutdown.cancelled() => break,
            () = &mut idle => match activity.idle_until(limits.keepalive_timeout) {
                Some(at) if at <= Instant::now() => break,
                Some(at) => idle.as_mut().reset(at),
                None => idle.as_mut().reset(Instant::now() + limits.keepalive_timeout),
            },
        }
    }
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(limits.grace, conn).await.is_err() {
        tracing::debug!("grace period over with a request in flight; connection dropped");
    }
}
