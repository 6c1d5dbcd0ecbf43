//! The command line: `sluicegate [serve]`, `sluicegate validate`, `sluicegate explain`.
//!
//! Owns turning `argv` and the environment into an action and an exit code. Every
//! setting of [`crate::settings::SPECS`] is a flag named after its variable
//! (`GRPC_PORT` is `--grpc-port`); a flag wins over the variable. Invalid settings or
//! flags exit with 64 (`EX_USAGE`) after naming every problem; a failed start, a config
//! that does not validate, exits with 1.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::app::Server;
use crate::config::{ConfigSource, EmptyConfig};
use crate::limiter::{Algorithm, LimitParams};
use crate::rules::{BuildOptions, Domain, Limit, LimitRegistry, Rule, RuleSet};
use crate::settings::rules::{CONFIG_MAX_RULES, CONFIG_REFUSE_EMPTY, DEFAULT_ALGORITHM, MERGE_DOMAIN_CONFIG};
use crate::settings::{Env, SPECS, Settings, Spec, WithFlags, build_options, empty_config, flag_name};
use crate::snapshot;

/// `EX_USAGE`: the command line or a setting is invalid.
pub const EXIT_USAGE: u8 = 64;

fn with_setting_flags(mut command: Command) -> Command {
    command = command.arg(
        Arg::new("config")
            .long("config")
            .value_name("PATH")
            .action(ArgAction::Append)
            .value_parser(clap::value_parser!(PathBuf))
            .help("A rule file, or a directory of *.yaml/*.yml rule files (repeatable); replaces the RUNTIME_* layout"),
    );
    command = command.next_help_heading("Settings (each also read from the environment variable named)");
    for spec in SPECS {
        let default = if spec.default.is_empty() { String::new() } else { format!(" [default: {}]", spec.default) };
        command = command.arg(
            Arg::new(spec.env)
                .long(flag_name(spec.env))
                .value_name("VALUE")
                .num_args(1)
                .help(format!("{} [env: {}]{default}", spec.help, spec.env)),
        );
    }
    command
}

/// The settings that change how rules build, as flags of `validate` and `explain`.
const BUILD_SETTINGS: &[Spec] = &[MERGE_DOMAIN_CONFIG.spec(), DEFAULT_ALGORITHM.spec(), CONFIG_MAX_RULES.spec()];
/// And those that only change whether a load passes, for `validate`.
const VALIDATE_SETTINGS: &[Spec] =
    &[MERGE_DOMAIN_CONFIG.spec(), DEFAULT_ALGORITHM.spec(), CONFIG_MAX_RULES.spec(), CONFIG_REFUSE_EMPTY.spec()];

/// Flags for the settings `specs`.
fn with_load_flags(command: Command, specs: &[Spec]) -> Command {
    specs.iter().fold(command, |command, spec| {
        command.arg(
            Arg::new(spec.env)
                .long(flag_name(spec.env))
                .value_name("VALUE")
                .num_args(1)
                .help(format!("{} [env: {}] [default: {}]", spec.help, spec.env, spec.default)),
        )
    })
}

