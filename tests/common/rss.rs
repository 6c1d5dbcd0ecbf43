//! Resident memory, read from `/proc/<pid>/statm` (its second field, in 4 KiB pages).
//! A module of its own so the memory tests can include just this file
//! (`#[path = "common/rss.rs"] mod rss;`): nothing else of the harness in their process.

/// Resident bytes of process `pid` (`"self"`: this one), if `/proc` has it.
pub fn resident_bytes_of(pid: &str) -> Option<usize> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Resident bytes of this process.
pub fn resident_bytes() -> usize {
    resident_bytes_of("self").expect("/proc/self/statm")
}
