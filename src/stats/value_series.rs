//! Series named by request values, capped in number and in label bytes.
//!
//! Owns the series whose labels a request chose (`detailed_metric` and `value_to_metric`
//! rules, request limit overrides, unknown domains). Finding one that exists takes a read
//! lock and builds nothing. A new one is admitted only while the budget all of them share
//! lasts: at most `max_series` series and `max_bytes` bytes of label values, counted once
//! per series as the Prometheus text shows them (escapes included; each value already
//! bounded by [`ShownLabel`]), so the cap bounds what a scrape carries. What a series
//! past the budget becomes (`__folded__`) is the caller's choice.
//!
//! Series are never removed (the Prometheus recorder keeps them for the life of the
//! process), so the budget never refills, and a "no" from it is final.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, RwLock};

use smallvec::SmallVec;

use super::label::{BlockHasher, ShownLabel};

/// The cap the service always had: a detailed metric per user of a mid-size service fits,
/// and the six lines each series shows stay a few MB.
pub const DEFAULT_MAX_VALUE_SERIES: usize = 10_000;

/// 1 MiB: 10,000 series of about 100 bytes of labels each fit, and a scrape's label text
/// stays within six times this (each series shows on six lines).
pub const DEFAULT_MAX_VALUE_SERIES_BYTES: usize = 1 << 20;

/// 128 bytes holds the usual values whole (a UUID or an IPv6 address with its key, a
/// short path), keeps a series' three labels under 400 bytes, and keeps a statsd name
/// segment well inside the 255-byte file names Graphite stores each segment as.
pub const DEFAULT_MAX_VALUE_LABEL_BYTES: usize = 128;

/// The caps on series named by request values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueSeriesLimits {
    /// `STATS_MAX_VALUE_SERIES`: most series, of every kind together.
    pub max_series: usize,
    /// `STATS_MAX_VALUE_SERIES_BYTES`: most bytes of label values, over all of them, as
    /// the Prometheus text shows them.
    pub max_bytes: usize,
    /// `STATS_MAX_VALUE_LABEL_BYTES`: longest label value shown; longer ones are shortened.
    pub max_label_bytes: usize,
}

impl Default for ValueSeriesLimits {
    fn default() -> Self {
        ValueSeriesLimits {
            max_series: DEFAULT_MAX_VALUE_SERIES,
            max_bytes: DEFAULT_MAX_VALUE_SERIES_BYTES,
            max_label_bytes: DEFAULT_MAX_VALUE_LABEL_BYTES,
        }
    }
}

/// What the series named by request values have used of their limits.
#[derive(Debug)]
pub struct Budget {
    limits: ValueSeriesLimits,
    used: Mutex<Used>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    pub series: usize,
    pub bytes: usize,
}

impl Budget {
    pub fn new(limits: ValueSeriesLimits) -> Self {
        Budget { limits, used: Mutex::new(Used::default()) }
    }

