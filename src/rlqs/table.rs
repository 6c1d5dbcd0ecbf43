//! The bucket table: which streams report which buckets, and what each was assigned.
//!
//! Owns the life of a subscription: a stream's first report of a bucket subscribes it
//! (at most `RLQS_MAX_BUCKETS_PER_STREAM` per stream and `RLQS_MAX_BUCKETS` in all;
//! further buckets get no assignment and Envoy applies its `no_assignment_behavior`); each report records the client's
//! demand and answers it at once; a stream that closes, or a client silent for longer
//! than its assignment lives, releases its share, and the other clients of the bucket
//! are given the freed quota. When the rules change, every bucket is resolved again: a
//! bucket whose rule went away is abandoned by every client, one whose target changed is
//! reassigned to every client.
//!
//! The division keeps one invariant: the shares in force (as last sent) of a limited
//! bucket never add up to more than its budget. To spare Envoy a fresh token bucket (and
//! its burst) on every report, a client whose new share is within [`HYSTERESIS`] of the
//! one it holds keeps it, when the kept shares and the new ones still fit the budget.
//! The table decides and records; sending is the caller's, after each operation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::rate_limit_quota::v3::BucketId;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::BucketAction;
use smallvec::SmallVec;

use super::allocator::{Demand, QuotaSource, demands, divide};
use super::assign::{Strategy, abandon};
use super::matching::{Resolved, Target, resolve};
use super::validate::Usage;
use super::{Outbox, RlqsOptions};
use crate::clock::Nanos;
use crate::rules::RuleSet;

/// A share within this fraction of the one a client holds is not worth a new token
/// bucket.
pub const HYSTERESIS: f64 = 0.05;

/// An assignment lives this many of the client's reporting intervals (and at least
/// `RLQS_ASSIGNMENT_TTL_MIN`): a client that misses one report keeps its quota.
pub const TTL_INTERVALS: u32 = 3;

pub type StreamId = u64;

/// `d` rounded up to whole seconds: Envoy (1.40) reads only the seconds of an
/// `assignment_time_to_live`.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// A bucket: its domain and its id's entries, sorted by key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BucketName {
    pub domain: Arc<str>,
    pub entries: Box<[(Box<str>, Box<str>)]>,
}

impl BucketName {
    pub fn entries(&self) -> SmallVec<[(&str, &str); 8]> {
        self.entries.iter().map(|(k, v)| (&**k, &**v)).collect()
    }

    fn proto(&self) -> BucketId {
        BucketId { bucket: self.entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    /// `domain{k=v,k=v}`, for logs and the quota source.
    pub fn describe(&self) -> String {
        let entries: Vec<String> = self.entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}{{{}}}", self.domain, entries.join(","))
    }
}

/// What an operation needs besides the table.
pub struct Ctx<'a> {
    pub rules: Option<&'a RuleSet>,
    pub version: Option<u64>,
    pub options: &'a RlqsOptions,
    pub source: &'a dyn QuotaSource,
    pub now: Nanos,
}

/// Actions to send after an operation, by stream, in order.
pub type Outgoing = HashMap<StreamId, Vec<BucketAction>>;

#[derive(Debug)]
struct StreamState {
    outbox: Outbox,
    domain: Option<Arc<str>>,
    buckets: HashSet<Arc<BucketName>>,
}

#[derive(Debug)]
struct Bucket {
    id: BucketId,
    resolved: Resolved,
    clients: HashMap<StreamId, Client>,
}

#[derive(Debug)]
struct Client {
    demand: Demand,
    last_report: Nanos,
    ttl: Duration,
    sent: Option<Sent>,
}

/// What a client was last assigned, and the share (requests per window) behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sent {
    strategy: Strategy,
    share: f64,
}

/// One bucket as operators see it (`/debug/config`).
#[derive(Clone, Debug)]
pub struct BucketView {
    pub name: Arc<BucketName>,
    pub rule: Option<String>,
    pub target: Target,
    /// Per client: its stream, its demand (requests per second) and what it holds.
    pub clients: Vec<(StreamId, f64, Option<Strategy>)>,
}

/// Totals for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub streams: usize,
    pub buckets: usize,
    pub subscriptions: usize,
    pub max_clients_per_bucket: usize,
    pub assigned_rate: f64,
    pub reported_rate: f64,
}

