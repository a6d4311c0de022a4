//! The refresh cookie of web clients in cookie mode: its name and attributes, set,
//! cleared and read here only.

use axum::http::{header, HeaderMap, HeaderValue};

/// The cookie's name.
const NAME: &str = "tg_refresh";

/// `Set-Cookie` carrying a refresh token: `HttpOnly; Secure; SameSite=Strict`, scoped to
/// `/v1/token` (the refresh call), living as long as the refresh token.
pub(crate) fn set(token: &str, max_age_secs: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&value(token, max_age_secs)).ok()
}

/// `Set-Cookie` that removes the cookie (logout).
pub(crate) fn clear() -> HeaderValue {
    // The same attributes with an empty value and Max-Age=0; built from ASCII only.
    HeaderValue::from_str(&value("", 0)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn value(token: &str, max_age_secs: u64) -> String {
    format!(
        "{NAME}={token}; HttpOnly; Secure; SameSite=Strict; Path=/v1/token; Max-Age={max_age_secs}"
    )
}

/// The refresh cookie's value, if the request carries one.
pub(crate) fn read(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == NAME)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_set_is_the_cookie_read_and_clearing_keeps_its_attributes() {
        let set = set("abc.def", 60).expect("ascii");
        let mut headers = HeaderMap::new();
        let pair = set
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair");
        headers.insert(header::COOKIE, HeaderValue::from_str(pair).expect("ascii"));
        assert_eq!(read(&headers).as_deref(), Some("abc.def"));
        let cleared = clear();
        let cleared = cleared.to_str().expect("ascii");
        assert!(cleared.starts_with("tg_refresh=;"));
        assert!(cleared.ends_with("Path=/v1/token; Max-Age=0"));
        assert!(set
            .to_str()
            .expect("ascii")
            .contains("HttpOnly; Secure; SameSite=Strict"));
    }
}
