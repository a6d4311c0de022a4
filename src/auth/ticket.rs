//! The one-time ticket format: opaque to clients, self-authenticating and self-expiring
//! on the server, so a forged, truncated or expired ticket is refused without a store
//! command.
//!
//! ```text
//! <version>.<session id>.<expiry, unix ms>.<ticket id>.<mac>
//! 1.1Qk9...22 chars.1795000030000.Zk3n9QpL2vX8rT5yW1aB7c.u8Xk...22 chars
//! ```
//!
//! `mac` is HMAC-SHA256 under the ticket subkey over everything before it, truncated to
//! 128 bits, base64url. The device binding is not in the MAC: the device is kept with
//! the ticket in the store, so a ticket presented by another device can be told apart
//! from a forgery (403 `device_mismatch`) and burnt. The session id is in the ticket so
//! that the admission script finds the session's keys (one `{sid}` hash slot).
//! Only `[A-Za-z0-9_.-]` appear, which browsers accept in a subprotocol.

use base64::Engine;

use super::secrets::{hmac32, SECRET_VERSION};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// MAC bytes kept (128 bits).
const MAC_LEN: usize = 16;
/// Longer inputs are refused before any parsing.
pub(crate) const MAX_TICKET_LEN: usize = 160;

/// A ticket whose MAC and expiry verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedTicket {
    /// The session that minted it.
    pub session_id: String,
    /// Its random id (store key).
    pub ticket_id: String,
    /// Expiry, unix milliseconds.
    pub expires_at_ms: i64,
}

/// Why a ticket was refused before the store was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TicketError {
    /// Not of the ticket form, wrong version, or the MAC does not verify.
    #[error("ticket malformed or forged")]
    Forged,
    /// Past its expiry.
    #[error("ticket expired")]
    Expired,
}

/// Mints and verifies tickets with the ticket subkey.
#[derive(Clone)]
pub(crate) struct TicketCodec {
    key: [u8; 32],
}

impl std::fmt::Debug for TicketCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketCodec(<redacted>)")
    }
}

fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl TicketCodec {
    /// A codec with the given MAC key.
    pub(crate) fn new(key: [u8; 32]) -> TicketCodec {
        TicketCodec { key }
    }

    fn mac(&self, body: &str) -> [u8; MAC_LEN] {
        let full = hmac32(&self.key, body.as_bytes());
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Creates a ticket for `session_id`, expiring at `expires_at_ms`. Returns the
    /// ticket and its id.
    pub(crate) fn mint(&self, session_id: &str, expires_at_ms: i64) -> (String, String) {
        let ticket_id = super::random_b64(16);
        let body = format!("{SECRET_VERSION}.{session_id}.{expires_at_ms}.{ticket_id}");
        let mac = B64.encode(self.mac(&body));
        (format!("{body}.{mac}"), ticket_id)
    }

    /// Verifies form, MAC (constant time) and expiry. No I/O.
    pub(crate) fn verify(&self, ticket: &str, now_ms: i64) -> Result<VerifiedTicket, TicketError> {
        if ticket.len() > MAX_TICKET_LEN {
            return Err(TicketError::Forged);
        }
        let (body, mac) = ticket.rsplit_once('.').ok_or(TicketError::Forged)?;
        let mut parts = body.split('.');
        let (Some(version), Some(sid), Some(exp), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TicketError::Forged);
        };
        let well_formed = version.len() == 1
            && version.starts_with(SECRET_VERSION)
            && !sid.is_empty()
            && sid.bytes().all(is_id_char)
            && !id.is_empty()
            && id.bytes().all(is_id_char)
            && !exp.is_empty()
            && exp.len() <= 16
            && exp.bytes().all(|b| b.is_ascii_digit());
        if !well_formed {
            return Err(TicketError::Forged);
        }
        let given = B64.decode(mac).map_err(|_| TicketError::Forged)?;
        if !ticketgate_sdk::signing::signatures_equal(&given, &self.mac(body)) {
            return Err(TicketError::Forged);
        }
        let expires_at_ms: i64 = exp.parse().map_err(|_| TicketError::Forged)?;
        if expires_at_ms <= now_ms {
            return Err(TicketError::Expired);
        }
        Ok(VerifiedTicket {
            session_id: sid.to_owned(),
            ticket_id: id.to_owned(),
            expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000;

    #[test]
    fn minted_tickets_verify_and_use_only_subprotocol_safe_characters() {
        let c = TicketCodec::new([1; 32]);
        let (t, id) = c.mint("1sessionid", NOW + 30_000);
        assert!(t.bytes().all(|b| is_id_char(b) || b == b'.'), "{t}");
        let v = c.verify(&t, NOW).expect("valid");
        assert_eq!(
            (v.session_id.as_str(), v.ticket_id.as_str()),
            ("1sessionid", id.as_str())
        );
    }

    #[test]
    fn expired_tickets_are_refused() {
        let c = TicketCodec::new([1; 32]);
        let (t, _) = c.mint("1s", NOW);
        assert_eq!(c.verify(&t, NOW), Err(TicketError::Expired));
    }

    #[test]
    fn forged_truncated_remaced_and_foreign_tickets_are_refused() {
        let c = TicketCodec::new([1; 32]);
        let (t, _) = c.mint("1s", NOW + 30_000);
        // Another deployment's secret.
        let foreign = TicketCodec::new([2; 32]);
        assert_eq!(foreign.verify(&t, NOW), Err(TicketError::Forged));
        // Truncated at every length.
        for n in 0..t.len() {
            assert!(c.verify(&t[..n], NOW).is_err(), "prefix {n}");
        }
        // Extending the expiry without a new MAC.
        let moved = t.replace(
            &format!(".{}.", NOW + 30_000),
            &format!(".{}.", NOW + 9_000_000),
        );
        assert_eq!(c.verify(&moved, NOW), Err(TicketError::Forged));
        // Re-MACed with a guessed key.
        let body = t.rsplit_once('.').expect("dot").0;
        let remac = format!("{body}.{}", B64.encode(TicketCodec::new([0; 32]).mac(body)));
        assert_eq!(c.verify(&remac, NOW), Err(TicketError::Forged));
        // Every single-character flip.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).expect("ascii");
            if s != t {
                assert!(c.verify(&s, NOW).is_err(), "flip at {i}");
            }
        }
        for junk in [
            "",
            ".",
            "....",
            "1....",
            "1.a.1.b.c.d",
            "2.s.9999999999999.i.m",
            &"x".repeat(10_000),
        ] {
            assert_eq!(c.verify(junk, NOW), Err(TicketError::Forged), "{junk:.20}");
        }
    }
}
