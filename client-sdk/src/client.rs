//! The typed client: login, app login, ticket mint and the WebSocket connect, with
//! request signing (protocol §2) built in.
//!
//! A [`Client`] knows the server's base URL and this install's device id. Logging in
//! gives a [`Session`], which holds the tokens and the per-session signing key; every
//! later call takes the session it acts for, so one client can serve several sessions.
//!
//! ```text
//! login / app_login ──► Session ──► mint_ticket ──► Ticket ──► connect ──► (WsStream, Welcome)
//!                          ▲  │
//!                          └──┘ refresh (new access + refresh token), logout
//! ```
//!
//! These calls are one request each and keep no state: the caller stores what they
//! answer. [`SessionHandle`](crate::SessionHandle) does that bookkeeping (renewal ahead
//! of expiry, single-flight refresh, `X-New-Token`) and
//! [`ManagedConnection`](crate::ManagedConnection) adds reconnects on top.

use std::time::Duration;

use futures_util::StreamExt as _;
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::unix_now;
use crate::error::{api_error, ClientError};
use crate::protocol::{
    ClientType, LoginRequest, LoginResponse, MintRequest, MintResponse, RefreshRequest,
    ServerFrame, HEADER_DEVICE, HEADER_NEW_TOKEN, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP,
    SUBPROTOCOL, TICKET_SUBPROTOCOL_PREFIX,
};
use crate::session_data::{Session, Ticket, Welcome};
use crate::signing::{sign, SignedParts};

/// Length of the nonces this client sends: 32 chars of `[A-Za-z0-9]`, about 190 bits.
const NONCE_LEN: usize = 32;
/// How long an HTTP call may take in total.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the `welcome` frame after the upgrade; the server sends it at
/// once, so a longer wait means something is wrong.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket returned by [`Client::connect`].
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A ticketgate client: the server's base URL, this install's device id and an HTTP
/// connection pool.
///
/// Cloning is cheap (the pool is shared), so clone it into every task that needs it.
///
/// ```
/// # fn main() -> Result<(), ticketgate_sdk::ClientError> {
/// use ticketgate_sdk::Client;
///
/// let client = Client::new("http://127.0.0.1:8080")?
///     .with_device_id("3f1c2a9e-6b7d-4e0f-9a51-2c8d7e4b1f60");
/// assert_eq!(client.device_id(), "3f1c2a9e-6b7d-4e0f-9a51-2c8d7e4b1f60");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    base_url: Url,
    device_id: String,
}

