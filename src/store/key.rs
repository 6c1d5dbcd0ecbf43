//! Memory-store counter keys: a compact, collision-safe binary encoding.
//!
//! A key identifies one limit of one descriptor. For a configured limit it is the
//! limit's registry number (which already stands for the domain, the rule's path, and so
//! the request's keys, and the limit's parameters) followed by the request's values; for
//! a request's override, which has no rule, it is the domain, the override's parameters
//! and the request's keys and values. Every field is length-prefixed, so no two different
//! counters can encode alike, whatever bytes keys and values hold.
//!
//! Every key lives inside its 64-byte table entry: a key longer than [`INLINE`] bytes keeps
//! its limit header and replaces the rest by a 128-bit keyed hash of the whole encoding
//! (SipHash-1-3 under two random keys chosen at start-up). A collision would take about
//! 2^64 distinct descriptors, and without the process's keys no one can aim for one; in
//! exchange a flood of long header values costs no more memory than short ones.

use crate::limiter::Unit;
use crate::rules::EntryView;

/// The longest key stored as it is: one value of up to about 39 bytes (an IPv4 or IPv6
/// address, a UUID, most API keys). 43 makes a table entry (two counter words, the idle
/// clock, the key's length and the key) exactly 64 bytes: one cache line in mimalloc's
/// 64-byte size class, so a decision touches one line of counter memory.
pub const INLINE: usize = 43;

/// What a counter counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitIdentity<'a> {
    /// A configured limit, by its registry number.
    Rule(u32),
    /// A request's `limit` override. As in the reference, the counter is the entries'
    /// in the unit's window, whatever `requests_per_unit` the request names, so a client
    /// changing its override mid-window keeps counting.
    Override { domain: &'a str, unit: Unit },
    /// A domain's `default_limit`, by its registry number, counted per distinct
    /// descriptor: no rule fixes the keys, so they are part of the key.
    Default(u32),
}

const TAG_RULE: u8 = 0;
const TAG_OVERRIDE: u8 = 1;
const TAG_DEFAULT: u8 = 2;
/// Set on the tag of a key whose body is a digest.
const DIGESTED: u8 = 0x80;

