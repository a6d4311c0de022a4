//! QR-code login, both directions (protocol §5): typed calls on [`Client`].
//!
//! ```text
//! login_this   PC (no session)                      phone (logged in)
//!              qr_create_login_this ──► QrLogin      (shows qr_id as a QR code)
//!              qr_wait ◄─ polls ─┐                   qr_scan(Some(session)) ──► QrScan (where the login goes)
//!                                │                   qr_confirm(session)
//!              Session ◄─────────┘ (a new session of the phone's user, for the PC's device)
//!
//! login_other  PC (logged in)                       phone (no session)
//!              qr_create_login_other(session)        qr_scan(None) ──► QrScan with a poll secret
//!              qr_poll (watch: scanned?)             QrScan::into_login
//!              qr_confirm(session)                   qr_wait ──► Session (of the PC's user, for the phone)
//! ```
//!
//! Polling honours the server's pace: [`Client::qr_wait`] waits the poll interval
//! between polls, longer when a `slow_down` answer says so (`Retry-After`), and
//! follows a rotated QR to its next id.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::{read_answer, Client};
use crate::error::{api_error, ClientError};
use crate::protocol::{ClientType, ErrorCode, LoginResponse};
use crate::session_data::Session;

/// What a QR code shows: this prefix followed by the `qr_id` (the server's
/// `GET /v1/qr/{qr_id}/qr.svg` renders exactly that).
pub const QR_PAYLOAD_PREFIX: &str = "ticketgate://qr/";

/// The shortest interval between two polls the server accepts by default; polling
/// faster answers `slow_down`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A QR login to poll: its id and the poll secret. `Debug` does not print the secret.
#[derive(Clone)]
pub struct QrLogin {
    /// The id shown as a QR code; replaced when the QR rotates.
    pub qr_id: String,
    /// The secret that polls it (never shown in the QR code).
    pub poll_secret: String,
    /// `login_this` or `login_other`.
    pub mode: String,
    /// Seconds the QR lives, from its creation (0 when unknown: a login built from a
    /// scan by [`QrScan::into_login`]).
    pub expires_in: u64,
    /// Seconds until an unscanned QR is replaced (0 when unknown, as above).
    pub rotate_in: u64,
}

impl fmt::Debug for QrLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QrLogin")
            .field("qr_id", &self.qr_id)
            .field("poll_secret", &"<redacted>")
            .field("mode", &self.mode)
            .field("expires_in", &self.expires_in)
            .field("rotate_in", &self.rotate_in)
            .finish()
    }
}

impl QrLogin {
    /// The text to encode in the QR code: `ticketgate://qr/<qr_id>`.
    ///
    /// ```
    /// # let login = ticketgate_sdk::QrLogin { qr_id: "abc.def".into(), poll_secret: "s".into(),
    /// #     mode: "login_this".into(), expires_in: 120, rotate_in: 60 };
    /// assert_eq!(login.payload(), "ticketgate://qr/abc.def");
    /// ```
    pub fn payload(&self) -> String {
        format!("{QR_PAYLOAD_PREFIX}{}", self.qr_id)
    }
}

/// The `qr_id` in a scanned QR code's text, if it is a ticketgate QR.
///
/// ```
/// use ticketgate_sdk::qr_id_of_payload;
/// assert_eq!(qr_id_of_payload("ticketgate://qr/abc.def"), Some("abc.def"));
/// assert_eq!(qr_id_of_payload("https://example.com"), None);
/// ```
pub fn qr_id_of_payload(payload: &str) -> Option<&str> {
    payload
        .strip_prefix(QR_PAYLOAD_PREFIX)
        .filter(|id| !id.is_empty())
}

/// What a scan answers: where the login goes, so the phone can ask its user.
#[derive(Clone, Deserialize)]
pub struct QrScan {
    /// `scanned`.
    pub state: String,
    /// `login_this` (this phone approves a PC) or `login_other` (this phone logs in).
    pub mode: String,
    /// The QR creator's client type.
    pub client_type: ClientType,
    /// The QR creator's IP address.
    pub ip: String,
    /// Unix seconds of the QR's creation.
    pub created_at: i64,
    /// `login_other`: this phone's poll secret (only the first scanner gets one).
    #[serde(default)]
    pub poll_secret: Option<String>,
}

