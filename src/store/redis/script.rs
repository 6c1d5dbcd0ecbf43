//! The Lua script that decides the sliding window and both buckets inside Redis.
//!
//! Fixed windows need no script (the reference's `INCRBY` + `EXPIRE` is already atomic
//! per key); the other algorithms read, decide and write in one script call so that no
//! two replicas can both admit the last allowance. The script ports the arithmetic of
//! `limiter::sliding_window` and `limiter::gcra`, with one difference: Lua numbers are
//! doubles, exact only below 2^53, so times are microseconds (good until the year 2255)
//! and the GCRA emission interval is rounded up to a whole microsecond. Decisions agree
//! with the memory store's whenever the rate divides into whole microseconds (every
//! limit up to 1,000,000 per second, and most others); otherwise Redis is stricter by
//! under a microsecond per hit.
//!
//! The script returns `{over, before, after, remaining, reset_us}`, and Rust builds the
//! outcome from that; it is loaded once per connection by `EVALSHA` and sent as `EVAL`
//! only when Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).

use std::sync::LazyLock;

use crate::clock::Nanos;
use crate::limiter::{Algorithm, LimitParams, Outcome, ceil_millis};

pub const SOURCE: &str = r#"
-- sluicegate: one atomic decision (or refund) on one counter. Times in microseconds.
local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local hits = tonumber(ARGV[3])

local function decayed_at(count, budget, w)
  if count <= 0 then return 0 end
  local slack = math.floor(((budget + 1) * w - 1) / count)
  if slack >= w then return 0 end
  return w - slack
end

local function ttl_ms(until_us)
  return math.max(math.ceil((until_us - now) / 1000), 1)
end

if op == 'sw' then
  local rpu = tonumber(ARGV[4])
  local w = tonumber(ARGV[5])
  local idx = math.floor(now / w)
  local s = redis.call('HMGET', key, 'i', 'c', 'p')
  local si, sc, sp = tonumber(s[1]), tonumber(s[2]) or 0, tonumber(s[3]) or 0
  local at = now
  if si and si > idx then
    -- another replica's clock is ahead: decide at the start of the counter's window
    idx = si
    at = idx * w
  end
  local prev, cur = 0, 0
  if si == idx then prev, cur = sp, sc elseif si == idx - 1 then prev = sc end
  local elapsed = at - idx * w
  local left = w - elapsed
  local before = math.floor(prev * left / w) + cur
  local after = before + hits
  if after <= rpu then
    local nc = cur + hits
    if hits > 0 then
      redis.call('HSET', key, 'i', idx, 'c', nc, 'p', prev)
      redis.call('PEXPIRE', key, ttl_ms((idx + 2) * w))
    end
    local reset
    if nc > 0 then reset = left + decayed_at(nc, 0, w) else reset = math.max(decayed_at(prev, 0, w) - elapsed, 0) end
    return {0, before, after, rpu - after, reset}
  end
  local reset
  local budget = rpu - (cur + hits)
  if budget >= 0 and decayed_at(prev, budget, w) < w then
    reset = math.max(decayed_at(prev, budget, w) - elapsed, 0)
  elseif rpu - hits >= 0 then
    reset = left + decayed_at(cur, rpu - hits, w)
  else
    reset = left + w
  end
  return {1, before, after, 0, reset}
end

if op == 'gcra' then
  local t = tonumber(ARGV[4])
  local cap = tonumber(ARGV[5])
  local window = tonumber(ARGV[6])
  if t == 0 then
    if hits > 0 then return {1, 0, hits, 0, window} end
    return {0, 0, 0, 0, window}
  end
  local tat = tonumber(redis.call('GET', key)) or 0
  local tol = cap * t
  local base = math.max(tat, now)
  local before = math.ceil((base - now) / t)
  local new_tat = base + hits * t
  if new_tat <= now + tol then
    if hits > 0 then
      redis.call('SET', key, string.format('%d', new_tat), 'PX', ttl_ms(new_tat))
    end
    return {0, before, before + hits, math.floor((now + tol - new_tat) / t), new_tat - now}
  end
  local wait
  if hits <= cap then wait = new_tat - tol - now else wait = math.max(base - now, window) end
  return {1, before, before + hits, 0, wait}
