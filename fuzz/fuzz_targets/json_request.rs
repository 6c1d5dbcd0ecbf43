//! libFuzzer entry point for the `json_request` check (the check and its invariants live in
//! `src/json_request.rs`, so the corpus replay test runs the same code without the fuzzer).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluicegate_fuzz::json_request::check(data));