#[derive(Debug, Default)]
pub struct Table {
    streams: HashMap<StreamId, StreamState>,
    buckets: HashMap<Arc<BucketName>, Bucket>,
    next_stream: StreamId,
    /// The rules version the buckets were last resolved against.
    pub version: Option<u64>,
}

impl Table {
    /// A new stream sending through `outbox`, unless `max` streams are open.
    pub fn open(&mut self, outbox: Outbox, max: usize) -> Option<StreamId> {
        if self.streams.len() >= max {
            return None;
        }
        self.next_stream += 1;
        self.streams.insert(self.next_stream, StreamState { outbox, domain: None, buckets: HashSet::new() });
        Some(self.next_stream)
    }

    /// Applies one message's usages from `stream` of `domain`; returns how many buckets
    /// were over the stream's cap (not subscribed).
    pub fn report(
        &mut self,
        ctx: &Ctx<'_>,
        stream: StreamId,
        domain: &str,
        usages: Vec<Usage>,
        out: &mut Outgoing,
    ) -> usize {
        let Table { streams, buckets, .. } = self;
        let Some(state) = streams.get_mut(&stream) else { return 0 };
        let domain = state.domain.get_or_insert_with(|| Arc::from(domain)).clone();
        // In message order, each once (a message may name a bucket twice).
        let mut touched: Vec<Arc<BucketName>> = Vec::new();
        let mut seen: HashSet<Arc<BucketName>> = HashSet::new();
        let mut refused = 0;
        for usage in usages {
            let name = BucketName { domain: domain.clone(), entries: usage.entries };
            let key = match buckets.get_key_value(&name) {
                Some((key, _)) => key.clone(),
                None => Arc::new(name),
            };
            if !state.buckets.contains(&key) {
                let new_bucket = !buckets.contains_key(&key);
                if state.buckets.len() >= ctx.options.max_buckets_per_stream
                    || (new_bucket && buckets.len() >= ctx.options.max_buckets)
                {
                    refused += 1;
                    continue;
                }
                state.buckets.insert(key.clone());
            }
            let bucket = buckets.entry(key.clone()).or_insert_with(|| Bucket {
                id: key.proto(),
                resolved: resolve(ctx.rules, &key.domain, &key.entries(), ctx.options.shadow_mode),
                clients: HashMap::new(),
            });
            let client = bucket.clients.entry(stream).or_insert_with(|| Client {
                demand: Demand::default(),
                last_report: ctx.now,
                ttl: ctx.options.min_assignment_ttl,
                sent: None,
            });
            // Envoy truncates `time_elapsed` to whole seconds: the time between this
            // client's reports, as measured here, is the better figure when longer.
            let measured = Duration::from_nanos(ctx.now.0.saturating_sub(client.last_report.0));
            let elapsed = usage.elapsed.max(measured);
            client.demand.record(usage.allowed.saturating_add(usage.denied), elapsed);
            client.last_report = ctx.now;
            client.ttl = whole_seconds(ctx.options.min_assignment_ttl.max(elapsed.saturating_mul(TTL_INTERVALS)));
            if seen.insert(key.clone()) {
                touched.push(key);
            }
        }
        for key in touched {
            self.reallocate(&key, Some(stream), ctx, out);
        }
        refused
    }

    /// Forgets `stream`; its shares go to the other clients of its buckets.
    pub fn close(&mut self, ctx: &Ctx<'_>, stream: StreamId, out: &mut Outgoing) {
        let Some(state) = self.streams.remove(&stream) else { return };
        out.remove(&stream);
        for key in state.buckets {
            self.leave(&key, stream, ctx, out);
        }
    }

    /// Drops every client silent for longer than its assignment lives.
    pub fn expire(&mut self, ctx: &Ctx<'_>, out: &mut Outgoing) {
        let mut gone: Vec<(Arc<BucketName>, StreamId)> = Vec::new();
        for (key, bucket) in &self.buckets {
            for (stream, client) in &bucket.clients {
                if ctx.now.0.saturating_sub(client.last_report.0)
                    > u64::try_from(client.ttl.as_nanos()).unwrap_or(u64::MAX)
                {
                    gone.push((key.clone(), *stream));
                }
            }
        }
        for (key, stream) in gone {
            if let Some(state) = self.streams.get_mut(&stream) {
                state.buckets.remove(&key);
            }
            self.leave(&key, stream, ctx, out);
        }
    }

