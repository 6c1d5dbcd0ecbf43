//! Rule files built to hurt: descriptors and metadata nested thousands of levels deep
//! through YAML aliases, aliases that multiply a small file into millions of rules, a
//! hundred thousand wildcard siblings, a limit string of 300,000 items. Each must end
//! in a clear error (or load) promptly, with bounded memory, in `validate` and in a
//! running server's reload alike; the server keeps its rules and keeps answering.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::poll::eventually;
use common::process::sluicegate;
use common::{OK, TempDir, connect, http, request};

/// Descriptors whose anchors each nest the previous one a level deeper (two YAML levels:
/// a list and a mapping), `levels` of them, in a file of a few hundred KB at most.
fn descriptors_nested_through_aliases(levels: usize) -> String {
    let mut text = String::from(
        "domain: deep\ndescriptors:\n  - &d0 {key: k0, rate_limit: {unit: second, requests_per_unit: 1}}\n",
    );
    for i in 1..levels {
        text.push_str(&format!("  - &d{i} {{key: k{i}, descriptors: [*d{}]}}\n", i - 1));
    }
    text
}

/// Metadata nested `levels` deep through aliases (the anchors live in the metadata
/// itself, whose keys are free-form).
fn metadata_nested_through_aliases(levels: usize) -> String {
    let mut text = String::from(
        "domain: meta\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n    metadata:\n      m0: &m0 {a: 1}\n",
    );
    for i in 1..levels {
        text.push_str(&format!("      m{i}: &m{i} {{n: *m{}}}\n", i - 1));
    }
    text
}

/// Runs `sluicegate validate` on `path`; returns (exit code, output, peak resident KiB).
fn validate(path: &Path) -> (Option<i32>, String, u64) {
    let mut child = sluicegate()
        .arg("validate")
        .arg(path)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak_kib = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(hwm) = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))
        {
            peak_kib = peak_kib.max(hwm.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0));
        }
        assert!(Instant::now() < deadline, "validate did not finish within a minute");
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text, peak_kib)
}

#[test]
fn descriptors_nested_through_aliases_are_an_error_not_a_stack_overflow() {
    let dir = TempDir::new("bounds-deep");
    for levels in [1_830, 6_100] {
        let path = dir.write("deep.yaml", &descriptors_nested_through_aliases(levels));
        let (code, output, _) = validate(&path);
        assert_eq!(code, Some(1), "{output}");
        assert!(output.contains("nesting is deeper than 128 levels (through an alias)"), "{output}");
        assert!(output.contains("deep.yaml:"), "the error names the file: {output}");
    }
    // Up to the cap it loads: 64 descriptor levels.
    let path = dir.write("deep.yaml", &descriptors_nested_through_aliases(63));
    let (code, output, _) = validate(&path);
    assert_eq!(code, Some(0), "{output}");
}

#[test]
fn metadata_nested_through_aliases_is_an_error() {
    let dir = TempDir::new("bounds-meta");
    let path = dir.write("meta.yaml", &metadata_nested_through_aliases(12_000));
    let (code, output, _) = validate(&path);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("deeper than 128 levels (through an alias)"), "{output}");
}

#[test]
fn metadata_deeper_than_a_response_can_carry_is_an_error() {
    let dir = TempDir::new("bounds-meta-cap");
    let path = dir.write("meta.yaml", &metadata_nested_through_aliases(40));
    let (code, output, _) = validate(&path);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("metadata nests deeper than 32 levels"), "{output}");
}

