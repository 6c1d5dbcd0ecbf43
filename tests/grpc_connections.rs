//! The bounds on one gRPC connection, seen from a bare HTTP/2 client: concurrent calls,
//! idle and old connections (GOAWAY, then a forced close after the grace), and the
//! client's `grpc-timeout`.

mod common;

use std::time::{Duration, Instant};

use common::raw_grpc::{Connection, connect, grpc_status};
use common::{metric, request, start};

const RULES: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1000}\n";

/// Waits for the server to end `conn`; how long after `since` it did (`None`: still
/// open `within` after `since`).
async fn ended_after(conn: &mut Connection, since: Instant, within: Duration) -> Option<Duration> {
    let ended = tokio::time::timeout_at((since + within).into(), &mut conn.closed).await.ok()?;
    Some(ended.unwrap().duration_since(since))
}

#[tokio::test]
async fn past_max_concurrent_streams_a_call_waits_for_one_to_finish() {
    let server = start(&[("d.yaml", RULES)], &[("GRPC_MAX_CONCURRENT_STREAMS", "2")], 0).await;
    let mut conn = connect(server.grpc).await;
    let ok = request("d", &[&[("k", "v")]]);
    // A whole call first, so the server's SETTINGS (with the limit) have arrived.
    assert_eq!(conn.calls.call(&ok).await.unwrap(), "0");

    let first = conn.calls.open_call(None).await.unwrap();
    let second = conn.calls.open_call(None).await.unwrap();
    let mut calls = conn.calls.clone();
    let third = tokio::spawn(async move {
        let call = calls.open_call(None).await?;
        call.finish(&request("d", &[&[("k", "third")]])).await
    });
    // Asserting that something does not happen: the third call must not run in 300 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third call ran at once with GRPC_MAX_CONCURRENT_STREAMS=2");

    assert_eq!(first.finish(&ok).await.unwrap(), "0");
    let third = tokio::time::timeout(Duration::from_secs(5), third).await.expect("the third call still waits");
    assert_eq!(third.unwrap().unwrap(), "0", "the third call ran once a place freed");
    assert_eq!(second.finish(&ok).await.unwrap(), "0");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_grpc_connection_is_sent_a_goaway_and_one_in_use_is_not() {
    let server = start(&[("d.yaml", RULES)], &[("GRPC_MAX_CONNECTION_IDLE", "1s")], 0).await;
    let ok = request("d", &[&[("k", "v")]]);
    let mut idle = connect(server.grpc).await;
    let mut busy = connect(server.grpc).await;
    assert_eq!(idle.calls.call(&ok).await.unwrap(), "0");
    let last_call = Instant::now();
    let kept_busy = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < kept_busy {
        assert_eq!(busy.calls.call(&ok).await.unwrap(), "0", "a connection in use was closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = ended_after(&mut idle, last_call, Duration::from_secs(5)).await.expect("the idle connection is open");
    assert!(ended >= Duration::from_millis(900), "closed after {ended:?}, before GRPC_MAX_CONNECTION_IDLE");
    assert!(!busy.closed.is_finished(), "the busy connection was closed");
    let timeouts = [("listener", "grpc"), ("timeout", "idle")];
    assert_eq!(metric(server.http, "sluicegate_timeouts_total", &timeouts).await, Some(1.0));
    server.stop().await;
}

#[tokio::test]
async fn an_old_grpc_connection_is_sent_a_goaway_and_dropped_after_the_grace() {
    let settings =
        [("GRPC_MAX_CONNECTION_AGE", "1s"), ("GRPC_MAX_CONNECTION_AGE_GRACE", "2s"), ("GRPC_MAX_CONNECTION_IDLE", "0")];
    let server = start(&[("d.yaml", RULES)], &settings, 0).await;
    let ok = request("d", &[&[("k", "v")]]);
    let opened = Instant::now();
    let mut quiet = connect(server.grpc).await;
    let mut finishing = connect(server.grpc).await;
    let mut stuck = connect(server.grpc).await;
    let late_call = finishing.calls.open_call(None).await.unwrap();
    let _never_finished = stuck.calls.open_call(None).await.unwrap();

    // The age is 1 s ± 10%: a connection without calls closes on its GOAWAY.
    let ended = ended_after(&mut quiet, opened, Duration::from_secs(5)).await.expect("the quiet one is open");
    assert!((Duration::from_millis(850)..Duration::from_millis(2500)).contains(&ended), "quiet: {ended:?}");
    // A call open across the GOAWAY may still finish during the grace.
    assert_eq!(late_call.finish(&ok).await.unwrap(), "0", "a call was cut off during the grace");
    // One that never finishes is dropped once the grace is over.
    let ended = ended_after(&mut stuck, opened, Duration::from_secs(8)).await.expect("the stuck one is open");
    assert!(ended >= Duration::from_millis(2750), "stuck: dropped after {ended:?}, before the grace ended");
    let timeouts = [("listener", "grpc"), ("timeout", "max_age")];
    assert_eq!(metric(server.http, "sluicegate_timeouts_total", &timeouts).await, Some(3.0));
    server.stop().await;
}

#[tokio::test]
async fn a_call_past_its_grpc_timeout_is_answered_deadline_exceeded() {
    let server = start(&[("d.yaml", RULES)], &[], 0).await;
    let mut conn = connect(server.grpc).await;
    let started = Instant::now();
    let call = conn.calls.open_call(Some("200m")).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), grpc_status(call.response)).await;
    assert_eq!(status.expect("no answer within 5 s").unwrap(), "4", "DEADLINE_EXCEEDED");
    assert!(started.elapsed() >= Duration::from_millis(190), "answered after {:?}", started.elapsed());
    assert_eq!(conn.calls.call(&request("d", &[&[("k", "v")]])).await.unwrap(), "0", "the connection still serves");
    server.stop().await;
}
