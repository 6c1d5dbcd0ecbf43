//! What one client can cost: the connection caps, the HTTP deadlines, the gRPC handshake
//! deadline, and the accept loop when the process is out of file descriptors. Every test
//! uses real sockets on loopback and polls with a bound rather than sleeping and hoping.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::poll::poll_until;
use common::process::{loopback_env, sluicegate, spawn, stop};
use common::{TempDir, connect, http, metric, request, start};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1000}\n";

/// Reads until the server closes the connection; how long after `since` that was, or
/// `None` if it was still open `within` after `since`.
async fn closed_after(stream: &mut (impl AsyncRead + Unpin), since: Instant, within: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((since + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one response with a `Content-Length` body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|n| n.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed mid-response: {text:?}");
        response.extend_from_slice(&buf[..n]);
    }
}

/// Whether a `ShouldRateLimit` call on a new connection is answered within `within`.
async fn grpc_answers(addr: SocketAddr, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        let mut client = connect(addr).await;
        client.should_rate_limit(request("d", &[&[("k", "v")]])).await.is_ok()
    })
    .await
    .unwrap_or(false)
}

#[tokio::test]
async fn a_silent_or_dribbling_http_client_is_closed_at_the_header_read_timeout() {
    let server = start(&[("d.yaml", RULES)], &[("HTTP_HEADER_READ_TIMEOUT", "1s")], 0).await;
    let connected = Instant::now();
    let mut silent = TcpStream::connect(server.http).await.unwrap();
    let (mut dribbler, mut dribble) = TcpStream::connect(server.http).await.unwrap().into_split();
    let dribbling = tokio::spawn(async move {
        for byte in b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\n".iter().cycle() {
            if dribble.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let silent_closed = closed_after(&mut silent, connected, Duration::from_secs(5)).await;
    let dribbler_closed = closed_after(&mut dribbler, connected, Duration::from_secs(5)).await;
    dribbling.abort();
    for (who, closed) in [("silent", silent_closed), ("dribbling", dribbler_closed)] {
        let closed = closed.unwrap_or_else(|| panic!("the {who} connection was still open after 5 s"));
        assert!(closed >= Duration::from_millis(900), "the {who} connection closed early, after {closed:?}");
    }
    assert_eq!(http(server.http, "GET", "/healthcheck", "").await, (200, "OK".into()), "others still served");
    let timeouts = [("listener", "http"), ("timeout", "header_read")];
    assert_eq!(metric(server.http, "sluicegate_timeouts_total", &timeouts).await, Some(2.0));
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_http_connection_is_closed_at_the_idle_timeout() {
    let settings = [("HTTP_IDLE_TIMEOUT", "1s"), ("HTTP_HEADER_READ_TIMEOUT", "30s")];
    let server = start(&[("d.yaml", RULES)], &settings, 0).await;
    let mut conn = TcpStream::connect(server.http).await.unwrap();
    for _ in 0..2 {
        conn.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let response = read_response(&mut conn).await;
        assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("OK"), "{response:?}");
    }
    let answered = Instant::now();
    let closed = closed_after(&mut conn, answered, Duration::from_secs(5)).await.expect("still open after 5 s");
    assert!(closed >= Duration::from_millis(900), "closed after {closed:?}, before the idle timeout");
    let timeouts = [("listener", "http"), ("timeout", "idle")];
    assert_eq!(metric(server.http, "sluicegate_timeouts_total", &timeouts).await, Some(1.0));
    server.stop().await;
}

#[tokio::test]
async fn an_http_body_dribbled_past_the_request_timeout_gets_408_and_a_close() {
    let server = start(&[("d.yaml", RULES)], &[("HTTP_REQUEST_TIMEOUT", "1s")], 0).await;
    let started = Instant::now();
    let mut conn = TcpStream::connect(server.http).await.unwrap();
    conn.write_all(b"POST /json HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"dom").await.unwrap();
    let response = read_response(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "answered after {:?}", started.elapsed());
    assert!(closed_after(&mut conn, Instant::now(), Duration::from_secs(5)).await.is_some(), "kept open after a 408");
    server.stop().await;
}

#[tokio::test]
async fn a_grpc_connection_without_the_http2_preface_is_closed_at_the_handshake_timeout() {
    let server = start(&[("d.yaml", RULES)], &[("GRPC_HANDSHAKE_TIMEOUT", "1s")], 0).await;
    let connected = Instant::now();
    let mut silent = TcpStream::connect(server.grpc).await.unwrap();
    let mut partial = TcpStream::connect(server.grpc).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(); // 16 of the preface's 24 bytes
    for (who, conn) in [("silent", &mut silent), ("partial", &mut partial)] {
        let closed = closed_after(conn, connected, Duration::from_secs(5)).await;
        let closed = closed.unwrap_or_else(|| panic!("the {who} connection was still open after 5 s"));
        assert!(closed >= Duration::from_millis(900), "the {who} connection closed early, after {closed:?}");
    }
    assert!(grpc_answers(server.grpc, Duration::from_secs(5)).await, "a well-behaved client is still served");
    let timeouts = [("listener", "grpc"), ("timeout", "handshake")];
    assert_eq!(metric(server.http, "sluicegate_timeouts_total", &timeouts).await, Some(2.0));
    server.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_wait_until_one_closes() {
    let settings = [("GRPC_MAX_CONNECTIONS", "2"), ("HTTP_MAX_CONNECTIONS", "1"), ("GRPC_HANDSHAKE_TIMEOUT", "60s")];
    let server = start(&[("d.yaml", RULES)], &settings, 0).await;
    let held: Vec<TcpStream> =
        vec![TcpStream::connect(server.grpc).await.unwrap(), TcpStream::connect(server.grpc).await.unwrap()];
    let open = [("listener", "grpc")];
    poll_until("the two held connections are accepted", Duration::from_secs(5), async || {
        metric(server.debug, "sluicegate_connections_open", &open).await == Some(2.0)
    })
    .await;
    let waiting = tokio::spawn(grpc_answers(server.grpc, Duration::from_secs(20)));
    // Asserting that something does not happen: the third connection is given half a
    // second in which it must not be served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served past GRPC_MAX_CONNECTIONS=2");
    assert!(metric(server.debug, "sluicegate_connections_at_cap_total", &open).await >= Some(1.0));
    assert_eq!(http(server.http, "GET", "/healthcheck", "").await.0, 200, "the HTTP listener has its own cap");

    drop(held);
    assert!(waiting.await.unwrap(), "the waiting connection was not served once the held ones closed");

    // The HTTP cap: one silent connection holds the only place; a request waits for it.
    let silent = TcpStream::connect(server.http).await.unwrap();
    poll_until("the silent HTTP connection is accepted", Duration::from_secs(5), async || {
        metric(server.debug, "sluicegate_connections_open", &[("listener", "http")]).await == Some(1.0)
    })
    .await;
    let http_addr = server.http;
    let health = tokio::spawn(async move { http(http_addr, "GET", "/healthcheck", "").await.0 });
    // Asserting that something does not happen, as above.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!health.is_finished(), "a second HTTP connection was served past HTTP_MAX_CONNECTIONS=1");
    drop(silent);
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), health).await.unwrap().unwrap(), 200);
    server.stop().await;
}

/// User and system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output();
    output.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100)
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_serves_again_once_they_free() {
    const FD_LIMIT: usize = 64;
    let dir = TempDir::new("emfile");
    dir.write("rules/d.yaml", RULES);
    // `ulimit` in a shell that then becomes sluicegate: no new dependency, no privilege.
    let mut command = std::process::Command::new("/bin/sh");
    loopback_env(&mut command)
        .arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(sluicegate().get_program())
        .arg("--config")
        .arg(dir.path().join("rules"))
        .env("GRPC_WORKERS", "1")
        .env("GRPC_HANDSHAKE_TIMEOUT", "60s");
    let running = spawn(command);
    let pid = running.child.id();
    let open_fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());

    // More connections than descriptors: the rest stay queued, and the listener readable.
    let mut held = Vec::new();
    for _ in 0..FD_LIMIT + 40 {
        held.push(TcpStream::connect(running.grpc).await.unwrap());
    }
    poll_until("the server runs out of descriptors", Duration::from_secs(10), async || open_fds() >= FD_LIMIT - 2)
        .await;

    // Not a wait for an event: the stretch of time over which the CPU use is measured.
    let (before, measured_from) = (cpu_ticks(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = (cpu_ticks(pid) - before) as f64 / clock_ticks_per_second() as f64;
    let share = used / measured_from.elapsed().as_secs_f64();
    assert!(share < 0.2, "out of descriptors the server used {:.0}% of a core", share * 100.0);

    let lines: Vec<String> = running.lines.try_iter().collect();
    let reports = lines.iter().filter(|l| l.contains("cannot accept connections")).count();
    assert!((1..=2).contains(&reports), "accept errors are reported, at most every 10 s: {lines:#?}");

    drop(held);
    poll_until("serving again after the descriptors are freed", Duration::from_secs(10), async || {
        grpc_answers(running.grpc, Duration::from_secs(2)).await
    })
    .await;
    assert_eq!(http(running.http, "GET", "/healthcheck", "").await.0, 200);
    stop(running);
}