end

if op == 'fw_refund' then
  local v = tonumber(redis.call('GET', key))
  if v then redis.call('SET', key, math.max(v - hits, 0), 'KEEPTTL') end
  return 0
end

if op == 'sw_refund' then
  local ci = tonumber(ARGV[4])
  local s = redis.call('HMGET', key, 'i', 'c', 'p')
  local si = tonumber(s[1])
  if si == ci then
    redis.call('HSET', key, 'c', math.max((tonumber(s[2]) or 0) - hits, 0))
  elseif si == ci + 1 then
    redis.call('HSET', key, 'p', math.max((tonumber(s[3]) or 0) - hits, 0))
  end
  return 0
end

if op == 'gcra_refund' then
  local t = tonumber(ARGV[4])
  local tat = tonumber(redis.call('GET', key))
  if tat then
    local back = tat - hits * t
    if back <= now then redis.call('DEL', key) else redis.call('SET', key, string.format('%d', back), 'KEEPTTL') end
  end
  return 0
end

return redis.error_reply('sluicegate: unknown operation ' .. tostring(op))
"#;

/// The script's SHA-1, for `EVALSHA`.
pub static SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(SOURCE).get_hash().to_string());

const MICROS_PER_NANO: u64 = 1_000;

/// Microseconds since the epoch.
pub fn micros(now: Nanos) -> u64 {
    now.0 / MICROS_PER_NANO
}

/// A window in microseconds.
fn window_us(params: &LimitParams) -> u64 {
    (params.window_ns / MICROS_PER_NANO).max(1)
}

/// The GCRA emission interval in whole microseconds, rounded up (never faster than the
/// limit); 0 when the limit is 0.
pub fn emission_us(params: &LimitParams) -> u64 {
    if params.requests_per_unit == 0 { 0 } else { window_us(params).div_ceil(u64::from(params.requests_per_unit)) }
}

/// Appends a decision call for a scripted algorithm to `cmd` (which is `EVALSHA sha`
/// or `EVAL source`).
pub fn decide_args(cmd: &mut redis::Cmd, key: &str, params: &LimitParams, hits: u64, now: Nanos) {
    cmd.arg(1).arg(key);
    match params.algorithm {
        Algorithm::SlidingWindow => {
            cmd.arg("sw").arg(micros(now)).arg(hits).arg(params.requests_per_unit).arg(window_us(params));
        }
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            cmd.arg("gcra").arg(micros(now)).arg(hits).arg(emission_us(params)).arg(params.capacity);
            cmd.arg(window_us(params));
        }
        Algorithm::FixedWindow => unreachable!("fixed windows use INCRBY"),
    }
}

/// Appends a refund call for any algorithm to `cmd`.
pub fn refund_args(cmd: &mut redis::Cmd, key: &str, params: &LimitParams, hits: u64, consumed_at: Nanos) {
    cmd.arg(1).arg(key);
    let now = micros(consumed_at);
    match params.algorithm {
        Algorithm::FixedWindow => {
            cmd.arg("fw_refund").arg(now).arg(hits);
        }
        Algorithm::SlidingWindow => {
            cmd.arg("sw_refund").arg(now).arg(hits).arg(now / window_us(params));
        }
        Algorithm::TokenBucket | Algorithm::LeakyBucket => {
            cmd.arg("gcra_refund").arg(now).arg(hits).arg(emission_us(params));
        }
    }
}

/// The outcome from the script's reply.
pub fn outcome_of_reply(reply: &[i64; 5]) -> Outcome {
    let [over, before, after, remaining, reset_us] = *reply;
    let non_negative = |n: i64| u64::try_from(n).unwrap_or(0);
    Outcome {
        over_limit: over != 0,
        before: non_negative(before),
        after: non_negative(after),
        remaining: u32::try_from(non_negative(remaining)).unwrap_or(u32::MAX),
        reset_after: ceil_millis(non_negative(reset_us).saturating_mul(MICROS_PER_NANO)),
    }
}
