//! Added latency per request: libconnect in the application against a sidecar-style extra
//! hop, with plain TCP as the floor. A 64-byte echo, round trip, on one established
//! connection per path:
//!
//! * native: a libconnect mTLS client in this process → a libconnect mTLS echo server
//!   (another process);
//! * sidecar: a plaintext client → `connect proxy -service web -upstream db:…` (outbound) →
//!   mTLS → `connect proxy -service db -service-addr … -listen …` (inbound) → a plaintext
//!   echo server (another process);
//! * plain TCP: the client straight to that plaintext echo server.
//!
//! One `connect agent -dev` serves every identity. The client side is the same tokio loop for
//! all three paths, and the paths take turns in rounds so that a noisy machine weighs on all
//! of them alike. Also measured: a new connection and its first echo (handshake included).
//!
//! Needs the release `connect` (`cargo build --release --bin connect`, or `CONNECT_BIN`).
//! Run: `cargo bench -p connect-core --bench proxy_latency`; `BENCH_QUICK=1` for a smoke
//! run. Writes `proxy_latency.json` for `scripts/bench-report.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod bench_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use connect_core::agent::{Agent, AgentConfig, ConnectService};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MSG: usize = 64;
/// Tells a re-executed copy of this binary which server to be.
const ROLE: &str = "PROXY_LATENCY_ROLE";

