//! Stats stay small whatever requests say, and scraping them never stalls health checks:
//! the whole service in-process, driven over real sockets with the largest descriptors the
//! request caps allow (64 entries of 16 KiB).

mod common;

use std::time::{Duration, Instant};

use common::{descriptor, http, start};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

const RULES: &str = r#"
domain: api
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 3}
"#;

const ENTRY_BYTES: usize = 16 * 1024;

/// One descriptor of 64 entries with 16 KiB values and a limit override, so its stats key
/// is every `key_value`; `tag` changes only the end of the last value.
fn huge_override_request(tag: usize) -> RateLimitRequest {
    let values: Vec<(String, String)> = (0..64)
        .map(|i| {
            let tag = if i == 63 { format!("{tag:05}") } else { String::new() };
            (format!("k{i}"), format!("{}{tag}", "v".repeat(ENTRY_BYTES - tag.len())))
        })
        .collect();
    let entries: Vec<(&str, &str)> = values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut d = descriptor(&entries);
    d.limit = Some(RateLimitOverride { requests_per_unit: 1000, unit: 2 });
    RateLimitRequest { domain: "api".into(), descriptors: vec![d], hits_addend: 0 }
}

fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(&format!("{name}=\"")).nth(1)?.split('"').next()
}

#[tokio::test]
async fn huge_override_values_keep_metrics_small_and_distinct() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    let mut client = server.client().await;
    for tag in 0..30 {
        client.should_rate_limit(huge_override_request(tag)).await.unwrap();
    }
    // The same values again count on the same series.
    client.should_rate_limit(huge_override_request(3)).await.unwrap();
    let (status, body) = http(server.http, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    // Each request carried 1 MiB of labels, six series' worth: 190 MB unbounded.
    assert!(body.len() < 1024 * 1024, "/metrics is {} bytes", body.len());
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("ratelimit_service_rate_limit_total_hits{domain=\"api\",key1=\"k0_"))
        .collect();
    assert_eq!(lines.len(), 30, "every distinct request keeps its own series");
    let mut counts: Vec<u64> = lines.iter().filter_map(|l| l.rsplit(' ').next()?.parse().ok()).collect();
    counts.sort_unstable();
    assert_eq!((counts[0], counts[29], counts.iter().sum::<u64>()), (1, 2, 31));
    for line in &lines {
        for name in ["key1", "key2"] {
            let value = label(line, name).unwrap_or_default();
            assert!(value.len() <= 128 && value.contains("…#"), "{name}={value:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn huge_unknown_domains_fold_past_the_cap() {
    let server = start(&[("api.yaml", RULES)], &[("STATS_MAX_VALUE_SERIES", "20")], 1_000_000).await;
    let mut client = server.client().await;
    for i in 0..40 {
        let domain = format!("{i:05}{}", "x".repeat(ENTRY_BYTES - 5));
        let request = RateLimitRequest { domain, descriptors: vec![descriptor(&[("k", "v")])], hits_addend: 0 };
        client.should_rate_limit(request).await.unwrap();
    }
    let (_, body) = http(server.http, "GET", "/metrics", "").await;
    let lines: Vec<&str> =
        body.lines().filter(|l| l.starts_with("ratelimit_service_rate_limit_domain_not_found{")).collect();
    assert_eq!(lines.len(), 20 + 1, "{lines:?}");
    assert!(lines.iter().all(|l| label(l, "domain").is_some_and(|d| d.len() <= 128)), "{lines:?}");
    assert!(body.contains("ratelimit_service_rate_limit_domain_not_found{domain=\"__folded__\"} 20\n"));
    assert!(body.len() < 64 * 1024, "/metrics is {} bytes", body.len());
    server.stop().await;
}

#[tokio::test]
async fn healthcheck_answers_while_metrics_render() {
    let server = start(&[("api.yaml", RULES)], &[], 1_000_000).await;
    // As many series named by request values as the cap allows, with long labels: the
    // largest render the defaults allow, minus the counters' widths.
    let stats = server.shared.stats.clone();
    for i in 0..10_000 {
        stats.for_values(vec!["api".into(), format!("user_{i:050}"), format!("{i:045}")]);
    }
    let scraping = Instant::now();
    let scrapers: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.http;
            tokio::spawn(async move {
                let mut sizes = Vec::new();
                while scraping.elapsed() < Duration::from_secs(2) {
                    sizes.push(http(addr, "GET", "/metrics", "").await.1.len());
                }
                sizes
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while scraping.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        assert_eq!(http(server.http, "GET", "/healthcheck", "").await, (200, "OK".to_string()));
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut scrapes = Vec::new();
    for scraper in scrapers {
        scrapes.extend(scraper.await.unwrap());
    }
    assert!(!scrapes.is_empty() && scrapes.iter().all(|&size| size > 1_000_000 && size < 13_000_000), "{scrapes:?}");
    assert!(slowest < Duration::from_secs(1), "/healthcheck took {slowest:?} while /metrics rendered");
    server.stop().await;
}
