//! The recorded hostile-input run: the attack mix of `tests/hostile_support` for
//! `HOSTILE_SECS` seconds (default 60) against a release `connect agent` (ACLs on, default
//! deny), then a table of requests tried by kind, 5xx, crashes, unauthorized successes,
//! acknowledged writes lost and the probe's latency percentiles.
//!
//! `make hostile` (or `cargo bench -p connect-core --bench hostile`; the bench profile builds
//! the agent in release). Exits non-zero when a target is missed: 0 crashes, 0 5xx, 0
//! unauthorized successes, 0 lost writes, every probe answered, probe max under 100 ms.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

#[path = "../tests/cli_support/mod.rs"]
mod cli_support;
#[path = "../tests/hostile_support/mod.rs"]
mod hostile_support;

use std::time::Duration;

fn main() {
    let secs = std::env::var("HOSTILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = hostile_support::start_agent(dir.path());
    println!(
        "hostile run: {secs} s against {} ({}), ACLs on, default deny",
        agent.http,
        cli_support::BIN
    );
    let plan = hostile_support::Plan::long(secs);
    let report = hostile_support::run(&mut agent, &plan);
    println!("{}", report.render());
    if let Ok(dir) = std::env::var("BENCH_OUT") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(format!("{dir}/hostile.txt"), report.render());
    }
    let met = report.alive
        && report.server_errors() == 0
        && report.violations() == 0
        && report.unanswered() == 0
        && report.lost_writes == 0
        && report.check_disagrees == 0
        && report.probe_failures == 0
        && report.probe_percentile(1.0) < Duration::from_millis(100);
    if !met {
        println!("TARGET MISSED (see the table above)");
        if !report.alive {
            println!("agent stderr:\n{}", agent.stderr());
        }
        std::process::exit(1);
    }
    println!("every target met");
}
