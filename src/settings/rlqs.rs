//! Rate Limit Quota Service settings: what one client can cost (streams, buckets, bucket
//! ids) and how long an assignment lives at least.

use std::time::Duration;

use super::parse::{parse_count, parse_positive_duration};
use super::reader::Reader;
use super::setting::{decimal, settings};
use crate::rlqs::RlqsOptions;

settings! {
    RLQS_MAX_STREAMS: usize = decimal!(RlqsOptions::DEFAULT.max_streams), parse_count,
        "Most open RLQS streams; past it a new stream is refused with RESOURCE_EXHAUSTED";
    RLQS_MAX_BUCKETS_PER_STREAM: usize = decimal!(RlqsOptions::DEFAULT.max_buckets_per_stream), parse_count,
        "Most buckets one RLQS stream may subscribe to; further buckets get no assignment";
    RLQS_MAX_BUCKETS: usize = decimal!(RlqsOptions::DEFAULT.max_buckets), parse_count,
        "Most RLQS buckets of every stream together; further buckets get no assignment";
    RLQS_MAX_BUCKET_ENTRIES: usize = decimal!(RlqsOptions::DEFAULT.max_bucket_entries), parse_count,
        "Most entries in one RLQS bucket id; more is INVALID_ARGUMENT";
    RLQS_MAX_BUCKET_ID_BYTES: usize = decimal!(RlqsOptions::DEFAULT.max_bucket_id_bytes), parse_count,
        "Longest RLQS bucket id (keys and values together) or domain, in bytes; more is INVALID_ARGUMENT";
    RLQS_ASSIGNMENT_TTL_MIN: Duration = "15s", parse_positive_duration,
        "Shortest assignment_time_to_live (otherwise three of the client's reporting intervals)";
}

/// The RLQS options; `shadow_mode` is the global `SHADOW_MODE`.
pub(super) fn read(r: &mut Reader<'_>, shadow_mode: bool) -> RlqsOptions {
    RlqsOptions {
        max_streams: r.get(&RLQS_MAX_STREAMS),
        max_buckets_per_stream: r.get(&RLQS_MAX_BUCKETS_PER_STREAM),
        max_buckets: r.get(&RLQS_MAX_BUCKETS),
        max_bucket_entries: r.get(&RLQS_MAX_BUCKET_ENTRIES),
        max_bucket_id_bytes: r.get(&RLQS_MAX_BUCKET_ID_BYTES),
        min_assignment_ttl: r.get(&RLQS_ASSIGNMENT_TTL_MIN),
        shadow_mode,
    }
}
