//! The deployment under test, seen from outside: its public URL (login and mint through
//! `ticketgate-sdk`), the devices logged in once at the start, and the admin API (kick,
//! publish) for the scenarios that need it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize;
use ticketgate_sdk::{Client, ClientType, Session};
use tokio::sync::Semaphore;

use crate::progress;
use crate::stats::{Budget, Figures, Recorder};

/// Logins in flight at once: each is an argon2 hash on the server, on purpose slow.
const LOGIN_CONCURRENCY: usize = 4;

/// A logged-in device: an SDK client (with its own keep-alive pool) and its session.
#[derive(Clone)]
pub struct Device {
    /// The SDK client, bound to this device's id.
    pub client: Client,
    /// The session it logged in with.
    pub session: Session,
}

impl Device {
    /// The device id (a UUID).
    pub fn id(&self) -> &str {
        &self.session.device_id
    }

    /// The same device and session, talking to another node of the deployment (nodes
    /// share sessions through Redis).
    ///
    /// # Errors
    /// When `base_url` is not usable.
    pub fn on(&self, base_url: &str) -> anyhow::Result<Device> {
        let client = Client::new(base_url)
            .context("SDK client")?
            .with_device_id(self.id());
        Ok(Device {
            client,
            session: self.session.clone(),
        })
    }
}

/// Where the users are and how to log them in.
#[derive(Debug, Clone)]
pub struct Users {
    /// Pool users are `<prefix><i>` for `i` in `0..count`.
    pub prefix: String,
    /// How many pool users exist.
    pub count: usize,
    /// Their password (all the same).
    pub password: String,
}

impl Users {
    /// The `i`-th pool user's name.
    pub fn name(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// The user the kick scenario logs in and kicks.
    pub fn kick_user(&self) -> String {
        format!("{}kick", self.prefix)
    }

    /// The user the push scenario publishes to.
    pub fn push_user(&self) -> String {
        format!("{}push", self.prefix)
    }
}

/// The `host:port` of an `http://host:port` URL (loopback addresses only).
///
/// # Errors
/// When the URL is not `http://<ip>:<port>`.
pub fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: expected http://IP:PORT"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = hostport
        .parse()
        .with_context(|| format!("{url}: expected http://IP:PORT with a numeric IP"))?;
    if !addr.ip().is_loopback() {
        bail!("{url}: this harness only sends traffic to loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(addr)
}

/// Logs in `count` devices: pool user `i / 2` as `web` (even `i`) or `mobile` (odd `i`),
/// each with a fresh device id, so that one user gives two live sessions.
///
/// # Errors
/// When a login fails (wrong password, unknown user, rate limited).
pub async fn login_devices(
    base_url: &str,
    users: &Users,
    count: usize,
) -> anyhow::Result<Vec<Device>> {
    if count > users.count * 2 {
        bail!(
            "{count} devices need {} users named {}0..; only {} exist",
            count.div_ceil(2),
            users.prefix,
            users.count
        );
    }
    let bar = progress::counted("login (argon2)", count as u64);
    let gate = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let name = users.name(i / 2);
        let password = users.password.clone();
        let client_type = if i % 2 == 0 {
            ClientType::Web
        } else {
            ClientType::Mobile
        };
        let base_url = base_url.to_owned();
        let gate = gate.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let device = login(&base_url, &name, &password, client_type).await;
            bar.inc(1);
            device
        }));
    }
    let mut devices = Vec::with_capacity(count);
    for task in tasks {
        devices.push(task.await.context("login task")??);
    }
    bar.finish_and_clear();
    Ok(devices)
}

/// Logs one user in with a fresh device id.
///
/// # Errors
/// When the login fails.
pub async fn login(
    base_url: &str,
    name: &str,
    password: &str,
    client_type: ClientType,
) -> anyhow::Result<Device> {
    let client = Client::new(base_url).context("SDK client")?;
    let session = client
        .login(name, password, client_type)
        .await
        .with_context(|| format!("login of {name} ({})", client_type.as_str()))?;
    Ok(Device { client, session })
}

/// A ticket minted for a device.
#[derive(Clone)]
pub struct Minted {
    /// The device it is bound to.
    pub device_id: String,
    /// The ticket.
    pub ticket: String,
}

