//! The agent's hot path and scale: warm reads (leaf, roots, authorize through the cache),
//! cold start to the first leaf, memory held per cached service with 10,000 services, and a
//! root change reaching 10,000 watching services.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use connect_core::agent::{Agent, AgentBackend, AgentConfig, RootsType, Scoped};
use connect_core::ca::CaConfiguration;
use connect_core::cache::GetOptions;
use connect_core::intentions::{IntentionAction, ServiceRef};
use connect_core::server::{Server, ServerConfig};
use serde_json::json;

fn median_ns(mut f: impl FnMut(), iters: u32) -> f64 {
    let mut samples = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        samples.push(t.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let services: usize = std::env::var("BENCH_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);

    // Cold start: a local server already running, a new agent, the first leaf.
    // Unlimited CSR rate: the benchmark measures the agent, not Consul's 50/s server limit.
    let mut config = ServerConfig::dev();
    config.ca =
        CaConfiguration::consul(json!({"CSRMaxPerSecond": 0}).as_object().cloned().unwrap());
    let server = Server::start(config, connect_core::clock::system()).unwrap();
    let t = Instant::now();
    let agent = Agent::new(AgentConfig {
        backend: AgentBackend::InProcess(server.clone()),
        root_change_jitter: Duration::ZERO,
        ..AgentConfig::dev()
    })
    .unwrap();
    let web = agent.service("web").unwrap();
    agent
        .block_on({
            let id = web.identity().clone();
            async move { id.ready_wait(Duration::from_secs(10)).await }
        })
        .unwrap()
        .unwrap();
    println!(
        "cold start to first leaf (agent + service + key + CSR + sign): {:?}",
        t.elapsed()
    );

    // Warm reads: what a handshake consults, all memory reads.
    agent
        .block_on({
            let a = agent.clone();
            async move {
                a.intention_upsert("api", "web", IntentionAction::Allow)
                    .await
            }
        })
        .unwrap()
        .unwrap();
    let id = web.identity().clone();
    let leaf_ns = median_ns(
        || {
            black_box(id.snapshot().svid().map(|s| s.not_after()));
        },
        100_000,
    );
    let roots_ns = median_ns(
        || {
            black_box(id.snapshot().bundle().map(|b| b.roots().len()));
        },
        100_000,
    );
    let index = web.intention_index().clone();
    let (dst, src) = (ServiceRef::new("web"), ServiceRef::new("api"));
    let authz_ns = median_ns(
        || {
            black_box(index.authorize(&dst, &src).allowed);
        },
        100_000,
    );
    let a2 = agent.clone();
    let cache_get_us = {
        let t = Instant::now();
        let n = 20_000;
        agent
            .block_on(async move {
                for _ in 0..n {
                    black_box(a2.roots().await.unwrap());
                }
            })
            .unwrap();
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };
    println!("warm leaf read (identity snapshot): {leaf_ns:.1} ns median");
    println!("warm roots read (identity snapshot): {roots_ns:.1} ns median");
    println!("authorize through the cached intentions: {authz_ns:.1} ns median");
    println!("agent.roots() through the cache Get API: {cache_get_us:.0} ns mean");

    // Scale: the cache holding a leaf (key included) for many services; roots are shared.
    let before = rss_kib();
    let t = Instant::now();
    let names: Vec<String> = (0..services).map(|i| format!("svc-{i:05}")).collect();
    agent
        .block_on({
            let (a, names) = (agent.clone(), names.clone());
            async move {
                for n in &names {
                    black_box(a.leaf(n).await.unwrap());
                }
            }
        })
        .unwrap();
    let after = rss_kib();
    println!(
        "{services} cached leaves in {:?}; memory held per cached service (leaf, key, entry): {:.2} KiB",
        t.elapsed(),
        (after.saturating_sub(before)) as f64 / services as f64
    );

    // A root change reaching many watchers of the roots (what every service's identity uses).
    let scope = Scoped {
        datacenter: agent.datacenter().to_owned(),
        token: String::new(),
        name: String::new(),
    };
    let mut watchers = Vec::with_capacity(services);
    {
        let _g = agent.handle().enter();
        for _ in 0..services {
            watchers.push(
                agent
                    .cache()
                    .watch::<RootsType>(scope.clone(), GetOptions::default())
                    .unwrap(),
            );
        }
    }
    // Drain the initial value of each.
    let mut watchers = agent
        .block_on(async move {
            for w in &mut watchers {
                w.recv().await.unwrap();
            }
            watchers
        })
        .unwrap();
    let t = Instant::now();
    server
        .set_ca_config(
            None,
            CaConfiguration::consul(
                json!({"PrivateKeyBits": 384, "CSRMaxPerSecond": 0})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
        )
        .unwrap();
    let reached = agent
        .block_on(async move {
            for w in &mut watchers {
                w.recv().await.unwrap();
            }
            t.elapsed()
        })
        .unwrap();
    println!("root change reaching {services} watchers: last one after {reached:?}");
    agent.close();
}
