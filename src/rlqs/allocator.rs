//! Dividing a bucket's limit among the clients that report it.
//!
//! Owns two things. [`QuotaSource`] is the boundary between "how much of a bucket's limit
//! this replica may hand out" and "how this replica divides it": [`WholeLimit`] (the
//! memory backend) gives each replica the whole limit, so with several replicas the
//! division is per replica; `fleet::FleetShares` (the Redis backend) gives each replica
//! the part of the limit it claimed in Redis, so the fleet's budgets add up to the limit. [`divide`] splits a budget among clients in
//! proportion to their demand, the demand being what each one's reports say it was
//! offered ([`Demand`]: requests allowed plus denied over the time they cover), so the
//! shares always add up to the budget and never more.
//!
//! Pure arithmetic and small state: no clock, no I/O, no locks.

use std::time::Duration;

use super::matching::Quota;

/// Where a bucket's budget comes from. Called under the bucket table's lock on every
/// report, so it must answer at once from state it keeps (a leasing source renews its
/// leases in the background and answers from what it holds).
pub trait QuotaSource: Send + Sync + std::fmt::Debug {
    /// How many of `quota.per_window` requests per window this replica may divide among
    /// its clients of the bucket `name`, whose demands add up to `demand` requests per
    /// second, and whose assignments live at most `ttl` (how long a budget handed out
    /// may still be in use). At most `quota.per_window`.
    fn budget(&self, name: &str, quota: &Quota, demand: f64, ttl: Duration) -> f64;
}

/// Each replica divides the whole limit among its own clients.
#[derive(Clone, Copy, Debug, Default)]
pub struct WholeLimit;

impl QuotaSource for WholeLimit {
    fn budget(&self, _name: &str, quota: &Quota, _demand: f64, _ttl: Duration) -> f64 {
        f64::from(quota.per_window)
    }
}

/// A client far below the average still gets this fraction of the average client's
/// weight, so a quiet client that starts sending is not shut out until its next report.
const QUIET_FLOOR: f64 = 0.05;

/// Splits `budget` among clients in proportion to `demands` (requests per second), each
/// raised to [`QUIET_FLOOR`] of the average; all equal when nobody demands anything. The
/// shares add up to `budget` (within float rounding, which [`super::assign`] rounds down).
pub fn divide(budget: f64, demands: &[f64]) -> Vec<f64> {
    let n = demands.len();
    if n == 0 {
        return Vec::new();
    }
    let budget = if budget.is_finite() { budget.max(0.0) } else { 0.0 };
    let clean = |d: f64| if d.is_finite() { d.max(0.0) } else { 0.0 };
    let total: f64 = demands.iter().map(|&d| clean(d)).sum();
    if total <= 0.0 {
        return vec![budget / n as f64; n];
    }
    let floor = total / n as f64 * QUIET_FLOOR;
    let weights: Vec<f64> = demands.iter().map(|&d| clean(d).max(floor)).collect();
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|w| budget * w / sum).collect()
}

/// How many of the latest reports a client's demand is measured over: enough to smooth
/// a short report (Envoy reports at once when an assignment changes), few enough to
/// follow a change of load within a few reporting intervals.
const SAMPLES: usize = 3;

/// A client's offered load, from its latest reports.
///
/// Envoy (1.40) sends a bucket's first report as soon as its first request arrives,
/// covering no time, and truncates every report's `time_elapsed` to whole seconds; the
/// table therefore passes the time it measured between reports when that is longer.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    /// (requests, nanoseconds) of the latest reports, oldest overwritten first.
    samples: [(u64, u64); SAMPLES],
    next: usize,
}

impl Demand {
    /// Adds a report of `requests` (allowed plus denied) over `elapsed`.
    pub fn record(&mut self, requests: u64, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.samples[self.next] = (requests, nanos);
        self.next = (self.next + 1) % SAMPLES;
    }

    /// Requests per second over the latest reports; `None` until a report covers some
    /// time (a subscription's first report covers none, so says nothing of the rate).
    pub fn rate(&self) -> Option<f64> {
        let requests: f64 = self.samples.iter().map(|s| s.0 as f64).sum();
        let secs: f64 = self.samples.iter().map(|s| s.1 as f64).sum::<f64>() / 1e9;
        (secs >= 1e-3).then(|| requests / secs)
    }
}

/// Every client's demand for [`divide`]: a client not measured yet counts as the average
/// of those that are (as much as anyone, so a newcomer is neither shut out nor handed
/// everything), or 1 request per second when nobody is measured.
pub fn demands(rates: &[Option<f64>]) -> Vec<f64> {
    let known: Vec<f64> = rates.iter().flatten().copied().collect();
    let stand_in = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    rates.iter().map(|r| r.unwrap_or(stand_in)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn shares_follow_demand_and_add_up_to_the_budget() {
        let shares = divide(100.0, &[200.0, 100.0]);
        assert!(close(shares[0], 200.0 / 3.0) && close(shares[1], 100.0 / 3.0), "{shares:?}");
        assert!(close(shares.iter().sum(), 100.0));
    }

    #[test]
    fn nobody_demanding_means_equal_shares_and_a_quiet_client_keeps_a_floor() {
        assert_eq!(divide(90.0, &[0.0, 0.0, 0.0]), vec![30.0; 3]);
        let shares = divide(100.0, &[1000.0, 0.0]);
        assert!(shares[1] > 0.0 && close(shares.iter().sum(), 100.0), "{shares:?}");
    }

    #[test]
    fn nonsense_inputs_give_nothing_away() {
        assert!(divide(f64::NAN, &[1.0]).iter().all(|&s| s == 0.0));
        assert!(close(divide(10.0, &[f64::INFINITY, -5.0, 1.0]).iter().sum(), 10.0));
        assert!(divide(10.0, &[]).is_empty());
    }

    #[test]
    fn demand_is_measured_over_the_latest_reports() {
        let mut d = Demand::default();
        d.record(1, Duration::ZERO);
        assert_eq!(d.rate(), None, "a report covering no time says nothing of the rate");
        d.record(100, Duration::from_secs(1));
        assert!(close(d.rate().unwrap(), 101.0));
        for _ in 0..SAMPLES {
            d.record(200, Duration::from_secs(1));
        }
        assert!(close(d.rate().unwrap(), 200.0));
        d.record(50, Duration::from_millis(250));
        assert!(close(d.rate().unwrap(), 450.0 / 2.25));
    }

    #[test]
    fn an_unmeasured_client_counts_as_the_average() {
        assert_eq!(demands(&[Some(200.0), None, Some(100.0)]), vec![200.0, 150.0, 100.0]);
        assert_eq!(demands(&[None, None]), vec![1.0, 1.0]);
    }
}
