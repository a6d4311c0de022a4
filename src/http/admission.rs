//! Admission: `GET /v1/connect`. Read this file top to bottom to follow a handshake.
//!
//! The order is part of the contract (PROTOCOL §4, §8):
//! 1. WebSocket handshake headers (version 13 → else 426; key; upgrade tokens) and
//!    `Origin` are checked before anything else; nothing is consumed.
//! 2. The ticket is taken from the `ticket.<t>` subprotocol (which must come with
//!    `ticketgate.v1`) or from `?ticket=`; the device from `?device_id=`.
//! 3. Per-IP connect quota and the node's connection cap: 429 / 503, ticket untouched.
//! 4. The ticket's MAC and expiry are checked without I/O: a forged or expired ticket
//!    costs no store command and is charged to the IP's failure quota.
//! 5. For the session the MAC vouches for: its device's connect quota is checked (not
//!    charged: 429 `rate_limited`), then a socket slot is taken under the session's and
//!    the user's socket caps (429 `too_many_connections`); ticket untouched.
//! 6. ONE store round trip consumes the ticket and checks device and session.
//! 7. The socket is counted for its user (the store named the user) and charged to
//!    its device's connect quota. Only then does the 101 go out, and the socket starts
//!    ([`Admitted`]).
//!
//! Every failure after step 4 is charged to the IP's failure quota ([`refused`]), never
//! to the device's connect quota: a spent ticket replayed with someone's device id must
//! not use up that device's connects.
//!
//! [`admit`] is the same for both transports: a connect request that is the first
//! request of its connection (nearly all) is read by [`crate::http::first`] and answered
//! without hyper; a later one on a kept-alive connection comes through axum ([`connect`]).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use ticketgate_sdk::protocol::{ServerFrame, SUBPROTOCOL, TICKET_SUBPROTOCOL_PREFIX};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::client_ip::{client_ip, PeerAddr};
use super::error::ApiError;
use super::headers::{text, Headers};
use crate::auth::signing::is_device_id;
use crate::auth::tokens::Claims;
use crate::auth::unix_now_ms;
use crate::config::CAP_RETRY_AFTER;
use crate::handler::{Context, Identity, SessionHandler};
use crate::limits::Limit;
use crate::metrics::Outcome;
use crate::registry::{Pace, SocketCaps};
use crate::sessions::TicketFor;
use crate::state::AppState;
use crate::store::PushId;
use crate::store::{AdmitOutcome, AdmitTicket};
use crate::ws::connection::{self, ConnectionInfo, Recovery, Refusal, SocketServices, Welcome};
use crate::ws::ws_config_for;

/// Admission of one connect request, steps 1 to 7 of the module docs. `Ok` means the
/// ticket was consumed and the socket may open. Timed; its outcome is counted here when
/// admitted, by [`refused`] when not.
pub(crate) async fn admit(
    state: &AppState,
    ip: std::net::IpAddr,
    headers: &impl Headers,
    query: Option<&str>,
) -> Result<Admitted, ApiError> {
    let started = std::time::Instant::now();
    let admitted = steps(state, ip, headers, query).await;
    crate::metrics::hot().admissions.time(started);
    admitted
}

