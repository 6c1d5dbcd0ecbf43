//! The `sluicegate` binary: everything lives in the library; see `sluicegate::cli`.

fn main() -> std::process::ExitCode {
    sluicegate::cli::main_with_args(std::env::args_os())
}
