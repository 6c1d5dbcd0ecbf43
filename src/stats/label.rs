//! Label values taken from requests, bounded in bytes.
//!
//! Owns how a label value that a request chose (descriptor keys and values, an unknown
//! domain) is shown: as it is when it fits the bound, else a prefix of it, cut at a
//! character boundary, then `…#` and 16 hex digits of a fixed-key hash of the whole text
//! (`user_id_aaaa…#1a2b3c4d5e6f7a8b`). The same text always shows the same way, in this
//! process and in the next one built by the same toolchain (the hash's key is fixed), so
//! dashboards keep their series across restarts; two long texts that share a prefix stay
//! apart unless their 64-bit hashes collide.
//!
//! A label can be several request texts joined by `.` (the `key2` label joins a key's
//! levels after the first). It is measured, compared and hashed piece by piece, so finding
//! a series that exists builds no string.

use std::hash::{DefaultHasher, Hasher};

/// What a shortened label shows between its prefix and its hash.
const MARK: &str = "…#";

/// Hex digits of the hash a shortened label ends with.
const HASH_DIGITS: usize = 16;

/// Bytes a shortened label adds after its prefix.
const SUFFIX_BYTES: usize = MARK.len() + HASH_DIGITS;

/// The smallest bound a label can have: the suffix and a prefix of at least 12 bytes, so a
/// shortened label still says what it was.
pub const MIN_LABEL_BYTES: usize = SUFFIX_BYTES + 12;

/// A label's text as the request gave it.
#[derive(Clone, Copy, Debug)]
pub enum Text<'a> {
    One(&'a str),
    /// Levels joined by `.`.
    Joined(&'a [String]),
}

impl<'a> Text<'a> {
    fn len(self) -> usize {
        match self {
            Text::One(s) => s.len(),
            Text::Joined(pieces) => pieces.iter().map(String::len).sum::<usize>() + pieces.len().saturating_sub(1),
        }
    }

    fn for_each_chunk(self, mut f: impl FnMut(&'a str)) {
        match self {
            Text::One(s) => f(s),
            Text::Joined(pieces) => {
                for (i, piece) in pieces.iter().enumerate() {
                    if i > 0 {
                        f(".");
                    }
                    f(piece);
                }
            }
        }
    }

    /// The longest prefix of at most `limit` bytes that ends on a character boundary.
    fn prefix_bytes(self, limit: usize) -> usize {
        let mut kept = 0;
        let mut full = false;
        self.for_each_chunk(|chunk| {
            if full {
                return;
            }
            if kept + chunk.len() <= limit {
                kept += chunk.len();
                return;
            }
            let mut end = limit - kept;
            while !chunk.is_char_boundary(end) {
                end -= 1;
            }
            kept += end;
            full = true;
        });
        kept
    }
}

/// A label value as it is shown: the text, or its prefix and hash when it is too long.
#[derive(Clone, Copy, Debug)]
pub struct ShownLabel<'a> {
    text: Text<'a>,
    /// For a text past the bound: how many of its bytes are kept, and its hash.
    cut: Option<(usize, u64)>,
}

impl<'a> ShownLabel<'a> {
    /// `max_bytes` below [`MIN_LABEL_BYTES`] is taken as [`MIN_LABEL_BYTES`].
    pub fn new(text: Text<'a>, max_bytes: usize) -> Self {
        let max_bytes = max_bytes.max(MIN_LABEL_BYTES);
        if text.len() <= max_bytes {
            return ShownLabel { text, cut: None };
        }
        let mut hash = BlockHasher::new(DefaultHasher::new());
        text.for_each_chunk(|chunk| hash.write(chunk.as_bytes()));
        ShownLabel { text, cut: Some((text.prefix_bytes(max_bytes - SUFFIX_BYTES), hash.finish())) }
    }

    pub fn one(text: &'a str, max_bytes: usize) -> Self {
        ShownLabel::new(Text::One(text), max_bytes)
    }

    /// Bytes shown.
    pub fn len(&self) -> usize {
        match self.cut {
            None => self.text.len(),
            Some((kept, _)) => kept + SUFFIX_BYTES,
        }
    }

    /// Bytes shown in the Prometheus text exposition, where `\\`, `"` and a line feed
    /// take two bytes each.
    pub fn exposition_len(&self) -> usize {
        let mut escapes = 0;
        self.for_each_chunk(|chunk| escapes += chunk.bytes().filter(|b| matches!(b, b'\\' | b'"' | b'\n')).count());
        self.len() + escapes
    }

    /// Hands out what is shown, in order, without building it.
    fn for_each_chunk(&self, mut f: impl FnMut(&str)) {
        let Some((kept, hash)) = self.cut else {
            self.text.for_each_chunk(f);
            return;
        };
        let mut left = kept;
        self.text.for_each_chunk(|chunk| {
            let n = chunk.len().min(left);
            // `kept` ends on a character boundary, so this never falls inside a character.
            if let Some(part) = chunk.get(..n).filter(|p| !p.is_empty()) {
                f(part);
            }
            left -= n;
        });
        f(MARK);
        let mut hex = [0u8; HASH_DIGITS];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((hash >> (60 - 4 * i)) & 0xf) as usize];
        }
        f(std::str::from_utf8(&hex).unwrap_or_default());
    }

    /// Whether `shown` is what this label shows.
    pub fn is(&self, shown: &str) -> bool {
        if self.len() != shown.len() {
            return false;
        }
        let mut rest = shown.as_bytes();
        let mut same = true;
        self.for_each_chunk(|chunk| {
            if same {
                match rest.strip_prefix(chunk.as_bytes()) {
                    Some(after) => rest = after,
                    None => same = false,
                }
            }
        });
        same && rest.is_empty()
    }

    /// Feeds what is shown to `hasher`, length first so that labels hashed one after the
    /// other cannot run into each other.
    pub fn hash_into<H: Hasher>(&self, hasher: &mut BlockHasher<H>) {
        hasher.write(&(self.len() as u64).to_le_bytes());
        self.for_each_chunk(|chunk| hasher.write(chunk.as_bytes()));
    }

    pub fn into_boxed_str(self) -> Box<str> {
        let mut out = String::with_capacity(self.len());
        self.for_each_chunk(|chunk| out.push_str(chunk));
        out.into_boxed_str()
    }
}

