//! Which requests get no answer: a bad request is `INVALID_ARGUMENT` with a reason that
//! names the problem, checked before any rule is read or counter touched.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use super::ServiceError;
use super::options::RequestCaps;
use crate::limiter::Unit;

/// Rejects requests we must not answer, with a reason naming the problem.
pub fn validate(request: &RateLimitRequest, caps: &RequestCaps) -> Result<(), ServiceError> {
    let invalid = |m: String| Err(ServiceError::InvalidArgument(m));
    if request.domain.is_empty() {
        return invalid("rate limit domain must not be empty".into());
    }
    if request.domain.len() > caps.max_entry_bytes {
        return invalid(format!(
            "rate limit domain is {} bytes, more than MAX_ENTRY_BYTES ({})",
            request.domain.len(),
            caps.max_entry_bytes
        ));
    }
    if request.descriptors.is_empty() {
        return invalid("rate limit descriptor list must not be empty".into());
    }
    if request.descriptors.len() > caps.max_descriptors {
        return invalid(format!(
            "request has {} descriptors, more than MAX_DESCRIPTORS ({})",
            request.descriptors.len(),
            caps.max_descriptors
        ));
    }
    for (i, d) in request.descriptors.iter().enumerate() {
        if d.entries.is_empty() && d.limit.is_some() {
            // The reference would count this under a malformed key.
            return invalid(format!("descriptor {i} has a limit override but no entries"));
        }
        if d.entries.len() > caps.max_entries {
            return invalid(format!(
                "descriptor {i} has {} entries, more than MAX_ENTRIES ({})",
                d.entries.len(),
                caps.max_entries
            ));
        }
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return invalid(format!("descriptor {i} entry {j} has an empty key"));
            }
            for (what, text) in [("key", &e.key), ("value", &e.value)] {
                if text.len() > caps.max_entry_bytes {
                    return invalid(format!(
                        "descriptor {i} entry {j} {what} is {} bytes, more than MAX_ENTRY_BYTES ({})",
                        text.len(),
                        caps.max_entry_bytes
                    ));
                }
            }
        }
        if let Some(limit) = &d.limit
            && Unit::from_proto_number(limit.unit).is_none()
        {
            let shown = if limit.unit == 0 { "UNKNOWN (0)".to_string() } else { format!("{} (undefined)", limit.unit) };
            return invalid(format!(
                "descriptor {i} limit override has unit {shown}; expected SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR"
            ));
        }
    }
    Ok(())
}
