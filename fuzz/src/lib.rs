//! sluicegate's fuzz checks: one module per target, each a `check(&[u8])` that drives a
//! piece of the service with the input and asserts its invariants (not only "no panic").
//!
//! The libFuzzer binaries in `fuzz_targets/` call these; `tests/corpus.rs` replays the
//! committed corpus through them with plain `cargo test`, so a corpus entry that once
//! found a bug stays a regression test without the fuzzer's build flags.
//!
//! - [`config_load`]: rule file bytes → the loader; loads are deterministic and stable
//!   across reloads, and every diagnostic names `file:line:col` inside the input.
//! - [`limit_string`]: limit strings; offsets point into the string, and what parses
//!   prints back to a string that parses to the same limits.
//! - [`json_request`]: `/json` bodies; errors are one line, what parses prints back to
//!   JSON that parses to the same request, and the request is then decided.
//! - [`decide`]: structured requests against a fixed rule set on a fresh memory store at
//!   a frozen clock; no counter ever admits more than its limit allows, and every
//!   `INVALID_ARGUMENT` names the domain or the descriptor at fault.

pub mod config_load;
pub mod decide;
pub mod json_request;
pub mod limit_string;
