//! Logs: `LOG_LEVEL` and `LOG_FORMAT`, to stderr.
//!
//! Owns the log output. `text` is tracing's human format; `json` writes one object per
//! line with the reference's field names (`@timestamp`, `@message`, `level` in logrus'
//! lower-case words), so log pipelines built for envoyproxy/ratelimit keep working, plus
//! each event's structured fields. The service logs once per reload, per listener and
//! per backend state change; nothing per request above `debug`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::settings::{LogFormat, Settings};

/// Installs the process's logger (once; later calls do nothing).
pub fn init(settings: &Settings) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_max_level(settings.log_level).with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.event_format(ReferenceJson).try_init(),
    };
}

/// The reference's JSON log line.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferenceJson;

#[derive(Default)]
struct Fields {
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.insert(field.name().to_string(), value.into());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().to_string(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().to_string(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.insert(field.name().to_string(), text.into());
        }
    }
}

fn logrus_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S, N> FormatEvent<S, N> for ReferenceJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert("@timestamp".into(), crate::http::rfc3339(crate::clock::wall_clock_now()).into());
        line.insert("level".into(), logrus_level(event.metadata().level()).into());
        line.insert("@message".into(), fields.message.into());
        line.insert("logger".into(), event.metadata().target().into());
        line.extend(fields.rest);
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}
