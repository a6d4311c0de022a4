//! HTTP: the public and admin routers, the accept loop, and error mapping.
//!
//! `axum::serve` cannot set a header read timeout, so [`serve`] runs its own accept loop
//! on hyper's HTTP/1 connection builder: a client that never finishes its headers is
//! dropped after `TICKETGATE_HEADER_TIMEOUT` (slowloris guard). On the public listener
//! the first request of a connection is read by [`first`] before hyper (connect
//! requests are admitted there).

pub mod admin;
pub(crate) mod admission;
pub mod body;
pub mod client_ip;
mod cookie;
pub mod error;
pub(crate) mod extract;
pub mod first;
pub mod headers;
pub mod public;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ticketgate_sdk::protocol::{
    HEADER_DEVICE, HEADER_NEW_TOKEN, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::state::AppState;
use client_ip::PeerAddr;

/// Largest request head (request line + headers) accepted; larger gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// CORS for browsers: the WebSocket origin allow list governs it too
/// (credentials allowed, `X-New-Token` and `Retry-After` readable by scripts).
fn cors(state: &AppState) -> CorsLayer {
    let origins = match &state.config.ws.allowed_origins {
        // "Any origin" with credentials cannot be `*`: echo the request's origin.
        None => AllowOrigin::mirror_request(),
        Some(list) => {
            let values: Vec<HeaderValue> = list
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            AllowOrigin::list(values)
        }
    };
    CorsLayer::new()
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
        .max_age(Duration::from_secs(600))
}

/// The public router.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state);
    Router::new()
        .route("/v1/login", post(public::login))
        .route("/v1/tickets", post(public::mint))
        .route("/v1/token/refresh", post(public::refresh))
        .route("/v1/logout", post(public::logout))
        .route("/v1/app/login", post(public::app_login))
        .route("/v1/connect", get(admission::connect))
        .route("/.well-known/jwks.json", get(public::jwks))
        .route("/healthz", get(public::healthz))
        .route("/readyz", get(public::readyz))
        .fallback(public::not_found)
        .method_not_allowed_fallback(public::not_found)
        .with_state(state)
        // Outermost, so preflight `OPTIONS` is answered before routing.
        .layer(cors)
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops accepting
/// and lets in-flight requests finish. Upgraded WebSockets are not tracked here: they
/// watch the same signal themselves.
///
/// With `direct` (the public listener), the first request of each connection is read
/// by [`first`]: a connect request is admitted without hyper, anything else goes on to
/// hyper with the bytes already read.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
    direct: Option<AppState>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // TCP_NODELAY comes from the listener (`server::bind`).
        let router = router.clone();
        let shutdown = shutdown.clone();
        let direct = direct.clone();
        tokio::spawn(async move {
            // Boxed: hyper's state machine is large, and the first request's state
            // holds its headers; this task allocates room for neither.
            let Some(state) = direct else {
                return Box::pin(serve_hyper(
                    first::Prefixed::new(Vec::new(), stream),
                    peer,
                    router,
                    header_timeout,
                    shutdown,
                ))
                .await;
            };
            let next = Box::pin(serve_first(
                &state,
                stream,
                peer,
                header_timeout,
                shutdown.clone(),
            ))
            .await;
            match next {
                first::Next::Socket {
                    admitted,
                    stream,
                    rest,
                } => {
                    // A task of its own, sized for the socket alone (this one ends
                    // here): run inline, the socket kept this task's other states too,
                    // 1.4 KiB more per idle socket.
                    tokio::spawn(admitted.answer_and_run(state, stream, rest));
                }
                first::Next::Hyper { stream, read } => {
                    Box::pin(serve_hyper(
                        first::Prefixed::new(read, stream),
                        peer,
                        router,
                        header_timeout,
                        shutdown,
                    ))
                    .await;
                }
                first::Next::Closed => {}
            }
        });
    }
}

/// The first request of a public connection, read by [`first`] and admitted when it is
/// a connect request (bounded by the header timeout and by shutdown).
async fn serve_first(
    state: &AppState,
    mut stream: TcpStream,
    peer: SocketAddr,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> first::Next {
    let read = tokio::select! {
        read = tokio::time::timeout(header_timeout, first::read(&mut stream, MAX_HEAD_BYTES)) => read,
        () = shutdown.cancelled() => return first::Next::Closed,
    };
    match read {
        Err(_) | Ok(first::First::Gone) => first::Next::Closed,
        Ok(first::First::Other(read)) => first::Next::Hyper { stream, read },
        Ok(first::First::Connect(request)) => {
            first::serve_connect(state, stream, peer, request).await
        }
    }
}

/// hyper's HTTP/1 on one connection, with upgrades and the header timeout, until the
/// client leaves or `shutdown` (then in-flight requests get 5 s).
async fn serve_hyper(
    io: first::Prefixed<TcpStream>,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let router = router.clone();
        async move { Ok::<_, Infallible>(router.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = &mut conn => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