    pub fn used(&self) -> Used {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admits(used: &Used, limits: &ValueSeriesLimits, bytes: usize) -> bool {
        used.series < limits.max_series && used.bytes.saturating_add(bytes) <= limits.max_bytes
    }

    /// Whether one more series of `bytes` label bytes would fit (without taking it).
    fn would_admit(&self, bytes: usize) -> bool {
        Self::admits(&self.used(), &self.limits, bytes)
    }

    /// Takes one series of `bytes` label bytes, if it fits.
    fn take(&self, bytes: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if !Self::admits(&used, &self.limits, bytes) {
            return false;
        }
        used.series += 1;
        used.bytes += bytes;
        true
    }
}

struct Entry<V> {
    labels: Box<[Box<str>]>,
    value: V,
}

/// Series by their shown labels. Keyed by a hash of the labels (random-keyed, so requests
/// cannot aim at one bucket), with the labels kept to tell colliding series apart.
pub struct SeriesMap<V> {
    by_hash: RwLock<HashMap<u64, SmallVec<[Entry<V>; 1]>>>,
    hasher: RandomState,
}

impl<V: Clone> Default for SeriesMap<V> {
    fn default() -> Self {
        SeriesMap { by_hash: RwLock::new(HashMap::new()), hasher: RandomState::new() }
    }
}

impl<V: Clone> SeriesMap<V> {
    fn hash(&self, labels: &[ShownLabel<'_>]) -> u64 {
        let mut hasher = BlockHasher::new(self.hasher.build_hasher());
        for label in labels {
            label.hash_into(&mut hasher);
        }
        hasher.finish()
    }

    fn find<'m>(entries: Option<&'m SmallVec<[Entry<V>; 1]>>, labels: &[ShownLabel<'_>]) -> Option<&'m V> {
        entries?
            .iter()
            .find(|e| e.labels.len() == labels.len() && labels.iter().zip(e.labels.iter()).all(|(l, s)| l.is(s)))
            .map(|e| &e.value)
    }

    /// The series shown as `labels`: the existing one, or a new one made by `register` if
    /// `budget` admits it; `None` past the budget.
    pub fn get_or_admit(
        &self,
        labels: &[ShownLabel<'_>],
        budget: &Budget,
        register: impl FnOnce(&[Box<str>]) -> V,
    ) -> Option<V> {
        self.get_or_insert_within(labels, Some(budget), register).ok()
    }

    /// The series shown as `labels`, made by `register` if new, whatever the budget: for
    /// series the caller bounds otherwise (the `__folded__` ones).
    pub fn get_or_insert(&self, labels: &[ShownLabel<'_>], register: impl FnOnce(&[Box<str>]) -> V) -> V {
        self.get_or_insert_within(labels, None, register).unwrap_or_else(|register| {
            let shown: Box<[Box<str>]> = labels.iter().map(|l| l.into_boxed_str()).collect();
            register(&shown)
        })
    }

    /// Gives `register` back when `budget` refuses the series.
    fn get_or_insert_within<F: FnOnce(&[Box<str>]) -> V>(
        &self,
        labels: &[ShownLabel<'_>],
        budget: Option<&Budget>,
        register: F,
    ) -> Result<V, F> {
        let hash = self.hash(labels);
        {
            let map = self.by_hash.read().unwrap_or_else(|p| p.into_inner());
            if let Some(value) = Self::find(map.get(&hash), labels) {
                return Ok(value.clone());
            }
        }
        let bytes = labels.iter().map(ShownLabel::exposition_len).sum();
        // Past the budget a miss stays a miss, so it need not wait for the write lock.
        if budget.is_some_and(|b| !b.would_admit(bytes)) {
            return Err(register);
        }
        let mut map = self.by_hash.write().unwrap_or_else(|p| p.into_inner());
        if let Some(value) = Self::find(map.get(&hash), labels) {
            return Ok(value.clone());
        }
        if budget.is_some_and(|b| !b.take(bytes)) {
            return Err(register);
        }
        let shown: Box<[Box<str>]> = labels.iter().map(|l| l.into_boxed_str()).collect();
        let value = register(&shown);
        map.entry(hash).or_default().push(Entry { labels: shown, value: value.clone() });
        Ok(value)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_hash.read().unwrap_or_else(|p| p.into_inner()).values().map(SmallVec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_series: usize, max_bytes: usize) -> ValueSeriesLimits {
        ValueSeriesLimits { max_series, max_bytes, max_label_bytes: 64 }
    }

    #[test]
    fn existing_series_are_found_and_new_ones_admitted_within_the_budget() {
        let budget = Budget::new(limits(3, 1000));
        let map = SeriesMap::<usize>::default();
        let mut made = 0;
        let mut get = |a: &str, b: &str| {
            map.get_or_admit(&[ShownLabel::one(a, 64), ShownLabel::one(b, 64)], &budget, |_| {
                made += 1;
                made
            })
        };
        assert_eq!(get("d", "x"), Some(1));
        assert_eq!(get("d", "x"), Some(1));
        assert_eq!(get("d", "y"), Some(2));
        assert_eq!(get("dx", ""), Some(3), "labels are told apart where they meet");
        assert_eq!(get("d", "z"), None, "past the series cap");
        assert_eq!(get("d", "y"), Some(2), "existing series stay");
        assert_eq!(budget.used(), Used { series: 3, bytes: 2 + 2 + 2 });
    }

    #[test]
    fn the_byte_cap_counts_shown_label_bytes() {
        let budget = Budget::new(limits(100, 200));
        let map = SeriesMap::<()>::default();
        let long = "v".repeat(10_000);
        let admitted = (0..10)
            .filter(|i| {
                let value = format!("{i}{long}");
                map.get_or_admit(&[ShownLabel::one("d", 64), ShownLabel::one(&value, 64)], &budget, |_| ()).is_some()
            })
            .count();
        assert_eq!(admitted, 3, "each series shows 1 + 64 bytes");
        assert_eq!(budget.used(), Used { series: 3, bytes: 195 });
        assert!(map.get_or_admit(&[ShownLabel::one("d", 64)], &budget, |_| ()).is_some(), "small ones fit");
        map.get_or_insert(&[ShownLabel::one("e", 64), ShownLabel::one(&long, 64)], |_| ());
        assert_eq!(map.len(), 5);
    }
}
