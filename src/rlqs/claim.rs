//! The claim script: one atomic step on one bucket's Redis hash that decides how much of
//! the bucket's limit one replica may hand out, so the replicas' claims never add up to
//! more than the limit.
//!
//! The hash has a field per replica, `demand:claim:expires_ms`. One call, for replica
//! `me` with demand `d` and limit `L`: drops the entries that expired (their replica
//! stopped refreshing them), computes `me`'s demand-proportional target `L × d / Σd`
//! over the live entries (its own included; `L / n` when nobody demands anything), and
//! grants `min(target, L − Σ other live claims)`, never below 0. It stores as `me`'s
//! claim `min(max(grant, keep), L − Σ others)`: `keep` is the budget this replica may
//! still have handed out (a reduction is released one sync later, see `fleet`). It
//! returns the grant and the stored claim, as strings (Lua would truncate numbers to
//! integers). Floats are written with 17 significant digits, so they read back exactly.
//!
//! Why the sum stays within `L`: every stored claim is at most `L` minus the other live
//! claims at the moment it is stored, and a script runs alone; claims only ever shrink
//! or vanish between calls (expiry), so the sum of the live claims stays at most `L`.
//! (A lower `L` after a reload gives no room until the claims above it are released.)

use std::sync::LazyLock;

pub const SOURCE: &str = r#"
-- sluicegate RLQS: claim a replica's part of one bucket's limit.
local key = KEYS[1]
local me = ARGV[1]
local demand = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local expires = now + tonumber(ARGV[5])
local keep = tonumber(ARGV[6])
local function num(s) local n = tonumber(s); if n == nil or n ~= n then return nil end; return n end
local entries = redis.call('HGETALL', key)
local total, others, live, latest = demand, 0, 1, expires
for i = 1, #entries, 2 do
  local who = entries[i]
  if who ~= me then
    local d, c, e = string.match(entries[i + 1], '^([^:]+):([^:]+):([^:]+)$')
    d, c, e = num(d), num(c), num(e)
    if d == nil or c == nil or e == nil or e < now then
      redis.call('HDEL', key, who)
    else
      total = total + math.max(d, 0)
      others = others + math.max(c, 0)
      live = live + 1
      if e > latest then latest = e end
    end
  end
end
local target
if total > 0 then target = limit * demand / total else target = limit / live end
local room = math.max(limit - others, 0)
local grant = math.max(math.min(target, room), 0)
local claim = math.min(math.max(grant, keep), room)
local function f(x) return string.format('%.17g', x) end
redis.call('HSET', key, me, f(demand) .. ':' .. f(claim) .. ':' .. string.format('%d', expires))
redis.call('PEXPIRE', key, math.floor(latest - now) + 1000)
return {f(grant), f(claim)}
"#;

/// The script's SHA-1, for `EVALSHA`.
pub static SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(SOURCE).get_hash().to_string());

/// One replica's call for one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ask {
    /// Its clients' demand, requests per second (finite, at least 0).
    pub demand: f64,
    /// The bucket's limit, requests per window.
    pub limit: f64,
    /// Now, in milliseconds of the replica's clock.
    pub now_ms: u64,
    /// How long the stored claim lives without being refreshed.
    pub lifetime_ms: u64,
    /// The budget the replica may still have handed out: the claim keeps at least this
    /// (as far as the other claims leave room).
    pub keep: f64,
}

/// Adds the call `EVALSHA` (or `EVAL`, when `full`) for `replica` on `key` to `pipeline`.
pub fn add(pipeline: &mut redis::Pipeline, full: bool, key: &str, replica: &str, ask: &Ask) {
    let mut cmd = if full { redis::cmd("EVAL") } else { redis::cmd("EVALSHA") };
    cmd.arg(if full { SOURCE } else { SHA.as_str() });
    let clean = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    cmd.arg(1)
        .arg(key)
        .arg(replica)
        .arg(format!("{:?}", clean(ask.demand)))
        .arg(format!("{:?}", clean(ask.limit)))
        .arg(ask.now_ms)
        .arg(ask.lifetime_ms)
        .arg(format!("{:?}", clean(ask.keep)));
    pipeline.add_command(cmd);
}

/// The (grant, stored claim) of one call's reply.
pub fn parse(reply: redis::Value) -> Result<(f64, f64), String> {
    let (grant, claim): (String, String) = redis::from_redis_value(reply).map_err(|e| e.to_string())?;
    let number = |s: &str| s.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
    match (number(&grant), number(&claim)) {
        (Some(g), Some(c)) => Ok((g, c)),
        _ => Err(format!("unexpected reply to the RLQS claim script: {grant:?}, {claim:?}")),
    }
}
