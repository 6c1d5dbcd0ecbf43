//! The command line: `sluicegate [serve]` with a flag for every setting.
//!
//! Owns turning `argv` and the environment into an action and an exit code. Every
//! setting of [`crate::settings::SPECS`] is a flag named after its variable
//! (`GRPC_PORT` is `--grpc-port`); a flag wins over the variable. Invalid settings or
//! flags exit with 64 (`EX_USAGE`) after naming every problem; a failed start exits
//! with 1.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::app::Server;
use crate::settings::{Env, LogFormat, SPECS, Settings, WithFlags, flag_name};

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

/// The whole command-line interface.
pub fn command() -> Command {
    let serve = with_setting_flags(Command::new("serve").about("Run the rate limit service (the default command)"));
    with_setting_flags(
        Command::new("sluicegate")
            .version(env!("CARGO_PKG_VERSION"))
            .about("A drop-in, lock-free rate limit service for Envoy")
            .args_conflicts_with_subcommands(true)
            .subcommand(serve),
    )
}

fn settings_from(matches: &ArgMatches) -> Result<Settings, Vec<String>> {
    let config: Vec<PathBuf> = matches.get_many::<PathBuf>("config").map(|v| v.cloned().collect()).unwrap_or_default();
    let flags: HashMap<String, String> =
        SPECS.iter().filter_map(|s| matches.get_one::<String>(s.env).map(|v| (s.env.to_string(), v.clone()))).collect();
    Settings::parse(&WithFlags { flags, base: Env }, config).map_err(|e| e.0)
}

fn init_logging(settings: &Settings) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_max_level(settings.log_level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
    let serve_matches = matches.subcommand_matches("serve").unwrap_or(&matches);
    serve(serve_matches)
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
    init_logging(&settings);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluicegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let started = Server::start(settings)?;
        started.run(crate::signal::shutdown()).await
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
