//! Redis keys: the reference's format where the reference would count, and a
//! self-describing extension of it everywhere else.
//!
//! The reference keys a fixed window `PREFIX + domain + "_" + (key "_" value "_")* +
//! windowStart` (`domain_key_value_1234`). A rule's first limit, when it is a plain
//! fixed window (multiplier 1), and a request's `limit` override use exactly that, so
//! sluicegate and envoyproxy/ratelimit replicas count together in one Redis during a
//! migration, and an operator's dashboards and `redis-cli` habits keep working.
//!
//! Every other limit (a rule's further limits, `default_limit`s, multiplied windows and
//! the other algorithms) appends a tag naming the limit, `..._<tag>`, where the tag
//! starts with a letter: a reference key always ends in digits, so the two forms never
//! collide, and two limits of one descriptor never share a key.
//!
//! Keys are not hash-tagged: every Redis operation here touches one key, so Redis
//! Cluster never needs two keys in one slot.

use std::fmt::Write;

use crate::clock::Nanos;
use crate::limiter::{Algorithm, fixed_window};
use crate::rules::EntryView;
use crate::store::Counter;
use crate::store::key::LimitIdentity;

/// Whether `counter` is kept under the reference's key.
pub fn is_reference_form<E: EntryView>(counter: &Counter<'_, E>) -> bool {
    let params = counter.params;
    if params.algorithm != Algorithm::FixedWindow || params.unit_multiplier != 1 {
        return false;
    }
    match counter.identity {
        LimitIdentity::Override { .. } => true,
        LimitIdentity::Rule(id) => {
            counter.rule.and_then(|rule| rule.limits.first()).is_some_and(|first| first.counter_id == id)
        }
        LimitIdentity::Default(_) => false,
    }
}

/// Writes `counter`'s key at `now` into `out` (cleared first).
pub fn write_key<E: EntryView>(out: &mut String, prefix: &str, counter: &Counter<'_, E>, now: Nanos) {
    out.clear();
    out.push_str(prefix);
    out.push_str(counter.domain);
    out.push('_');
    for (depth, entry) in counter.entries.iter().enumerate() {
        out.push_str(entry.key());
        out.push('_');
        out.push_str(counter.value_at(depth, entry));
        out.push('_');
    }
    let params = counter.params;
    if params.algorithm == Algorithm::FixedWindow {
        let _ = write!(out, "{}", fixed_window::window_start(now, params));
        if is_reference_form(counter) {
            return;
        }
        out.push('_');
    }
    write_tag(out, counter);
}

/// `fixed_window.100per60s`, `token_bucket.10per1s.b20`, with `default.` in front for a
/// domain's default limits.
fn write_tag<E: EntryView>(out: &mut String, counter: &Counter<'_, E>) {
    let params = counter.params;
    if matches!(counter.identity, LimitIdentity::Default(_)) {
        out.push_str("default.");
    }
    let _ = write!(out, "{}.{}per{}s", params.algorithm.name(), params.requests_per_unit, params.window_secs);
    if params.algorithm.has_burst() {
        let _ = write!(out, ".b{}", params.burst);
    }
}

/// The Redis Cluster slot of `key` (CRC16 of the key, or of its `{hash tag}`).
pub fn cluster_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(cluster_slot(b"{user1000}.following"), cluster_slot(b"user1000"));
        assert_eq!(cluster_slot(b"foo{}{bar}"), crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384);
        assert_eq!(cluster_slot(b"123456789"), 0x31C3);
    }
}