#[tokio::test]
async fn deep_metadata_within_the_cap_is_returned_and_decodes() {
    // 30 levels: the deepest a client's protobuf decoder (Envoy's, prost's: 100 nested
    // messages) still reads in a response.
    let rules = metadata_nested_through_aliases(30);
    let server = common::start(&[("meta.yaml", &rules)], &[("RESPONSE_DYNAMIC_METADATA", "true")], 1_000).await;
    let mut client = server.client().await;
    let r = client.should_rate_limit(request("meta", &[&[("k", "v")]])).await.unwrap().into_inner();
    assert_eq!(r.overall_code, OK);
    let mut depth = 0;
    let metadata = r.dynamic_metadata.as_ref().unwrap().fields["metadata"].clone();
    let mut at = match metadata.kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) => s.fields["m29"].clone(),
        other => panic!("{other:?}"),
    };
    while let Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) = at.kind {
        depth += 1;
        match s.fields.get("n") {
            Some(v) => at = v.clone(),
            None => break,
        }
    }
    assert_eq!(depth, 30, "every level came back");
    server.stop().await;
}

#[tokio::test]
async fn a_reload_of_a_deep_file_keeps_the_old_rules_and_the_server() {
    let dir = TempDir::new("bounds-reload");
    dir.write("a.yaml", "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 5}\n");
    let running = common::process::start(dir.path(), &[]);
    dir.write("b.yaml", &descriptors_nested_through_aliases(1_830));
    eventually("the failed reload shows in /debug/config", async || {
        http(running.debug, "GET", "/debug/config", "").await.1.contains("through an alias")
    })
    .await;
    let mut client = connect(running.grpc).await;
    let r = client.should_rate_limit(request("a", &[&[("k", "x")]])).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 4, "the old rules still answer");
    let mut running = running;
    assert!(running.child.try_wait().unwrap().is_none(), "the server is alive");
    common::process::stop(running);
}

#[test]
fn aliases_multiplying_rules_stop_at_the_rule_cap_with_bounded_memory() {
    // Each level lists the previous one ten times: 10^6 rules from a file of 1 KB.
    let mut text = String::from("domain: bomb\nl0: &l0 {key: k, rate_limit: {unit: second, requests_per_unit: 1}}\n");
    for i in 1..=6 {
        let p = format!("*l{}", i - 1);
        let list = [p.as_str(); 10].join(", ");
        text.push_str(&format!("l{i}: &l{i} {{key: k{i}, descriptors: [{list}]}}\n"));
    }
    text.push_str("descriptors: [*l6]\n");
    // The top-level anchors are unknown keys, reported too; the cap is what matters.
    let dir = TempDir::new("bounds-bomb");
    let path = dir.write("bomb.yaml", &text);
    let (code, output, peak_kib) = validate(&path);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("more than 200000 rules (CONFIG_MAX_RULES)") || output.contains("YAML nodes"), "{output}");
    assert!(peak_kib < 1024 * 1024, "validate peaked at {peak_kib} KiB");
}

#[test]
fn a_hundred_thousand_wildcard_siblings_and_a_huge_limit_string_are_linear() {
    let dir = TempDir::new("bounds-wide");
    let mut text = String::from("domain: wide\ndescriptors:\n");
    for i in 0..100_000 {
        text.push_str(&format!("  - {{key: p, value: \"{i}*\"}}\n"));
    }
    let path = dir.write("wide.yaml", &text);
    let started = Instant::now();
    let (code, output, _) = validate(&path);
    assert_eq!(code, Some(0), "{output}");
    // Quadratic sibling checks took over 10 s of an optimized build; linear ones take a
    // fraction of that even unoptimized. The bound is loose on purpose (shared machines).
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    let items = vec!["1/second"; 300_000].join(";");
    let path = dir.write("long.yaml", &format!("domain: long\ndescriptors:\n  - key: k\n    limit: \"{items}\"\n"));
    let started = Instant::now();
    let (code, output, _) = validate(&path);
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("a rule may have at most 32 limits; this one has 300000"), "{output}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn the_rule_cap_is_a_setting() {
    let dir = TempDir::new("bounds-cap");
    let path = dir.write("r.yaml", "domain: d\ndescriptors:\n  - key: a\n  - key: b\n  - key: c\n");
    let output = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .args(["validate", "--config-max-rules", "2"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("r.yaml:5:5: the configuration has more than 2 rules (CONFIG_MAX_RULES)"), "{text}");
}