/// The steps of [`admit`], in the order of the module docs.
async fn steps(
    state: &AppState,
    ip: std::net::IpAddr,
    headers: &impl Headers,
    query: Option<&str>,
) -> Result<Admitted, ApiError> {
    let handshake = check_handshake(headers)?;
    check_origin(state, headers)?;
    let presented = presented(headers, query)?;

    state.limits.check(Limit::ConnectIp(ip))?;
    let permit = state
        .connection_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::ServerBusy)?;

    let verified = state.tickets.verify(&presented.ticket, unix_now_ms())?;
    // The device's connect quota, keyed on the MAC-verified session (the MAC does not
    // cover the presented device id; a session belongs to one device, so this is per
    // device). Checked here, before the ticket is consumed, so that a 429 leaves the
    // ticket usable; charged only in step 7, once the socket is admitted: a ticket that
    // verifies may still be spent, and a spent ticket replayed a thousand times must
    // cost its session nothing (the replays go to the IP's failure quota). Governor can
    // only check-and-charge, so this quota is the registry's (a GCRA with a peek).
    let pace = connect_pace(state);
    state
        .registry
        .connect_allowed(&verified.session_id, pace, Instant::now())
        .map_err(|wait| ApiError::RateLimited {
            retry_after: whole_seconds(wait),
        })?;
    // Taken before the ticket is consumed, so a refusal leaves it usable; check and
    // take are one step (two racing admissions cannot both get the last slot). The
    // counts are this node's: a deployment of N nodes allows up to N times the caps.
    let mut slot = state
        .registry
        .take_slot(&verified.session_id, socket_caps(state))
        .map_err(|_| too_many_connections())?;

    // Registered before the ticket is consumed: a revocation that lands between the
    // admission script and the socket's start finds it and queues its close.
    let conn_id = crate::auth::random_id(9);
    let mut registered = connection::register(
        &state.registry,
        state.sockets.clock(),
        conn_id.clone(),
        &verified.session_id,
    );

    let outcome = state
        .store
        .admit_ticket(&AdmitTicket {
            session_id: &verified.session_id,
            ticket_id: &verified.ticket_id,
            device_id: &presented.device_id,
        })
        .await?;
    let grant = match outcome {
        AdmitOutcome::Admitted(grant) => grant,
        AdmitOutcome::DeviceMismatch => return Err(ApiError::DeviceMismatch),
        AdmitOutcome::Unknown | AdmitOutcome::SessionGone => return Err(ApiError::TicketInvalid),
    };

    // The ticket names the session, not its user: the user's cap was checked in step 5
    // only if this node already held a socket of the session. For a session's first
    // socket here it is checked now, and a refusal comes after the ticket was spent.
    slot.admitted(&grant.user_id)
        .map_err(|_| too_many_connections())?;
    state
        .registry
        .charge_connect(&verified.session_id, pace, Instant::now());
    registered
        .registration
        .admitted(&grant.user_id, &grant.device_id, grant.client_type);
    registered.registration.hold(slot);
    crate::metrics::hot().admissions.count(Outcome::Ok);
    // Read after the socket was registered under its user: a push published from now
    // on reaches its inbox, and one published before is in what is read here.
    let recovery = match presented.since {
        Some(since) => Some(Box::new(
            recover(state, &grant.user_id, &since, &verified.session_id).await,
        )),
        None => None,
    };
    Ok(Admitted {
        accept_key: handshake.accept_key,
        offered_subprotocol: presented.offered_subprotocol,
        info: ConnectionInfo {
            conn_id,
            session_id: verified.session_id,
            user_id: grant.user_id,
            device_id: grant.device_id,
            client_type: grant.client_type,
            expires_at: grant.access_expires_at,
            recovery,
        },
        permit,
        registered,
    })
}

/// What a client that connected with `since` missed (PROTOCOL §10). The ticket is
/// spent by now, so a store that does not answer gives `recovered: false` (the client
/// resynchronises) rather than a refusal: never "recovered" over a gap.
async fn recover(state: &AppState, user_id: &str, since: &str, session_id: &str) -> Recovery {
    if !crate::hub::history_limits(&state.config).enabled() {
        return Recovery::default();
    }
    let found = match state.store.pushes_since(user_id, since, session_id).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(cause = %e, "push history not readable; answering recovered: false");
            return Recovery::default();
        }
    };
    crate::metrics::hot().recovery(found.recovered);
    let replay: Option<Vec<String>> = found
        .pushes
        .into_iter()
        .map(|push| {
            // Kept as the JSON text the publisher's value was written as.
            let data = serde_json::from_str(&push.data).ok()?;
            let frame = ServerFrame::Push {
                id: push.id,
                topic: push.topic,
                data,
            };
            serde_json::to_string(&frame).ok()
        })
        .collect();
    // A push that cannot be read back is a gap, not something to skip quietly.
    let recovered = found.recovered && replay.is_some();
    Recovery {
        recovered,
        last_id: found.last_id,
        replay: replay.filter(|_| recovered).unwrap_or_default(),
    }
}

/// The device connect quota as the registry paces it.
fn connect_pace(state: &AppState) -> Pace {
    let rate = state.config.rates.connect_device;
    Pace {
        count: rate.count.get(),
        period: rate.period,
    }
}

/// This node's socket caps.
fn socket_caps(state: &AppState) -> SocketCaps {
    SocketCaps {
        per_session: state.config.ws.max_sockets_per_session,
        per_user: state.config.ws.max_sockets_per_user,
    }
}

