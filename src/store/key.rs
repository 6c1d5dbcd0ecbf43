//! Memory-store counter keys: a compact, collision-safe binary encoding.
//!
//! A key identifies one limit of one descriptor. For a configured limit it is the
//! limit's registry number (which already stands for the domain, the rule's path, and so
//! the request's keys, and the limit's parameters) followed by the request's values; for
//! a request's override, which has no rule, it is the domain, the override's parameters
//! and the request's keys and values. Every field is length-prefixed, so no two different
//! counters can encode alike, whatever bytes keys and values hold. Keys of up to
//! [`INLINE`] bytes live inside the map entry; only longer ones take a heap allocation.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::limiter::Unit;
use crate::rules::EntryView;

/// Bytes a key can hold without a heap allocation: one value of up to about 42 bytes (an
/// IPv4 or short IPv6 address, a UUID, most API keys) fits. 46 makes a map entry (key 48
/// bytes, counter 16) exactly 64 bytes: one cache line in mimalloc's 64-byte size class,
/// so a decision touches one line of counter memory. A longer key adds one heap
/// allocation of its own.
pub const INLINE: usize = 46;

/// What a counter counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitIdentity<'a> {
    /// A configured limit, by its registry number.
    Rule(u32),
    /// A request's `limit` override: the parameters come from the request.
    Override { domain: &'a str, requests_per_unit: u32, unit: Unit },
}

const TAG_RULE: u8 = 0;
const TAG_OVERRIDE: u8 = 1;

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
    match limit {
        LimitIdentity::Rule(id) => {
            buf.push(TAG_RULE);
            put_len(buf, id as usize);
            // The rule fixes the keys at every depth, so only the values tell counters apart.
            for (depth, entry) in entries.iter().enumerate() {
                put_field(buf, value_at(depth, entry).as_bytes());
            }
        }
        LimitIdentity::Override { domain, requests_per_unit, unit } => {
            buf.push(TAG_OVERRIDE);
            buf.extend_from_slice(&requests_per_unit.to_le_bytes());
            buf.push(unit.proto_number() as u8);
            put_field(buf, domain.as_bytes());
            for (depth, entry) in entries.iter().enumerate() {
                put_field(buf, entry.key().as_bytes());
                put_field(buf, value_at(depth, entry).as_bytes());
            }
        }
    }
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
    match *key.first()? {
        TAG_RULE => Some(DecodedLimit::Rule(u32::try_from(get_len(&key[1..])?).ok()?)),
        TAG_OVERRIDE => {
            let requests_per_unit = u32::from_le_bytes(key.get(1..5)?.try_into().ok()?);
            let unit = Unit::from_proto_number(i32::from(*key.get(5)?))?;
            Some(DecodedLimit::Override { requests_per_unit, unit })
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodedLimit {
    Rule(u32),
    Override { requests_per_unit: u32, unit: Unit },
}

/// An owned key as stored in the map.
#[derive(Clone)]
pub enum CompactKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl CompactKey {
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            CompactKey::Inline { len: bytes.len() as u8, bytes: inline }
        } else {
            CompactKey::Heap(bytes.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            CompactKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            CompactKey::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for CompactKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for CompactKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CompactKey {}

impl Hash for CompactKey {
    // Must hash exactly as `[u8]` does: lookups hash the borrowed slice.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for CompactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompactKey({:?})", self.as_bytes())
    }
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
        let o = |entries: &[(&str, &str)]| {
            key(LimitIdentity::Override { domain: "d", requests_per_unit: 1, unit: Unit::Second }, entries)
        };
        assert_ne!(o(&[("a_b", "c")]), o(&[("a", "b_c")]));
    }

    #[test]
    fn overrides_carry_their_domain_and_parameters() {
        let o =
            |domain, rpu, unit| key(LimitIdentity::Override { domain, requests_per_unit: rpu, unit }, &[("k", "v")]);
        assert_ne!(o("a", 1, Unit::Second), o("b", 1, Unit::Second));
        assert_ne!(o("a", 1, Unit::Second), o("a", 2, Unit::Second));
        assert_ne!(o("a", 1, Unit::Second), o("a", 1, Unit::Minute));
        assert_eq!(
            decode_limit(&o("a", 7, Unit::Hour)),
            Some(DecodedLimit::Override { requests_per_unit: 7, unit: Unit::Hour })
        );
        for id in [0, 9, 127, 128, 300_000, u32::MAX] {
            assert_eq!(decode_limit(&key(LimitIdentity::Rule(id), &[("k", "v")])), Some(DecodedLimit::Rule(id)));
        }
    }

    #[test]
    fn typical_descriptors_fit_inline() {
        let k = key(LimitIdentity::Rule(3), &[("remote_address", "192.168.100.200")]);
        assert_eq!(k.len(), 1 + 1 + 1 + 15);
        assert!(matches!(CompactKey::new(&k), CompactKey::Inline { .. }));
        let api_key = key(LimitIdentity::Rule(300), &[("api_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc")]);
        assert!(matches!(CompactKey::new(&api_key), CompactKey::Inline { .. }), "{}", api_key.len());
        assert_eq!(std::mem::size_of::<CompactKey>(), 48);
        let long = vec![7u8; 100];
        assert_eq!(CompactKey::new(&long).as_bytes(), &long[..]);
    }

    #[test]
    fn long_values_use_several_length_bytes() {
        let long = "x".repeat(300);
        let k = key(LimitIdentity::Rule(0), &[("k", long.as_str())]);
        assert_eq!(k.len(), 2 + 2 + 300);
    }
}
