//! What the harnesses that are not criterion benches share: where results go (the JSON that
//! `scripts/bench-report.py` turns into BENCHMARKS.md), quick mode, and resident memory.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each harness uses a different part"
)]

pub mod mesh;

use std::path::PathBuf;

/// `$BENCH_OUT`, or `<target>/bench` next to this executable (`<target>/release/deps/x`), so
/// a plain `cargo bench` writes where `make bench` reads.
pub fn out_dir() -> PathBuf {
    std::env::var_os("BENCH_OUT")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.ancestors().nth(3)?.join("bench"))
        })
        .unwrap_or_else(|| PathBuf::from("target/bench"))
}

/// `BENCH_QUICK=1`: a smoke run of a few seconds, whose numbers are not representative.
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `$name` from the environment as a number, else `default`.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Writes `<out_dir>/<harness>.json`: `{harness, quick, command, params, results}`.
pub fn write_json(
    harness: &str,
    command: &str,
    params: serde_json::Value,
    results: serde_json::Value,
) {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{harness}.json"));
    let doc = serde_json::json!({
        "harness": harness,
        "quick": quick(),
        "command": command,
        "params": params,
        "results": results,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

/// This process's resident set, in KiB (0 where /proc is missing).
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// The resident set of process `pid` (`"self"` for this one), in KiB, from the `VmRSS` line
/// of `/proc/<pid>/status` (0 where it is missing).
pub fn rss_kib_of(pid: &str) -> u64 {
    sum_kib(&format!("/proc/{pid}/status"), &["VmRSS:"])
}

/// The memory of process `pid` that is its own, in KiB: its private pages, clean and dirty
/// (`Private_Clean` + `Private_Dirty` of `/proc/<pid>/smaps_rollup`), i.e. what ending it
/// would free. Unlike the resident set, it leaves out file pages other processes map too
/// (a binary's text shared with other processes running it, shared libraries). 0 where the
/// file is missing.
pub fn private_kib_of(pid: &str) -> u64 {
    sum_kib(
        &format!("/proc/{pid}/smaps_rollup"),
        &["Private_Clean:", "Private_Dirty:"],
    )
}

/// The sum of the `<field> <n> kB` lines of a /proc file named by `fields` (0 where it is
/// missing).
fn sum_kib(path: &str, fields: &[&str]) -> u64 {
    std::fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .filter_map(|l| fields.iter().find_map(|f| l.strip_prefix(f)))
                .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}
