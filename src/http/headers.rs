//! Read access to request headers, from hyper's `HeaderMap` or from the headers
//! `httparse` parsed in place on the direct connect path ([`super::first`]): the
//! admission checks and the client-IP rule read either, without copying the headers
//! into a map first (an allocation per value, on every admission).

use axum::http::HeaderMap;

/// Request headers, read by lower-case name.
pub(crate) trait Headers {
    /// The values of `name` that are text (visible ASCII and tabs, what
    /// `HeaderValue::to_str` accepts), in order; other values are skipped.
    fn texts<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a str>;

    /// The raw bytes of the first value of `name`.
    fn first(&self, name: &'static str) -> Option<&[u8]>;

    /// How many times `name` appears.
    fn count(&self, name: &'static str) -> usize;

    /// Whether a comma-separated list header `name` holds `token` (any case), over all
    /// its lines: `Connection: Upgrade, close`.
    fn has_token(&self, name: &'static str, token: &str) -> bool {
        self.texts(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

impl Headers for HeaderMap {
    fn texts<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a str> {
        self.get_all(name).iter().filter_map(|v| v.to_str().ok())
    }

    fn first(&self, name: &'static str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }

    fn count(&self, name: &'static str) -> usize {
        self.get_all(name).iter().count()
    }
}

/// Headers as `httparse` left them: names in any case, values as sent.
pub(crate) struct Parsed<'h, 'b>(pub &'h [httparse::Header<'b>]);

impl Headers for Parsed<'_, '_> {
    fn texts<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| text(h.value))
    }

    fn first(&self, name: &'static str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn count(&self, name: &'static str) -> usize {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }
}

/// `value` as text when it is visible ASCII and tabs only (as `HeaderValue::to_str`).
pub(crate) fn text(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Whether `value` is a valid header value (what `HeaderValue::from_bytes` accepts: no
/// control bytes but tabs, no DEL).
pub(crate) fn is_valid_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn both_sources_read_alike() {
        let raw = [
            httparse::Header {
                name: "Sec-WebSocket-Protocol",
                value: b"a, b",
            },
            httparse::Header {
                name: "sec-websocket-protocol",
                value: b"c",
            },
            httparse::Header {
                name: "SEC-WEBSOCKET-PROTOCOL",
                value: b"caf\xc3\xa9",
            },
            httparse::Header {
                name: "Origin",
                value: b"http://x",
            },
        ];
        let mut map = HeaderMap::new();
        for h in &raw {
            map.append(
                axum::http::HeaderName::from_bytes(h.name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(h.value).expect("value"),
            );
        }
        let parsed = Parsed(&raw);
        let from_map: Vec<&str> = map.texts("sec-websocket-protocol").collect();
        let from_raw: Vec<&str> = parsed.texts("sec-websocket-protocol").collect();
        assert_eq!(from_map, ["a, b", "c"]);
        assert_eq!(from_raw, from_map);
        assert_eq!(parsed.first("origin"), map.first("origin"));
        assert_eq!(parsed.count("sec-websocket-protocol"), 3);
        assert_eq!(map.count("sec-websocket-protocol"), 3);
        assert_eq!(parsed.first("x-missing"), None);
    }

    #[test]
    fn validity_is_header_values() {
        for ok in [&b"abc"[..], b"a\tb", b"caf\xc3\xa9", b""] {
            assert!(is_valid_value(ok));
            assert!(HeaderValue::from_bytes(ok).is_ok());
        }
        for bad in [&b"a\x00b"[..], b"a\x7fb", b"a\rb", b"a\nb", b"\x1f"] {
            assert!(!is_valid_value(bad));
            assert!(HeaderValue::from_bytes(bad).is_err());
        }
    }
}