/// Mints up to `count` tickets with `concurrency` workers, round-robin over `devices`,
/// for at most `duration`. Returns the tickets, oldest first (in the order their mints
/// started), and the mint figures.
pub async fn mint_many(
    label: &str,
    devices: &[Device],
    count: usize,
    concurrency: usize,
    duration: Duration,
) -> (Vec<Minted>, Figures) {
    let budget = Budget::new(label, duration, count as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let devices: Arc<Vec<Device>> = Arc::new(devices.to_vec());
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (budget, next, devices) = (budget.clone(), next.clone(), devices.clone());
        tasks.push(tokio::spawn(async move {
            let mut record = Recorder::new();
            let mut minted = Vec::new();
            while budget.take() {
                let order = next.fetch_add(1, Ordering::Relaxed);
                let device = &devices[order % devices.len()];
                let started = Instant::now();
                match device.client.mint_ticket(&device.session).await {
                    Ok(ticket) => {
                        record.ok(started.elapsed());
                        let ticket = Minted {
                            device_id: device.id().to_owned(),
                            ticket: ticket.ticket,
                        };
                        minted.push((order, ticket));
                    }
                    Err(e) => record.error_with(sdk_error_kind(&e), &e),
                }
            }
            (record, minted)
        }));
    }
    let mut record = Recorder::new();
    let mut minted = Vec::new();
    for task in tasks {
        if let Ok((r, m)) = task.await {
            record.merge(&r);
            minted.extend(m);
        }
    }
    let elapsed = budget.finish();
    minted.sort_unstable_by_key(|(order, _)| *order);
    let minted = minted.into_iter().map(|(_, ticket)| ticket).collect();
    (minted, record.figures(label, elapsed))
}

/// A short kind for an SDK error: the protocol code (`rate_limited`) or the transport.
pub fn sdk_error_kind(e: &ticketgate_sdk::ClientError) -> String {
    match e {
        ticketgate_sdk::ClientError::Api {
            status, raw_code, ..
        } => {
            if raw_code.is_empty() {
                format!("http {status}")
            } else {
                raw_code.clone()
            }
        }
        ticketgate_sdk::ClientError::Http(_) => "http transport".to_owned(),
        // The text before the first colon names the failure ("WebSocket failed", ...).
        other => other
            .to_string()
            .split(':')
            .next()
            .unwrap_or("client error")
            .to_owned(),
    }
}

/// The admin API of one node (`Authorization: Bearer <admin key>`).
#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base_url: String,
    key: String,
}

/// `POST /admin/v1/users/{user_id}/kick` answer.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct KickAnswer {
    /// Sessions ended.
    #[serde(default)]
    pub sessions: u64,
    /// Sockets closed, on every node.
    #[serde(default)]
    pub connections: u64,
}

#[derive(Deserialize)]
struct PublishAnswer {
    delivered: u64,
}

impl Admin {
    /// The admin API at `base_url` with `key`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base_url: &str, key: &str) -> anyhow::Result<Admin> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("admin HTTP client")?;
        Ok(Admin {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
        })
    }

    /// Kicks a user: every session ends and every socket closes with 4503.
    /// `Ok(None)` when the server has no such endpoint (404).
    ///
    /// # Errors
    /// Transport failures, a refused admin key, any other error status.
    pub async fn kick(&self, user_id: &str) -> anyhow::Result<Option<KickAnswer>> {
        let url = format!("{}/admin/v1/users/{user_id}/kick", self.base_url);
        let body = serde_json::json!({ "reason": "flood kick scenario" });
        self.post(&url, &body).await
    }

    /// Publishes to a user's sockets on every node; answers how many were delivered.
    /// `Ok(None)` when the server has no such endpoint (404).
    ///
    /// # Errors
    /// As [`Admin::kick`].
    pub async fn publish(
        &self,
        user_id: &str,
        topic: &str,
        data: serde_json::Value,
    ) -> anyhow::Result<Option<u64>> {
        let url = format!("{}/admin/v1/publish", self.base_url);
        let body = serde_json::json!({ "user_id": user_id, "topic": topic, "data": data });
        let answer: Option<PublishAnswer> = self.post(&url, &body).await?;
        Ok(answer.map(|a| a.delivered))
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<Option<T>> {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let text = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("POST {url}: the admin key was refused (401)");
        }
        if !status.is_success() {
            bail!(
                "POST {url}: {status} {}",
                text.chars().take(200).collect::<String>()
            );
        }
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("POST {url}: answer is not the expected JSON: {text}"))
    }
}
