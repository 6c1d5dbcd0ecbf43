//! The service's process-wide switches: request caps, response headers, consumption
//! policy, shadow and quota modes. Read from settings once; fixed for the process's life.

/// Caps on request size, so a hostile or broken client costs bounded work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestCaps {
    pub max_descriptors: usize,
    pub max_entries: usize,
    pub max_entry_bytes: usize,
}

impl RequestCaps {
    /// The defaults of `MAX_DESCRIPTORS`, `MAX_ENTRIES` and `MAX_ENTRY_BYTES`.
    pub const DEFAULT: RequestCaps = RequestCaps { max_descriptors: 256, max_entries: 64, max_entry_bytes: 16 * 1024 };
}

impl Default for RequestCaps {
    fn default() -> Self {
        RequestCaps::DEFAULT
    }
}

/// Names of the `LIMIT_RESPONSE_HEADERS_ENABLED` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNames {
    pub limit: String,
    pub remaining: String,
    pub reset: String,
}

impl HeaderNames {
    /// The defaults of `LIMIT_LIMIT_HEADER`, `LIMIT_REMAINING_HEADER` and `LIMIT_RESET_HEADER`.
    pub const DEFAULT_LIMIT: &str = "RateLimit-Limit";
    pub const DEFAULT_REMAINING: &str = "RateLimit-Remaining";
    pub const DEFAULT_RESET: &str = "RateLimit-Reset";
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            limit: Self::DEFAULT_LIMIT.into(),
            remaining: Self::DEFAULT_REMAINING.into(),
            reset: Self::DEFAULT_RESET.into(),
        }
    }
}

/// `CONSUME`: whether a rejected request still counts on the limits that admitted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consume {
    /// Every matched limit counts the hit (the reference's behaviour).
    #[default]
    Always,
    /// A request answered OVER_LIMIT counts on none of its limits.
    AllOrNothing,
}

/// Process-wide behaviour switches (from settings; fixed for the process's life).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceOptions {
    /// `SHADOW_MODE`: an OVER_LIMIT overall answer becomes OK (statuses keep theirs).
    pub global_shadow_mode: bool,
    /// `QUOTA_MODE`: every descriptor but `unlimited` ones is a quota descriptor.
    pub global_quota_mode: bool,
    /// `LIMIT_RESPONSE_HEADERS_ENABLED` with its header names.
    pub response_headers: Option<HeaderNames>,
    /// `RESPONSE_DYNAMIC_METADATA`.
    pub dynamic_metadata: bool,
    pub consume: Consume,
    pub caps: RequestCaps,
}

impl ServiceOptions {
    /// Whether a rejected request's hits are taken back (`CONSUME=all_or_nothing`; in
    /// global shadow mode nothing is rejected).
    pub fn rolls_back(&self) -> bool {
        self.consume == Consume::AllOrNothing && !self.global_shadow_mode
    }
}