impl Client {
    /// A client for the server at `base_url` (`http://host:port`, optionally with a
    /// path prefix), with a fresh random device id (UUID v4).
    ///
    /// A device id should outlive the process: store [`Client::device_id`] and pass it
    /// to [`Client::with_device_id`] next time. Redirects are not followed: ticketgate
    /// answers every call itself, and a signed request must not travel elsewhere.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when `base_url` is not an `http://` URL without a
    /// query (this build has no TLS), [`ClientError::Http`] when the HTTP client cannot
    /// be built.
    ///
    /// ```
    /// # fn main() -> Result<(), ticketgate_sdk::ClientError> {
    /// let client = ticketgate_sdk::Client::new("http://127.0.0.1:8080")?;
    /// assert_eq!(client.device_id().len(), 36);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let base_url = Url::parse(base_url)
            .map_err(|e| ClientError::InvalidUrl(format!("{base_url:?}: {e}")))?;
        if base_url.scheme() != "http" {
            return Err(ClientError::InvalidUrl(format!(
                "{base_url}: only http:// base URLs are supported"
            )));
        }
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(ClientError::InvalidUrl(format!(
                "{base_url}: a base URL has no query or fragment"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("ticketgate-sdk/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // ticketgate never redirects, and a redirect followed with the signed
            // headers would hand a fresh signature to whatever answered. (It also
            // spares reqwest a URL parse per request.)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Client {
            http,
            base_url,
            device_id: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// The same client with another device id, e.g. one stored by an earlier run.
    ///
    /// The server expects a UUID and binds sessions and tickets to it.
    pub fn with_device_id(self, device_id: impl Into<String>) -> Self {
        Client {
            device_id: device_id.into(),
            ..self
        }
    }

    /// This client's device id, sent as `X-TG-Device` and in login bodies.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Logs a user in: `POST /v1/login`.
    ///
    /// A new login on the same client type ends the user's older `web` or `mobile`
    /// session (its sockets close with 4509).
    ///
    /// # Errors
    /// [`ClientError::Api`] with `bad_credentials` (also for a blocked user) or
    /// `rate_limited`; [`ClientError::Http`] when the server is unreachable.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ticketgate_sdk::ClientError> {
    /// use ticketgate_sdk::{Client, ClientType};
    ///
    /// let client = Client::new("http://127.0.0.1:8080")?;
    /// let session = client.login("alice", "secret", ClientType::Mobile).await?;
    /// println!("session {} until {}", session.session_id, session.refresh_expires_at);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client_type: ClientType,
    ) -> Result<Session, ClientError> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            device_id: self.device_id.clone(),
            client_type,
            refresh_in_cookie: false,
        };
        let response = self
            .http
            .post(self.endpoint("/v1/login"))
            .json(&body)
            .send()
            .await?;
        let answer: LoginResponse = read_answer(response).await?;
        let session = Session::from_answer(answer, &self.device_id)?;
        tracing::debug!(session_id = %session.session_id, "logged in");
        Ok(session)
    }

    /// Logs an API app in: `POST /v1/app/login`, signed with the app secret's UTF-8
    /// bytes. The session's later calls are signed with its own signing key.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `bad_credentials` (unknown app), `bad_signature` (wrong
    /// secret), `stale_request` (clock skew), `rate_limited`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), ticketgate_sdk::ClientError> {
    /// let client = ticketgate_sdk::Client::new("http://127.0.0.1:8080")?;
    /// let session = client.app_login("billing-service", "s3cr3t-app-secret").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn app_login(&self, app_id: &str, app_secret: &str) -> Result<Session, ClientError> {
        #[derive(Serialize)]
        struct AppLoginRequest<'a> {
            app_id: &'a str,
        }
        let request = self.signed_post(
            &self.device_id,
            app_secret.as_bytes(),
            None,
            "/v1/app/login",
            &AppLoginRequest { app_id },
        )?;
        let answer: LoginResponse = read_answer(request.send().await?).await?;
        let session = Session::from_answer(answer, &self.device_id)?;
        tracing::debug!(session_id = %session.session_id, "logged in");
        Ok(session)
    }

    /// Mints a one-time connection ticket: `POST /v1/tickets` with Bearer + signature.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `token_expired` (log in again), `token_revoked`,
    /// `device_mismatch`, `bad_signature`, `rate_limited`, among others.
    ///
    /// ```no_run
    /// # async fn run(client: ticketgate_sdk::Client, mut session: ticketgate_sdk::Session)
    /// # -> Result<(), ticketgate_sdk::ClientError> {
    /// let ticket = client.mint_ticket(&session).await?;
    /// if let Some(token) = ticket.new_access_token.clone() {
    ///     session.adopt_access_token(token);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn mint_ticket(&self, session: &Session) -> Result<Ticket, ClientError> {
        let request = self.signed_post(
            &session.device_id,
            &session.signing_key,
            Some(&session.access_token),
            "/v1/tickets",
            &MintRequest::default(),
        )?;
        let response = request.send().await?;
        let new_access_token = response
            .headers()
            .get(HEADER_NEW_TOKEN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer: MintResponse = read_answer(response).await?;
        Ok(Ticket {
            ticket: answer.ticket,
            expires_in: answer.expires_in,
            ws_url: answer.ws_url,
            new_access_token,
        })
    }

    /// Opens the WebSocket with a ticket and waits for the `welcome` frame.
    ///
    /// Connects to `ticket.ws_url` (or the base URL's `/v1/connect` when it is empty)
    /// with `?device_id=<session's device>` and the ticket in the subprotocol list
    /// (`Sec-WebSocket-Protocol: ticketgate.v1, ticket.<ticket>`), so the ticket never
    /// appears in a URL. A ticket opens at most one socket: mint a fresh one for every
    /// attempt.
    ///
    /// # Errors
    /// [`ClientError::Api`] when the server refuses admission (`ticket_invalid`,
    /// `device_mismatch`, `rate_limited`, `origin_forbidden`, `store_unavailable`);
    /// [`ClientError::Protocol`] when the first frame is not `welcome` or does not come
    /// within 10 seconds; [`ClientError::WebSocket`] on transport failures.
    ///
    /// ```no_run
    /// # async fn run(client: ticketgate_sdk::Client, session: ticketgate_sdk::Session)
    /// # -> Result<(), ticketgate_sdk::ClientError> {
    /// use futures_util::StreamExt;
    ///
    /// let ticket = client.mint_ticket(&session).await?;
    /// let (mut socket, welcome) = client.connect(&session, &ticket).await?;
    /// println!("connected as {} until {}", welcome.conn_id, welcome.expires_at);
    /// while let Some(message) = socket.next().await {
    ///     println!("{:?}", message);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(
        &self,
        session: &Session,
        ticket: &Ticket,
    ) -> Result<(WsStream, Welcome), ClientError> {
        self.connect_since(session, ticket, None).await
    }

    /// Like [`Client::connect`], and with `since` (the id of the last push the app
    /// handled) the server first replays every push of this user published after it,
    /// then live ones, none twice; [`Welcome::recovered`] tells whether the history
    /// still held all of them. See `docs/protocol.md`, "Push history and recovery".
    ///
    /// # Errors
    /// As [`Client::connect`]; a `since` that is not 1 to 64 characters of
    /// `[A-Za-z0-9_.:-]` is refused by the server (`bad_request`) before the ticket
    /// is spent.
    ///
    /// ```no_run
    /// # async fn run(client: ticketgate_sdk::Client, session: ticketgate_sdk::Session,
    /// #     last_seen: String) -> Result<(), ticketgate_sdk::ClientError> {
    /// let ticket = client.mint_ticket(&session).await?;
    /// let (socket, welcome) = client.connect_since(&session, &ticket, Some(&last_seen)).await?;
    /// if welcome.recovered == Some(false) {
    ///     // Pushes were lost: reload the state from the product's own service.
    /// }
    /// # drop(socket);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_since(
        &self,
        session: &Session,
        ticket: &Ticket,
        since: Option<&str>,
    ) -> Result<(WsStream, Welcome), ClientError> {
        if !ticket_is_well_formed(&ticket.ticket) {
            return Err(ClientError::Protocol(
                "the ticket has characters outside [A-Za-z0-9_.-]".to_owned(),
            ));
        }
        let mut url = self.ws_url(&ticket.ws_url)?;
        url.query_pairs_mut()
            .append_pair("device_id", &session.device_id);
        if let Some(since) = since {
            url.query_pairs_mut().append_pair("since", since);
        }

        let mut request = url.as_str().into_client_request()?;
        let protocols = format!(
            "{SUBPROTOCOL}, {TICKET_SUBPROTOCOL_PREFIX}{}",
            ticket.ticket
        );
        let protocols = HeaderValue::from_str(&protocols)
            .map_err(|_| ClientError::Protocol("the ticket is not a valid header value".into()))?;
        request
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, protocols);

        let (mut socket, response) =
            tokio_tungstenite::connect_async_with_config(request, None, true).await?;
        let chosen = response.headers().get(SEC_WEBSOCKET_PROTOCOL);
        if chosen.map(HeaderValue::as_bytes) != Some(SUBPROTOCOL.as_bytes()) {
            return Err(ClientError::Protocol(format!(
                "the server chose subprotocol {chosen:?}, expected {SUBPROTOCOL}"
            )));
        }

        let welcome = tokio::time::timeout(WELCOME_TIMEOUT, read_welcome(&mut socket))
            .await
            .map_err(|_| ClientError::Protocol("no welcome frame within 10 s".to_owned()))??;
        tracing::debug!(
            session_id = %welcome.session_id,
            conn_id = %welcome.conn_id,
            "connected"
        );
        Ok((socket, welcome))
    }

    /// Renews a session: `POST /v1/token/refresh`, signed with the session's key, with
    /// its refresh token in the body (no Bearer). The answer is the same session with a
    /// new access token and a new refresh token; the old refresh token is dead from now
    /// on, so store the returned session before anything else.
    ///
    /// This is one request: two concurrent refreshes of one session present the same
    /// refresh token twice, which the server treats as theft and revokes the session.
    /// [`SessionHandle`](crate::SessionHandle) makes sure that never happens.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `refresh_reused` (the session is now revoked),
    /// `refresh_limit` (daily cap reached), `token_revoked` (logged out, kicked or
    /// blocked): for all three the user must log in again. Also `bad_signature`,
    /// `stale_request`, `rate_limited`. [`ClientError::Protocol`] when the session has no
    /// refresh token (web cookie mode, which this client does not use).
    ///
    /// ```no_run
    /// # async fn run(client: ticketgate_sdk::Client, mut session: ticketgate_sdk::Session)
    /// # -> Result<(), ticketgate_sdk::ClientError> {
    /// let now = std::time::SystemTime::now()
    ///     .duration_since(std::time::UNIX_EPOCH)
    ///     .map_or(0, |d| d.as_secs());
    /// if session.needs_refresh(now) {
    ///     session = client.refresh(&session).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn refresh(&self, session: &Session) -> Result<Session, ClientError> {
        let Some(refresh_token) = session.refresh_token.clone() else {
            return Err(ClientError::Protocol(
                "the session has no refresh token (cookie mode)".to_owned(),
            ));
        };
        let request = self.signed_post(
            &session.device_id,
            &session.signing_key,
            None,
            "/v1/token/refresh",
            &RefreshRequest {
                refresh_token: Some(refresh_token),
            },
        )?;
        let answer: LoginResponse = read_answer(request.send().await?).await?;
        if answer.session_id != session.session_id {
            return Err(ClientError::Protocol(
                "the refresh answer belongs to another session".to_owned(),
            ));
        }
        tracing::debug!(session_id = %answer.session_id, "refreshed");
        Session::from_answer(answer, &session.device_id)
    }

    /// Ends a session: `POST /v1/logout` with Bearer + signature, body `{}`.
    ///
    /// The server kills the refresh token, denies the session's access tokens and closes
    /// its sockets with 4503.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `token_expired` (refresh first), `token_revoked` (the
    /// session was over already), `bad_signature`, `rate_limited`.
    ///
    /// ```no_run
    /// # async fn run(client: ticketgate_sdk::Client, session: ticketgate_sdk::Session)
    /// # -> Result<(), ticketgate_sdk::ClientError> {
    /// client.logout(&session).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn logout(&self, session: &Session) -> Result<(), ClientError> {
        /// Serializes as `{}`.
        #[derive(Serialize)]
        struct Empty {}
        let request = self.signed_post(
            &session.device_id,
            &session.signing_key,
            Some(&session.access_token),
            "/v1/logout",
            &Empty {},
        )?;
        read_empty_answer(request.send().await?).await?;
        tracing::debug!(session_id = %session.session_id, "logged out");
        Ok(())
    }

    /// Builds a signed `POST` of `body` to `path` (protocol §2) as `device_id`, with
    /// `Authorization: Bearer` when an access token is given.
    ///
    /// The body is serialized once and exactly those bytes are both signed and sent.
    pub(crate) fn signed_post<T: Serialize>(
        &self,
        device_id: &str,
        key: &[u8],
        bearer: Option<&str>,
        path: &str,
        body: &T,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request body: {e}")))?;
        let url = self.endpoint(path);
        let timestamp = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let nonce = new_nonce();
        let signature = sign(
            key,
            &SignedParts {
                method: "POST",
                path: url.path(),
                device_id,
                timestamp,
                nonce: &nonce,
                body: &body,
            },
        );

        let mut request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(HEADER_DEVICE, device_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_NONCE, nonce)
            .header(HEADER_SIGNATURE, signature);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        Ok(request.body(body))
    }

    /// The HTTP URL of an API path, below the base URL's own path.
    pub(crate) fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base_url.clone();
        let joined = format!("{}{path}", self.base_url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// The WebSocket URL: the mint answer's `ws_url`, or the base URL's `/v1/connect`
    /// with `http` turned into `ws`.
    fn ws_url(&self, ws_url: &str) -> Result<Url, ClientError> {
        if !ws_url.is_empty() {
            return Url::parse(ws_url)
                .map_err(|e| ClientError::InvalidUrl(format!("ws_url {ws_url:?}: {e}")));
        }
        let mut url = self.endpoint("/v1/connect");
        url.set_scheme("ws")
            .map_err(|()| ClientError::InvalidUrl(format!("{url}: cannot use as ws://")))?;
        Ok(url)
    }
}

