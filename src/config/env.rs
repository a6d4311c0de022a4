//! Environment variable names: the operator's contract (PROTOCOL §7 and §8).
//!
//! Every setting has one named constant here. The config file key of a setting is its
//! variable's name without the `TICKETGATE_` prefix, in lower case
//! ([`file_key`](super::file_key)).

/// Public HTTP + WebSocket listener.
pub const LISTEN: &str = "TICKETGATE_LISTEN";
/// Admin API and `/metrics` listener.
pub const ADMIN_LISTEN: &str = "TICKETGATE_ADMIN_LISTEN";
/// Admin bearer key.
pub const ADMIN_KEY: &str = "TICKETGATE_ADMIN_KEY";
/// File holding the admin bearer key.
pub const ADMIN_KEY_FILE: &str = "TICKETGATE_ADMIN_KEY_FILE";
/// Redis URL; none means the embedded store.
pub const REDIS_URL: &str = "TICKETGATE_REDIS_URL";
/// The embedded store when there is no Redis: `durable` (the default) or `memory`.
pub const STORE: &str = "TICKETGATE_STORE";
/// The users file.
pub const USERS_FILE: &str = "TICKETGATE_USERS_FILE";
/// The API apps file.
pub const APPS_FILE: &str = "TICKETGATE_APPS_FILE";
/// Signing keys and server secrets.
pub const DATA_DIR: &str = "TICKETGATE_DATA_DIR";
/// This node's name.
pub const NODE_ID: &str = "TICKETGATE_NODE_ID";
/// Comma list of allowed WebSocket / CORS origins.
pub const ALLOWED_ORIGINS: &str = "TICKETGATE_ALLOWED_ORIGINS";
/// Ticket lifetime.
pub const TICKET_TTL: &str = "TICKETGATE_TICKET_TTL";
/// Access token lifetime.
pub const ACCESS_TTL: &str = "TICKETGATE_ACCESS_TTL";
/// Refresh lifetime, web.
pub const REFRESH_TTL_WEB: &str = "TICKETGATE_REFRESH_TTL_WEB";
/// Refresh lifetime, mobile.
pub const REFRESH_TTL_MOBILE: &str = "TICKETGATE_REFRESH_TTL_MOBILE";
/// Refresh lifetime, api.
pub const REFRESH_TTL_API: &str = "TICKETGATE_REFRESH_TTL_API";
/// Allowed clock skew of a signed request.
pub const SKEW: &str = "TICKETGATE_SKEW";
/// Login attempts per IP.
pub const RATE_LOGIN_IP: &str = "TICKETGATE_RATE_LOGIN_IP";
/// Login attempts per username.
pub const RATE_LOGIN_USER: &str = "TICKETGATE_RATE_LOGIN_USER";
/// Login attempts per device.
pub const RATE_LOGIN_DEVICE: &str = "TICKETGATE_RATE_LOGIN_DEVICE";
/// Requests failing before authentication, per IP.
pub const RATE_FAIL_IP: &str = "TICKETGATE_RATE_FAIL_IP";
/// Mints per device (charged after the signature verified).
pub const RATE_MINT_DEVICE: &str = "TICKETGATE_RATE_MINT_DEVICE";
/// Connects per device (charged for a ticket whose MAC verified).
pub const RATE_CONNECT_DEVICE: &str = "TICKETGATE_RATE_CONNECT_DEVICE";
/// Connects per IP.
pub const RATE_CONNECT_IP: &str = "TICKETGATE_RATE_CONNECT_IP";
/// Refresh and logout calls per session (charged after the signature verified).
pub const RATE_SESSION: &str = "TICKETGATE_RATE_SESSION";
/// Frames per connection.
pub const RATE_FRAMES: &str = "TICKETGATE_RATE_FRAMES";
/// Concurrent connections per node.
pub const MAX_CONNECTIONS: &str = "TICKETGATE_MAX_CONNECTIONS";
/// Sockets per session, per node.
pub const MAX_SOCKETS_PER_SESSION: &str = "TICKETGATE_MAX_SOCKETS_PER_SESSION";
/// Sockets per user, per node.
pub const MAX_SOCKETS_PER_USER: &str = "TICKETGATE_MAX_SOCKETS_PER_USER";
/// Live sessions per API app, deployment-wide.
pub const MAX_SESSIONS_PER_APP: &str = "TICKETGATE_MAX_SESSIONS_PER_APP";
/// Public base URL, for `ws_url`.
pub const PUBLIC_URL: &str = "TICKETGATE_PUBLIC_URL";
/// CIDRs whose `X-Forwarded-For` is believed.
pub const TRUSTED_PROXIES: &str = "TICKETGATE_TRUSTED_PROXIES";
/// `text` or `json`.
pub const LOG_FORMAT: &str = "TICKETGATE_LOG_FORMAT";
/// Access-token refreshes per session per day.
pub const REFRESH_CAP_PER_DAY: &str = "TICKETGATE_REFRESH_CAP_PER_DAY";
/// Time allowed to send a request's headers (slowloris guard).
pub const HEADER_TIMEOUT: &str = "TICKETGATE_HEADER_TIMEOUT";
/// A connection with no frame from the client for this long is closed.
pub const IDLE_TIMEOUT: &str = "TICKETGATE_IDLE_TIMEOUT";
/// How often the server pings an open connection.
pub const PING_INTERVAL: &str = "TICKETGATE_PING_INTERVAL";
/// Largest WebSocket message and frame.
pub const MAX_FRAME_BYTES: &str = "TICKETGATE_MAX_FRAME_BYTES";
/// Most frames (fragments) one WebSocket message may have.
pub const MAX_FRAGMENTS: &str = "TICKETGATE_MAX_FRAGMENTS";
/// Leeway for `exp`/`nbf` of access tokens.
pub const JWT_LEEWAY: &str = "TICKETGATE_JWT_LEEWAY";
/// Time given to connections to close at shutdown.
pub const SHUTDOWN_GRACE: &str = "TICKETGATE_SHUTDOWN_GRACE";
/// Live sessions per (user, client type) for web and mobile.
pub const SESSIONS_PER_TYPE: &str = "TICKETGATE_SESSIONS_PER_TYPE";
/// Window in which the immediate parent of a refresh token is still accepted.
pub const REFRESH_GRACE: &str = "TICKETGATE_REFRESH_GRACE";
/// How often nodes reload access-token keys from the data dir.
pub const KEY_RELOAD: &str = "TICKETGATE_KEY_RELOAD";
/// A whole request body must arrive within this long.
pub const BODY_TIMEOUT: &str = "TICKETGATE_BODY_TIMEOUT";
/// A kept-alive HTTP connection with no request for this long is closed.
pub const KEEPALIVE_TIMEOUT: &str = "TICKETGATE_KEEPALIVE_TIMEOUT";
/// An HTTP connection whose answer cannot be written for this long is closed.
pub const WRITE_TIMEOUT: &str = "TICKETGATE_WRITE_TIMEOUT";
/// HTTP connections (not upgraded to a socket) per listener.
pub const MAX_HTTP_CONNECTIONS: &str = "TICKETGATE_MAX_HTTP_CONNECTIONS";
/// HTTP connections (not upgraded to a socket) per client IP.
pub const MAX_HTTP_CONNECTIONS_PER_IP: &str = "TICKETGATE_MAX_HTTP_CONNECTIONS_PER_IP";
/// Life of a QR login, rotations included.
pub const QR_TTL: &str = "TICKETGATE_QR_TTL";
/// How often an unscanned QR login gets a new id.
pub const QR_ROTATE: &str = "TICKETGATE_QR_ROTATE";
/// Shortest interval between two polls of one QR poller (`slow_down` below it).
pub const QR_POLL_INTERVAL: &str = "TICKETGATE_QR_POLL_INTERVAL";
/// QR logins created per IP.
pub const RATE_QR_IP: &str = "TICKETGATE_RATE_QR_IP";
/// The upstream's URL (`http://` or `https://`); none: `send` answers
/// `upstream_unavailable`.
pub const UPSTREAM_URL: &str = "TICKETGATE_UPSTREAM_URL";
/// The secret that signs calls to the upstream.
pub const UPSTREAM_SECRET: &str = "TICKETGATE_UPSTREAM_SECRET";
/// File holding the upstream secret.
pub const UPSTREAM_SECRET_FILE: &str = "TICKETGATE_UPSTREAM_SECRET_FILE";
/// How long one call to the upstream may take.
pub const UPSTREAM_TIMEOUT: &str = "TICKETGATE_UPSTREAM_TIMEOUT";
/// Unanswered `send`s per connection; past it, `busy`.
pub const UPSTREAM_INFLIGHT: &str = "TICKETGATE_UPSTREAM_INFLIGHT";
/// Calls to the upstream in flight per node (messages and events together); past it,
/// `upstream_unavailable`.
pub const UPSTREAM_NODE_INFLIGHT: &str = "TICKETGATE_UPSTREAM_NODE_INFLIGHT";
/// Pushes kept per user for recovery after a reconnect (`0`: no history).
pub const PUSH_HISTORY: &str = "TICKETGATE_PUSH_HISTORY";
/// How long a user's push history lives after its last push (`0`: no history).
pub const PUSH_HISTORY_TTL: &str = "TICKETGATE_PUSH_HISTORY_TTL";
/// The demo page at `/demo` on the public listener: `on` (the default) or `off`.
pub const DEMO: &str = "TICKETGATE_DEMO";
/// Replicas that must acknowledge a consumed ticket before its socket is admitted
/// (Redis `WAIT`); `0`: off.
pub const REDIS_WAIT_REPLICAS: &str = "TICKETGATE_REDIS_WAIT_REPLICAS";
/// How long the store waits for those acknowledgements.
pub const REDIS_WAIT_TIMEOUT: &str = "TICKETGATE_REDIS_WAIT_TIMEOUT";
