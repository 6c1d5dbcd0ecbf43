//! The Rate Limit Quota Service (RLQS): Envoy's `rate_limit_quota` filter, served from
//! the same rules as `ShouldRateLimit`.
//!
//! Envoy's filter streams usage reports per bucket and receives assignments back, so it
//! decides locally and no request waits on a call. Per stream, the domain is the first
//! report's; per bucket, the first report subscribes and is answered at once. A bucket
//! id is matched against the domain's rule tree (`rules::Domain::bucket_levels` orders
//! its entries); `unlimited` (and whitelist, and shadow-mode) rules give `ALLOW_ALL`, a
//! limit of 0 `DENY_ALL`, any other limit a token bucket per client, the limit divided
//! among the clients reporting the bucket in proportion to their demand. docs/rlqs.md
//! explains it for operators.
//!
//! The protocol is marked work in progress upstream; this implements it as the protos
//! of envoy-types 0.7.7 (`envoy.service.rate_limit_quota.v3`) define it.
//!
//! Layout, one concern each: `stream` (the gRPC stream: reading reports, sending
//! actions, ending with a status), `validate` (malformed reports), `matching` (bucket to
//! rule to [`Target`]), `allocator` (where a bucket's budget comes from, [`QuotaSource`],
//! and dividing it by demand), `fleet` (with Redis, a bucket's budget as the part of its
//! limit this replica claimed, by demand, with `claim`'s script), `assign` (shares to Envoy's strategies and actions),
//! `table` (subscriptions, releases, reloads). This module holds them together: the table
//! behind one lock, the rules in force, the clock and the metrics.
//!
//! It never touches counters (`store`) or `ShouldRateLimit` (`service`): quota is handed
//! out, not counted here.

mod allocator;
mod assign;
mod claim;
mod fleet;
mod matching;
mod stream;
mod table;
mod validate;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::RateLimitQuotaResponse;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::BucketAction as Action;

pub use allocator::{Demand, QuotaSource, WholeLimit, demands, divide};
pub use assign::Strategy;
pub use claim::SOURCE as CLAIM_SCRIPT;
pub use fleet::{CLAIM_MARGIN, FleetShares, SYNC_INTERVAL};
pub use matching::{Quota, Resolved, Target, resolve};
pub use stream::RlqsService;
pub use table::{BucketName, BucketView, HYSTERESIS, StreamId, TTL_INTERVALS, Totals};
pub use validate::{MAX_ELAPSED, MAX_REQUESTS, Usage, validate};

use crate::clock::Clock;
use crate::service::SharedConfig;
use crate::signal::Shutdown;
use crate::stats::Stats;
use crate::stats::rlqs::RlqsMetrics;
use table::{Ctx, Outgoing, Table};

/// Where a stream's answers go: a bounded queue its gRPC response reads.
pub type Outbox = tokio::sync::mpsc::Sender<Result<RateLimitQuotaResponse, tonic::Status>>;

/// What one client can cost, and how long assignments live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RlqsOptions {
    pub max_streams: usize,
    pub max_buckets_per_stream: usize,
    /// Buckets of every stream together: what memory all clients together can cost.
    pub max_buckets: usize,
    pub max_bucket_entries: usize,
    /// Bytes of a bucket id's keys and values together, and of a domain.
    pub max_bucket_id_bytes: usize,
    /// The shortest `assignment_time_to_live` (otherwise [`TTL_INTERVALS`] of the
    /// client's reporting interval); also how long a silent client keeps its share.
    pub min_assignment_ttl: Duration,
    /// The global `SHADOW_MODE`: every bucket is `ALLOW_ALL`.
    pub shadow_mode: bool,
}

impl RlqsOptions {
    pub const DEFAULT: RlqsOptions = RlqsOptions {
        max_streams: 1024,
        max_buckets_per_stream: 10_000,
        max_buckets: 100_000,
        max_bucket_entries: 16,
        max_bucket_id_bytes: 1024,
        // Envoy 1.40 reports every 5 s whatever `reporting_interval` says (a hard-coded
        // interval in its filter), and a bucket's first report covers no time: an
        // assignment must outlive three of those reports.
        min_assignment_ttl: Duration::from_secs(15),
        shadow_mode: false,
    };
}

impl Default for RlqsOptions {
    fn default() -> Self {
        RlqsOptions::DEFAULT
    }
}

/// How often silent clients are released and the metrics refreshed.
const UPKEEP_INTERVAL: Duration = Duration::from_millis(500);

/// The quota service shared by every gRPC worker.
#[derive(Debug)]
pub struct Rlqs {
    config: SharedConfig,
    clock: Clock,
    options: RlqsOptions,
    source: Arc<dyn QuotaSource>,
    /// With `BACKEND_TYPE=redis`: the source that divides limits among replicas, whose
    /// sync loop [`Rlqs::run`] drives.
    fleet: Option<Arc<FleetShares>>,
    metrics: RlqsMetrics,
    /// A std mutex: it is held for map updates and a little arithmetic, never across an
    /// await, and reports arrive about once per reporting interval per stream.
    table: Mutex<Table>,
    /// Woken when new rules are in force, so assignments follow a reload at once.
    reloaded: tokio::sync::Notify,
}

impl Rlqs {
    /// The service over the rules in `config`, dividing whole limits per replica.
    pub fn new(config: SharedConfig, clock: Clock, options: RlqsOptions, stats: &Stats) -> Rlqs {
        Rlqs {
            config,
            clock,
            options,
            source: Arc::new(WholeLimit),
            fleet: None,
            metrics: stats.rlqs(),
            table: Mutex::default(),
            reloaded: tokio::sync::Notify::new(),
        }
    }