/// Reads a success answer as `T`, or turns an error answer into [`ClientError::Api`].
pub(crate) async fn read_answer<T: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    if !status.is_success() {
        return Err(api_error(status.as_u16(), &headers, &body));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ClientError::Protocol(format!("{status} answer is not the expected JSON: {e}"))
    })
}

/// Accepts a success answer whose body does not matter (204), or turns an error answer
/// into [`ClientError::Api`].
async fn read_empty_answer(response: reqwest::Response) -> Result<(), ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let headers = response.headers().clone();
    let body = response.bytes().await?;
    Err(api_error(status.as_u16(), &headers, &body))
}

/// Waits for the first data frame and requires it to be `welcome`.
async fn read_welcome(socket: &mut WsStream) -> Result<Welcome, ClientError> {
    while let Some(message) = socket.next().await {
        let text = match message? {
            Message::Text(text) => text,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(ClientError::Protocol(format!(
                    "closed before the welcome frame: {code} {reason}"
                )));
            }
            Message::Binary(_) | Message::Frame(_) => {
                return Err(ClientError::Protocol(
                    "a binary frame came before the welcome frame".to_owned(),
                ))
            }
        };
        return match serde_json::from_str::<ServerFrame>(text.as_str()) {
            Ok(ServerFrame::Welcome {
                session_id,
                conn_id,
                user_id,
                device_id,
                expires_at,
                recovered,
                last_id,
            }) => Ok(Welcome {
                session_id,
                conn_id,
                user_id,
                device_id,
                expires_at,
                recovered,
                last_id: last_id.flatten(),
            }),
            // Not quoted: a `resume` frame carries a ticket.
            Ok(_) => Err(ClientError::Protocol(
                "the first frame is not welcome".to_owned(),
            )),
            Err(e) => Err(ClientError::Protocol(format!(
                "the first frame is not a server frame: {e}"
            ))),
        };
    }
    Err(ClientError::Protocol(
        "the connection ended before the welcome frame".to_owned(),
    ))
}

/// Tickets use only `[A-Za-z0-9_.-]`, so they fit in a subprotocol token.
fn ticket_is_well_formed(ticket: &str) -> bool {
    !ticket.is_empty()
        && ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A fresh nonce: [`NONCE_LEN`] chars of `[A-Za-z0-9]` from the thread's CSPRNG
/// (ChaCha, seeded and periodically reseeded from the OS). Sampling `OsRng` directly
/// made one `getrandom` system call per character.
fn new_nonce() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(NONCE_LEN)
        .map(char::from)
        .collect()
}
