//! The `/metrics` body: rendered off the async runtime, one render at a time.
//!
//! Owns turning the Prometheus recorder into the text a scrape gets without holding up
//! the runtime that serves it: the render runs on tokio's blocking pool, so `/healthcheck`
//! and `/json`, served by the same runtime, keep answering while it runs. Scrapes that
//! queue behind a render reuse the next one, which started after they arrived, so a burst
//! of scrapes costs at most two renders and shares their bodies instead of copying them.
//! The last body is kept until the next scrape replaces it: at most the worst-case size
//! (README, Metrics), usually a few KB.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;

use super::Stats;

/// The last render and when it started.
#[derive(Debug, Default)]
pub(super) struct Scrapes {
    last: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

impl Stats {
    /// The Prometheus text exposition, with everything recorded before the call, rendered
    /// on the blocking pool. `None` if the render did not finish (it panicked).
    pub async fn scrape(self: &Arc<Self>) -> Option<Bytes> {
        let arrived = Instant::now();
        let mut last = self.scrapes.last.lock().await;
        if let Some((started, body)) = last.as_ref()
            && *started >= arrived
        {
            return Some(body.clone());
        }
        let started = Instant::now();
        let stats = self.clone();
        let body = Bytes::from(tokio::task::spawn_blocking(move || stats.render()).await.ok()?);
        *last = Some((started, body.clone()));
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::StatsOptions;
    use super::*;

    fn total_hits(body: &Bytes) -> Option<u64> {
        let text = std::str::from_utf8(body).ok()?;
        let line = text.lines().find(|l| l.starts_with("ratelimit_service_rate_limit_total_hits{domain=\"d\""))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    #[tokio::test]
    async fn a_scrape_shows_everything_recorded_before_it() {
        let stats = Stats::new(StatsOptions::default());
        let series = stats.keyed(vec!["d".into(), "k".into()]);
        for hits in 1..=3 {
            series.total_hits.increment(1);
            assert_eq!(stats.scrape().await.as_ref().and_then(total_hits), Some(hits));
        }
    }

    #[tokio::test]
    async fn concurrent_scrapes_all_answer() {
        let stats = Stats::new(StatsOptions::default());
        stats.keyed(vec!["d".into(), "k".into()]).total_hits.increment(5);
        let scrapes = (0..20).map(|_| stats.scrape());
        let bodies = futures_util::future::join_all(scrapes).await;
        assert!(bodies.iter().all(|b| b.as_ref().and_then(total_hits) == Some(5)));
    }
}
