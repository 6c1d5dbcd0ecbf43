//! Logging settings: `LOG_LEVEL` (the reference's names, `fatal` and `panic` included)
//! and `LOG_FORMAT`.

use tracing::level_filters::LevelFilter;

use super::setting::settings;

settings! {
    LOG_LEVEL: LevelFilter = "WARN",
        |s| match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(LevelFilter::TRACE),
            "debug" => Ok(LevelFilter::DEBUG),
            "info" => Ok(LevelFilter::INFO),
            "warn" | "warning" => Ok(LevelFilter::WARN),
            "error" | "fatal" | "panic" => Ok(LevelFilter::ERROR),
            _ => Err("expected trace, debug, info, warn or error".into()),
        },
        "trace, debug, info, warn or error";
    LOG_FORMAT: LogFormat = "text",
        |s| match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        },
        "text or json";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