fn put_len(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

fn put_field(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_len(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

/// Writes the key into `buf` (cleared first). `value_at(depth, entry)` gives the value to
/// count under, which differs from the entry's value on `share_threshold` levels.
pub fn encode<'e, E: EntryView + 'e>(
    buf: &mut Vec<u8>,
    limit: LimitIdentity<'_>,
    entries: &'e [E],
    mut value_at: impl FnMut(usize, &'e E) -> &'e str,
) {
    buf.clear();
    let header: usize;
    match limit {
        LimitIdentity::Rule(id) => {
            buf.push(TAG_RULE);
            put_len(buf, id as usize);
            header = buf.len();
            // The rule fixes the keys at every depth, so only the values tell counters apart.
            for (depth, entry) in entries.iter().enumerate() {
                put_field(buf, value_at(depth, entry).as_bytes());
            }
        }
        LimitIdentity::Default(id) => {
            buf.push(TAG_DEFAULT);
            put_len(buf, id as usize);
            header = buf.len();
            for (depth, entry) in entries.iter().enumerate() {
                put_field(buf, entry.key().as_bytes());
                put_field(buf, value_at(depth, entry).as_bytes());
            }
        }
        LimitIdentity::Override { domain, unit } => {
            buf.push(TAG_OVERRIDE);
            buf.push(unit.proto_number() as u8);
            header = buf.len();
            put_field(buf, domain.as_bytes());
            for (depth, entry) in entries.iter().enumerate() {
                put_field(buf, entry.key().as_bytes());
                put_field(buf, value_at(depth, entry).as_bytes());
            }
        }
    }
    if buf.len() > INLINE {
        let digest = digest(buf);
        buf.truncate(header);
        buf[0] |= DIGESTED;
        buf.extend_from_slice(&digest);
    }
}

/// A 128-bit keyed hash: two SipHash-1-3 with independent random keys.
fn digest(bytes: &[u8]) -> [u8; 16] {
    use std::hash::{BuildHasher, RandomState};
    static KEYS: std::sync::OnceLock<(RandomState, RandomState)> = std::sync::OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let mut out = [0; 16];
    out[..8].copy_from_slice(&a.hash_one(bytes).to_le_bytes());
    out[8..].copy_from_slice(&b.hash_one(bytes).to_le_bytes());
    out
}

fn get_len(bytes: &[u8]) -> Option<usize> {
    let mut n = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        n |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// The limit a stored key counts against, read back by the sweeper.
pub fn decode_limit(key: &[u8]) -> Option<DecodedLimit> {
    match *key.first()? & !DIGESTED {
        TAG_RULE | TAG_DEFAULT => Some(DecodedLimit::Rule(u32::try_from(get_len(&key[1..])?).ok()?)),
        TAG_OVERRIDE => Some(DecodedLimit::Override { unit: Unit::from_proto_number(i32::from(*key.get(1)?))? }),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedLimit {
    Rule(u32),
    Override { unit: Unit },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(limit: LimitIdentity<'_>, entries: &[(&str, &str)]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, limit, entries, |_, e| e.1);
        buf
    }

    #[test]
    fn keys_do_not_collide_when_fields_shift_bytes() {
        let a = key(LimitIdentity::Rule(1), &[("a", "b_c"), ("d", "")]);
        let b = key(LimitIdentity::Rule(1), &[("a", "b"), ("d", "_c")]);
        let c = key(LimitIdentity::Rule(1), &[("a", "b_c")]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_ne!(key(LimitIdentity::Rule(1), &[("k", "v")]), key(LimitIdentity::Rule(2), &[("k", "v")]));
        assert_ne!(key(LimitIdentity::Rule(127), &[]), key(LimitIdentity::Rule(255), &[]));
        let o = |entries: &[(&str, &str)]| key(LimitIdentity::Override { domain: "d", unit: Unit::Second }, entries);
        assert_ne!(o(&[("a_b", "c")]), o(&[("a", "b_c")]));
        let d = |entries: &[(&str, &str)]| key(LimitIdentity::Default(1), entries);
        assert_ne!(d(&[("a", "b")]), d(&[("c", "b")]), "defaults count per distinct descriptor, keys included");
        assert_ne!(d(&[("a", "b")]), key(LimitIdentity::Rule(1), &[("a", "b")]));
        assert_eq!(decode_limit(&d(&[("a", "b")])), Some(DecodedLimit::Rule(1)));
    }

    #[test]
    fn overrides_carry_their_domain_and_unit_but_not_their_count() {
        let o = |domain, unit| key(LimitIdentity::Override { domain, unit }, &[("k", "v")]);
        assert_ne!(o("a", Unit::Second), o("b", Unit::Second));
        assert_ne!(o("a", Unit::Second), o("a", Unit::Minute));
        assert_eq!(decode_limit(&o("a", Unit::Hour)), Some(DecodedLimit::Override { unit: Unit::Hour }));
        for id in [0, 9, 127, 128, 300_000, u32::MAX] {
            assert_eq!(decode_limit(&key(LimitIdentity::Rule(id), &[("k", "v")])), Some(DecodedLimit::Rule(id)));
        }
    }

    #[test]
    fn typical_descriptors_are_stored_as_they_are() {
        let k = key(LimitIdentity::Rule(3), &[("remote_address", "192.168.100.200")]);
        assert_eq!(k.len(), 1 + 1 + 1 + 15);
        let uuid = key(LimitIdentity::Rule(300), &[("api_key", "123e4567-e89b-12d3-a456-426614174000")]);
        assert_eq!(uuid.len(), 1 + 2 + 1 + 36);
        let ipv6 = key(LimitIdentity::Rule(300), &[("remote_address", "2001:0db8:85a3:0000:0000:8a2e:0370:7334")]);
        assert_eq!(ipv6.len(), 1 + 2 + 1 + 39);
        assert!(ipv6.len() <= INLINE);
    }

    #[test]
    fn long_keys_become_a_digest_behind_their_limit_header() {
        let long = "x".repeat(16 * 1024);
        let a = key(LimitIdentity::Rule(300), &[("path", long.as_str())]);
        assert_eq!(a.len(), 1 + 2 + 16);
        assert_eq!(decode_limit(&a), Some(DecodedLimit::Rule(300)));
        let other = format!("{long}y");
        let b = key(LimitIdentity::Rule(300), &[("path", other.as_str())]);
        assert_ne!(a, b);
        assert_eq!(a, key(LimitIdentity::Rule(300), &[("path", long.as_str())]), "stable within the process");
        let o = key(LimitIdentity::Override { domain: &long, unit: Unit::Day }, &[]);
        assert_eq!(decode_limit(&o), Some(DecodedLimit::Override { unit: Unit::Day }));
        assert!(o.len() <= INLINE);
    }
}