    /// Resolves every bucket against the rules of `ctx`: a bucket whose rule went away
    /// is abandoned, one whose target changed is reassigned to every client.
    pub fn reresolve(&mut self, ctx: &Ctx<'_>, out: &mut Outgoing) {
        self.version = ctx.version;
        let keys: Vec<Arc<BucketName>> = self.buckets.keys().cloned().collect();
        for key in keys {
            let Some(bucket) = self.buckets.get_mut(&key) else { continue };
            let resolved = resolve(ctx.rules, &key.domain, &key.entries(), ctx.options.shadow_mode);
            if bucket.resolved.matched && !resolved.matched && ctx.rules.is_some() {
                for stream in bucket.clients.keys() {
                    out.entry(*stream).or_default().push(abandon(&bucket.id));
                    if let Some(state) = self.streams.get_mut(stream) {
                        state.buckets.remove(&key);
                    }
                }
                self.buckets.remove(&key);
            } else if resolved != bucket.resolved {
                bucket.resolved = resolved;
                self.reallocate(&key, None, ctx, out);
            }
        }
    }

    /// Divides every limited bucket again (its budget may have changed): only clients
    /// whose share moved past the hysteresis are sent anything.
    pub fn rebalance(&mut self, ctx: &Ctx<'_>, out: &mut Outgoing) {
        let limited: Vec<Arc<BucketName>> = self
            .buckets
            .iter()
            .filter(|(_, b)| matches!(b.resolved.target, Target::Limit(_)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in limited {
            self.reallocate(&key, None, ctx, out);
        }
    }

    /// Removes `stream`'s client from the bucket `key`, and gives its share to the others.
    fn leave(&mut self, key: &Arc<BucketName>, stream: StreamId, ctx: &Ctx<'_>, out: &mut Outgoing) {
        let Some(bucket) = self.buckets.get_mut(key) else { return };
        bucket.clients.remove(&stream);
        if bucket.clients.is_empty() {
            self.buckets.remove(key);
        } else {
            self.reallocate(key, None, ctx, out);
        }
    }

    /// Divides the bucket `key` among its clients again: `reporter` (the stream that just
    /// reported it) always gets its assignment, the others only when theirs changed.
    fn reallocate(&mut self, key: &Arc<BucketName>, reporter: Option<StreamId>, ctx: &Ctx<'_>, out: &mut Outgoing) {
        let Some(bucket) = self.buckets.get_mut(key) else { return };
        let mut ids: Vec<StreamId> = bucket.clients.keys().copied().collect();
        ids.sort_unstable();
        let planned: Vec<Sent> = match bucket.resolved.target {
            Target::Unassigned => return,
            Target::AllowAll => vec![Sent { strategy: Strategy::AllowAll, share: 0.0 }; ids.len()],
            Target::DenyAll => vec![Sent { strategy: Strategy::DenyAll, share: 0.0 }; ids.len()],
            Target::Limit(quota) => {
                let rates: Vec<Option<f64>> = ids.iter().map(|id| bucket.clients[id].demand.rate()).collect();
                let demands = demands(&rates);
                let held: Vec<Option<Sent>> = ids.iter().map(|id| bucket.clients[id].sent).collect();
                let ttl = bucket.clients.values().map(|c| c.ttl).max().unwrap_or_default();
                let budget = ctx
                    .source
                    .budget(&key.describe(), &quota, demands.iter().sum(), ttl)
                    .clamp(0.0, f64::from(quota.per_window));
                let targets = divide(budget, &demands);
                let close = |held: &Option<Sent>, target: f64| {
                    matches!(held, Some(Sent { strategy: Strategy::Tokens { .. }, share })
                        if *share > 0.0 && (target - share).abs() <= HYSTERESIS * share)
                };
                let mut keep: Vec<bool> = held.iter().zip(&targets).map(|(h, &t)| close(h, t)).collect();
                let committed: f64 =
                    (0..ids.len()).map(|i| if keep[i] { held[i].map_or(0.0, |s| s.share) } else { targets[i] }).sum();
                if committed > budget * (1.0 + 1e-9) {
                    keep.fill(false);
                }
                (0..ids.len())
                    .map(|i| match held[i] {
                        Some(sent) if keep[i] => sent,
                        _ => Sent { strategy: Strategy::for_share(&quota, targets[i]), share: targets[i] },
                    })
                    .collect()
            }
        };
        for (id, sent) in ids.iter().zip(planned) {
            let Some(client) = bucket.clients.get_mut(id) else { continue };
            if Some(*id) == reporter || client.sent.map(|s| s.strategy) != Some(sent.strategy) {
                out.entry(*id).or_default().push(sent.strategy.action(&bucket.id, client.ttl));
            }
            client.sent = Some(sent);
        }
    }

    /// Where to send `stream`'s actions.
    pub fn outbox(&self, stream: StreamId) -> Option<&Outbox> {
        self.streams.get(&stream).map(|s| &s.outbox)
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals { streams: self.streams.len(), buckets: self.buckets.len(), ..Totals::default() };
        for bucket in self.buckets.values() {
            totals.subscriptions += bucket.clients.len();
            totals.max_clients_per_bucket = totals.max_clients_per_bucket.max(bucket.clients.len());
            for client in bucket.clients.values() {
                totals.reported_rate += client.demand.rate().unwrap_or(0.0);
                totals.assigned_rate += client.sent.and_then(|s| s.strategy.rate()).unwrap_or(0.0);
            }
        }
        totals
    }

    /// At most `limit` buckets, in name order.
    pub fn view(&self, limit: usize) -> Vec<BucketView> {
        let mut names: Vec<&Arc<BucketName>> = self.buckets.keys().collect();
        names.sort_unstable_by(|a, b| (&a.domain, &a.entries).cmp(&(&b.domain, &b.entries)));
        names
            .into_iter()
            .take(limit)
            .map(|name| {
                let bucket = &self.buckets[name];
                let mut clients: Vec<(StreamId, f64, Option<Strategy>)> = bucket
                    .clients
                    .iter()
                    .map(|(id, c)| (*id, c.demand.rate().unwrap_or(0.0), c.sent.map(|s| s.strategy)))
                    .collect();
                clients.sort_unstable_by_key(|c| c.0);
                BucketView {
                    name: name.clone(),
                    rule: bucket.resolved.rule.clone(),
                    target: bucket.resolved.target,
                    clients,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rlqs::WholeLimit;
    use crate::rules::LimitRegistry;
    use crate::snapshot::load_texts;

    const RULES: &str =
        "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 100}\n";

    /// Requests per second every client of every bucket holds, as last sent.
    fn assigned(table: &Table) -> f64 {
        table.view(usize::MAX).iter().flat_map(|b| &b.clients).filter_map(|c| c.2.and_then(|s| s.rate())).sum()
    }

    proptest! {
        /// Whatever clients report, join and leave, and however time passes, the shares
        /// in force of a bucket never add up to more than its limit.
        #[test]
        fn the_shares_in_force_never_exceed_the_limit(
            steps in proptest::collection::vec((0..4usize, 0..4u8, 0..1000u64, 0..6000u64), 1..80)
        ) {
            let snapshot = load_texts(&[("api.yaml", RULES)], false, &LimitRegistry::new()).unwrap();
            let options = RlqsOptions { min_assignment_ttl: Duration::from_secs(2), ..RlqsOptions::DEFAULT };
            let mut table = Table::default();
            let mut streams: [Option<StreamId>; 4] = [None; 4];
            let mut now = 0u64;
            for (slot, op, requests, millis) in steps {
                now += millis * 1_000_000;
                let ctx = Ctx {
                    rules: Some(&snapshot.rules),
                    version: Some(1),
                    options: &options,
                    source: &WholeLimit,
                    now: Nanos(now),
                };
                let mut out = Outgoing::new();
                match (op, streams[slot]) {
                    (0 | 1, None) => streams[slot] = table.open(tokio::sync::mpsc::channel(1).0, 8),
                    (0 | 1, Some(id)) => {
                        let usage = Usage {
                            entries: vec![("k".into(), "v".into())].into_boxed_slice(),
                            allowed: requests,
                            denied: requests / 3,
                            elapsed: Duration::from_millis(millis),
                        };
                        table.report(&ctx, id, "api", vec![usage], &mut out);
                    }
                    (2, Some(id)) => {
                        table.close(&ctx, id, &mut out);
                        streams[slot] = None;
                    }
                    _ => table.expire(&ctx, &mut out),
                }
                let total = assigned(&table);
                prop_assert!(total <= 100.0 + 1e-9, "{total} per second assigned");
            }
        }
    }
}
