//! `/json` request bodies through `json::parse_request`, then through the service.
//!
//! Invariants: an error is one non-empty line naming the field at fault or the position
//! of the JSON syntax error; a request that parses prints back (as
//! proto3 JSON, every field set) to a body that parses to the same request; and the
//! parsed request, decided against the `decide` target's rules, gets an answer or
//! `INVALID_ARGUMENT`, never `UNAVAILABLE` or a panic.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use serde_json::{Value, json};
use sluicegate::json::parse_request;
use sluicegate::service::{Consume, ServiceError};

pub fn check(data: &[u8]) {
    let request = match parse_request(data) {
        Err(message) => {
            assert!(!message.is_empty() && !message.contains('\n'), "not one line: {message:?}");
            // It names where: a field path, or the JSON parser's line and column.
            let names_where = ["the request", "domain ", "descriptors", "hitsAddend", " at line "]
                .iter()
                .any(|w| message.contains(w));
            assert!(names_where, "the error names no field or position: {message:?}");
            return;
        }
        Ok(request) => request,
    };
    let printed = print(&request).to_string();
    let again = parse_request(printed.as_bytes()).unwrap_or_else(|e| panic!("{printed} does not parse: {e}"));
    assert_eq!(request, again, "{printed} parses to another request");

    let limiter = crate::decide::limiter(Consume::Always);
    match limiter.immediate().unwrap().decide(&request) {
        Ok(response) => assert_eq!(response.statuses.len(), request.descriptors.len()),
        Err(ServiceError::InvalidArgument(m)) => assert!(m.contains("domain") || m.contains("descriptor"), "{m:?}"),
        Err(e) => panic!("{e:?} for {request:?}"),
    }
}

/// The request as proto3 JSON, every field written (units as numbers, which the parser
/// takes as well as names).
fn print(r: &RateLimitRequest) -> Value {
    let descriptors: Vec<Value> = r
        .descriptors
        .iter()
        .map(|d| {
            let mut out = json!({
                "entries": d.entries.iter().map(|e| json!({"key": e.key, "value": e.value})).collect::<Vec<_>>(),
                "isNegativeHits": d.is_negative_hits,
            });
            if let Some(l) = &d.limit {
                out["limit"] = json!({"requestsPerUnit": l.requests_per_unit, "unit": l.unit});
            }
            if let Some(h) = &d.hits_addend {
                out["hitsAddend"] = json!(h.value.to_string());
            }
            out
        })
        .collect();
    json!({"domain": r.domain, "descriptors": descriptors, "hitsAddend": r.hits_addend})
}
