//! Service settings: how requests are answered (shadow and quota modes, `CONSUME`,
//! response headers and metadata, request caps), health and the shutdown grace period.

use std::time::Duration;

use super::parse::{parse_bool, parse_count, parse_duration, text};
use super::reader::Reader;
use super::setting::{decimal, settings};
use crate::service::{Consume, HeaderNames, RequestCaps, ServiceOptions};

settings! {
    CONSUME: Consume = "always",
        |s| match s {
            "always" => Ok(Consume::Always),
            "all_or_nothing" => Ok(Consume::AllOrNothing),
            _ => Err("expected always or all_or_nothing".into()),
        },
        "always: every matched limit counts the hit; all_or_nothing: a rejected request counts on none";
    SHADOW_MODE: bool = "false", parse_bool, "Never reject: OVER_LIMIT answers become OK (statuses keep theirs)";
    QUOTA_MODE: bool = "false", parse_bool, "Treat every descriptor as a quota descriptor";
    LIMIT_RESPONSE_HEADERS_ENABLED: bool = "false", parse_bool,
        "Add RateLimit-Limit/Remaining/Reset headers to responses";
    LIMIT_LIMIT_HEADER: String = HeaderNames::DEFAULT_LIMIT, text, "Name of the limit header";
    LIMIT_REMAINING_HEADER: String = HeaderNames::DEFAULT_REMAINING, text, "Name of the remaining header";
    LIMIT_RESET_HEADER: String = HeaderNames::DEFAULT_RESET, text, "Name of the reset header";
    RESPONSE_DYNAMIC_METADATA: bool = "false", parse_bool,
        "Return the request and matched rules' metadata as dynamic metadata";
    HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED: bool = "false", parse_bool,
        "Report unhealthy until a config with a domain loads";
    SHUTDOWN_GRACE_PERIOD: Duration = "5s", parse_duration, "After SIGTERM, keep answering this long before stopping";
    MAX_DESCRIPTORS: usize = decimal!(RequestCaps::DEFAULT.max_descriptors), parse_count,
        "Most descriptors in one request";
    MAX_ENTRIES: usize = decimal!(RequestCaps::DEFAULT.max_entries), parse_count, "Most entries in one descriptor";
    MAX_ENTRY_BYTES: usize = decimal!(RequestCaps::DEFAULT.max_entry_bytes), parse_count,
        "Longest descriptor key, value or domain, in bytes";
}

/// How requests are answered.
pub(super) fn read(r: &mut Reader<'_>) -> ServiceOptions {
    let consume = r.get(&CONSUME);
    let response_headers = r.get(&LIMIT_RESPONSE_HEADERS_ENABLED).then(|| HeaderNames {
        limit: r.get(&LIMIT_LIMIT_HEADER),
        remaining: r.get(&LIMIT_REMAINING_HEADER),
        reset: r.get(&LIMIT_RESET_HEADER),
    });
    ServiceOptions {
        global_shadow_mode: r.get(&SHADOW_MODE),
        global_quota_mode: r.get(&QUOTA_MODE),
        response_headers,
        dynamic_metadata: r.get(&RESPONSE_DYNAMIC_METADATA),
        consume,
        caps: RequestCaps {
            max_descriptors: r.get(&MAX_DESCRIPTORS),
            max_entries: r.get(&MAX_ENTRIES),
            max_entry_bytes: r.get(&MAX_ENTRY_BYTES),
        },
    }
}