    /// The same, with budgets from `source`.
    pub fn with_source(self, source: Arc<dyn QuotaSource>) -> Rlqs {
        Rlqs { source, fleet: None, ..self }
    }

    /// The same, dividing each limit among the replicas sharing `fleet`'s Redis.
    pub fn with_fleet(self, fleet: Arc<FleetShares>) -> Rlqs {
        Rlqs { source: fleet.clone(), fleet: Some(fleet), ..self }
    }

    pub fn options(&self) -> &RlqsOptions {
        &self.options
    }

    /// Runs `op` on the table under the rules in force (resolving every bucket again
    /// first if they changed), then sends what it produced.
    fn with_table<R>(&self, op: impl FnOnce(&mut Table, &Ctx<'_>, &mut Outgoing) -> R) -> R {
        let active = self.config.load();
        let snapshot = active.as_deref().map(|a| &a.snapshot);
        let ctx = Ctx {
            rules: snapshot.map(|s| &s.rules),
            version: snapshot.map(|s| s.version),
            options: &self.options,
            source: &*self.source,
            now: self.clock.now(),
        };
        // A panic under the lock leaves the table as it was mid-update: still bounded,
        // and every entry still ends with its stream or its TTL.
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Outgoing::new();
        if table.version != ctx.version {
            table.reresolve(&ctx, &mut out);
        }
        let result = op(&mut table, &ctx, &mut out);
        self.deliver(&table, out);
        result
    }

    /// Queues each stream's actions as one response. Never waits: a client that does
    /// not read its answers loses them (counted), and gets fresh ones on its next report.
    fn deliver(&self, table: &Table, out: Outgoing) {
        for (stream, actions) in out {
            if actions.is_empty() {
                continue;
            }
            for action in &actions {
                match action.bucket_action {
                    Some(Action::AbandonAction(_)) => self.metrics.abandons.increment(1),
                    _ => self.metrics.assignments.increment(1),
                }
            }
            let Some(outbox) = table.outbox(stream) else { continue };
            if outbox.try_send(Ok(RateLimitQuotaResponse { bucket_action: actions })).is_err() {
                self.metrics.undelivered.increment(1);
            }
        }
    }

    /// A new stream answering through `outbox`, unless `RLQS_MAX_STREAMS` are open.
    pub fn open_stream(&self, outbox: Outbox) -> Result<StreamId, tonic::Status> {
        let max = self.options.max_streams;
        let opened = self.with_table(|table, _, _| table.open(outbox, max));
        self.publish();
        opened.ok_or_else(|| {
            self.metrics.refused_streams.increment(1);
            tonic::Status::resource_exhausted(format!("{max} RLQS streams are open (RLQS_MAX_STREAMS)"))
        })
    }

    /// Applies one checked message of `stream`.
    pub fn report(&self, stream: StreamId, domain: &str, usages: Vec<Usage>) {
        self.metrics.reports.increment(usages.len() as u64);
        for usage in &usages {
            self.metrics.reported_allowed.increment(usage.allowed);
            self.metrics.reported_denied.increment(usage.denied);
        }
        let refused = self.with_table(|table, ctx, out| table.report(ctx, stream, domain, usages, out));
        if refused > 0 {
            self.metrics.refused_buckets.increment(refused as u64);
            tracing::warn!(
                stream,
                refused,
                per_stream = self.options.max_buckets_per_stream,
                all = self.options.max_buckets,
                "RLQS buckets over RLQS_MAX_BUCKETS_PER_STREAM or RLQS_MAX_BUCKETS get no assignment"
            );
        }
    }

    /// Forgets `stream`, releasing its shares.
    pub fn close_stream(&self, stream: StreamId) {
        self.with_table(|table, ctx, out| table.close(ctx, stream, out));
        self.publish();
    }

    /// Counts a stream closed for a malformed report.
    pub fn invalid_report(&self) {
        self.metrics.invalid_reports.increment(1);
    }

    /// Tells the service new rules are in force (the app's installer calls it).
    pub fn rules_changed(&self) {
        self.reloaded.notify_one();
    }

    /// Releases silent clients' shares, follows a reload and the budgets (with a fleet),
    /// refreshes the metrics.
    pub fn upkeep(&self) {
        let rebalance = self.fleet.is_some();
        self.with_table(|table, ctx, out| {
            table.expire(ctx, out);
            if rebalance {
                table.rebalance(ctx, out);
            }
        });
        self.publish();
    }

    fn publish(&self) {
        let totals = self.totals();
        let m = &self.metrics;
        m.streams.set(totals.streams as f64);
        m.buckets.set(totals.buckets as f64);
        m.subscriptions.set(totals.subscriptions as f64);
        m.max_clients_per_bucket.set(totals.max_clients_per_bucket as f64);
        m.assigned_rate.set(totals.assigned_rate);
        m.reported_rate.set(totals.reported_rate);
    }

    pub fn totals(&self) -> Totals {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).totals()
    }

    /// At most `limit` buckets, in name order, for `/debug/config`.
    pub fn buckets(&self, limit: usize) -> Vec<BucketView> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).view(limit)
    }

    /// Upkeep every [`UPKEEP_INTERVAL`], and at once after a reload, until `stop`; with a
    /// fleet, its sync loop too, with an upkeep after every sync: the new budgets reach
    /// the clients before the next sync may release what they held.
    pub async fn run(self: Arc<Self>, mut stop: Shutdown) {
        let _sync = self.fleet.clone().map(|fleet| {
            let me = self.clone();
            AbortOnDrop(tokio::spawn(fleet.run(stop.clone(), move || me.upkeep())))
        });
        loop {
            tokio::select! {
                _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
                _ = self.reloaded.notified() => {}
                _ = stop.requested() => return,
            }
            self.upkeep();
        }
    }
}

/// Ends a task when its owner ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
