//! Limit strings: `"5/second;60 per minute;2500 per hour"`.
//!
//! The notation of Python's `limits` / Flask-Limiter, with the reference's units: an item
//! is a count, `/` or `per`, an optional multiple, and a unit (`second`, `minute`,
//! `hour`, `day`, `week`, `month`, `year`, singular or plural, any case); items are joined
//! by `;`, `,` or `|`. `2 per 3 hours` is 2 per 3-hour window. Month is 30 days and year
//! 365 days, as in the reference (not the 360-day year of `limits`). Unlike `limits`, a
//! multiple of 0 and a stray `:` are errors, not silently accepted.
//!
//! Errors carry the byte offset of the offending text so the loader can point at it.

use crate::limiter::Unit;

/// One limit of a limit string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedLimit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub multiplier: u32,
    /// Byte offset of the item in the string.
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitStringError {
    /// Byte offset of the problem in the string.
    pub offset: usize,
    pub message: String,
}

const UNITS: &str = "second, minute, hour, day, week, month or year";

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_spaces(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn take_while(&mut self, pred: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c: char| !pred(c)).unwrap_or(rest.len());
        self.at += len;
        &rest[..len]
    }

    /// The next word or symbol, for "found ..." in messages.
    fn found(&self) -> String {
        let rest = self.rest().trim_start();
        match rest.chars().next() {
            None => "the end of the string".to_string(),
            Some(c) if c.is_alphanumeric() => {
                let word: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
                format!("{word:?}")
            }
            Some(c) => format!("{:?}", c.to_string()),
        }
    }

    fn error(&self, expected: &str) -> LimitStringError {
        let offset = self.at + (self.rest().len() - self.rest().trim_start().len());
        LimitStringError { offset, message: format!("expected {expected}, found {}", self.found()) }
    }

    fn number(&mut self, what: &str) -> Result<Option<u32>, LimitStringError> {
        self.skip_spaces();
        let start = self.at;
        let digits = self.take_while(|c| c.is_ascii_digit());
        if digits.is_empty() {
            return Ok(None);
        }
        digits.parse::<u32>().map(Some).map_err(|_| LimitStringError {
            offset: start,
            message: format!("the {what} {digits} is larger than {}", u32::MAX),
        })
    }

    fn item(&mut self) -> Result<ParsedLimit, LimitStringError> {
        self.skip_spaces();
        let offset = self.at;
        let Some(count) = self.number("count")? else {
            return Err(self.error("a count such as 10 in \"10/minute\""));
        };
        self.skip_spaces();
        if self.rest().starts_with('/') {
            self.at += 1;
        } else {
            let word_start = self.at;
            let word = self.take_while(|c| c.is_ascii_alphabetic());
            if !word.eq_ignore_ascii_case("per") {
                self.at = word_start;
                return Err(self.error("\"/\" or \"per\""));
            }
        }
        self.skip_spaces();
        let multiple_at = self.at;
        let multiplier = match self.number("multiple")? {
            Some(0) => {
                return Err(LimitStringError { offset: multiple_at, message: "a multiple must be at least 1".into() });
            }
            Some(m) => m,
            None => 1,
        };
        self.skip_spaces();
        let unit_at = self.at;
        let word = self.take_while(|c| c.is_ascii_alphabetic());
        let singular =
            if word.len() > 1 && (word.ends_with('s') || word.ends_with('S')) { &word[..word.len() - 1] } else { word };
        let unit = Unit::parse(singular).ok_or_else(|| {
            self.at = unit_at;
            self.error(&format!("a unit ({UNITS})"))
        })?;
        self.skip_spaces();
        Ok(ParsedLimit { requests_per_unit: count, unit, multiplier, offset })
    }
}

/// Parses a limit string into its limits, in order.
pub fn parse(text: &str) -> Result<Vec<ParsedLimit>, LimitStringError> {
    let mut scanner = Scanner { text, at: 0 };
    let mut limits = vec![scanner.item()?];
    loop {
        match scanner.rest().chars().next() {
            None => return Ok(limits),
            Some(';' | ',' | '|') => {
                scanner.at += 1;
                limits.push(scanner.item()?);
            }
            Some(_) => return Err(scanner.error("\";\", \",\" or \"|\" between limits, or the end of the string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<(u32, Unit, u32)> {
        parse(text)
            .unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
            .into_iter()
            .map(|l| (l.requests_per_unit, l.unit, l.multiplier))
            .collect()
    }

    fn err(text: &str) -> LimitStringError {
        parse(text).expect_err(text)
    }

    #[test]
    fn accepts_the_notation_of_flask_limiter() {
        for text in ["10/minute", "10 per minute", "10 PER Minute", "10 / minute", " 10/minute ", "10/minutes"] {
            assert_eq!(ok(text), vec![(10, Unit::Minute, 1)], "{text:?}");
        }
        assert_eq!(ok("5/second;60 per minute"), vec![(5, Unit::Second, 1), (60, Unit::Minute, 1)]);
        assert_eq!(ok("50/day, 250/7days"), vec![(50, Unit::Day, 1), (250, Unit::Day, 7)]);
        assert_eq!(ok("1/second; 5 per minute, 100/hour|1000/day").len(), 4);
        for text in ["10/2hours", "10 per 2 hours", "10/ 2 hours"] {
            assert_eq!(ok(text), vec![(10, Unit::Hour, 2)], "{text:?}");
        }
        assert_eq!(ok("10/hours"), vec![(10, Unit::Hour, 1)]);
        assert_eq!(ok("1/month;1/year"), vec![(1, Unit::Month, 1), (1, Unit::Year, 1)]);
        assert_eq!(ok("0/second"), vec![(0, Unit::Second, 1)]);
        assert_eq!(ok("2 per 3 seconds"), vec![(2, Unit::Second, 3)]);
        assert_eq!(ok("10/week"), vec![(10, Unit::Week, 1)], "weeks, as in the reference");
        assert_eq!(ok("5/second;60 per minute;2500 per hour").len(), 3);
    }

    #[test]
    fn rejects_what_flask_limiter_rejects_and_says_what_was_expected() {
        let e = err("10/min");
        assert_eq!(e.offset, 3);
        assert_eq!(e.message, "expected a unit (second, minute, hour, day, week, month or year), found \"min\"");
        assert!(err("10/s").message.contains("found \"s\""));
        assert_eq!(err("10minute").message, "expected \"/\" or \"per\", found \"minute\"");
        assert_eq!(
            err("10/minute;").message,
            "expected a count such as 10 in \"10/minute\", found the end of the string"
        );
        assert_eq!(err("10/minute,,20/hour").offset, 10);
        assert_eq!(
            err("10 per minute and 20/hour").message,
            "expected \";\", \",\" or \"|\" between limits, or the end of the string, found \"and\""
        );
        assert_eq!(err("").message, "expected a count such as 10 in \"10/minute\", found the end of the string");
    }

    #[test]
    fn rejects_what_flask_limiter_quietly_accepts() {
        assert_eq!(err("10/0 minutes").message, "a multiple must be at least 1");
        assert!(err("10/minute:;20/hour").message.contains("found \":\""));
        assert!(err("99999999999/second").message.contains("larger than 4294967295"));
    }
}
