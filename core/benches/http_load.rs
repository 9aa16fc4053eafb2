//! Load from a second process on loopback against a real `connect agent -dev`:
//! authorize requests per second and latency percentiles over HTTP, and the time for one
//! intention change to answer 10,000 blocked queries.
//!
//! Run through `make bench` (it builds the binary and sets `CONNECT_BIN`). Writes
//! `http_load.json` for `scripts/bench-report.py`; `BENCH_QUICK=1` for a smoke run.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod bench_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

/// The agent, and the directory of its configuration file (removed when dropped).
struct Agent {
    child: Child,
    _config: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent() -> (Agent, String) {
    let bin = std::env::var("CONNECT_BIN").unwrap_or_else(|_| "target/release/connect".into());
    // Every waiter is a connection from this one client: lift the per-client limit and the
    // cap (default 200 and 4096) that protect the agent from exactly that.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("limits.hcl");
    std::fs::write(
        &cfg,
        "limits {\n  http_max_conns_per_client = 0\n  http_max_conns = 1000000\n}\n",
    )
    .unwrap();
    let mut child = Command::new(&bin)
        .args(["agent", "-dev", "-http-port", "0", "-log-level", "error"])
        .arg("-config-file")
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e} (run `make bench`)"));
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("agent exited").unwrap();
        if let Some(rest) = line.split("HTTP API listening on http://").nth(1) {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (
        Agent {
            child,
            _config: dir,
        },
        addr,
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn authorize_load(addr: &str, concurrency: usize, duration: Duration) -> serde_json::Value {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let url = format!("http://{addr}/v1/agent/connect/authorize");
    let roots: serde_json::Value = client
        .get(format!("http://{addr}/v1/connect/ca/roots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let td = roots["TrustDomain"].as_str().unwrap().to_owned();
    for (src, action) in [("web", "allow"), ("*", "deny")] {
        client
            .put(format!(
                "http://{addr}/v1/connect/intentions/exact?source={src}&destination=db"
            ))
            .json(&json!({ "Action": action }))
            .send()
            .await
            .unwrap();
    }
    let body = Arc::new(
        json!({"Target": "db", "ClientCertURI": format!("spiffe://{td}/ns/default/dc/dc1/svc/web")}),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body) = (client.clone(), url.clone(), Arc::clone(&body));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < duration {
                let t = Instant::now();
                let r = client.post(&url).json(&*body).send().await.unwrap();
                assert!(r.status().is_success());
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["Authorized"], true);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    println!(
        "authorize over HTTP: {} requests in {secs:.1} s with {concurrency} connections = {:.0} req/s; p50 {:?}, p99 {:?}, max {:?}",
        all.len(),
        all.len() as f64 / secs,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().unwrap()
    );
    json!({
        "requests": all.len(),
        "seconds": secs,
        "connections": concurrency,
        "req_per_s": all.len() as f64 / secs,
        "p50_us": percentile(&all, 0.5).as_secs_f64() * 1e6,
        "p99_us": percentile(&all, 0.99).as_secs_f64() * 1e6,
        "max_us": all.last().unwrap().as_secs_f64() * 1e6,
    })
}

async fn wake_blocked(addr: &str, waiters: usize) -> Duration {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{addr}/v1/connect/intentions");
    let first = client.get(&url).send().await.unwrap();
    let index: u64 = first.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(waiters);
    let mut tasks = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        let (client, url, ready) = (client.clone(), url.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let req = client.get(format!("{url}?index={index}&wait=120s")).send();
            let _ = ready.send(()).await;
            let r = req.await.unwrap();
            let got: u64 = r.headers()["x-consul-index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(got > index);
            Instant::now()
        }));
    }
    for _ in 0..waiters {
        ready_rx.recv().await.unwrap();
    }
    // Give every request time to reach the server and block there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    client
        .put(format!(
            "http://{addr}/v1/connect/intentions/exact?source=api&destination=db"
        ))
        .json(&json!({"Action": "deny"}))
        .send()
        .await
        .unwrap();
    let mut last = t0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    println!(
        "one intention change answered {waiters} blocked queries: last answer {:?} after the write",
        last - t0
    );
    last - t0
}

fn main() {
    // `cargo bench` passes --bench; this harness takes no options. reqwest needs the one
    // crypto provider named even for plain HTTP.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_agent, addr) = start_agent();
    let quick = bench_support::quick();
    let secs: u64 = bench_support::env_num("BENCH_SECONDS", if quick { 1 } else { 5 });
    let authorize = rt.block_on(authorize_load(&addr, 32, Duration::from_secs(secs)));
    let waiters: usize =
        bench_support::env_num("BENCH_WAITERS", if quick { 1_000 } else { 10_000 });
    let woken = rt.block_on(wake_blocked(&addr, waiters));
    bench_support::write_json(
        "http_load",
        "cargo build --release --bin connect && cargo bench -p connect-core --bench http_load",
        json!({"seconds": secs, "connections": 32, "waiters": waiters}),
        json!({
            "authorize": authorize,
            "wake_blocked": {"waiters": waiters, "last_ms": woken.as_secs_f64() * 1e3},
        }),
    );
}
