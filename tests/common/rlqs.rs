//! A tonic client of the Rate Limit Quota Service for the tests: open a stream, send
//! usage reports, read the actions back, simplified ([`Said`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::BucketAction;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::BucketAction as Action;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// One bucket's usage: its id, requests allowed and denied, over `elapsed_ms`.
pub type Use<'a> = (&'a [(&'a str, &'a str)], u64, u64, u64);

/// An open quota stream.
pub struct Quota {
    pub reports: Option<mpsc::Sender<RateLimitQuotaUsageReports>>,
    pub answers: Streaming<RateLimitQuotaResponse>,
}

pub async fn open(addr: SocketAddr) -> Result<Quota, Status> {
    let mut client = RateLimitQuotaServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let answers = client.stream_rate_limit_quotas(outbound).await?.into_inner();
    Ok(Quota { reports: Some(tx), answers })
}

pub fn id(entries: &[(&str, &str)]) -> BucketId {
    BucketId { bucket: entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

pub fn reports(domain: &str, usages: &[Use<'_>]) -> RateLimitQuotaUsageReports {
    RateLimitQuotaUsageReports {
        domain: domain.into(),
        bucket_quota_usages: usages
            .iter()
            .map(|(entries, allowed, denied, ms)| BucketQuotaUsage {
                bucket_id: Some(id(entries)),
                time_elapsed: Some(ProtoDuration {
                    seconds: (*ms / 1000) as i64,
                    nanos: (*ms % 1000 * 1_000_000) as i32,
                }),
                num_requests_allowed: *allowed,
                num_requests_denied: *denied,
            })
            .collect(),
    }
}

impl Quota {
    pub async fn send(&self, message: RateLimitQuotaUsageReports) {
        self.reports.as_ref().expect("the stream is open").send(message).await.unwrap();
    }

    pub async fn report(&self, domain: &str, usages: &[Use<'_>]) {
        self.send(reports(domain, usages)).await;
    }

    /// The next answer, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<Option<RateLimitQuotaResponse>, Status> {
        tokio::time::timeout(Duration::from_secs(10), self.answers.message()).await.expect("an answer within 10s")
    }

    pub async fn actions(&mut self) -> Vec<BucketAction> {
        self.next().await.unwrap().expect("an answer, not the end of the stream").bucket_action
    }

    /// The next answer's only action, as (bucket id, what it says).
    pub async fn action(&mut self) -> (HashMap<String, String>, Said) {
        let actions = self.actions().await;
        assert_eq!(actions.len(), 1, "{actions:?}");
        said(&actions[0])
    }
}

/// What an action says, simplified.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Said {
    AllowAll,
    DenyAll,
    /// Tokens per second, max tokens, TTL.
    Tokens(f64, u32, Duration),
    Abandon,
}

pub fn said(action: &BucketAction) -> (HashMap<String, String>, Said) {
    let bucket = action.bucket_id.clone().unwrap().bucket;
    let said = match action.bucket_action.unwrap() {
        Action::AbandonAction(_) => Said::Abandon,
        Action::QuotaAssignmentAction(a) => {
            let ttl = a.assignment_time_to_live.unwrap();
            let ttl = Duration::new(ttl.seconds as u64, ttl.nanos as u32);
            match a.rate_limit_strategy.unwrap().strategy.unwrap() {
                Strategy::BlanketRule(b) if b == BlanketRule::AllowAll as i32 => Said::AllowAll,
                Strategy::BlanketRule(_) => Said::DenyAll,
                Strategy::TokenBucket(t) => {
                    let fill = t.fill_interval.unwrap();
                    let secs = fill.seconds as f64 + f64::from(fill.nanos) / 1e9;
                    assert!(ttl >= Duration::from_secs(2), "{ttl:?}");
                    Said::Tokens(f64::from(t.tokens_per_fill.unwrap().value) / secs, t.max_tokens, ttl)
                }
                other => panic!("unexpected strategy {other:?}"),
            }
        }
    };
    (bucket, said)
}

pub fn rate(said: Said) -> f64 {
    match said {
        Said::Tokens(rate, ..) => rate,
        other => panic!("expected a token bucket, got {other:?}"),
    }
}
