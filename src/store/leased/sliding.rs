//! Leases on sliding windows.
//!
//! Owns the sliding window's reservation (one atomic script on the per-request mode's
//! hash key `{i, c, p}`: the current window's index and count, the previous one's
//! count) and the outcomes a replica reports from its view of that key. A reservation
//! takes at most `min(want, max(need, floor(room / (2 * live))), room)` units into the
//! current count, where `room = limit - (floor(previous * left_of_window / window) +
//! current)`: the weighted estimate including every unit any replica took. Within a
//! window the estimate only falls (the previous window's weight decays), so a unit
//! taken now may be spent any time in the same window without passing the limit; a
//! lease never outlives its window. Rejected hits are not counted, as in per-request
//! mode. Giving units back is the per-request script's `sw_refund`.

use std::sync::LazyLock;

use redis::Value;

use super::reserve::{self, Ask, Script};
use crate::clock::Nanos;
use crate::limiter::{LimitParams, Outcome, State, Step, sliding_window};
use crate::store::StoreError;
use crate::store::redis::link::{Deployment, Link};
use crate::store::redis::script as per_request;

pub const SOURCE: &str = r#"
-- sluicegate leased mode: reserve units of a sliding window's current count.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local rpu = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local need = tonumber(ARGV[5])
local live = math.max(tonumber(ARGV[6]), 1)
local idx = math.floor(now / w)
local s = redis.call('HMGET', key, 'i', 'c', 'p')
local si, sc, sp = tonumber(s[1]), tonumber(s[2]) or 0, tonumber(s[3]) or 0
local at = now
if si and si > idx then
  idx = si
  at = idx * w
end
local prev, cur = 0, 0
if si == idx then prev, cur = sp, sc elseif si == idx - 1 then prev = sc end
local elapsed = at - idx * w
local before = math.floor(prev * (w - elapsed) / w) + cur
local room = rpu - before
if need <= 0 or room < need then return {0, idx, prev, cur} end
local got = math.min(want, math.max(need, math.floor(room / (2 * live))), room)
redis.call('HSET', key, 'i', idx, 'c', cur + got, 'p', prev)
redis.call('PEXPIRE', key, math.max(math.ceil(((idx + 2) * w - now) / 1000), 1))
return {got, idx, prev, cur + got}
"#;

pub static SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(SOURCE).get_hash().to_string());

const SLIDING: Script = (SOURCE, &SHA);
const PER_REQUEST: Script = (per_request::SOURCE, &per_request::SHA);

/// What a sliding-window reservation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub got: u64,
    pub window: u32,
    pub previous: u64,
    /// The current count after the reservation.
    pub current: u64,
}

/// Reserves units of the sliding window under `key`.
pub async fn reserve(
    backend: &Deployment,
    link: &Link,
    key: &str,
    ask: Ask,
    params: &LimitParams,
    now: Nanos,
) -> Result<Found, StoreError> {
    let window_us = (params.window_ns / 1_000).max(1);
    let reply = reserve::call(backend, link, SLIDING, |c| {
        c.arg(1).arg(key).arg(per_request::micros(now)).arg(window_us).arg(params.requests_per_unit);
        c.arg(ask.want).arg(ask.need).arg(ask.live);
    })
    .await?;
    let numbers: Option<Vec<u64>> = match &reply {
        Value::Array(items) if items.len() == 4 => items
            .iter()
            .map(|v| match v {
                Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            })
            .collect(),
        _ => None,
    };
    match numbers.as_deref() {
        Some(&[got, window, previous, current]) => {
            Ok(Found { got, window: u32::try_from(window).unwrap_or(u32::MAX), previous, current })
        }
        _ => Err(reserve::unexpected(backend, &[reply])),
    }
}

/// Gives `units` back to the current count of `window` under `key`.
pub async fn give_back(
    backend: &Deployment,
    link: &Link,
    key: &str,
    units: u64,
    window: u32,
    params: &LimitParams,
) -> Result<(), StoreError> {
    let in_window = Nanos(u64::from(window) * params.window_ns.max(1));
    reserve::call(backend, link, PER_REQUEST, |c| per_request::refund_args(c, key, params, units, in_window))
        .await
        .map(|_| ())
}

/// The outcome of `hits` decided against counts `previous` and `current` (before the
/// hits) of `window`, as the memory store's sliding window would decide it.
pub fn outcome(window: u32, previous: u64, current: u64, hits: u64, now: Nanos, params: &LimitParams) -> Outcome {
    let state = State {
        word: sliding_window::pack(window, u32::try_from(current).unwrap_or(u32::MAX)),
        aux: sliding_window::pack(window.wrapping_sub(1), u32::try_from(previous).unwrap_or(u32::MAX)),
    };
    match sliding_window::decide(state, now, hits, params) {
        Step::Decided { outcome, .. } => outcome,
        Step::Retry => Outcome {
            over_limit: false,
            before: current,
            after: current + hits,
            remaining: 0,
            reset_after: Nanos(params.window_ns),
        },
    }
}