fn too_many_connections() -> ApiError {
    ApiError::TooManyConnections {
        retry_after: CAP_RETRY_AFTER,
    }
}

/// `Retry-After` is whole seconds: rounded up, never 0.
fn whole_seconds(wait: Duration) -> Duration {
    Duration::from_secs((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
}

// The steps of `admit`, in its order.

/// The handshake headers a WebSocket upgrade needs, checked.
struct Handshake {
    accept_key: String,
}

fn check_handshake(headers: &impl Headers) -> Result<Handshake, ApiError> {
    if !headers.has_token("upgrade", "websocket") || !headers.has_token("connection", "upgrade") {
        return Err(ApiError::BadRequest("expected a WebSocket upgrade".into()));
    }
    // RFC 6455 §11.3.1, §11.3.5: each appears once in a request. Two keys or two
    // versions are refused rather than read one way here and another by a proxy.
    if headers.count("sec-websocket-key") > 1 || headers.count("sec-websocket-version") > 1 {
        return Err(ApiError::BadRequest(
            "Sec-WebSocket-Key and Sec-WebSocket-Version must appear once".into(),
        ));
    }
    if headers.first("sec-websocket-version") != Some(b"13") {
        return Err(ApiError::UpgradeRequired);
    }
    let key = headers
        .first("sec-websocket-key")
        .ok_or_else(|| ApiError::BadRequest("Sec-WebSocket-Key missing".into()))?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !matches!(decoded, Ok(ref k) if k.len() == 16) {
        return Err(ApiError::BadRequest("Sec-WebSocket-Key malformed".into()));
    }
    Ok(Handshake {
        accept_key: derive_accept_key(key),
    })
}

fn check_origin(state: &AppState, headers: &impl Headers) -> Result<(), ApiError> {
    let (Some(allowed), Some(origin)) = (&state.config.ws.allowed_origins, headers.first("origin"))
    else {
        // No allow list, or a non-browser client (browsers always send Origin).
        return Ok(());
    };
    let origin = text(origin).ok_or(ApiError::OriginForbidden)?;
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(ApiError::OriginForbidden)
    }
}

/// The ticket and the device the client presents.
struct Presented {
    ticket: String,
    device_id: String,
    /// The last push id the client saw (`?since=`), already checked for form.
    since: Option<String>,
    /// Whether the client offered `ticketgate.v1`; the answer names it only then
    /// (RFC 6455: a server must not pick a subprotocol the client did not offer).
    offered_subprotocol: bool,
}

fn presented(headers: &impl Headers, query: Option<&str>) -> Result<Presented, ApiError> {
    let offered: Vec<&str> = headers
        .texts("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let from_protocol = offered
        .iter()
        .find_map(|p| p.strip_prefix(TICKET_SUBPROTOCOL_PREFIX));
    if from_protocol.is_some() && !offered.contains(&SUBPROTOCOL) {
        return Err(ApiError::BadRequest(format!(
            "the ticket subprotocol needs `{SUBPROTOCOL}` too"
        )));
    }
    let mut ticket = from_protocol.map(str::to_owned);
    let mut device_id = None;
    let mut query_ticket = None;
    let mut since = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "device_id" => &mut device_id,
            "ticket" => &mut query_ticket,
            "since" => &mut since,
            _ => continue,
        };
        // Twice in one query: refused, not read one way here and another elsewhere.
        if slot.replace(v.into_owned()).is_some() {
            return Err(ApiError::BadRequest(format!("`{k}` appears twice")));
        }
    }
    ticket = ticket.or(query_ticket);
    let device_id = device_id.filter(|d| is_device_id(d)).ok_or_else(|| {
        ApiError::BadRequest("device_id query parameter missing or not a UUID".into())
    })?;
    let ticket = ticket.ok_or_else(|| ApiError::BadRequest("no ticket offered".into()))?;
    if since.as_deref().is_some_and(|s| !PushId::is_well_formed(s)) {
        return Err(ApiError::BadRequest(
            "since must be a push id: 1 to 64 characters of [A-Za-z0-9_.:-]".into(),
        ));
    }
    Ok(Presented {
        ticket,
        device_id,
        since,
        offered_subprotocol: offered.contains(&SUBPROTOCOL),
    })
}

