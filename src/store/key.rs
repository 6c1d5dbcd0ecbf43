//! Memory-store counter keys: a compact, collision-safe binary encoding.
//!
//! A key identifies one limit of one descriptor: the limit (a registry number that
//! already stands for the domain, the rule's path and its parameters; or, for a request's
//! override, the domain and the override's parameters) and the request's entries. Every
//! field is length-prefixed, so no two different counters can encode alike, whatever
//! bytes keys and values hold. Keys of up to [`INLINE`] bytes live inside the map entry;
//! only longer ones take a heap allocation.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use crate::limiter::Unit;
use crate::rules::EntryView;

/// Bytes a key can hold without a heap allocation: a typical descriptor (`remote_address`
/// and an IPv4 address under one rule) fits, which keeps a live counter under 128 bytes.
pub const INLINE: usize = 30;

/// What a counter counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitIdentity<'a> {
    /// A configured limit, by its registry number.
    Rule(u32),
    /// A request's `limit` override: the parameters come from the request.
    Override {
        domain: &'a str,
        requests_per_unit: u32,
        unit: Unit,
    },
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
            buf.extend_from_slice(&id.to_le_bytes());
        }
        LimitIdentity::Override {
            domain,
            requests_per_unit,
            unit,
        } => {
            buf.push(TAG_OVERRIDE);
            buf.extend_from_slice(&requests_per_unit.to_le_bytes());
            buf.push(unit.proto_number() as u8);
            put_field(buf, domain.as_bytes());
        }
    }
    for (depth, entry) in entries.iter().enumerate() {
        put_field(buf, entry.key().as_bytes());
        put_field(buf, value_at(depth, entry).as_bytes());
    }
}

/// The limit a stored key counts against, read back by the sweeper.
pub fn decode_limit(key: &[u8]) -> Option<DecodedLimit> {
    match *key.first()? {
        TAG_RULE => Some(DecodedLimit::Rule(u32::from_le_bytes(
            key.get(1..5)?.try_into().ok()?,
        ))),
        TAG_OVERRIDE => {
            let requests_per_unit = u32::from_le_bytes(key.get(1..5)?.try_into().ok()?);
            let unit = Unit::from_proto_number(i32::from(*key.get(5)?))?;
            Some(DecodedLimit::Override {
                requests_per_unit,
                unit,
            })
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
            CompactKey::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
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
        let a = key(LimitIdentity::Rule(1), &[("a_b", "c")]);
        let b = key(LimitIdentity::Rule(1), &[("a", "b_c")]);
        let c = key(LimitIdentity::Rule(1), &[("a", "b"), ("", "c")]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_ne!(
            key(LimitIdentity::Rule(1), &[("k", "v")]),
            key(LimitIdentity::Rule(2), &[("k", "v")])
        );
    }

    #[test]
    fn overrides_carry_their_domain_and_parameters() {
        let o = |domain, rpu, unit| {
            key(
                LimitIdentity::Override {
                    domain,
                    requests_per_unit: rpu,
                    unit,
                },
                &[("k", "v")],
            )
        };
        assert_ne!(o("a", 1, Unit::Second), o("b", 1, Unit::Second));
        assert_ne!(o("a", 1, Unit::Second), o("a", 2, Unit::Second));
        assert_ne!(o("a", 1, Unit::Second), o("a", 1, Unit::Minute));
        assert_eq!(
            decode_limit(&o("a", 7, Unit::Hour)),
            Some(DecodedLimit::Override {
                requests_per_unit: 7,
                unit: Unit::Hour
            })
        );
        assert_eq!(
            decode_limit(&key(LimitIdentity::Rule(9), &[])),
            Some(DecodedLimit::Rule(9))
        );
    }

    #[test]
    fn a_typical_descriptor_fits_inline_and_the_key_is_32_bytes() {
        let k = key(LimitIdentity::Rule(3), &[("remote_address", "10.0.0.1")]);
        assert!(k.len() <= INLINE, "{}", k.len());
        assert!(matches!(CompactKey::new(&k), CompactKey::Inline { .. }));
        assert_eq!(std::mem::size_of::<CompactKey>(), 32);
        let long = vec![7u8; 100];
        assert_eq!(CompactKey::new(&long).as_bytes(), &long[..]);
    }

    #[test]
    fn long_lengths_use_several_bytes() {
        let long = "x".repeat(300);
        let k = key(LimitIdentity::Rule(0), &[(long.as_str(), "")]);
        assert_eq!(k.len(), 5 + 2 + 300 + 1);
    }
}
