//! A real `connect agent` (ACLs on, default deny) under a short hostile mix: slowloris and idle
//! connections, oversized bodies, deeply nested JSON and filters, filters full of regexes,
//! garbage query parameters, guessed tokens and invalid names, while legitimate clients write
//! intentions and a probe makes a normal request throughout. The agent must stay up, answer
//! no 5xx, grant nothing to a guessed token, accept no invalid name, keep every acknowledged
//! write, and keep answering the probe. `make hostile` runs the same mix longer against a
//! release build and prints the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;
mod hostile_support;

use hostile_support::{Plan, run, start_agent};

#[test]
fn agent_keeps_serving_under_a_hostile_mix() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start_agent(dir.path());
    let plan = Plan::short();
    let report = run(&mut agent, &plan);
    let table = report.render();
    eprintln!("{table}");

    assert!(report.alive, "the agent died:\n{table}\n{}", agent.stderr());
    assert_eq!(report.server_errors(), 0, "5xx answers:\n{table}");
    assert_eq!(
        report.violations(),
        0,
        "unauthorized successes, accepted invalid names or leaked secrets:\n{table}"
    );
    assert_eq!(report.unanswered(), 0, "requests left unanswered:\n{table}");
    assert!(
        report.acked_writes > 0,
        "no legitimate write went through:\n{table}"
    );
    assert_eq!(report.lost_writes, 0, "acknowledged writes lost:\n{table}");
    assert_eq!(
        report.check_disagrees, 0,
        "the authorizer disagrees with stored intentions:\n{table}"
    );
    // Only that the probe was answered each time within the plan's generous bound: its
    // latencies are measured by `make hostile`, not asserted here.
    assert!(!report.probe.is_empty(), "no probe answered:\n{table}");
    assert_eq!(report.probe_failures, 0, "probes unanswered:\n{table}");
}
