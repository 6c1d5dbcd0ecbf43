//! The `sluicegate` binary: everything lives in the library; see `sluicegate::cli`.

/// mimalloc rather than the system allocator: it is faster for the gRPC stack's many small
/// allocations, and its 64-byte size class keeps each counter in one cache line (the
/// memory store sizes its map entries to exactly 64 bytes for this).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluicegate::cli::main_with_args(std::env::args_os())
}
