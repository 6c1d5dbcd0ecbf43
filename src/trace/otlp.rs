//! The OTLP trace messages sluicegate sends, declared by hand with only the fields it
//! fills (`opentelemetry/proto/collector/trace/v1` and the `trace`, `resource` and
//! `common` messages they use); field numbers are the OTLP protocol's.

/// `ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ExportTraceServiceResponse` (its `partial_success` is not read).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportTraceServiceResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `Span`, without events, links and dropped counts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// `SpanKind`: 2 is `SPAN_KIND_SERVER`.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

/// `Status`: code 1 is `STATUS_CODE_OK`, 2 `STATUS_CODE_ERROR`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue` with only its `string_value` arm (a one-member oneof is wire-identical to
/// an optional field).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyValue {
    #[prost(string, optional, tag = "1")]
    pub string_value: Option<String>,
}

/// A string attribute.
pub fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { string_value: Some(value.to_string()) }) }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// The field numbers and wire types are OTLP's: each field's first key byte.
    #[test]
    fn fields_have_the_protocol_numbers() {
        let span = Span {
            trace_id: vec![1],
            start_time_unix_nano: 1,
            attributes: vec![attribute("k", "v")],
            status: Some(Status { message: String::new(), code: 2 }),
            ..Span::default()
        };
        let bytes = span.encode_to_vec();
        // trace_id: field 1, length-delimited; start time: field 7, fixed64;
        // attributes: field 9, length-delimited; status: field 15, length-delimited.
        for key in [0x0a, 0x39, 0x4a, 0x7a] {
            assert!(bytes.contains(&key), "{key:#x} in {bytes:x?}");
        }
        assert_eq!(attribute("k", "v").encode_to_vec(), [0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']);
        let request =
            ExportTraceServiceRequest { resource_spans: vec![ResourceSpans { resource: None, scope_spans: vec![] }] };
        assert_eq!(request.encode_to_vec(), [0x0a, 0]);
    }
}
