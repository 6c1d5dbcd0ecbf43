//! libFuzzer entry point for the `config_load` check (the check and its invariants live in
//! `src/config_load.rs`, so the corpus replay test runs the same code without the fuzzer).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluicegate_fuzz::config_load::check(data));