impl fmt::Debug for QrScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QrScan")
            .field("state", &self.state)
            .field("mode", &self.mode)
            .field("client_type", &self.client_type)
            .field("ip", &self.ip)
            .field("created_at", &self.created_at)
            .field(
                "poll_secret",
                &self.poll_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl QrScan {
    /// `login_other`: the QR login this phone polls for its session; `None` for a
    /// `login_this` scan (the phone approves, it does not log in).
    pub fn into_login(self, qr_id: &str) -> Option<QrLogin> {
        Some(QrLogin {
            qr_id: qr_id.to_owned(),
            poll_secret: self.poll_secret?,
            mode: self.mode,
            expires_in: 0,
            rotate_in: 0,
        })
    }
}

/// What one poll answered.
#[derive(Debug, Clone)]
pub enum QrPoll {
    /// Nobody scanned yet.
    Pending,
    /// Scanned; waiting for the confirmation. The `login_other` creator (who
    /// approves) is told who scanned, to show before it confirms; others get `None`s.
    Scanned {
        /// The scanning phone's IP address.
        scanner_ip: Option<String>,
        /// Unix seconds of the scan.
        scanned_at: Option<i64>,
    },
    /// Confirmed; the session goes to the other device (the `login_other` creator).
    Confirmed,
    /// The QR was replaced: show (and poll) this id from now on; the secret stays.
    Rotated {
        /// The new `qr_id`.
        next_qr_id: String,
    },
    /// Confirmed and redeemed: this device's new session.
    LoggedIn(Box<Session>),
}

/// `POST /v1/qr` body.
#[derive(Serialize)]
struct CreateBody<'a> {
    mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_type: Option<ClientType>,
}

/// `POST /v1/qr` answer.
#[derive(Deserialize)]
struct CreateAnswer {
    qr_id: String,
    poll_secret: String,
    mode: String,
    expires_in: u64,
    rotate_in: u64,
}

impl From<CreateAnswer> for QrLogin {
    fn from(a: CreateAnswer) -> QrLogin {
        QrLogin {
            qr_id: a.qr_id,
            poll_secret: a.poll_secret,
            mode: a.mode,
            expires_in: a.expires_in,
            rotate_in: a.rotate_in,
        }
    }
}

/// A 410's extra field.
#[derive(Deserialize)]
struct ExpiredAnswer {
    #[serde(default)]
    next_qr_id: Option<String>,
}

/// Serializes as `{}`.
#[derive(Serialize)]
struct Empty {}

