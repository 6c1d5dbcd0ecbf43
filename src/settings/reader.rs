//! Reading settings from a [`Source`]: the raw value or its default, the typed parse, and
//! the error line of an invalid value, `NAME="value" is not valid: reason` (or `--flag=`
//! when it came from a flag), with credentials masked.

use super::{Setting, Source, Spec};

/// Reads settings, collecting every invalid one instead of stopping at the first.
pub(super) struct Reader<'a> {
    pub source: &'a dyn Source,
    pub errors: Vec<String>,
}

impl<'a> Reader<'a> {
    pub fn new(source: &'a dyn Source) -> Self {
        Reader { source, errors: Vec::new() }
    }

    /// The raw value, or the default if unset or empty (as the reference's envconfig).
    fn raw(&self, spec: Spec) -> String {
        match self.source.get(spec.env) {
            Some(v) if !v.is_empty() => v,
            _ => spec.default.to_string(),
        }
    }

    /// Whether the variable (a setting's, or an ignored one's) is set to something.
    pub fn is_set(&self, env: &str) -> bool {
        self.source.get(env).is_some_and(|v| !v.is_empty())
    }

    /// Parses a setting; on error records it and falls back to the default's parse.
    pub fn get<T>(&mut self, setting: &Setting<T>) -> T {
        let raw = self.raw(setting.spec());
        match (setting.parse)(&raw) {
            Ok(v) => v,
            Err(reason) => {
                self.invalid(setting.env, &shown(setting.env, &raw), &reason);
                (setting.parse)(setting.default)
                    .unwrap_or_else(|e| panic!("default of {} must parse: {e}", setting.env))
            }
        }
    }

    /// As [`Reader::get`], for a setting whose value is read in the light of other
    /// settings (`REDIS_URL` with `REDIS_TYPE`): `parse` instead of its own parser, and on
    /// error, `fallback`.
    pub fn get_with<T, U>(
        &mut self,
        setting: &Setting<T>,
        parse: impl Fn(&str) -> Result<U, String>,
        fallback: U,
    ) -> U {
        let raw = self.raw(setting.spec());
        match parse(&raw) {
            Ok(v) => v,
            Err(reason) => {
                self.invalid(setting.env, &shown(setting.env, &raw), &reason);
                fallback
            }
        }
    }

    /// Records `env` as invalid: `NAME=shown is not valid: reason`.
    pub fn invalid(&mut self, env: &str, shown: &str, reason: &str) {
        self.errors.push(format!("{}={shown} is not valid: {reason}", self.source.describe(env)));
    }
}

/// A value as a settings error quotes it. Passwords (`*_AUTH` and the like) and header
/// lists (`*_HEADERS`, which carry API keys) never show, and addresses (`*_URL`) show with
/// their credentials masked: errors reach logs.
pub(super) fn shown(name: &str, raw: &str) -> String {
    let secret = ["AUTH", "PASS", "PASSWORD", "SECRET", "TOKEN", "HEADERS"];
    if secret.iter().any(|word| name.split('_').any(|part| part == *word)) {
        "\"***\"".to_string()
    } else if name.ends_with("_URL") {
        format!("{:?}", crate::store::redis::mask::mask_addresses(raw))
    } else {
        format!("{raw:?}")
    }
}
