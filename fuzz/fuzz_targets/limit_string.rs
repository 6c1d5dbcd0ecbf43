//! libFuzzer entry point for the `limit_string` check (the check and its invariants live in
//! `src/limit_string.rs`, so the corpus replay test runs the same code without the fuzzer).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluicegate_fuzz::limit_string::check(data));
