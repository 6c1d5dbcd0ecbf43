//! Checking a usage report before anything acts on it.
//!
//! Owns what makes a report malformed: no domain on a stream's first report, a domain
//! that changes mid-stream (Envoy's proto: open a new stream instead), a missing or empty
//! bucket id, an empty key, a bucket id over `RLQS_MAX_BUCKET_ENTRIES` entries or
//! `RLQS_MAX_BUCKET_ID_BYTES` bytes, a negative or absurd `time_elapsed`, and request
//! counts no data plane could have seen. Any of these ends the stream with
//! `INVALID_ARGUMENT` and the reason; nothing of the message is applied.

use std::time::Duration;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::RateLimitQuotaUsageReports;

use super::RlqsOptions;

/// The longest `time_elapsed` a report may cover: Envoy reports every few seconds.
pub const MAX_ELAPSED: Duration = Duration::from_secs(86_400);

/// The most requests one report may count: a billion per second for a whole
/// [`MAX_ELAPSED`], far above any data plane, far below overflow when added up.
pub const MAX_REQUESTS: u64 = 86_400 * 1_000_000_000;

/// One bucket's usage, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The bucket id's entries, sorted by key (the id is a map: order means nothing).
    pub entries: Box<[(Box<str>, Box<str>)]>,
    pub allowed: u64,
    pub denied: u64,
    pub elapsed: Duration,
}

/// Checks `reports`, the next message of a stream whose domain so far is `domain`
/// (`None` before the first message). Returns the stream's domain and the usages.
pub fn validate(
    reports: RateLimitQuotaUsageReports,
    domain: Option<&str>,
    options: &RlqsOptions,
) -> Result<(String, Vec<Usage>), String> {
    let domain = match (domain, reports.domain.as_str()) {
        (None, "") => return Err("the first report of a stream must name its domain".into()),
        (None, d) if d.len() > options.max_bucket_id_bytes => {
            return Err(format!("the domain is {} bytes, over the {} allowed", d.len(), options.max_bucket_id_bytes));
        }
        (None, d) => d.to_string(),
        (Some(d), "") => d.to_string(),
        (Some(d), new) if new == d => d.to_string(),
        (Some(d), new) => {
            return Err(format!(
                "the domain changed from '{d}' to '{}' on one stream; open a new stream for another domain",
                truncated(new)
            ));
        }
    };
    let mut usages = Vec::with_capacity(reports.bucket_quota_usages.len());
    for (i, usage) in reports.bucket_quota_usages.into_iter().enumerate() {
        let at = |why: String| format!("bucket_quota_usages[{i}]: {why}");
        let Some(id) = usage.bucket_id else { return Err(at("no bucket_id".into())) };
        if id.bucket.is_empty() {
            return Err(at("the bucket_id has no entries".into()));
        }
        if id.bucket.len() > options.max_bucket_entries {
            return Err(at(format!(
                "the bucket_id has {} entries, over RLQS_MAX_BUCKET_ENTRIES={}",
                id.bucket.len(),
                options.max_bucket_entries
            )));
        }
        let bytes: usize = id.bucket.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > options.max_bucket_id_bytes {
            return Err(at(format!(
                "the bucket_id is {bytes} bytes, over RLQS_MAX_BUCKET_ID_BYTES={}",
                options.max_bucket_id_bytes
            )));
        }
        if id.bucket.keys().any(String::is_empty) {
            return Err(at("the bucket_id has an empty key".into()));
        }
        let elapsed = match usage.time_elapsed {
            None => Duration::ZERO,
            Some(d) if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 => {
                return Err(at(format!("time_elapsed {}s {}ns is not a valid positive duration", d.seconds, d.nanos)));
            }
            Some(d) => {
                let elapsed = Duration::new(d.seconds as u64, d.nanos as u32);
                if elapsed > MAX_ELAPSED {
                    return Err(at(format!("time_elapsed {elapsed:?} is over {MAX_ELAPSED:?}")));
                }
                elapsed
            }
        };
        for (name, n) in
            [("num_requests_allowed", usage.num_requests_allowed), ("num_requests_denied", usage.num_requests_denied)]
        {
            if n > MAX_REQUESTS {
                return Err(at(format!("{name} {n} is over the {MAX_REQUESTS} one report may count")));
            }
        }
        let mut entries: Vec<(Box<str>, Box<str>)> =
            id.bucket.into_iter().map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect();
        entries.sort_unstable();
        usages.push(Usage {
            entries: entries.into_boxed_slice(),
            allowed: usage.num_requests_allowed,
            denied: usage.num_requests_denied,
            elapsed,
        });
    }
    Ok((domain, usages))
}

/// At most 64 bytes of a client's text, for an error message.
fn truncated(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::BucketId;
    use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
    use envoy_types::pb::google::protobuf::Duration as ProtoDuration;

    use super::*;

    fn report(domain: &str, bucket: &[(&str, &str)], allowed: u64, elapsed: (i64, i32)) -> RateLimitQuotaUsageReports {
        RateLimitQuotaUsageReports {
            domain: domain.into(),
            bucket_quota_usages: vec![BucketQuotaUsage {
                bucket_id: Some(BucketId {
                    bucket: bucket.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                }),
                time_elapsed: Some(ProtoDuration { seconds: elapsed.0, nanos: elapsed.1 }),
                num_requests_allowed: allowed,
                num_requests_denied: 0,
            }],
        }
    }

    fn error(r: RateLimitQuotaUsageReports, domain: Option<&str>) -> String {
        validate(r, domain, &RlqsOptions::default()).unwrap_err()
    }

    #[test]
    fn a_good_report_is_sorted_and_kept() {
        let (domain, usages) =
            validate(report("api", &[("b", "2"), ("a", "1")], 5, (1, 0)), None, &RlqsOptions::default()).unwrap();
        assert_eq!(domain, "api");
        assert_eq!(&*usages[0].entries, &[("a".into(), "1".into()), ("b".into(), "2".into())]);
        // Later reports may leave the domain out.
        assert_eq!(
            validate(report("", &[("a", "1")], 0, (0, 0)), Some("api"), &RlqsOptions::default()).unwrap().0,
            "api"
        );
    }

    #[test]
    fn each_mistake_has_its_reason() {
        assert!(error(report("", &[("a", "1")], 1, (1, 0)), None).contains("must name its domain"));
        assert!(error(report("other", &[("a", "1")], 1, (1, 0)), Some("api")).contains("domain changed"));
        assert!(error(report("api", &[], 1, (1, 0)), None).contains("no entries"));
        assert!(error(report("api", &[("", "1")], 1, (1, 0)), None).contains("empty key"));
        assert!(error(report("api", &[("a", "1")], u64::MAX, (1, 0)), None).contains("num_requests_allowed"));
        assert!(error(report("api", &[("a", "1")], 1, (-1, 0)), None).contains("time_elapsed"));
        assert!(error(report("api", &[("a", "1")], 1, (0, 2_000_000_000)), None).contains("time_elapsed"));
        assert!(error(report("api", &[("a", "1")], 1, (i64::MAX, 0)), None).contains("time_elapsed"));
        let long = "x".repeat(5000);
        assert!(error(report("api", &[("a", &long)], 1, (1, 0)), None).contains("RLQS_MAX_BUCKET_ID_BYTES"));
        let mut missing = report("api", &[("a", "1")], 1, (1, 0));
        missing.bucket_quota_usages[0].bucket_id = None;
        assert!(error(missing, None).contains("no bucket_id"));
    }
}
