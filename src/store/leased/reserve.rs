//! Leased mode's Redis side: the reservation script, giving units back, the replica
//! heartbeat, and sending them.
//!
//! A reservation is one atomic `EVALSHA` on the counter's own key (the per-request mode's
//! fixed-window key, so both modes count together): it reads what the window has used,
//! and takes at most `min(want, max(need, floor(left / (2 * live))))` units, never more
//! than are left and never fewer than the request needs. When fewer are left than the
//! request needs, its hits are counted and nothing is taken, as the per-request mode's
//! `INCRBY` counts a rejected request. Units taken never pass the limit.
//! Giving units back lowers the key of the window they were taken in (only while it
//! exists, never below zero). The heartbeat is a sorted set of replica ids scored by
//! when each last beat; its size, after dropping the stale, is the live count.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;

use crate::store::StoreError;
use crate::store::redis::link::{Deployment, Link, describe_error, is_transport_error};

pub const SOURCE: &str = r#"
-- sluicegate leased mode: one atomic operation on one fixed-window key.
local key = KEYS[1]
local op = ARGV[1]
if op == 'reserve' then
  local want = tonumber(ARGV[2])
  local need = tonumber(ARGV[3])
  local limit = tonumber(ARGV[4])
  local live = math.max(tonumber(ARGV[5]), 1)
  local ttl = tonumber(ARGV[6])
  local used = tonumber(redis.call('GET', key)) or 0
  local left = limit - used
  if need <= 0 then return {0, used} end
  if left < need then
    -- over the limit: counted anyway, as the per-request mode's INCRBY counts it
    local over = redis.call('INCRBY', key, need)
    if over == need then redis.call('EXPIRE', key, ttl) end
    return {0, over}
  end
  local share = math.floor(left / (2 * live))
  local got = math.min(want, math.max(need, share), left)
  local after = redis.call('INCRBY', key, got)
  if after == got then redis.call('EXPIRE', key, ttl) end
  return {got, after}
end
if op == 'return' then
  local n = tonumber(ARGV[2])
  local v = tonumber(redis.call('GET', key))
  if v then redis.call('SET', key, math.max(v - n, 0), 'KEEPTTL') end
  return 0
end
return redis.error_reply('sluicegate: unknown lease operation ' .. tostring(op))
"#;

/// The script's SHA-1, for `EVALSHA`.
pub static SHA: LazyLock<String> = LazyLock::new(|| redis::Script::new(SOURCE).get_hash().to_string());

/// How long a heartbeat counts a replica as live.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(6);

/// One reservation's request.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    pub want: u64,
    pub need: u64,
    pub limit: u64,
    pub live: u64,
    pub ttl_secs: u64,
}

/// A script: its source and SHA-1.
pub type Script = (&'static str, &'static LazyLock<String>);

/// The lease script.
pub const LEASE: Script = (SOURCE, &SHA);

fn script_call(script: Script, full: bool) -> redis::Cmd {
    if full {
        let mut c = redis::cmd("EVAL");
        c.arg(script.0);
        c
    } else {
        let mut c = redis::cmd("EVALSHA");
        c.arg(script.1.as_str());
        c
    }
}

/// Sends one call of `script` built by `args`, again in full if Redis forgot the script.
pub async fn call(
    backend: &Deployment,
    link: &Link,
    script: Script,
    args: impl Fn(&mut redis::Cmd),
) -> Result<Value, StoreError> {
    for full in [false, true] {
        let mut cmd = script_call(script, full);
        args(&mut cmd);
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        pipeline.add_command(cmd);
        let value = send(backend, link, &pipeline).await?.into_iter().next();
        match value {
            Some(Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript) && !full => continue,
            Some(Value::ServerError(e)) => {
                let e: redis::RedisError = e.into();
                return Err(fail(backend, &e));
            }
            Some(v) => return Ok(v),
            None => return Err(StoreError { message: format!("{}: no reply", backend.name) }),
        }
    }
    Err(StoreError { message: format!("{}: the lease script could not be loaded", backend.name) })
}

/// Reserves units of the window under `key`: `(got, count_after)`.
pub async fn reserve(backend: &Deployment, link: &Link, key: &str, ask: Ask) -> Result<(u64, u64), StoreError> {
    let reply = call(backend, link, LEASE, |c| {
        c.arg(1).arg(key).arg("reserve").arg(ask.want).arg(ask.need).arg(ask.limit).arg(ask.live).arg(ask.ttl_secs);
    })
    .await?;
    match reply {
        Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (Value::Int(got), Value::Int(after)) => {
                Ok((u64::try_from(*got).unwrap_or(0), u64::try_from(*after).unwrap_or(0)))
            }
            _ => Err(unexpected(backend, &items)),
        },
        other => Err(unexpected(backend, &[other])),
    }
}

/// Gives `units` back to the window under `key`.
pub async fn give_back(backend: &Deployment, link: &Link, key: &str, units: u64) -> Result<(), StoreError> {
    call(backend, link, LEASE, |c| {
        c.arg(1).arg(key).arg("return").arg(units);
    })
    .await
    .map(|_| ())
}

/// Records this replica as live at `now_ms` and reads how many replicas are.
pub async fn heartbeat(backend: &Deployment, link: &Link, set: &str, id: &str, now_ms: u64) -> Result<u64, StoreError> {
    let stale = now_ms.saturating_sub(HEARTBEAT_TTL.as_millis() as u64);
    let mut pipeline = redis::pipe();
    pipeline.cmd("ZADD").arg(set).arg(now_ms).arg(id);
    pipeline.cmd("ZREMRANGEBYSCORE").arg(set).arg("-inf").arg(format!("({stale}"));
    pipeline.cmd("ZCARD").arg(set);
    pipeline.cmd("PEXPIRE").arg(set).arg(HEARTBEAT_TTL.as_millis() as u64 * 10);
    let replies = send(backend, link, &pipeline).await?;
    match replies.get(2) {
        Some(Value::Int(n)) => Ok(u64::try_from(*n).unwrap_or(1).max(1)),
        other => Err(unexpected(backend, &other.cloned().into_iter().collect::<Vec<_>>())),
    }
}

/// Takes this replica out of the live set (at shutdown).
pub async fn leave(backend: &Deployment, link: &Link, set: &str, id: &str) -> Result<(), StoreError> {
    let mut pipeline = redis::pipe();
    pipeline.cmd("ZREM").arg(set).arg(id);
    send(backend, link, &pipeline).await.map(|_| ())
}

/// Sends one pipeline within the deployment's deadline; a transport failure opens its
/// breaker, as the per-request mode's does.
async fn send(backend: &Deployment, link: &Link, pipeline: &redis::Pipeline) -> Result<Vec<Value>, StoreError> {
    let timeout = backend.target.timeout;
    match tokio::time::timeout(timeout, link.query(pipeline)).await {
        Ok(Ok(values)) => Ok(values),
        Ok(Err(e)) => Err(fail(backend, &e)),
        Err(_) => {
            let message = format!("{}: no answer within {timeout:?}", backend.name);
            backend.trip(&message);
            Err(StoreError { message })
        }
    }
}

fn fail(backend: &Deployment, e: &redis::RedisError) -> StoreError {
    let message = format!("{}: {}", backend.name, describe_error(e));
    if is_transport_error(e) {
        backend.trip(&message);
    }
    StoreError { message }
}

pub fn unexpected(backend: &Deployment, got: &[Value]) -> StoreError {
    StoreError { message: format!("{}: unexpected reply to the lease script: {got:?}", backend.name) }
}
