//! Replays the committed corpus (`fuzz/corpus/<target>/`) through each check without the
//! fuzzer: `cargo test --manifest-path fuzz/Cargo.toml`. An input that once found a bug
//! stays a regression test this way, on any toolchain and without instrumentation.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn config_load() {
    replay("config_load", sluicegate_fuzz::config_load::check);
}

#[test]
fn limit_string() {
    replay("limit_string", sluicegate_fuzz::limit_string::check);
}

#[test]
fn json_request() {
    replay("json_request", sluicegate_fuzz::json_request::check);
}

#[test]
fn decide() {
    replay("decide", sluicegate_fuzz::decide::check);
}
