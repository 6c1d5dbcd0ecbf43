//! Limit strings (`"5/second;60 per minute"`) through `config::limit_string::parse`.
//!
//! Invariants: an error's offset lies within the string, on a character boundary, with a
//! message saying what was expected; a parse's items have distinct, increasing offsets
//! inside the string and a multiple of at least 1; printing the limits back as
//! `N per M unit` and parsing that gives the same limits.

use sluicegate::config::limit_string::{ParsedLimit, parse};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(text) {
        Err(e) => {
            assert!(e.offset <= text.len(), "error offset {} past the end of {text:?}", e.offset);
            assert!(text.is_char_boundary(e.offset), "error offset {} inside a character of {text:?}", e.offset);
            assert!(!e.message.is_empty(), "an empty message for {text:?}");
            assert!(!e.message.contains('\n'), "a multi-line message for {text:?}: {}", e.message);
        }
        Ok(limits) => {
            assert!(!limits.is_empty(), "{text:?} parsed to no limit");
            let mut last = None;
            for l in &limits {
                assert!(l.offset < text.len() && text.is_char_boundary(l.offset), "offset {} in {text:?}", l.offset);
                assert!(last.is_none_or(|o| o < l.offset), "offsets not increasing in {text:?}: {limits:?}");
                assert!(l.multiplier >= 1, "a multiple of 0 accepted in {text:?}");
                last = Some(l.offset);
            }
            let printed = print(&limits);
            let again = parse(&printed).unwrap_or_else(|e| panic!("{text:?} printed as {printed:?} fails: {e:?}"));
            let strip =
                |ls: &[ParsedLimit]| ls.iter().map(|l| (l.requests_per_unit, l.unit, l.multiplier)).collect::<Vec<_>>();
            assert_eq!(strip(&limits), strip(&again), "{text:?} printed as {printed:?} parses differently");
        }
    }
}

fn print(limits: &[ParsedLimit]) -> String {
    limits
        .iter()
        .map(|l| format!("{} per {} {}", l.requests_per_unit, l.multiplier, l.unit.name().to_lowercase()))
        .collect::<Vec<_>>()
        .join(";")
}
