//! Rules directories holding what they should not: a FIFO (whose `open` waits for a
//! writer for ever), and nothing at all (every request unlimited), with and without
//! `CONFIG_REFUSE_EMPTY`. Spawns the built binary.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::poll::eventually;
use common::process::{Running, exit_and_stderr, loopback, sluicegate, start, stop, wait_exit};
use common::{TempDir, http};

fn rules(domain: &str, rpu: u32) -> String {
    format!("domain: {domain}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: {rpu}}}\n")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

async fn rlconfig(running: &Running) -> String {
    http(running.debug, "GET", "/rlconfig", "").await.1
}

async fn debug_config(running: &Running) -> serde_json::Value {
    let (_, body) = http(running.debug, "GET", "/debug/config", "").await;
    serde_json::from_str(&body).unwrap_or_default()
}

/// Runs `sluicegate validate` with `args`, bounded in time; its exit code and stdout.
fn validate(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child =
        sluicegate().arg("validate").args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    (status.code(), stdout)
}

async fn metric(running: &Running, series: &str) -> Option<f64> {
    common::metric(running.http, series, &[]).await
}

#[test]
fn validate_skips_a_fifo_with_a_warning_and_returns() {
    let dir = TempDir::new("fifo-validate");
    dir.write("a.yaml", &rules("a", 5));
    mkfifo(&dir.path().join("zz.yaml"));
    let (code, stdout) = validate(&[dir.path().as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}");
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

#[tokio::test]
async fn an_empty_load_is_a_warning_a_gauge_and_a_count() {
    let dir = TempDir::new("empty-warn");
    let (code, stdout) = validate(&[dir.path().as_os_str()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains(":1:1: warning: no rule file defines a domain: every request is answered OK"), "{stdout}");
    assert!(stdout.contains("OK: 0 files, 0 domains, 0 rules, 1 warnings"), "{stdout}");

    let running = start(dir.path(), &[]);
    assert_eq!(metric(&running, "sluicegate_config_domains").await, Some(0.0));
    assert_eq!(metric(&running, "sluicegate_config_empty_loads_total").await, Some(1.0));
    dir.write("a.yaml", &rules("a", 5));
    eventually("the first domain", || async { metric(&running, "sluicegate_config_domains").await == Some(1.0) }).await;
    assert_eq!(metric(&running, "sluicegate_config_empty_loads_total").await, Some(1.0));
    let mut logged = running.seen.clone();
    logged.extend(stop(running));
    assert!(logged.iter().any(|l| l.contains("warning: no rule file defines a domain")), "{logged:?}");
}

#[tokio::test]
async fn refusing_empty_loads_keeps_the_rules_until_a_good_edit() {
    let dir = TempDir::new("empty-refuse");
    dir.write("a.yaml", &rules("a", 5));
    let running = start(dir.path(), &[("CONFIG_REFUSE_EMPTY", "true")]);
    std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
    eventually("the refused load", || async {
        metric(&running, "ratelimit_service_config_load_error").await == Some(1.0)
    })
    .await;
    assert!(rlconfig(&running).await.contains("a.k: unit=HOUR requests_per_unit=5"), "the old rules still serve");
    let debug = debug_config(&running).await;
    let error = debug["last_reload_error"]["errors"][0].as_str().unwrap_or_default().to_string();
    assert!(error.contains("no rule file defines a domain, and CONFIG_REFUSE_EMPTY=true refuses"), "{debug}");
    assert_eq!(debug["config"]["version"], 1);

    dir.write("b.yaml", &rules("b", 3));
    eventually("the edit after the refused load", || async {
        let now = rlconfig(&running).await;
        now.contains("b.k: unit=HOUR requests_per_unit=3") && !now.contains("a.k:")
    })
    .await;
    assert!(debug_config(&running).await["last_reload_error"].is_null());
    stop(running);
}

#[tokio::test]
async fn refusing_an_empty_first_load_stops_start_up_unless_forced() {
    let dir = TempDir::new("empty-start");
    let (code, stdout) = validate(&["--config-refuse-empty".as_ref(), "true".as_ref(), dir.path().as_os_str()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("CONFIG_REFUSE_EMPTY=true refuses"), "{stdout}");

    let (code, stderr) = exit_and_stderr(loopback(dir.path(), &[("CONFIG_REFUSE_EMPTY", "true")]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("CONFIG_REFUSE_EMPTY=true refuses"), "{stderr}");

    let running = start(dir.path(), &[("CONFIG_REFUSE_EMPTY", "true"), ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true")]);
    assert!(debug_config(&running).await["config"].is_null(), "started without rules");
    dir.write("a.yaml", &rules("a", 5));
    eventually("the first good load", || async { rlconfig(&running).await.contains("a.k: unit=HOUR") }).await;
    stop(running);
}
