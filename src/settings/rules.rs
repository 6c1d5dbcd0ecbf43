//! Config settings: where rules come from (`--config` or the reference's `RUNTIME_*`
//! layout), how they build (`MERGE_DOMAIN_CONFIG`, `DEFAULT_ALGORITHM`,
//! `CONFIG_MAX_RULES`), and what a failed or empty load does.

use std::path::PathBuf;

use super::parse::{parse_bool, parse_count, text};
use super::reader::Reader;
use super::setting::{decimal, settings};
use crate::config::{ConfigSource, EmptyConfig, RuntimeLayout};
use crate::limiter::Algorithm;
use crate::rules::{BuildOptions, DEFAULT_MAX_RULES};

settings! {
    CONFIG_TYPE: bool = "FILE",
        |s| match s.to_ascii_uppercase().as_str() {
            "FILE" => Ok(false),
            "GRPC_XDS_SOTW" => Ok(true),
            _ => Err("expected FILE or GRPC_XDS_SOTW".into()),
        },
        "Where rules come from: FILE, or GRPC_XDS_SOTW (an xDS control plane; the CONFIG_GRPC_XDS_* settings)";
    RUNTIME_ROOT: String = "/srv/runtime_data/current", text, "Runtime root directory (reference layout)";
    RUNTIME_SUBDIRECTORY: String = "", text, "Subdirectory of RUNTIME_ROOT holding the rules (reference layout)";
    RUNTIME_APPDIRECTORY: String = "config", text, "Directory under the subdirectory with the rule files";
    RUNTIME_IGNOREDOTFILES: bool = "false", parse_bool, "Skip dot-files and dot-directories in the reference layout";
    RUNTIME_WATCH_ROOT: bool = "true", parse_bool, "Reload when RUNTIME_ROOT is swapped rather than on file changes";
    MERGE_DOMAIN_CONFIG: bool = "false", parse_bool, "Allow several files to define the same domain";
    CONFIG_MAX_RULES: usize = decimal!(DEFAULT_MAX_RULES),
        |s| match parse_count(s)? {
            0 => Err("expected at least 1".into()),
            n => Ok(n),
        },
        "Most rules (descriptor nodes, YAML aliases counted once per use) one load may build";
    FORCE_START_WITHOUT_INITIAL_CONFIG: bool = "false", parse_bool, "Start even if the first config load fails";
    CONFIG_REFUSE_EMPTY: EmptyConfig = "false",
        |s| parse_bool(s).map(|refuse| if refuse { EmptyConfig::Refuse } else { EmptyConfig::Warn }),
        "Fail a config load that finds no domain (the previous rules stay; at start-up, exit 1)";
    DEFAULT_ALGORITHM: Algorithm = "fixed_window",
        |s| Algorithm::parse(s)
            .ok_or_else(|| "expected fixed_window, sliding_window, token_bucket or leaky_bucket".into()),
        "Algorithm of limits and domains that name none";
}

/// Where the rules come from: the `--config` paths if any (the `RUNTIME_*` layout is
/// then ignored, with a warning if set), else the reference's layout (which may be unset
/// when `use_xds`: the rules then come from the xDS provider).
pub(super) fn config_source(
    r: &mut Reader<'_>,
    config_paths: Vec<PathBuf>,
    use_xds: bool,
    warnings: &mut Vec<String>,
) -> ConfigSource {
    let layout = RuntimeLayout {
        root: PathBuf::from(r.get(&RUNTIME_ROOT)),
        subdirectory: r.get(&RUNTIME_SUBDIRECTORY),
        appdirectory: r.get(&RUNTIME_APPDIRECTORY),
        ignore_dotfiles: r.get(&RUNTIME_IGNOREDOTFILES),
        watch_root: r.get(&RUNTIME_WATCH_ROOT),
    };
    if !config_paths.is_empty() {
        let runtime_set: Vec<&str> = [RUNTIME_ROOT.env, RUNTIME_SUBDIRECTORY.env, RUNTIME_APPDIRECTORY.env]
            .into_iter()
            .filter(|n| r.is_set(n))
            .collect();
        if !runtime_set.is_empty() {
            warnings.push(format!("--config is given, so {} is ignored", runtime_set.join(", ")));
        }
        return ConfigSource::Paths(config_paths);
    }
    if layout.subdirectory.is_empty() && !use_xds {
        r.invalid(
            RUNTIME_SUBDIRECTORY.env,
            "\"\"",
            "set it (with RUNTIME_ROOT) to the directory holding the rules, or pass --config PATH; with it empty the reference service silently loads no rules",
        );
    }
    ConfigSource::Runtime(layout)
}

/// `MERGE_DOMAIN_CONFIG`, `DEFAULT_ALGORITHM`, `CONFIG_MAX_RULES`.
pub(super) fn build_options(r: &mut Reader<'_>) -> BuildOptions {
    BuildOptions {
        merge_domains: r.get(&MERGE_DOMAIN_CONFIG),
        default_algorithm: r.get(&DEFAULT_ALGORITHM),
        max_rules: r.get(&CONFIG_MAX_RULES),
    }
}