/// Hands bytes to a hasher in fixed 64-byte blocks, so the hash of a text does not depend
/// on how it was cut into pieces (`Hasher` does not promise that by itself).
pub struct BlockHasher<H> {
    inner: H,
    block: [u8; 64],
    used: usize,
}

impl<H: Hasher> BlockHasher<H> {
    pub fn new(inner: H) -> Self {
        BlockHasher { inner, block: [0; 64], used: 0 }
    }

    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.used == 0 && bytes.len() >= self.block.len() {
                let (whole, rest) = bytes.split_at(bytes.len() - bytes.len() % self.block.len());
                for block in whole.chunks_exact(self.block.len()) {
                    self.inner.write(block);
                }
                bytes = rest;
                continue;
            }
            let n = (self.block.len() - self.used).min(bytes.len());
            self.block[self.used..self.used + n].copy_from_slice(&bytes[..n]);
            self.used += n;
            bytes = &bytes[n..];
            if self.used == self.block.len() {
                self.inner.write(&self.block);
                self.used = 0;
            }
        }
    }

    pub fn finish(mut self) -> u64 {
        self.inner.write(&self.block[..self.used]);
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(label: &ShownLabel<'_>) -> String {
        label.into_boxed_str().into()
    }

    #[test]
    fn short_texts_show_as_they_are() {
        let levels = vec!["a_1".to_string(), "b".to_string()];
        let label = ShownLabel::new(Text::Joined(&levels), 128);
        assert_eq!(shown(&label), "a_1.b");
        assert!(label.is("a_1.b") && !label.is("a_1.c") && !label.is("a_1.b."));
        assert_eq!(shown(&ShownLabel::one("", 128)), "");
        assert_eq!(shown(&ShownLabel::new(Text::Joined(&[]), 128)), "");
    }

    #[test]
    fn long_texts_keep_a_prefix_and_a_hash_within_the_bound() {
        let long = "x".repeat(16 * 1024);
        let label = ShownLabel::one(&long, 128);
        let text = shown(&label);
        assert_eq!(text.len(), 128);
        assert_eq!(label.len(), 128);
        assert!(text.starts_with(&"x".repeat(108)) && text.contains("…#"), "{text}");
        assert!(label.is(&text));
        // The same text always shows the same way; another one, with the same prefix, not.
        assert_eq!(text, shown(&ShownLabel::one(&long.clone(), 128)));
        let other = format!("{}y", &long[..long.len() - 1]);
        assert_ne!(text, shown(&ShownLabel::one(&other, 128)));
        assert!(!label.is(&shown(&ShownLabel::one(&other, 128))));
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        for pad in 0..4 {
            let text = format!("{}{}", "a".repeat(pad), "é€😀".repeat(100));
            let label = shown(&ShownLabel::one(&text, 64));
            assert!(label.len() <= 64 && label.len() >= 64 - 3, "{label}");
            assert!(label.starts_with(&text[..label.len() - SUFFIX_BYTES]));
        }
    }

    #[test]
    fn a_joined_text_shows_as_the_same_text_in_one_piece() {
        let levels: Vec<String> = (0..64).map(|i| format!("key{i}_{}", "v".repeat(1000))).collect();
        let whole = levels.join(".");
        let joined = ShownLabel::new(Text::Joined(&levels), 200);
        assert_eq!(shown(&joined), shown(&ShownLabel::one(&whole, 200)));
        assert!(joined.is(&shown(&ShownLabel::one(&whole, 200))));
        let hash = |label: &ShownLabel<'_>| {
            let mut h = BlockHasher::new(DefaultHasher::new());
            label.hash_into(&mut h);
            h.finish()
        };
        assert_eq!(hash(&joined), hash(&ShownLabel::one(&whole, 200)));
    }

    #[test]
    fn block_hashing_ignores_how_the_bytes_were_cut() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let whole = {
            let mut h = BlockHasher::new(DefaultHasher::new());
            h.write(&bytes);
            h.finish()
        };
        for cut in [1, 63, 64, 65, 500, 999] {
            let mut h = BlockHasher::new(DefaultHasher::new());
            h.write(&bytes[..cut]);
            h.write(&[]);
            h.write(&bytes[cut..]);
            assert_eq!(h.finish(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn escapes_count_twice_in_the_exposition() {
        assert_eq!(ShownLabel::one("a\"b\\c\nd", 128).exposition_len(), 7 + 3);
        let quotes = "\"".repeat(1000);
        assert_eq!(ShownLabel::one(&quotes, 128).exposition_len(), 108 * 2 + SUFFIX_BYTES);
    }

    #[test]
    fn bounds_below_the_minimum_are_raised_to_it() {
        let long = "z".repeat(1000);
        assert_eq!(ShownLabel::one(&long, 0).len(), MIN_LABEL_BYTES);
    }
}
