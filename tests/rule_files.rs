//! Rules directories holding what they should not: a FIFO (whose `open` waits for a
//! writer for ever), and nothing at all. Spawns the built binary.

mod common;

use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{Running, sigterm, sluicegate, spawn, wait_exit};
use common::{TempDir, http};

fn rules(domain: &str, rpu: u32) -> String {
    format!("domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: {rpu}}}\n")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Starts the binary serving `--config <dir>` on loopback ports, logging at info.
fn start(config: &Path, extra: &[(&str, &str)]) -> Running {
    let mut command = sluicegate();
    command
        .env_clear()
        .arg("--config")
        .arg(config)
        .args(["--host", "127.0.0.1", "--port", "0", "--grpc-host", "127.0.0.1", "--grpc-port", "0"])
        .args(["--debug-host", "127.0.0.1", "--debug-port", "0", "--log-level", "info"])
        .env("SHUTDOWN_GRACE_PERIOD", "0");
    for (k, v) in extra {
        command.env(k, v);
    }
    spawn(command)
}

fn stop(mut running: Running) -> Vec<String> {
    sigterm(&running.child);
    assert_eq!(wait_exit(&mut running.child, Duration::from_secs(15)).code(), Some(0));
    running.lines.try_iter().collect()
}

/// Polls `check` until it is true, for up to 10 seconds.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn rlconfig(running: &Running) -> String {
    http(running.debug, "GET", "/rlconfig", "").await.1
}

async fn debug_config(running: &Running) -> serde_json::Value {
    let (_, body) = http(running.debug, "GET", "/debug/config", "").await;
    serde_json::from_str(&body).unwrap_or_default()
}

#[test]
fn validate_skips_a_fifo_with_a_warning_and_returns() {
    let dir = TempDir::new("fifo-validate");
    dir.write("a.yaml", &rules("a", 5));
    mkfifo(&dir.path().join("zz.yaml"));
    let mut child =
        sluicegate().arg("validate").arg(dir.path()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}");
    let warning =
        format!("{}:1:1: warning: is not a regular file (a FIFO); skipped", dir.path().join("zz.yaml").display());
    assert!(stdout.contains(&warning), "{stdout}");
    assert!(stdout.contains("OK: 1 files, 1 domains"), "{stdout}");
}

#[tokio::test]
async fn a_server_starts_with_a_fifo_in_its_rules_directory() {
    let dir = TempDir::new("fifo-start");
    dir.write("a.yaml", &rules("a", 5));
    mkfifo(&dir.path().join("zz.yaml"));
    let running = start(dir.path(), &[]);
    assert!(rlconfig(&running).await.contains("a.k: unit=HOUR requests_per_unit=5"));
    let mut logged = running.seen.clone();
    logged.extend(stop(running));
    assert!(
        logged.iter().any(|l| l.contains("zz.yaml:1:1: warning: is not a regular file (a FIFO); skipped")),
        "{logged:?}"
    );
}

#[tokio::test]
async fn a_fifo_created_at_run_time_does_not_stop_later_reloads() {
    let dir = TempDir::new("fifo-reload");
    dir.write("a.yaml", &rules("a", 5));
    let running = start(dir.path(), &[]);
    mkfifo(&dir.path().join("zz.yaml"));
    eventually("the reload that skips the FIFO", || async {
        let warnings = debug_config(&running).await["config"]["warnings"].to_string();
        warnings.contains("zz.yaml:1:1: warning: is not a regular file (a FIFO); skipped")
    })
    .await;
    dir.write("a.yaml", &rules("a", 7));
    eventually("the edit after the FIFO", || async {
        rlconfig(&running).await.contains("a.k: unit=HOUR requests_per_unit=7")
    })
    .await;
    stop(running);
}
