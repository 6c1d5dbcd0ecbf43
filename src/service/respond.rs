//! The response: each verdict as a proto status, and what options and rules add to it.
//!
//! Owns `DescriptorStatus` (the reported limit, remaining and reset), the reference's
//! choice of descriptor for the `RateLimit-*` headers, `SHADOW_MODE` turning the overall
//! answer, a rejecting rule's custom body and headers, and `RESPONSE_DYNAMIC_METADATA`
//! (the request echoed back and the passing rules' metadata merged).

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{Duration as ProtoDuration, ListValue, Struct, Value, value::Kind};

use super::options::{HeaderNames, ServiceOptions};
use super::plan::Planned;
use super::verdict::Verdict;
use crate::clock::Nanos;
use crate::limiter::Unit;
use crate::stats::Stats;

/// The response: one status per descriptor, then what the options and the rejecting
/// rules add (limit headers, `SHADOW_MODE`, a custom body, dynamic metadata).
pub(super) fn respond(
    request: &RateLimitRequest,
    verdicts: &[Verdict<'_>],
    over: bool,
    options: &ServiceOptions,
    stats: &Stats,
) -> RateLimitResponse {
    let statuses: Vec<DescriptorStatus> = verdicts.iter().map(status_of).collect();
    let mut response = RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        ..Default::default()
    };
    if let Some(names) = &options.response_headers {
        add_limit_headers(&mut response.response_headers_to_add, names, verdicts);
    }
    if over && options.global_shadow_mode {
        response.overall_code = Code::Ok as i32;
        if stats.enabled() {
            stats.global_shadow_mode.increment(1);
        }
    }
    if response.overall_code == Code::OverLimit as i32 {
        // The first rejecting descriptor whose rule has a custom answer gives it.
        let custom = verdicts.iter().filter(|v| v.over_limit).find_map(|v| v.rule.and_then(|r| r.response.as_ref()));
        if let Some(custom) = custom {
            response.raw_body = custom.body.to_vec();
            for (key, value) in custom.headers.iter() {
                response.response_headers_to_add.push(HeaderValue {
                    key: key.to_string(),
                    value: value.to_string(),
                    raw_value: Vec::new(),
                });
            }
        }
    }
    if options.dynamic_metadata {
        response.dynamic_metadata = Some(dynamic_metadata(request, verdicts));
    }
    response
}

fn proto_duration(n: Nanos) -> ProtoDuration {
    ProtoDuration { seconds: (n.0 / Nanos::NANOS_PER_SEC) as i64, nanos: (n.0 % Nanos::NANOS_PER_SEC) as i32 }
}

fn status_of(v: &Verdict<'_>) -> DescriptorStatus {
    let code = if v.over_limit { Code::OverLimit } else { Code::Ok } as i32;
    match v.reported {
        None => DescriptorStatus { code, limit_remaining: v.remaining, ..Default::default() },
        Some(limit) => DescriptorStatus {
            code,
            current_limit: Some(RateLimit {
                name: limit.name.unwrap_or_default().to_string(),
                requests_per_unit: limit.params.requests_per_unit,
                unit: limit.params.unit.proto_number(),
            }),
            limit_remaining: v.remaining,
            duration_until_reset: Some(proto_duration(v.reset_after)),
            quota: None,
        },
    }
}

/// The reference's choice of descriptor for the `RateLimit-*` headers: the first with the
/// strictly smallest remaining among those with a limit, overridden by every non-quota
/// OVER_LIMIT one (so the last of those wins).
fn add_limit_headers(headers: &mut Vec<HeaderValue>, names: &HeaderNames, verdicts: &[Verdict<'_>]) {
    let mut chosen: Option<&Verdict<'_>> = None;
    for v in verdicts.iter().filter(|v| v.reported.is_some()) {
        if chosen.is_none_or(|c| v.remaining < c.remaining) {
            chosen = Some(v);
        }
    }
    for v in verdicts.iter().filter(|v| v.reported.is_some() && v.over_limit && !v.quota) {
        chosen = Some(v);
    }
    let Some(v) = chosen else { return };
    let Some(Planned { params, .. }) = v.reported else { return };
    let reset_secs = v.reset_after.0.div_ceil(Nanos::NANOS_PER_SEC);
    for (name, value) in [
        (&names.limit, params.requests_per_unit.to_string()),
        (&names.remaining, v.remaining.to_string()),
        (&names.reset, reset_secs.to_string()),
    ] {
        headers.push(HeaderValue { key: name.clone(), value, raw_value: Vec::new() });
    }
}

fn string_value(s: impl Into<String>) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

fn number_value(n: f64) -> Value {
    Value { kind: Some(Kind::NumberValue(n)) }
}

/// `RESPONSE_DYNAMIC_METADATA`: the request echoed back, plus the merged `metadata` of
/// every rule whose descriptor passed (the first descriptor wins a scalar conflict).
fn dynamic_metadata(request: &RateLimitRequest, verdicts: &[Verdict<'_>]) -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert("domain".to_string(), string_value(&request.domain));
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let mut f = std::collections::HashMap::new();
            let entries = d.entries.iter().map(|e| string_value(format!("{}={}", e.key, e.value))).collect();
            f.insert("entries".to_string(), Value { kind: Some(Kind::ListValue(ListValue { values: entries })) });
            if let Some(limit) = &d.limit {
                let unit = Unit::from_proto_number(limit.unit).map_or("UNKNOWN", Unit::name);
                f.insert(
                    "limit".to_string(),
                    string_value(format!("requests_per_unit:{} unit:{unit}", limit.requests_per_unit)),
                );
            }
            if let Some(h) = &d.hits_addend {
                f.insert("hitsAddend".to_string(), number_value(h.value as f64));
            }
            Value { kind: Some(Kind::StructValue(Struct { fields: f })) }
        })
        .collect();
    fields.insert("descriptors".to_string(), Value { kind: Some(Kind::ListValue(ListValue { values: descriptors })) });
    if request.hits_addend != 0 {
        fields.insert("hitsAddend".to_string(), number_value(f64::from(request.hits_addend)));
    }
    let mut merged = Struct::default();
    for v in verdicts.iter().filter(|v| !v.over_limit && !v.unlimited) {
        if let Some(metadata) = v.rule.and_then(|r| r.metadata.as_ref()) {
            merge_struct(&mut merged, metadata);
        }
    }
    if !merged.fields.is_empty() {
        fields.insert("metadata".to_string(), Value { kind: Some(Kind::StructValue(merged)) });
    }
    Struct { fields }
}

/// Merges `from` into `into`: nested structs merge, existing scalars win.
fn merge_struct(into: &mut Struct, from: &Struct) {
    for (key, value) in &from.fields {
        match (into.fields.get_mut(key), &value.kind) {
            (None, _) => {
                into.fields.insert(key.clone(), value.clone());
            }
            (Some(Value { kind: Some(Kind::StructValue(existing)) }), Some(Kind::StructValue(incoming))) => {
                merge_struct(existing, incoming);
            }
            (Some(_), _) => {}
        }
    }
}
