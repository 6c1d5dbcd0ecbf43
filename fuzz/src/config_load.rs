//! Rule file bytes through the loader (`config::read_text` and `snapshot::load_texts_with`).
//!
//! The input is up to four files separated by NUL bytes (NUL cannot appear in YAML); the
//! first byte chooses `MERGE_DOMAIN_CONFIG`. Invariants:
//! - every diagnostic prints as `file:line:col: ...` with a file of the load and a
//!   position inside that file's text (line 1 to its line count + 1, column at least 1);
//! - a failed load has at least one error, a good one none;
//! - loading the same bytes again gives the same outcome: the same diagnostics, or the
//!   same rules (compared as `/rlconfig` prints them and in full), and a reload into the
//!   same registry keeps every counter id (so an unchanged file keeps its counts).

use std::sync::Arc;

use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use sluicegate::clock::FakeClock;
use sluicegate::config::diag::Diagnostics;
use sluicegate::config::read_text;
use sluicegate::snapshot::{ConfigSnapshot, load_texts_with};
use sluicegate::http::rlconfig_text;
use sluicegate::rules::{BuildOptions, LimitRegistry};
use sluicegate::service::{RateLimiter, ServiceOptions};
use sluicegate::store::{MemoryStore, Store};

const NAMES: [&str; 4] = ["a.yaml", "b.yaml", "c/d.yaml", "e.yml"];

pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let files: Vec<&[u8]> = rest.split(|&b| b == 0).take(NAMES.len()).collect();
    let options = BuildOptions { merge_domains: flags & 1 == 1, ..BuildOptions::default() };

    // Bytes that are not UTF-8 go through the byte-level reader, which must say where.
    let mut texts = Vec::new();
    for (name, bytes) in NAMES.iter().zip(&files) {
        match std::str::from_utf8(bytes) {
            Ok(text) => texts.push((*name, text)),
            Err(_) => {
                let mut diags = Diagnostics::default();
                let docs = read_text(&Arc::from(*name), bytes, &mut diags);
                assert!(docs.is_empty() && diags.has_errors(), "invalid UTF-8 in {name} read without an error");
                check_positions(&diags, &[(name, &String::from_utf8_lossy(bytes))]);
                return;
            }
        }
    }

    let registry = LimitRegistry::new();
    let first = load_texts_with(&texts, &options, &registry);
    let again = load_texts_with(&texts, &options, &registry);
    let fresh = load_texts_with(&texts, &options, &LimitRegistry::new());
    match (&first, &again, &fresh) {
        (Err(a), Err(b), Err(c)) => {
            assert!(a.has_errors(), "a failed load without an error: {a:?}");
            assert_eq!(a, b, "two loads of the same bytes fail differently");
            assert_eq!(a, c, "a load fails differently with a fresh registry");
            check_positions(a, &texts);
        }
        (Ok(a), Ok(b), Ok(c)) => {
            assert!(!a.warnings.has_errors(), "a good load with errors: {:?}", a.warnings);
            check_positions(&a.warnings, &texts);
            assert_eq!(a.warnings, b.warnings, "two loads of the same bytes warn differently");
            let (da, db, dc) = (dump(a), dump(b), dump(c));
            assert_eq!(da, db, "a reload of the same bytes changes the rules (or their counter ids)");
            assert_eq!(da, dc, "a load with a fresh registry builds different rules");
        }
        _ => panic!(
            "two loads of the same bytes disagree on success: {:?} / {:?} / {:?}",
            first.as_ref().err(),
            again.as_ref().err(),
            fresh.as_ref().err()
        ),
    }
    if let (Ok(a), Ok(b)) = (first, fresh) {
        assert_eq!(rlconfig(a), rlconfig(b), "/rlconfig differs between two loads of the same bytes");
    }
}

/// Every diagnostic names a file of the load and a position inside its text.
fn check_positions(diags: &Diagnostics, texts: &[(&str, &str)]) {
    for d in &diags.0 {
        let shown = d.to_string();
        let prefix = format!("{}:{}:{}: ", d.file, d.pos.line, d.pos.col);
        assert!(shown.starts_with(&prefix), "{shown:?} does not start with file:line:col");
        assert!(!d.message.is_empty(), "an empty message at {prefix}");
        let Some((_, text)) = texts.iter().find(|(name, _)| **name == *d.file) else {
            panic!("{shown:?} names no file of the load");
        };
        // YAML's line breaks: CR LF, a lone CR, or LF (the parser counts lines by them).
        let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count() as u32;
        assert!(d.pos.line >= 1 && d.pos.line <= lines + 1, "{shown:?}: line outside the file's {lines} lines");
        assert!(d.pos.col >= 1, "{shown:?}: column 0");
    }
}

/// Everything a load built that a reload must reproduce: each domain's rules (with their
/// counter ids) and default limits, and the files with their domains.
fn dump(snapshot: &ConfigSnapshot) -> String {
    let mut out = format!("{:?}\n", snapshot.files);
    for domain in snapshot.rules.domains() {
        out.push_str(&format!("{:?}\n", domain.defaults()));
        for r in domain.rules() {
            // Field by field: `metadata` is a hash map, whose Debug order is random.
            out.push_str(&format!(
                "{} {}:{} {:?} {:?} unlimited={} replaces={:?} shadow={} quota={} detailed={} v2m={} \
                 inherit={} response={:?} metadata={}\n",
                r.stats_key(),
                r.file,
                r.pos,
                r.path.levels(),
                r.limits,
                r.unlimited,
                r.replaces,
                r.shadow_mode,
                r.quota_mode,
                r.detailed_metric,
                r.value_to_metric,
                r.inherit_default,
                r.response,
                r.metadata.as_deref().map(canonical).unwrap_or_default(),
            ));
        }
    }
    out
}

/// A protobuf `Struct` with its keys sorted, at every level.
fn canonical(s: &Struct) -> String {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let items: Vec<String> = keys.into_iter().map(|k| format!("{k:?}: {}", value(&s.fields[k]))).collect();
    format!("{{{}}}", items.join(", "))
}

fn value(v: &Value) -> String {
    match &v.kind {
        Some(Kind::StructValue(s)) => canonical(s),
        Some(Kind::ListValue(l)) => format!("[{}]", l.values.iter().map(value).collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}"),
    }
}

/// The rules as `/rlconfig` prints them, through a limiter serving this snapshot.
fn rlconfig(snapshot: ConfigSnapshot) -> String {
    let registry = Arc::new(LimitRegistry::new());
    let store = Store::Memory(Arc::new(MemoryStore::new(registry, 16)));
    let config = sluicegate::service::Active::shared(snapshot);
    rlconfig_text(&RateLimiter::new(config, store, FakeClock::at_secs(3600).into(), ServiceOptions::default()))
}