/// A child process, killed when dropped (also when the harness panics).
struct Proc {
    child: Child,
    what: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd`, following its stderr and stdout line by line.
    fn spawn(mut cmd: Command, what: &str) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        Proc {
            child,
            what: what.to_owned(),
            lines,
        }
    }

    /// The rest of the first line containing `prefix` (within 30 s), trimmed.
    fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some((_, rest)) = l.split_once(prefix) {
                        return rest.trim().to_owned();
                    }
                    seen.push_str(&l);
                    seen.push('\n');
                }
                Err(_) => panic!("{} did not print {prefix:?}; output:\n{seen}", self.what),
            }
        }
    }
}

fn connect_bin() -> PathBuf {
    std::env::var_os("CONNECT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // <target>/release/deps/proxy_latency-… → <target>/release/connect
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("connect")
        })
}

/// `connect` with Consul's variables naming only `agent_http` (none when empty).
fn connect(agent_http: &str) -> Command {
    let bin = connect_bin();
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release --bin connect (or set CONNECT_BIN)",
        bin.display()
    );
    let mut c = Command::new(bin);
    for k in ["CONSUL_HTTP_TOKEN", "CONSUL_CACERT", "CONSUL_HTTP_SSL"] {
        c.env_remove(k);
    }
    if agent_http.is_empty() {
        c.env_remove("CONSUL_HTTP_ADDR");
    } else {
        c.env("CONSUL_HTTP_ADDR", agent_http);
    }
    c
}

/// A copy of this binary serving `role`, which prints its address.
fn serve(role: &str, agent_http: &str) -> (Proc, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, role).env("CONSUL_HTTP_ADDR", agent_http);
    let p = Proc::spawn(cmd, role);
    let addr = p.wait_for("listening on ");
    (p, addr)
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The server roles: a plaintext echo server, or libconnect's `db` echoing over mTLS.
fn run_role(role: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match role {
            "echo" => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                println!("listening on {}", l.local_addr().unwrap());
                loop {
                    let (s, _) = l.accept().await.unwrap();
                    s.set_nodelay(true).unwrap();
                    tokio::spawn(echo(s));
                }
            }
            "native" => {
                let (_agent, svc) = service("db").await;
                let mut l = svc.tls().listen("127.0.0.1:0").await.unwrap();
                println!("listening on {}", l.local_addr());
                loop {
                    let c = l.accept().await.unwrap();
                    tokio::spawn(echo(c));
                }
            }
            other => panic!("unknown {ROLE} {other}"),
        }
    });
}

/// A libconnect service over HTTP to the agent named by `CONSUL_HTTP_ADDR`.
async fn service(name: &str) -> (Agent, ConnectService) {
    let agent = Agent::new_async(AgentConfig::from_env()).await.unwrap();
    let svc = agent.service(name).unwrap();
    svc.ready_wait(Duration::from_secs(30)).await.unwrap();
    (agent, svc)
}

/// One 64-byte round trip; its duration in nanoseconds.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, buf: &mut [u8; MSG]) -> u64 {
    let t = Instant::now();
    s.write_all(buf).await.unwrap();
    s.read_exact(buf).await.unwrap();
    t.elapsed().as_nanos() as u64
}

#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn stats(mut self) -> serde_json::Value {
        self.0.sort_unstable();
        let v = &self.0;
        let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1e3;
        json!({"n": v.len(), "p50_us": p(0.5), "p90_us": p(0.9), "p99_us": p(0.99),
               "min_us": v[0] as f64 / 1e3, "mean_us": mean})
    }
}

/// The three paths, each a way to open a new connection to the echo behind it.
#[derive(Clone, Copy)]
enum Path {
    Native,
    Sidecar,
    Plain,
}

const PATHS: [(Path, &str); 3] = [
    (Path::Native, "native"),
    (Path::Sidecar, "sidecar"),
    (Path::Plain, "plain_tcp"),
];

enum Conn {
    Tls(Box<connect_core::tls::Connection>),
    Tcp(TcpStream),
}

struct Targets {
    web: ConnectService,
    native: String,
    upstream: String,
    echo: String,
}

impl Targets {
    async fn open(&self, path: Path) -> Conn {
        let tcp = |addr: String| async move {
            let s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            Conn::Tcp(s)
        };
        match path {
            Path::Native => Conn::Tls(Box::new(
                self.web.dial_addr(&self.native, "db").await.unwrap(),
            )),
            Path::Sidecar => tcp(self.upstream.clone()).await,
            Path::Plain => tcp(self.echo.clone()).await,
        }
    }
}

impl Conn {
    async fn round_trip(&mut self, buf: &mut [u8; MSG]) -> u64 {
        match self {
            Conn::Tls(c) => round_trip(c, buf).await,
            Conn::Tcp(c) => round_trip(c, buf).await,
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return run_role(&role);
    }
    let quick = bench_support::quick();
    let rounds: usize = bench_support::env_num("BENCH_ROUNDS", if quick { 5 } else { 20 });
    let per_round: usize =
        bench_support::env_num("BENCH_REQUESTS", if quick { 200 } else { 1_000 });
    let new_conns: usize = bench_support::env_num("BENCH_NEW_CONNS", if quick { 20 } else { 200 });

    let agent = Proc::spawn(
        {
            let mut c = connect("");
            c.args(["agent", "-dev", "-http-port", "0", "-log-level", "error"]);
            c
        },
        "connect agent -dev",
    );
    let http = format!("http://{}", agent.wait_for("HTTP API listening on http://"));
    let out = connect(&http)
        .args(["intention", "create", "web", "db"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let (_echo, echo_addr) = serve("echo", &http);
    let (_native, native_addr) = serve("native", &http);
    let inbound = {
        let mut c = connect(&http);
        c.args(["proxy", "-service", "db", "-log-level", "warn"])
            .args(["-service-addr", &echo_addr, "-listen", "127.0.0.1:0"]);
        Proc::spawn(c, "connect proxy (inbound db)")
    };
    inbound.wait_for("running!");
    let outbound = {
        let mut c = connect(&http);
        c.args(["proxy", "-service", "web", "-log-level", "warn"])
            .args(["-upstream", "db:127.0.0.1:0"]);
        Proc::spawn(c, "connect proxy (outbound web)")
    };
    let upstream = outbound.wait_for("Upstream db listening on ");
    outbound.wait_for("running!");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        // Named directly: setting this process's environment is unsafe once threads run.
        let agent = Agent::new_async(AgentConfig::from_lookup(|k| {
            (k == "CONSUL_HTTP_ADDR").then(|| http.clone())
        }))
        .await
        .unwrap();
        let web = agent.service("web").unwrap();
        web.ready_wait(Duration::from_secs(30)).await.unwrap();
        let t = Targets {
            web,
            native: native_addr,
            upstream,
            echo: echo_addr,
        };
        let mut buf = [0x5a_u8; MSG];

        // Established connections: warm up, then rounds in turn.
        let mut conns = Vec::new();
        for (path, _) in PATHS {
            let mut c = t.open(path).await;
            for _ in 0..per_round.min(200) {
                c.round_trip(&mut buf).await;
            }
            conns.push(c);
        }
        let mut established: Vec<Samples> = PATHS.iter().map(|_| Samples::default()).collect();
        for _ in 0..rounds {
            for (c, s) in conns.iter_mut().zip(&mut established) {
                for _ in 0..per_round {
                    s.0.push(c.round_trip(&mut buf).await);
                }
            }
        }
        drop(conns);

        // New connections: connect (handshake included) and the first echo, in turn.
        let mut fresh: Vec<Samples> = PATHS.iter().map(|_| Samples::default()).collect();
        for i in 0..new_conns + 5 {
            for ((path, _), s) in PATHS.iter().zip(&mut fresh) {
                let start = Instant::now();
                let mut c = t.open(*path).await;
                c.round_trip(&mut buf).await;
                let took = start.elapsed().as_nanos() as u64;
                // The first few fill session caches and the catalog lookup.
                if i >= 5 {
                    s.0.push(took);
                }
            }
        }
        agent.close();
        let mut out = serde_json::Map::new();
        for (((_, name), e), f) in PATHS.iter().zip(established).zip(fresh) {
            out.insert(
                (*name).to_owned(),
                json!({"established": e.stats(), "new_connection": f.stats()}),
            );
        }
        serde_json::Value::Object(out)
    });

    println!(
        "{MSG}-byte echo round trip, one established connection, {} requests per path:",
        rounds * per_round
    );
    let get = |p: &str, k: &str, q: &str| results[p][k][q].as_f64().unwrap();
    for (_, name) in PATHS {
        println!(
            "  {name:<9} p50 {:7.1} µs  p99 {:7.1} µs   new connection + first echo: p50 {:7.1} µs  p99 {:7.1} µs",
            get(name, "established", "p50_us"),
            get(name, "established", "p99_us"),
            get(name, "new_connection", "p50_us"),
            get(name, "new_connection", "p99_us"),
        );
    }
    println!(
        "  added by the sidecar hop over native, p50: {:+.1} µs ({:.2}×)",
        get("sidecar", "established", "p50_us") - get("native", "established", "p50_us"),
        get("sidecar", "established", "p50_us") / get("native", "established", "p50_us"),
    );
    bench_support::write_json(
        "proxy_latency",
        "cargo build --release --bin connect && cargo bench -p connect-core --bench proxy_latency",
        json!({"message_bytes": MSG, "requests_per_path": rounds * per_round,
               "rounds": rounds, "new_connections_per_path": new_conns}),
        results,
    );
    drop((inbound, outbound, agent));
}