/// The whole command-line interface.
pub fn command() -> Command {
    let serve = with_setting_flags(Command::new("serve").about("Run the rate limit service (the default command)"));
    let validate = with_load_flags(
        Command::new("validate")
            .about("Load rule files without serving: print every error and exit 1, or a summary and exit 0")
            .arg(
                Arg::new("paths")
                    .value_name("PATH")
                    .num_args(1..)
                    .required(true)
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Rule files, or directories of *.yaml/*.yml rule files"),
            ),
        VALIDATE_SETTINGS,
    );
    let explain =
        with_load_flags(
            Command::new("explain")
                .about("Show which rule each descriptor matches (or why none), with its limits")
                .arg(
                    Arg::new("config")
                        .long("config")
                        .value_name("PATH")
                        .action(ArgAction::Append)
                        .required(true)
                        .value_parser(clap::value_parser!(PathBuf))
                        .help("A rule file or directory (repeatable)"),
                )
                .arg(Arg::new("domain").long("domain").value_name("DOMAIN").required(true).help("The request's domain"))
                .arg(
                    Arg::new("descriptor")
                        .long("descriptor")
                        .value_name("K=V[,K=V...]")
                        .action(ArgAction::Append)
                        .required_unless_present("bucket")
                        .help("A descriptor's entries in order (repeatable, one per descriptor)"),
                )
                .arg(
                    Arg::new("bucket").long("bucket").value_name("K=V[,K=V...]").action(ArgAction::Append).help(
                        "An RLQS bucket id's entries, any order (repeatable): the rule and the assignment it gets",
                    ),
                ),
            BUILD_SETTINGS,
        );
    with_setting_flags(
        Command::new("sluicegate")
            .version(env!("CARGO_PKG_VERSION"))
            .about("A drop-in, lock-free rate limit service for Envoy")
            .args_conflicts_with_subcommands(true)
            .subcommand(serve)
            .subcommand(validate)
            .subcommand(explain),
    )
}

fn settings_from(matches: &ArgMatches) -> Result<Settings, Vec<String>> {
    let config: Vec<PathBuf> = matches.get_many::<PathBuf>("config").map(|v| v.cloned().collect()).unwrap_or_default();
    let flags: HashMap<String, String> =
        SPECS.iter().filter_map(|s| matches.get_one::<String>(s.env).map(|v| (s.env.to_string(), v.clone()))).collect();
    Settings::parse(&WithFlags { flags, base: Env }, config).map_err(|e| e.0)
}

/// Runs the program with `args` (including the program name) and returns its exit code.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let matches = match command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    match matches.subcommand() {
        Some(("validate", m)) => validate(m),
        Some(("explain", m)) => explain(m),
        Some(("serve", m)) => serve(m),
        _ => serve(&matches),
    }
}

fn load_options(matches: &ArgMatches) -> Result<(BuildOptions, EmptyConfig), ExitCode> {
    // `explain` has no CONFIG_REFUSE_EMPTY flag: `try_` reads what the command has.
    let flags: HashMap<String, String> = VALIDATE_SETTINGS
        .iter()
        .filter_map(|spec| {
            matches.try_get_one::<String>(spec.env).ok().flatten().map(|v| (spec.env.to_string(), v.clone()))
        })
        .collect();
    let source = WithFlags { flags, base: Env };
    let mut errors = Vec::new();
    let build = build_options(&source).map_err(|e| errors.extend(e.0));
    let empty = empty_config(&source).map_err(|e| errors.extend(e.0));
    match (build, empty) {
        (Ok(build), Ok(empty)) => Ok((build, empty)),
        _ => {
            for line in errors {
                eprintln!("sluicegate: {line}");
            }
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn validate(matches: &ArgMatches) -> ExitCode {
    let (options, empty) = match load_options(matches) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let paths: Vec<PathBuf> = matches.get_many::<PathBuf>("paths").map(|v| v.cloned().collect()).unwrap_or_default();
    let source = ConfigSource::Paths(paths);
    match snapshot::load_with(&source, &options, &LimitRegistry::new(), 1, empty) {
        Ok(snapshot) => {
            if !snapshot.warnings.0.is_empty() {
                println!("{}", snapshot.warnings);
            }
            let warnings = snapshot.warnings.0.len();
            println!(
                "OK: {} files, {} domains, {} rules{}",
                snapshot.files.len(),
                snapshot.rules.domains().len(),
                snapshot.rules.rule_count(),
                if warnings == 0 { String::new() } else { format!(", {warnings} warnings") }
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            println!("{diags}");
            let files: std::collections::HashSet<&str> = diags.errors().map(|d| &*d.file).collect();
            let n = diags.error_count();
            println!("{n} error{} in {} file{}", plural(n), files.len(), plural(files.len()));
            ExitCode::FAILURE
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn explain(matches: &ArgMatches) -> ExitCode {
    let (options, _) = match load_options(matches) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let paths: Vec<PathBuf> = matches.get_many::<PathBuf>("config").map(|v| v.cloned().collect()).unwrap_or_default();
    let snapshot = match snapshot::load(&ConfigSource::Paths(paths), &options, &LimitRegistry::new(), 1) {
        Ok(s) => s,
        Err(diags) => {
            println!("{diags}");
            println!("the rules do not load: {} error{}", diags.error_count(), plural(diags.error_count()));
            return ExitCode::FAILURE;
        }
    };
    let domain_name = matches.get_one::<String>("domain").map(String::as_str).unwrap_or_default();
    let Some(domain) = snapshot.rules.domain(domain_name) else {
        let names: Vec<&str> = snapshot.rules.domains().iter().map(|d| &*d.name).collect();
        println!(
            "domain '{domain_name}' is not configured: every descriptor is OK with no limit (domains: {})",
            names.join(", ")
        );
        return ExitCode::SUCCESS;
    };
    for (i, text) in matches.get_many::<String>("descriptor").into_iter().flatten().enumerate() {
        let entries = parse_entries(text);
        println!("descriptor {}: {text}", i + 1);
        let (rule, lines) = domain.explain(&entries);
        for line in lines {
            println!("  {line}");
        }
        for line in describe_outcome(domain, rule) {
            println!("  => {line}");
        }
    }
    for (i, text) in matches.get_many::<String>("bucket").into_iter().flatten().enumerate() {
        println!("bucket {}: {text}", i + 1);
        explain_bucket(&snapshot.rules, domain, &parse_entries(text));
    }
    ExitCode::SUCCESS
}

/// `k=v,k=v` as entries (a bare `k` has an empty value).
fn parse_entries(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

/// How an RLQS bucket id maps onto `domain`'s tree, and the assignment it gets.
fn explain_bucket(rules: &RuleSet, domain: &Domain, entries: &[(String, String)]) {
    use crate::rlqs::{Target, resolve};
    let pairs: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let levels = domain.bucket_levels(&pairs);
    let order: Vec<String> = levels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("  levels, in the rule tree's order: {}", order.join(", "));
    let (_, lines) = domain.explain(&levels);
    for line in lines {
        println!("  {line}");
    }
    // The global SHADOW_MODE is a serving setting; explain shows the rules' own answer.
    let resolved = resolve(Some(rules), &domain.name, &pairs, false);
    let assignment = match resolved.target {
        Target::Unassigned => "no assignment".to_string(),
        Target::AllowAll => "ALLOW_ALL (a blanket rule)".to_string(),
        Target::DenyAll => "DENY_ALL (a blanket rule)".to_string(),
        Target::Limit(q) => format!(
            "a token bucket per client: {} requests per {:?} (burst {}) divided among the clients reporting the bucket, by demand",
            q.per_window, q.window, q.burst
        ),
    };
    let rule = resolved.rule.map_or(String::from("no rule"), |r| format!("rule {r}"));
    println!("  => RLQS: {rule}: {assignment}");
}

/// What applies to a descriptor that ended at `rule` (or at no rule).
fn describe_outcome(domain: &Domain, rule: Option<&Rule>) -> Vec<String> {
    let limits = |limits: &[Limit]| limits.iter().map(|l| describe_limit(&l.params)).collect::<Vec<_>>().join("; ");
    let Some(rule) = rule else {
        return vec![if domain.defaults().is_empty() {
            "no rule matches: OK, no limit".to_string()
        } else {
            format!(
                "no rule matches: the domain's default_limit applies, per distinct descriptor: {}",
                limits(domain.defaults())
            )
        }];
    };
    let mut out = Vec::new();
    if rule.unlimited {
        out.push("unlimited: always OK".to_string());
    } else if !rule.is_limited() && !rule.inherit_default {
        out.push("no rate_limit: OK, never limited (a whitelist, or a rule that only groups child rules)".to_string());
    } else {
        if rule.is_limited() {
            out.push(format!("limits: {}", limits(&rule.limits)));
        }
        if rule.inherit_default && !domain.defaults().is_empty() {
            out.push(format!("and the domain's default_limit: {}", limits(domain.defaults())));
        }
        let shared: Vec<String> =
            rule.path.levels().iter().filter(|l| l.share_threshold).map(|l| l.composite()).collect();
        out.push(if shared.is_empty() {
            "counted per distinct value of the descriptor".to_string()
        } else {
            format!("counted per distinct value, sharing one count for every value matching {}", shared.join(", "))
        });
    }
    let names: Vec<&str> = rule.names().collect();
    if !names.is_empty() {
        out.push(format!("named '{}'", names.join("', '")));
    }
    if !rule.replaces.is_empty() {
        out.push(format!("replaces: {}", rule.replaces.join(", ")));
    }
    if rule.shadow_mode {
        out.push("shadow_mode: counted and reported, never rejected".to_string());
    }
    if rule.quota_mode {
        out.push("quota_mode: rejects only when every quota descriptor of the request is over".to_string());
    }
    if rule.response.is_some() {
        out.push("sends a custom response when it rejects".to_string());
    }
    out
}

/// `10 per minute (fixed_window)`, `250 per 7 days (token_bucket, burst 300)`.
pub fn describe_limit(p: &LimitParams) -> String {
    let unit = p.unit.name().to_ascii_lowercase();
    let per = if p.unit_multiplier == 1 { unit } else { format!("{} {unit}s", p.unit_multiplier) };
    let algorithm = match p.algorithm {
        Algorithm::TokenBucket | Algorithm::LeakyBucket => format!("{}, burst {}", p.algorithm.name(), p.burst),
        _ => p.algorithm.name().to_string(),
    };
    format!("{} per {per} ({algorithm})", p.requests_per_unit)
}

fn serve(matches: &ArgMatches) -> ExitCode {
    let settings = match settings_from(matches) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("sluicegate: {e}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    crate::logging::init(&settings);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = crate::signal::shutdown();
        let started = Server::start(settings)?;
        started.run(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("sluicegate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_flag() {
        let m = command()
            .try_get_matches_from(["sluicegate", "--grpc-port", "9", "--config", "a", "--config", "b"])
            .unwrap();
        assert_eq!(m.get_one::<String>("GRPC_PORT").map(String::as_str), Some("9"));
        assert_eq!(m.get_many::<PathBuf>("config").unwrap().count(), 2);
        let m = command().try_get_matches_from(["sluicegate", "serve", "--shadow-mode", "true"]).unwrap();
        assert!(m.subcommand_matches("serve").unwrap().get_one::<String>("SHADOW_MODE").is_some());
    }
}
