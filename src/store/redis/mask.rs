//! Showing Redis addresses without their credentials.
//!
//! Owns the one masking every log line, `/debug/config` and settings error uses for
//! `REDIS_URL` and its parts: a URL's password (`redis://user:***@host`), a unix URL's
//! `pass=` query, and credentials where none belong (a scheme-less `user:pw@host:port`,
//! or a URL that does not parse because its password holds `/`, `@`, `#`, `?` or `,`).
//! It errs on the side of hiding: past the scheme, anything up to the last `@` counts as
//! credentials.

/// A URL as logs and errors may show it: `redis://user:secret@host` →
/// `redis://user:***@host`, `unix:///redis.sock?pass=secret` → `unix:///redis.sock?pass=***`.
/// Errs on the side of hiding: in a URL that does not parse (a password with an unescaped
/// `/`, `@`, `#` or `?`), everything up to the last `@` counts as credentials.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return mask_address(url) };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    match rest.rfind('@') {
        // A rest that starts with `/` has no authority (a socket path, which may hold `@`).
        Some(at) if !rest.starts_with('/') => {
            format!("{scheme}{}{}", mask_userinfo(&rest[..at]), mask_query(&rest[at..]))
        }
        _ => format!("{scheme}{}", mask_query(rest)),
    }
}

/// Any address of `REDIS_URL`, masked: a URL as [`mask_url`]; a scheme-less one with an
/// `@` (credentials where none belong) hidden up to its last `@`.
pub fn mask_address(address: &str) -> String {
    if address.contains("://") {
        return mask_url(address);
    }
    match address.rfind('@') {
        Some(at) => format!("***{}", &address[at..]),
        None => address.to_string(),
    }
}

/// A comma-separated list of addresses (`REDIS_URL` as written), each masked.
pub fn mask_addresses(list: &str) -> String {
    split_addresses(list).into_iter().map(mask_address).collect::<Vec<_>>().join(",")
}

/// Splits a list of addresses at its commas, but keeps a URL whole when a comma falls in
/// its credentials (`redis://u:p,w@h`): a URL piece with no `@` runs on to a later piece
/// with an `@` and no scheme of its own. Masking each half alone would show `p`.
pub(super) fn split_addresses(list: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut from = 0;
    for piece in list.split(',') {
        pieces.push((from, from + piece.len()));
        from += piece.len() + 1;
    }
    let text = |(from, to): (usize, usize)| &list[from..to];
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let mut last = i;
        if text(pieces[i]).contains("://") && !text(pieces[i]).contains('@') {
            let mut later = pieces[i + 1..].iter().take_while(|&&p| !text(p).contains("://"));
            if let Some(k) = later.position(|&p| text(p).contains('@')) {
                last = i + 1 + k;
            }
        }
        out.push(&list[pieces[i].0..pieces[last].1]);
        i = last + 1;
    }
    out
}

fn mask_userinfo(userinfo: &str) -> String {
    match userinfo.split_once(':') {
        // A "user" holding a character URLs reserve is more likely a mangled password.
        Some((user, _)) if !user.contains(['@', '/', '?', '#']) => format!("{user}:***"),
        _ => "***".to_string(),
    }
}

/// Masks every query value but the few known to be harmless: unix socket URLs carry the
/// password as `pass=`, and a key may be percent-encoded (`pa%73s`).
fn mask_query(rest: &str) -> String {
    let Some(q) = rest.find('?') else { return rest.to_string() };
    let (before, query) = rest.split_at(q + 1);
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if !matches!(key, "db" | "protocol" | "user") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{before}{}{fragment}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_userinfo_form_is_masked() {
        for (url, masked) in [
            ("redis://:pw@h", "redis://:***@h"),
            ("redis://pw@h:6379", "redis://***@h:6379"),
            ("redis://u:p/w@h", "redis://u:***@h"),
            ("rediss://u:p@h:1/0", "rediss://u:***@h:1/0"),
            ("redis://u:p@ss@h:1", "redis://u:***@h:1"),
            ("redis://:p@ss/w:rd@h/0", "redis://:***@h/0"),
            ("redis://u:p:w@h", "redis://u:***@h"),
            ("redis://u:p#w@h", "redis://u:***@h"),
            ("redis://u:p?w@h/0?protocol=resp3", "redis://u:***@h/0?protocol=resp3"),
            ("redis://u:p%40w%2F@h", "redis://u:***@h"),
            ("redis://p/w@h", "redis://***@h"),
            ("rediss://u:pw@h:1/#insecure", "rediss://u:***@h:1/#insecure"),
            ("unix:///run/redis.sock?db=1&pass=pw&user=u", "unix:///run/redis.sock?db=1&pass=***&user=u"),
            ("redis+unix:///run/r@1.sock?pa%73s=pw", "redis+unix:///run/r@1.sock?pa%73s=***"),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ] {
            assert_eq!(mask_url(url), masked, "{url}");
        }
    }

    #[test]
    fn lists_mask_each_address_and_keep_a_url_split_at_a_comma_whole() {
        assert_eq!(mask_addresses("a:1,u:p@w@b:2,redis://u:pw@c"), "a:1,***@b:2,redis://u:***@c");
        assert_eq!(mask_addresses("redis://u:p,w@h,redis://a:1,b:2"), "redis://u:***@h,redis://a:1,b:2");
        assert_eq!(split_addresses("redis://a:1,redis://u:p@b:2"), ["redis://a:1", "redis://u:p@b:2"]);
    }
}
