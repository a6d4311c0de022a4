//! "Did you mean …?" for keys an operator wrote: the config file, the users file and
//! the apps file refuse unknown keys and name the nearest known one.

/// The known key closest to `key`, if one is close enough to be a likely typo
/// (`tiket_ttl` → `ticket_ttl`, `app` → `apps`).
pub fn nearest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(key, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// `unknown key `k`` followed by the nearest known key, if any.
pub fn unknown_key<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match nearest(key, known) {
        Some(near) => format!("unknown key `{key}` (did you mean `{near}`?)"),
        None => format!("unknown key `{key}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_key_and_strangers_find_none() {
        let known = ["ticket_ttl", "access_ttl", "listen", "apps", "password"];
        assert_eq!(nearest("tiket_ttl", known), Some("ticket_ttl"));
        assert_eq!(nearest("acess_ttl", known), Some("access_ttl"));
        assert_eq!(nearest("app", known), Some("apps"));
        assert_eq!(nearest("pasword", known), Some("password"));
        assert_eq!(nearest("zzz", known), None);
        assert_eq!(
            unknown_key("tiket_ttl", known),
            "unknown key `tiket_ttl` (did you mean `ticket_ttl`?)"
        );
        assert_eq!(unknown_key("zzz", known), "unknown key `zzz`");
    }
}
