//! The README's commands, run as written: its run command's arguments start the built
//! binary, and its demo, `validate` and `explain` blocks run in `bash` against it, with
//! their `# ...` output lines checked. Only the ports change (to free ones), so a stray
//! service on 8080 cannot break the test; `cargo run --release --` becomes the binary the
//! test suite built.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::process::{self, Running};

fn readme() -> String {
    std::fs::read_to_string("README.md").unwrap()
}

/// The `sh` code blocks of the README section headed `heading`, in order (up to the next
/// heading of its level or above).
fn blocks_under(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let section = &readme[start + heading.len() + 2..];
    let level = heading.split(' ').next().unwrap();
    let end = (2..=level.len()).filter_map(|n| section.find(&format!("\n{} ", "#".repeat(n)))).min();
    let section = end.map_or(section, |end| &section[..end]);
    section.split("```sh\n").skip(1).filter_map(|b| b.split_once("\n```").map(|(code, _)| code.to_string())).collect()
}

/// The README's run command, started with its own arguments on free loopback ports.
fn start_as_the_readme_says(readme: &str) -> Running {
    let run_line =
        readme.lines().find(|l| l.starts_with("cargo run --release -- --config")).expect("the README's run command");
    let args = run_line.trim_start_matches("cargo run --release --").split('#').next().unwrap().split_whitespace();
    let mut command = process::sluicegate();
    command.env_clear().env("LOG_LEVEL", "info").args(args);
    for (flag, value) in [
        ("--host", "127.0.0.1"),
        ("--port", "0"),
        ("--grpc-host", "127.0.0.1"),
        ("--grpc-port", "0"),
        ("--debug-host", "127.0.0.1"),
        ("--debug-port", "0"),
    ] {
        command.args([flag, value]);
    }
    process::spawn(command)
}

/// Runs `script` in bash with the README's ports pointed at `server`, if any.
fn bash(script: &str, server: Option<&Running>) -> (bool, String) {
    let mut script = script.replace("cargo run --release --", env!("CARGO_BIN_EXE_sluicegate"));
    if let Some(server) = server {
        script = script
            .replace("localhost:8080", &server.http.to_string())
            .replace("localhost:6070", &server.debug.to_string());
    }
    let out = Command::new("bash").args(["-euo", "pipefail", "-c", &script]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The output a block promises: its lines that are wholly a `# ...` comment.
fn promised(block: &str) -> Vec<String> {
    block.lines().filter_map(|l| l.strip_prefix("# ")).map(str::to_string).collect()
}

/// The demo counts eleven requests inside one minute; start it where it has time to.
#[allow(clippy::disallowed_methods)] // the demo runs the real binary: real time
fn not_near_a_minute_boundary() {
    let second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 60;
    if second > 50 {
        std::thread::sleep(Duration::from_secs(61 - second));
    }
}

#[test]
fn the_one_minute_demo_answers_as_the_readme_shows() {
    let readme = readme();
    let server = start_as_the_readme_says(&readme);
    let demo = blocks_under(&readme, "## A one-minute demo");
    assert_eq!(demo.len(), 2, "the demo's two blocks");

    not_near_a_minute_boundary();
    let (ok, out) = bash(&demo[0], Some(&server));
    assert!(ok);
    assert_eq!(vec![out.trim_end().to_string()], promised(&demo[0]));

    // The second block: the over-limit answer (its reset time moves), the rules, health.
    let mut lines = demo[1].lines().filter(|l| l.starts_with("curl ")).map(str::to_string);
    let json_call = format!("{}\n{}", lines.next().unwrap(), demo[1].lines().nth(1).unwrap());
    let (ok, out) = bash(&json_call, Some(&server));
    assert!(ok);
    let reset_free = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
        let reset = v["statuses"][0].as_object_mut().unwrap().remove("durationUntilReset").unwrap();
        let seconds: u64 = reset.as_str().unwrap().trim_end_matches('s').parse().unwrap();
        assert!((1..=60).contains(&seconds), "{reset}");
        v
    };
    assert_eq!(reset_free(&out), reset_free(&promised(&demo[1])[0]));

    let (ok, rlconfig) = bash(&lines.next().unwrap(), Some(&server));
    assert!(ok && rlconfig.contains("example.remote_address"), "{rlconfig}");
    let (ok, health) = bash(&lines.next().unwrap(), Some(&server));
    assert!(ok);
    assert_eq!(health.trim(), "OK");
}

#[test]
fn the_readme_validate_and_explain_commands_work() {
    let readme = readme();
    let block = blocks_under(&readme, "### Rules change without a restart");
    assert_eq!(block.len(), 1);
    let validate = block[0].lines().find(|l| l.contains(" validate ")).unwrap();
    let (ok, out) = bash(validate.split('#').next().unwrap(), None);
    assert!(ok, "{out}");
    assert!(out.starts_with("OK: ") && out.trim_end().lines().count() == 1, "a one-line summary: {out}");
    let explain = block[0].split_once(validate).unwrap().1.trim();
    let (ok, out) = bash(explain, None);
    assert!(ok, "{out}");
    assert!(out.contains("remote_address") && out.contains("path"), "{out}");
}
