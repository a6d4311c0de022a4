//! `forged`: an attacker at the upgrade with tickets it made itself, and with expired
//! ones. Each must be refused with 401, and none may cost a Redis command.
//!
//! Two kinds alternate:
//! - `random`: a ticket-shaped string of random fields (so the server has to parse it
//!   and check a MAC, the expensive path of a refusal);
//! - `re-MACed`: a real ticket's version and session id, a future expiry and a fresh
//!   ticket id, MACed with a key the attacker guessed (HMAC-SHA256 under random bytes).
//!   This follows the server's documented ticket layout
//!   (`<version>.<session id>.<expiry ms>.<ticket id>.<mac>`); a ticket of another
//!   shape gets only its last field replaced.
//!
//! `expired` presents real tickets whose lifetime is over (bench mints them on a node
//! with 1 s tickets and waits).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use sha2::Sha256;

use super::Plan;
use crate::stats::{Budget, Figures, Recorder};
use crate::target::{Device, Minted};
use crate::ws::Dialer;

/// Bytes of MAC in a ticket (the server keeps 128 bits).
const MAC_BYTES: usize = 16;

/// What the forger knows: one real ticket of its own (a real attacker can get one) and
/// the device it was minted for.
#[derive(Clone)]
pub struct Sample {
    /// A real ticket.
    pub ticket: String,
    /// Its device.
    pub device_id: String,
}

impl Sample {
    /// Mints the forger's sample ticket with `device`'s session.
    ///
    /// # Errors
    /// When the mint fails.
    pub async fn mint(device: &Device) -> anyhow::Result<Sample> {
        let minted = device
            .client
            .mint_ticket(&device.session)
            .await
            .context("mint the forger's sample ticket")?;
        Ok(Sample {
            ticket: minted.ticket,
            device_id: device.id().to_owned(),
        })
    }
}

/// The figures of a forged-ticket run.
pub struct Forged {
    /// Every attempt.
    pub all: Figures,
    /// The same attempts by kind: `random`, then `re-MACed`.
    pub by_kind: [Figures; 2],
}

/// Forged tickets at the upgrade, `random` and `re-MACed` alternating. Returns the
/// figures of all attempts and of each kind.
pub async fn run(label: &str, sample: Sample, dialer: Arc<Dialer>, plan: &Plan) -> Forged {
    let budget = Budget::new(label, plan.duration, plan.max_ops);
    let sample = Arc::new(sample);
    let tasks: Vec<_> = (0..plan.concurrency.max(1))
        .map(|worker| {
            let (budget, dialer, sample) = (budget.clone(), dialer.clone(), sample.clone());
            tokio::spawn(async move {
                let mut random = Recorder::new();
                let mut remac = Recorder::new();
                let mut n = worker;
                while budget.take() {
                    n += 1;
                    let (ticket, record) = if n % 2 == 0 {
                        (random_ticket(), &mut random)
                    } else {
                        (remaced_ticket(&sample.ticket), &mut remac)
                    };
                    let started = Instant::now();
                    match dialer.expect_refusal(&sample.device_id, &ticket).await {
                        Ok(401) => record.ok(started.elapsed()),
                        Ok(status) => record.error(format!("refused {status}")),
                        Err(e) => record.error_with(e.kind(), &e),
                    }
                }
                (random, remac)
            })
        })
        .collect();
    let mut random = Recorder::new();
    let mut remac = Recorder::new();
    for task in tasks {
        if let Ok((r, m)) = task.await {
            random.merge(&r);
            remac.merge(&m);
        }
    }
    let elapsed = budget.finish();
    let mut all = Recorder::new();
    all.merge(&random);
    all.merge(&remac);
    Forged {
        all: all.figures(label, elapsed),
        by_kind: [
            random.figures(format!("{label}: random"), elapsed),
            remac.figures(format!("{label}: re-MACed"), elapsed),
        ],
    }
}

/// Real tickets past their expiry, presented by their own devices, round-robin until
/// the plan ends (an expired ticket stays expired, so each attempt is the same test;
/// cycling gives enough attempts for commands per attempt to mean something).
pub async fn expired(
    label: &str,
    tickets: Arc<Vec<Minted>>,
    dialer: Arc<Dialer>,
    plan: &Plan,
) -> Figures {
    super::replay::present_refused(
        label,
        tickets,
        dialer,
        plan,
        "no expired tickets to present",
    )
    .await
}

fn random_field(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// `1.<22 random>.<expiry>.<22 random>.<22 random>`.
fn random_ticket() -> String {
    format!(
        "1.{}.{}.{}.{}",
        random_field(22),
        unix_ms() + 30_000,
        random_field(22),
        random_field(22)
    )
}

/// A real ticket's version and session id, a fresh expiry and id, MACed under a
/// guessed key.
fn remaced_ticket(sample: &str) -> String {
    let fields: Vec<&str> = sample.split('.').collect();
    let body = if let [version, session_id, _, _, _] = fields.as_slice() {
        format!(
            "{version}.{session_id}.{}.{}",
            unix_ms() + 30_000,
            random_field(22)
        )
    } else {
        sample
            .rsplit_once('.')
            .map_or_else(|| sample.to_owned(), |(body, _)| body.to_owned())
    };
    let guessed_key: [u8; 32] = rand::thread_rng().gen();
    let mut mac = match Hmac::<Sha256>::new_from_slice(&guessed_key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return random_ticket(),
    };
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(&tag[..MAC_BYTES]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_tickets_have_the_ticket_shape_and_characters() {
        let sample =
            "1.AAAAAAAAAAAAAAAAAAAAAA.1795000030000.BBBBBBBBBBBBBBBBBBBBBB.CCCCCCCCCCCCCCCCCCCCCC";
        for t in [random_ticket(), remaced_ticket(sample)] {
            assert_eq!(t.split('.').count(), 5, "{t}");
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        }
        let forged = remaced_ticket(sample);
        assert!(forged.starts_with("1.AAAAAAAAAAAAAAAAAAAAAA."));
        assert_ne!(forged.rsplit('.').next(), sample.rsplit('.').next());
    }
}
