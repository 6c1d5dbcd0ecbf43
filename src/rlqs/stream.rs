//! One RLQS stream: `StreamRateLimitQuotas` on tonic.
//!
//! Owns the stream's life: open it under `RLQS_MAX_STREAMS`, read reports in order,
//! check each ([`super::validate`]) and apply it, and end it with a status: the client's
//! half-close ends it cleanly, a malformed report with `INVALID_ARGUMENT` and the
//! reason, shutdown with `UNAVAILABLE` (Envoy then reconnects, to another replica if
//! there is one). However it ends, the stream's clients leave their buckets (a drop
//! guard), so their shares go to the others.
//!
//! Answers are queued by the table's owner ([`super::Rlqs`]) and read by tonic from the
//! queue: a report's own answer and assignments pushed after another client's report or
//! a reload travel the same way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_server::RateLimitQuotaService;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{RateLimitQuotaResponse, RateLimitQuotaUsageReports};
use tonic::{Request, Response, Status, Streaming};

use super::validate::validate;
use super::{Rlqs, StreamId};
use crate::signal::Shutdown;

/// Answers a stream may have queued: a few reporting intervals' worth, so a burst of
/// pushes (a reload) fits, and a client that stops reading costs a bounded queue.
const OUTBOX: usize = 16;

/// How long the final status may wait for room in a full queue.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(1);

/// `envoy.service.rate_limit_quota.v3.RateLimitQuotaService` over the shared [`Rlqs`].
#[derive(Clone, Debug)]
pub struct RlqsService {
    rlqs: Arc<Rlqs>,
    /// Ends every stream at shutdown (a stream never ends on its own, and would hold
    /// the drain until its timeout).
    stop: Shutdown,
}

impl RlqsService {
    pub fn new(rlqs: Arc<Rlqs>, stop: Shutdown) -> Self {
        RlqsService { rlqs, stop }
    }
}

/// The response stream: what the stream's outbox receives.
#[derive(Debug)]
pub struct Outbound(tokio::sync::mpsc::Receiver<Result<RateLimitQuotaResponse, Status>>);

impl futures_util::Stream for Outbound {
    type Item = Result<RateLimitQuotaResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A subscribed stream; dropping it releases the stream's shares.
struct Subscribed {
    rlqs: Arc<Rlqs>,
    id: StreamId,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.rlqs.close_stream(self.id);
    }
}

#[tonic::async_trait]
impl RateLimitQuotaService for RlqsService {
    type StreamRateLimitQuotasStream = Outbound;

    async fn stream_rate_limit_quotas(
        &self,
        request: Request<Streaming<RateLimitQuotaUsageReports>>,
    ) -> Result<Response<Outbound>, Status> {
        let (outbox, answers) = tokio::sync::mpsc::channel(OUTBOX);
        let id = self.rlqs.open_stream(outbox.clone())?;
        let subscribed = Subscribed { rlqs: self.rlqs.clone(), id };
        // On the worker's own runtime, like the call itself.
        tokio::spawn(serve(subscribed, request.into_inner(), outbox, self.stop.clone()));
        Ok(Response::new(Outbound(answers)))
    }
}

/// Reads and applies `inbound`'s reports until the stream ends; then releases it and
/// sends the final status, if any.
async fn serve(
    subscribed: Subscribed,
    mut inbound: Streaming<RateLimitQuotaUsageReports>,
    outbox: super::Outbox,
    mut stop: Shutdown,
) {
    let mut domain: Option<String> = None;
    let status = loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            _ = stop.requested() => break Some(Status::unavailable("sluicegate is shutting down")),
            // The client is gone: tonic dropped the response stream.
            _ = outbox.closed() => break None,
        };
        match next {
            Ok(Some(reports)) => match validate(reports, domain.as_deref(), subscribed.rlqs.options()) {
                Ok((name, usages)) => {
                    subscribed.rlqs.report(subscribed.id, &name, usages);
                    domain = Some(name);
                }
                Err(why) => {
                    subscribed.rlqs.invalid_report();
                    tracing::info!(stream = subscribed.id, reason = %why, "closing an RLQS stream: malformed report");
                    break Some(Status::invalid_argument(why));
                }
            },
            // The client half-closed: it will send nothing more, so nothing more is owed.
            Ok(None) => break None,
            Err(status) => {
                tracing::debug!(stream = subscribed.id, %status, "an RLQS stream broke");
                break None;
            }
        }
    };
    // Leave the buckets first, so no push lands after the final status.
    drop(subscribed);
    if let Some(status) = status {
        let _ = tokio::time::timeout(FINAL_STATUS_WAIT, outbox.send(Err(status))).await;
    }
}