impl Client {
    /// `login_this`: asks for a QR this device (without a session) shows; a phone
    /// that approves it gives this device a session of `client_type` (`web` or
    /// `mobile`). Then poll with [`Client::qr_wait`].
    ///
    /// # Errors
    /// [`ClientError::Api`] with `rate_limited` (too many QR codes from this IP) or
    /// `bad_request`.
    ///
    /// ```no_run
    /// # async fn run(pc: ticketgate_sdk::Client) -> Result<(), ticketgate_sdk::ClientError> {
    /// use ticketgate_sdk::ClientType;
    ///
    /// let mut qr = pc.qr_create_login_this(ClientType::Web).await?;
    /// println!("show this: {}", qr.payload());
    /// let session = pc
    ///     .qr_wait(&mut qr, ClientType::Web, |update| println!("{update:?}"))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn qr_create_login_this(
        &self,
        client_type: ClientType,
    ) -> Result<QrLogin, ClientError> {
        let body = CreateBody {
            mode: "login_this",
            device_id: Some(self.device_id()),
            client_type: Some(client_type),
        };
        let response = self
            .http
            .post(self.endpoint("/v1/qr"))
            .json(&body)
            .send()
            .await?;
        let answer: CreateAnswer = read_answer(response).await?;
        Ok(answer.into())
    }

    /// `login_other`: asks for a QR this logged-in device shows so that a new phone
    /// logs in as the same user (Bearer + signed). Watch it with [`Client::qr_poll`]
    /// and approve with [`Client::qr_confirm`] once it is scanned.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `token_expired`, `token_revoked`, `rate_limited`,
    /// among others.
    ///
    /// ```no_run
    /// # async fn run(pc: ticketgate_sdk::Client, session: ticketgate_sdk::Session)
    /// # -> Result<(), ticketgate_sdk::ClientError> {
    /// let qr = pc.qr_create_login_other(&session).await?;
    /// println!("show this: {}", qr.payload());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn qr_create_login_other(&self, session: &Session) -> Result<QrLogin, ClientError> {
        let body = CreateBody {
            mode: "login_other",
            device_id: None,
            client_type: None,
        };
        let request = self.signed_post(
            &session.device_id,
            &session.signing_key,
            Some(&session.access_token),
            "/v1/qr",
            &body,
        )?;
        let answer: CreateAnswer = read_answer(request.send().await?).await?;
        Ok(answer.into())
    }

    /// Scans a QR: with this phone's session to approve a `login_this` QR, or without
    /// one for a `login_other` QR (the answer then carries this phone's poll secret:
    /// [`QrScan::into_login`]). Show the answer's requester (client type, IP, time)
    /// before approving.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `qr_expired` (unknown, expired, rotated or already
    /// scanned), `token_invalid` (a `login_this` QR scanned without a session).
    ///
    /// ```no_run
    /// # async fn run(phone: ticketgate_sdk::Client, session: ticketgate_sdk::Session, text: &str)
    /// # -> Result<(), ticketgate_sdk::ClientError> {
    /// if let Some(qr_id) = ticketgate_sdk::qr_id_of_payload(text) {
    ///     let scan = phone.qr_scan(Some(&session), qr_id).await?;
    ///     println!("log in a {:?} at {}?", scan.client_type, scan.ip);
    ///     phone.qr_confirm(&session, qr_id).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn qr_scan(
        &self,
        session: Option<&Session>,
        qr_id: &str,
    ) -> Result<QrScan, ClientError> {
        let path = format!("/v1/qr/{qr_id}/scan");
        let request = match session {
            Some(session) => self.signed_post(
                &session.device_id,
                &session.signing_key,
                Some(&session.access_token),
                &path,
                &Empty {},
            )?,
            None => self.http.post(self.endpoint(&path)).json(&Empty {}),
        };
        read_answer(request.send().await?).await
    }

    /// Approves a scanned QR with the approver's session (Bearer + signed): the
    /// phone's in `login_this`, the creating PC's in `login_other`.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `qr_expired` (not scanned, already confirmed,
    /// expired, or not this session's to confirm), `token_revoked`.
    pub async fn qr_confirm(&self, session: &Session, qr_id: &str) -> Result<(), ClientError> {
        let request = self.signed_post(
            &session.device_id,
            &session.signing_key,
            Some(&session.access_token),
            &format!("/v1/qr/{qr_id}/confirm"),
            &Empty {},
        )?;
        let _: serde_json::Value = read_answer(request.send().await?).await?;
        Ok(())
    }

    /// Polls a QR login once as this device. A rotated QR answers
    /// [`QrPoll::Rotated`] (`qr.qr_id` is not changed here; [`Client::qr_wait`] does).
    ///
    /// # Errors
    /// [`ClientError::Api`] with `slow_down` (429; `retry_after` says when),
    /// `qr_expired` (expired, used, or not this device's).
    pub async fn qr_poll(
        &self,
        qr: &QrLogin,
        client_type: ClientType,
    ) -> Result<QrPoll, ClientError> {
        #[derive(Serialize)]
        struct PollBody<'a> {
            poll_secret: &'a str,
            device_id: &'a str,
            client_type: ClientType,
        }
        let body = PollBody {
            poll_secret: &qr.poll_secret,
            device_id: self.device_id(),
            client_type,
        };
        let response = self
            .http
            .post(self.endpoint(&format!("/v1/qr/{}/poll", qr.qr_id)))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if status.as_u16() == 410 {
            let headers = response.headers().clone();
            let bytes = response.bytes().await?;
            let expired: Option<ExpiredAnswer> = serde_json::from_slice(&bytes).ok();
            if let Some(next_qr_id) = expired.and_then(|e| e.next_qr_id) {
                return Ok(QrPoll::Rotated { next_qr_id });
            }
            return Err(api_error(410, &headers, &bytes));
        }
        // A state, with the login answer's fields beside it when redeemed.
        let answer: serde_json::Value = read_answer(response).await?;
        let state = answer["state"].as_str().unwrap_or_default().to_owned();
        let scanner = answer["scanner"].clone();
        let login = match answer.get("access_token") {
            Some(_) => Some(LoginResponse::deserialize(answer).map_err(|e| {
                ClientError::Protocol(format!("the QR login answer is not a login answer: {e}"))
            })?),
            None => None,
        };
        match (state.as_str(), login) {
            ("pending", _) => Ok(QrPoll::Pending),
            ("scanned", _) => Ok(QrPoll::Scanned {
                scanner_ip: scanner["ip"].as_str().map(str::to_owned),
                scanned_at: scanner["scanned_at"].as_i64(),
            }),
            ("confirmed", Some(login)) => Ok(QrPoll::LoggedIn(Box::new(Session::from_answer(
                login,
                self.device_id(),
            )?))),
            ("confirmed", None) => Ok(QrPoll::Confirmed),
            (other, _) => Err(ClientError::Protocol(format!("unknown QR state {other:?}"))),
        }
    }

    /// Polls until this device is logged in: waits [`DEFAULT_POLL_INTERVAL`] between
    /// polls (longer when the server answers `slow_down` with `Retry-After`), follows
    /// a rotated QR (updating `qr.qr_id`: show the new one), and hands every answer to
    /// `on_update` (e.g. to show "scanned, confirm on your phone").
    ///
    /// # Errors
    /// [`ClientError::Api`] with `qr_expired` when the QR expired or was refused:
    /// create a new one. [`ClientError::Protocol`] when polled by the `login_other`
    /// creator after its confirmation (that device does not log in).
    ///
    /// # Cancel safety
    /// Dropping the future stops polling; the QR stays valid until it expires.
    pub async fn qr_wait(
        &self,
        qr: &mut QrLogin,
        client_type: ClientType,
        mut on_update: impl FnMut(&QrPoll),
    ) -> Result<Session, ClientError> {
        self.qr_wait_every(qr, client_type, DEFAULT_POLL_INTERVAL, &mut on_update)
            .await
    }

    /// [`Client::qr_wait`] with another interval between polls (a server configured
    /// with `TICKETGATE_QR_POLL_INTERVAL`).
    ///
    /// # Errors
    /// As [`Client::qr_wait`].
    pub async fn qr_wait_every(
        &self,
        qr: &mut QrLogin,
        client_type: ClientType,
        interval: Duration,
        mut on_update: impl FnMut(&QrPoll),
    ) -> Result<Session, ClientError> {
        loop {
            let wait = match self.qr_poll(qr, client_type).await {
                Ok(QrPoll::LoggedIn(session)) => {
                    on_update(&QrPoll::LoggedIn(session.clone()));
                    return Ok(*session);
                }
                Ok(QrPoll::Confirmed) => {
                    on_update(&QrPoll::Confirmed);
                    return Err(ClientError::Protocol(
                        "confirmed for another device: this one does not log in".into(),
                    ));
                }
                Ok(update) => {
                    if let QrPoll::Rotated { next_qr_id } = &update {
                        qr.qr_id = next_qr_id.clone();
                    }
                    on_update(&update);
                    interval
                }
                Err(ClientError::Api {
                    code: Some(ErrorCode::SlowDown),
                    retry_after,
                    ..
                }) => interval.max(Duration::from_secs(retry_after.unwrap_or(1))),
                Err(e) => return Err(e),
            };
            tokio::time::sleep(wait).await;
        }
    }
}
