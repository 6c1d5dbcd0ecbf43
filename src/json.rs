//! Protobuf-JSON for `RateLimitRequest` and `RateLimitResponse` (the `/json` endpoint).
//!
//! Owns the conversion both ways, following the proto3 JSON mapping the reference uses:
//! request field names in camelCase or snake_case, unknown fields rejected; responses in
//! camelCase with enum names, default values omitted, durations as strings (`"58s"`),
//! bytes in base64. Written by hand for these few messages rather than pulling in a
//! reflection library.

use base64::Engine as _;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{Duration as ProtoDuration, Struct, UInt64Value, Value, value::Kind};
use serde_json::{Map, Value as Json, json};

use crate::limiter::Unit;

/// Parses a request body. The error is one line naming the problem.
pub fn parse_request(body: &[u8]) -> Result<RateLimitRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("the request body is empty; send a JSON RateLimitRequest".into());
    }
    let json: Json = serde_json::from_slice(body).map_err(|e| format!("the request body is not valid JSON: {e}"))?;
    let object = as_object(&json, "the request")?;
    let mut request = RateLimitRequest::default();
    for (name, value) in object {
        match name.as_str() {
            "domain" => request.domain = string(value, "domain")?,
            "descriptors" => {
                request.descriptors = array(value, "descriptors")?
                    .iter()
                    .enumerate()
                    .map(|(i, d)| descriptor(d, i))
                    .collect::<Result<_, _>>()?
            }
            "hitsAddend" | "hits_addend" => {
                request.hits_addend = u32::try_from(unsigned(value, "hitsAddend")?)
                    .map_err(|_| "hitsAddend must fit in 32 bits".to_string())?
            }
            other => return Err(format!("unknown field {other:?} in the request")),
        }
    }
    Ok(request)
}

fn descriptor(json: &Json, index: usize) -> Result<RateLimitDescriptor, String> {
    let what = format!("descriptors[{index}]");
    let mut d = RateLimitDescriptor::default();
    for (name, value) in as_object(json, &what)? {
        match name.as_str() {
            "entries" => {
                d.entries = array(value, &format!("{what}.entries"))?
                    .iter()
                    .enumerate()
                    .map(|(j, e)| entry(e, &format!("{what}.entries[{j}]")))
                    .collect::<Result<_, _>>()?
            }
            "limit" => d.limit = limit_override(value, &format!("{what}.limit"))?,
            "hitsAddend" | "hits_addend" => {
                d.hits_addend = if value.is_null() {
                    None
                } else {
                    Some(UInt64Value { value: unsigned(value, &format!("{what}.hitsAddend"))? })
                }
            }
            "isNegativeHits" | "is_negative_hits" => {
                d.is_negative_hits =
                    value.as_bool().ok_or_else(|| format!("{what}.isNegativeHits must be a boolean"))?
            }
            other => return Err(format!("unknown field {other:?} in {what}")),
        }
    }
    Ok(d)
}

fn entry(json: &Json, what: &str) -> Result<Entry, String> {
    let mut e = Entry::default();
    for (name, value) in as_object(json, what)? {
        match name.as_str() {
            "key" => e.key = string(value, &format!("{what}.key"))?,
            "value" => e.value = string(value, &format!("{what}.value"))?,
            other => return Err(format!("unknown field {other:?} in {what}")),
        }
    }
    Ok(e)
}

fn limit_override(json: &Json, what: &str) -> Result<Option<RateLimitOverride>, String> {
    if json.is_null() {
        return Ok(None);
    }
    let mut o = RateLimitOverride::default();
    for (name, value) in as_object(json, what)? {
        match name.as_str() {
            "requestsPerUnit" | "requests_per_unit" => {
                o.requests_per_unit = u32::try_from(unsigned(value, &format!("{what}.requestsPerUnit"))?)
                    .map_err(|_| format!("{what}.requestsPerUnit must fit in 32 bits"))?
            }
            "unit" => {
                o.unit = match value {
                    Json::String(s) if s == "UNKNOWN" => 0,
                    Json::String(s) => Unit::parse(s)
                        .filter(|u| *u != Unit::Week)
                        .map(Unit::proto_number)
                        .ok_or_else(|| format!("{what}.unit {s:?} is not a rate limit unit"))?,
                    Json::Number(n) => n
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| format!("{what}.unit must be a unit name or number"))?,
                    Json::Null => 0,
                    _ => return Err(format!("{what}.unit must be a unit name or number")),
                }
            }
            other => return Err(format!("unknown field {other:?} in {what}")),
        }
    }
    Ok(Some(o))
}

fn as_object<'a>(json: &'a Json, what: &str) -> Result<&'a Map<String, Json>, String> {
    json.as_object().ok_or_else(|| format!("{what} must be a JSON object"))
}

fn array<'a>(json: &'a Json, what: &str) -> Result<&'a [Json], String> {
    match json {
        Json::Array(items) => Ok(items),
        Json::Null => Ok(&[]),
        _ => Err(format!("{what} must be a list")),
    }
}

fn string(json: &Json, what: &str) -> Result<String, String> {
    match json {
        Json::String(s) => Ok(s.clone()),
        Json::Null => Ok(String::new()),
        _ => Err(format!("{what} must be a string")),
    }
}

/// A proto3 JSON unsigned integer: a number or a decimal string.
fn unsigned(json: &Json, what: &str) -> Result<u64, String> {
    match json {
        Json::Number(n) => n.as_u64().ok_or_else(|| format!("{what} must be a whole number of at least 0")),
        Json::String(s) => s.parse().map_err(|_| format!("{what} must be a whole number of at least 0")),
        Json::Null => Ok(0),
        _ => Err(format!("{what} must be a number")),
    }
}