/// Counts a refused admission and charges it to the IP's failure quota when it failed
/// authentication, or presented a ticket with another device than its own: the error
/// to answer with.
pub(crate) fn refused(state: &AppState, ip: std::net::IpAddr, err: ApiError) -> ApiError {
    crate::metrics::hot().admissions.count(err.outcome());
    if matches!(err, ApiError::DeviceMismatch) {
        // Not an authentication failure elsewhere (a signed call proved its key), but
        // here a device id anyone can type: the IP pays, not the ticket's device.
        return match state.limits.check(Limit::FailIp(ip)) {
            Ok(()) => err,
            Err(retry) => retry.into(),
        };
    }
    super::extract::charge_failure(state, ip, err)
}

/// A consumed ticket: the socket may open. Holds the connection's slot and its early
/// registration until [`Admitted::run`] takes them over.
pub(crate) struct Admitted {
    accept_key: String,
    /// Whether the answer names `ticketgate.v1` (only when the client offered it).
    offered_subprotocol: bool,
    info: ConnectionInfo,
    permit: OwnedSemaphorePermit,
    registered: connection::Registered,
}

impl Admitted {
    fn switching_protocols_fields(&self) -> impl Iterator<Item = (HeaderName, &str)> {
        switching_protocols_fields(&self.accept_key, self.offered_subprotocol)
    }

    /// The `101 Switching Protocols` answer, for hyper.
    pub(crate) fn switching_protocols(&self) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        for (name, value) in self.switching_protocols_fields() {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        response
    }

    /// Runs the socket on `io`, a connection hyper upgraded after
    /// [`Admitted::switching_protocols`].
    pub(crate) async fn run_upgraded<S>(self, state: AppState, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.start(state, io, Vec::new(), Welcome::Send).await;
    }

    /// For a connection served without hyper: writes the 101 answer and the welcome
    /// frame in one write (one segment instead of two, for the client and for us), then
    /// runs the socket. `read_ahead` holds bytes the client sent after its request head
    /// that were already read.
    pub(crate) async fn answer_and_run(
        self,
        state: AppState,
        mut io: TcpStream,
        read_ahead: Vec<u8>,
    ) {
        let mut out = self.switching_protocols_head();
        let welcome = Frame::message(
            connection::welcome_text(&self.info),
            OpCode::Data(Data::Text),
            true,
        );
        if welcome.format(&mut out).is_err() {
            // Writing into a Vec cannot fail; nothing was sent, so just drop the client.
            return;
        }
        if let Err(e) = io.write_all(&out).await {
            tracing::debug!(cause = %e, "client left before the upgrade completed");
            return;
        }
        self.start(state, io, read_ahead, Welcome::Sent).await;
    }

