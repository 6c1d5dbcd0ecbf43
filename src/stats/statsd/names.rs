//! statsd names: the reference's dotted name of each series, and its sanitizing.
//!
//! Owns turning a metrics `Key` (family and labels) into the name gostats would send
//! (`ratelimit.service.rate_limit.<domain>.<key>.total_hits`, ...), and keeping what the
//! statsd line format reserves out of it.

use metrics::Key;

/// The reference's dotted name of a series.
pub(super) fn dotted(key: &Key) -> Option<String> {
    let label = |name: &str| key.labels().find(|l| l.key() == name).map(|l| l.value().to_string());
    let name = key.name();
    if let Some(stat) = name.strip_prefix("ratelimit_service_rate_limit_") {
        let mut out = String::from("ratelimit.service.rate_limit");
        for part in ["domain", "key1", "key2"] {
            if let Some(v) = label(part).filter(|v| !v.is_empty()) {
                out.push('.');
                out.push_str(&v);
            }
        }
        return Some(format!("{out}.{stat}"));
    }
    Some(match name {
        "ratelimit_service_config_load_success" => "ratelimit.service.config_load_success".into(),
        "ratelimit_service_config_load_error" => "ratelimit.service.config_load_error".into(),
        "ratelimit_service_global_shadow_mode" => "ratelimit.service.global_shadow_mode".into(),
        "ratelimit_service_should_rate_limit_error" => {
            format!("ratelimit.service.call.should_rate_limit.{}", label("err_type")?)
        }
        "ratelimit_service_total_requests" => format!("ratelimit_server.{}.total_requests", label("grpc_method")?),
        "ratelimit_service_response_time_seconds" => {
            format!("ratelimit_server.{}.response_time", label("grpc_method")?)
        }
        other => {
            if let Some(stat) = other.strip_prefix("ratelimit_redis_pool_") {
                format!("ratelimit.redis_pool.{stat}")
            } else if let Some(stat) = other.strip_prefix("ratelimit_redis_per_second_pool_") {
                format!("ratelimit.redis_per_second_pool.{stat}")
            } else if let Some(stat) = other.strip_prefix("ratelimit_localcache_") {
                // The reference's freecache gauge names are camel case.
                let camel: String = stat
                    .split('_')
                    .enumerate()
                    .map(|(i, w)| {
                        let (first, rest) = w.split_at(if i == 0 { 0 } else { w.len().min(1) });
                        first.to_ascii_uppercase() + rest
                    })
                    .collect();
                format!("ratelimit.localcache.{camel}")
            } else {
                other.replacen("sluicegate_", "sluicegate.", 1)
            }
        }
    })
}

/// The reference's statsd sanitizing (`:` and `|` to `_`, and the dots of IPv4
/// addresses), and more: `@` (it starts a sample rate) and control characters (a line feed
/// would end the line and start one the request wrote) also become `_`.
pub fn sanitize(name: &str) -> String {
    let reserved = |b: u8| matches!(b, b':' | b'|' | b'@') || b.is_ascii_control();
    let mut out: Vec<u8> = name.bytes().map(|b| if reserved(b) { b'_' } else { b }).collect();
    let is_octet = |s: &[u8]| (1..=3).contains(&s.len()) && s.iter().all(u8::is_ascii_digit);
    let mut i = 0;
    while i < out.len() {
        // A dotted quad starts at a digit that does not continue a word.
        if out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_alphanumeric()) {
            let end = out[i..].iter().position(|b| !(b.is_ascii_digit() || *b == b'.')).map_or(out.len(), |p| i + p);
            let run = &out[i..end];
            let parts: Vec<&[u8]> = run.split(|b| *b == b'.').collect();
            if parts.len() >= 4 && parts[..4].iter().all(|p| is_octet(p)) {
                let quad_end = i + parts[..4].iter().map(|p| p.len()).sum::<usize>() + 3;
                for b in &mut out[i..quad_end] {
                    if *b == b'.' {
                        *b = b'_';
                    }
                }
                i = quad_end;
                continue;
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_like_the_reference() {
        assert_eq!(
            sanitize("ratelimit.service.rate_limit.d.path_/foo:*:bar.total_hits"),
            "ratelimit.service.rate_limit.d.path_/foo_*_bar.total_hits"
        );
        assert_eq!(sanitize("a.path_/foo|bar|baz.x"), "a.path_/foo_bar_baz.x");
        assert_eq!(sanitize("d.remote_address_10.0.0.1.total_hits"), "d.remote_address_10_0_0_1.total_hits");
        assert_eq!(sanitize("d.v1.2.3.total_hits"), "d.v1.2.3.total_hits");
    }

    #[test]
    fn nothing_a_request_sends_can_break_the_line_format() {
        assert_eq!(sanitize("d.k_a@0.5\nevil.total_hits:9|c\r\0\t"), "d.k_a_0.5_evil.total_hits_9_c___");
        assert_eq!(sanitize("d.k_é…#ab"), "d.k_é…#ab", "text outside ASCII stays");
    }

    #[test]
    fn local_cache_names_are_camel_case() {
        let key = Key::from_name("ratelimit_localcache_entry_count");
        assert_eq!(dotted(&key).as_deref(), Some("ratelimit.localcache.entryCount"));
        assert_eq!(dotted(&Key::from_name("ratelimit_localcache_a__b")).as_deref(), Some("ratelimit.localcache.aB"));
    }
}
