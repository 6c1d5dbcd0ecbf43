//! libFuzzer entry point for the `decide` check (the check and its invariants live in
//! `src/decide.rs`, so the corpus replay test runs the same code without the fuzzer).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluicegate_fuzz::decide::check(data));