    /// The socket on `io` until it ends; `read_ahead`: bytes after the request head.
    async fn start<S>(self, state: AppState, io: S, read_ahead: Vec<u8>, welcome: Welcome)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        // Boxed: the socket's task then holds a pointer instead of the stream. With the
        // stream inline the task's future was 4,160 bytes, just over a page, and an
        // idle socket cost 1.2-1.6 KiB more RSS (`flood idle --sockets 10000
        // --server-pid`: 5.1 KiB inline, 3.4-4.1 KiB boxed, embedded store).
        let ws =
            Box::new(crate::ws::accept(io, read_ahead, &state.sockets, ws_config(&state)).await);
        let Admitted {
            info,
            permit,
            registered,
            ..
        } = self;
        let sockets = &state.sockets;
        connection::run(ws, info, sockets, &state, permit, registered, welcome).await;
    }

    /// The 101 answer as raw HTTP/1.1 bytes (the fields of
    /// [`switching_protocols_fields`]).
    fn switching_protocols_head(&self) -> Vec<u8> {
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in self.switching_protocols_fields() {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// The header fields of the `101 Switching Protocols` answer, defined once for both
/// ways of sending it ([`Admitted::switching_protocols`] for hyper,
/// [`Admitted::switching_protocols_head`] as raw bytes). The subprotocol is named only
/// when the client offered it (RFC 6455 §4.2.2).
fn switching_protocols_fields(
    accept_key: &str,
    offered_subprotocol: bool,
) -> impl Iterator<Item = (HeaderName, &str)> {
    let subprotocol = offered_subprotocol.then_some((header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL));
    [
        (header::UPGRADE, "websocket"),
        (header::CONNECTION, "Upgrade"),
    ]
    .into_iter()
    .chain(subprotocol)
    .chain([(header::SEC_WEBSOCKET_ACCEPT, accept_key)])
}

/// The WebSocket settings of this node.
pub(crate) fn ws_config(state: &AppState) -> WebSocketConfig {
    ws_config_for(state.config.ws.max_frame_bytes)
}

/// What a socket needs from its node: access tokens checked by the sessions service
/// (refusals spelled by `http/error.rs`), resume tickets minted by it.
impl SocketServices for AppState {
    fn verify_access(&self, token: &str) -> Result<Claims, Refusal> {
        self.sessions
            .verify_access(token)
            .map_err(|e| ApiError::from(e).refusal())
    }

    fn handler(&self) -> &std::sync::Arc<dyn SessionHandler> {
        &self.handler
    }

    fn context(&self, info: &ConnectionInfo) -> Context {
        let identity = Identity {
            conn_id: info.conn_id.clone(),
            node_id: self.config.node_id.clone(),
            user_id: info.user_id.clone(),
            session_id: info.session_id.clone(),
            device_id: info.device_id.clone(),
            client_type: info.client_type,
        };
        Context::new(identity, self.pusher.clone())
    }

    fn spawn_event<F>(&self, event: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.shutdown.spawn(event)
    }

    async fn resume_ticket(&self, info: &ConnectionInfo) -> Option<ServerFrame> {
        self.sessions
            .resume_frame(&TicketFor {
                session_id: &info.session_id,
                user_id: &info.user_id,
                device_id: &info.device_id,
                client_type: info.client_type,
                access_expires_at: info.expires_at,
            })
            .await
    }
}

// ---------------------------------------------------------------------------------------
// The axum adapter: a connect request that was not the first of its connection.
// ---------------------------------------------------------------------------------------

/// `GET /v1/connect` through hyper and axum: the path of a connect request that was not
/// the first request of its connection (see [`crate::http::first`] for the usual path).
pub(crate) async fn connect(State(state): State<AppState>, mut req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let ip = client_ip(peer, req.headers(), &state.config.trusted_proxies);
    if req.version() != axum::http::Version::HTTP_11 {
        // hyper upgrades HTTP/1.1 connections only: admitting would burn the ticket
        // and the 101 would lead nowhere.
        let err = ApiError::BadRequest("a WebSocket upgrade needs HTTP/1.1".into());
        return refused(&state, ip, err).into_response();
    }
    if has_body(req.headers()) {
        // An upgrade request has no body (RFC 6455 §4.1: a GET whose bytes after the
        // head are the socket's). Admitting one would hand the body to the socket as
        // frames, or leave hyper and the client disagreeing on where the request ends.
        // The direct path hands such a request to hyper, so it is refused here, for
        // both ways in, before the ticket is looked at.
        let err = ApiError::BadRequest("a connect request must not have a body".into());
        return refused(&state, ip, err).into_response();
    }
    let admitted = match admit(&state, ip, req.headers(), req.uri().query()).await {
        Ok(admitted) => admitted,
        Err(err) => return refused(&state, ip, err).into_response(),
    };
    let response = admitted.switching_protocols();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tasks = state.shutdown.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => admitted.run_upgraded(state, TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(cause = %e, "client left before the upgrade completed"),
        }
    });
    response
}

/// Whether a request announces a body: any `Transfer-Encoding`, or a `Content-Length`
/// other than 0.
fn has_body(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_announced_by_transfer_encoding_or_a_nonzero_length() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = axum::http::HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, HeaderValue::from_static(value));
            }
            has_body(&headers)
        };
        assert!(!with(&[]));
        assert!(!with(&[("content-length", "0")]));
        assert!(with(&[("content-length", "5")]));
        assert!(with(&[("content-length", "0"), ("content-length", "1")]));
        assert!(with(&[("transfer-encoding", "chunked")]));
        assert!(with(&[("transfer-encoding", "identity")]));
    }

    #[test]
    fn the_101_names_the_subprotocol_only_when_offered() {
        let names = |offered| {
            switching_protocols_fields("k", offered)
                .map(|(n, v)| format!("{n}: {v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(true),
            [
                "upgrade: websocket",
                "connection: Upgrade",
                "sec-websocket-protocol: ticketgate.v1",
                "sec-websocket-accept: k"
            ]
        );
        assert_eq!(
            names(false),
            [
                "upgrade: websocket",
                "connection: Upgrade",
                "sec-websocket-accept: k"
            ]
        );
    }
}