fn code_name(code: i32) -> &'static str {
    match Code::try_from(code) {
        Ok(Code::Ok) => "OK",
        Ok(Code::OverLimit) => "OVER_LIMIT",
        _ => "UNKNOWN",
    }
}

fn unit_name(unit: i32) -> &'static str {
    Unit::from_proto_number(unit).map_or("UNKNOWN", Unit::name)
}

/// `google.protobuf.Duration` in JSON: seconds with up to nine decimals and an `s`.
fn duration(d: &ProtoDuration) -> String {
    if d.nanos == 0 {
        format!("{}s", d.seconds)
    } else if d.nanos % 1_000_000 == 0 {
        format!("{}.{:03}s", d.seconds, d.nanos / 1_000_000)
    } else if d.nanos % 1_000 == 0 {
        format!("{}.{:06}s", d.seconds, d.nanos / 1_000)
    } else {
        format!("{}.{:09}s", d.seconds, d.nanos)
    }
}

fn status(s: &DescriptorStatus) -> Json {
    let mut out = Map::new();
    if s.code != 0 {
        out.insert("code".into(), json!(code_name(s.code)));
    }
    if let Some(limit) = &s.current_limit {
        let mut l = Map::new();
        if !limit.name.is_empty() {
            l.insert("name".into(), json!(limit.name));
        }
        if limit.requests_per_unit != 0 {
            l.insert("requestsPerUnit".into(), json!(limit.requests_per_unit));
        }
        if limit.unit != 0 {
            l.insert("unit".into(), json!(unit_name(limit.unit)));
        }
        out.insert("currentLimit".into(), Json::Object(l));
    }
    if s.limit_remaining != 0 {
        out.insert("limitRemaining".into(), json!(s.limit_remaining));
    }
    if let Some(d) = &s.duration_until_reset {
        out.insert("durationUntilReset".into(), json!(duration(d)));
    }
    Json::Object(out)
}

fn struct_json(s: &Struct) -> Json {
    // Sorted keys: the proto map is unordered, but a stable body is easier to test and diff.
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    Json::Object(keys.into_iter().map(|k| (k.clone(), value_json(&s.fields[k]))).collect())
}

fn value_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        // protojson writes integral numbers without a fraction (2, not 2.0).
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_json).collect()),
    }
}

/// Renders a response as protobuf-JSON.
pub fn response_json(response: &RateLimitResponse) -> Json {
    let mut out = Map::new();
    if response.overall_code != 0 {
        out.insert("overallCode".into(), json!(code_name(response.overall_code)));
    }
    if !response.statuses.is_empty() {
        out.insert("statuses".into(), Json::Array(response.statuses.iter().map(status).collect()));
    }
    if !response.response_headers_to_add.is_empty() {
        let headers = response.response_headers_to_add.iter().map(|h| json!({"key": h.key, "value": h.value}));
        out.insert("responseHeadersToAdd".into(), Json::Array(headers.collect()));
    }
    if !response.raw_body.is_empty() {
        out.insert("rawBody".into(), json!(base64::engine::general_purpose::STANDARD.encode(&response.raw_body)));
    }
    if let Some(md) = &response.dynamic_metadata {
        out.insert("dynamicMetadata".into(), struct_json(md));
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::RateLimit;

    #[test]
    fn requests_parse_in_camel_and_snake_case() {
        let r = parse_request(
            br#"{"domain":"d","descriptors":[{"entries":[{"key":"k","value":"v"}],"hits_addend":"0","limit":{"requestsPerUnit":5,"unit":"HOUR"}}],"hitsAddend":2}"#,
        )
        .unwrap();
        assert_eq!(r.domain, "d");
        assert_eq!(r.hits_addend, 2);
        let d = &r.descriptors[0];
        assert_eq!((d.entries[0].key.as_str(), d.entries[0].value.as_str()), ("k", "v"));
        assert_eq!(d.hits_addend, Some(UInt64Value { value: 0 }));
        assert_eq!(d.limit, Some(RateLimitOverride { requests_per_unit: 5, unit: 3 }));
    }

    #[test]
    fn malformed_requests_get_one_line_reasons() {
        assert!(parse_request(b"").unwrap_err().contains("empty"));
        assert!(parse_request(b"}").unwrap_err().contains("not valid JSON"));
        assert_eq!(parse_request(br#"{"domian":"d"}"#).unwrap_err(), "unknown field \"domian\" in the request");
        assert_eq!(
            parse_request(br#"{"domain":"d","descriptors":[{"entries":[{"key":1}]}]}"#).unwrap_err(),
            "descriptors[0].entries[0].key must be a string"
        );
        assert!(parse_request(br#"{"domain":"d","descriptors":[{"limit":{"unit":"FORTNIGHT"}}]}"#).is_err());
    }

    #[test]
    fn responses_render_like_the_reference() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit { name: String::new(), requests_per_unit: 1, unit: 2 }),
                limit_remaining: 0,
                duration_until_reset: Some(ProtoDuration { seconds: 12, nanos: 0 }),
                quota: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            response_json(&response).to_string(),
            r#"{"overallCode":"OVER_LIMIT","statuses":[{"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":1,"unit":"MINUTE"},"durationUntilReset":"12s"}]}"#
        );
        assert_eq!(duration(&ProtoDuration { seconds: 0, nanos: 250_000_000 }), "0.250s");
    }
}
