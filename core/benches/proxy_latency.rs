//! Added latency per request: libconnect in the application against sidecar-style extra
//! hops, with plain TCP as the floor. A 64-byte echo, round trip, on one established
//! connection per path:
//!
//! * native: a libconnect mTLS client in this process → a libconnect mTLS echo server
//!   (another process);
//! * sidecar: a plaintext client → `connect-proxy -service web -upstream db:…` (outbound) →
//!   mTLS → `connect-proxy -service db -service-addr … -listen …` (inbound) → a plaintext
//!   echo server (another process). `connect-proxy` is the sidecar build of `connect proxy`
//!   (its own binary, `--profile sidecar`);
//! * all_in_one: the same two hops played by `connect proxy` in the all-in-one `connect`
//!   (release), to show what the sidecar build saves;
//! * stunnel and haproxy: the same two hops played by stunnel (client mode with
//!   `cert`/`key`/`CAfile`; server mode with `verify = 2`) and by HAProxy (a `bind … ssl crt …
//!   ca-file … verify required` frontend; a `server … ssl verify required ca-file … crt …`
//!   backend), with the same leaves (issued by the agent's CA, written to files) and the same
//!   echo server. They verify the chain only: neither can check a SPIFFE ID or an
//!   intention, so this is a cost comparison, not a like-for-like feature set;
//! * plain TCP: the client straight to that plaintext echo server.
//!
//! One `connect agent -dev` serves every identity. The client side is the same tokio loop for
//! every path, and the paths take turns in rounds so that a noisy machine weighs on all of
//! them alike. Also measured: a new connection and its first echo (handshake included, one
//! at a time, hence new connections per second), bulk MiB/s echoed over one connection, and
//! the resident set of each proxy process after the run (`VmRSS` of `/proc/<pid>/status`).
//!
//! stunnel and HAProxy come from the Debian packages `stunnel4` and `haproxy`: when missing,
//! they are installed with `apt-get install -y` if this runs as root with apt-get; otherwise
//! the harness prints one `SKIPPED stunnel: …` / `SKIPPED haproxy: …` line and measures the
//! rest.
//!
//! Needs the release `connect` (`cargo build --release --bin connect`, or `CONNECT_BIN`) and
//! the sidecar `connect-proxy` (`cargo build --profile sidecar --bin connect-proxy`, or
//! `CONNECT_PROXY_BIN`); `make bench-proxy` builds both.
//! Run: `cargo bench -p connect-core --bench proxy_latency`; `BENCH_QUICK=1` for a smoke
//! run. Writes `proxy_latency.json` for `scripts/bench-report.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod bench_support;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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
/// The longest any one wait may take: a child's line, a port, a round of requests.
const WAIT: Duration = Duration::from_secs(30);

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

    /// The rest of the first line containing `prefix` (within [`WAIT`]), trimmed.
    fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
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

    /// What it printed and nobody read yet.
    fn output(&self) -> String {
        self.lines.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Waits until `addr` accepts TCP connections (within [`WAIT`]), for programs that do not
    /// print their address; panics with the output if the process exits first.
    fn wait_listening(&mut self, addr: &str) {
        let deadline = Instant::now() + WAIT;
        let sock = addr.parse().unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}); output:\n{}",
                    self.what,
                    self.output()
                );
            }
            if std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} is not listening on {addr} after {WAIT:?}; output:\n{}",
                self.what,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for it to exit (within `limit`, else it is killed): Ok when it succeeded.
    fn finish(mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                let out = self.output();
                let tail: Vec<&str> = out.lines().rev().take(5).collect();
                if status.success() {
                    return Ok(());
                }
                return Err(format!(
                    "{} failed ({status}): {}",
                    self.what,
                    tail.join(" / ")
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("{} took over {limit:?} and was stopped", self.what));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its resident set now, in KiB.
    fn rss_kib(&self) -> u64 {
        bench_support::rss_kib_of(&self.child.id().to_string())
    }

    /// Its private memory now (what ending it would free), in KiB.
    fn private_kib(&self) -> u64 {
        bench_support::private_kib_of(&self.child.id().to_string())
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

/// `connect-proxy`: `CONNECT_PROXY_BIN`, or the sidecar build beside this target's release
/// directory (`cargo build --profile sidecar -p connect-core --features cli --bin
/// connect-proxy`).
fn proxy_bin() -> PathBuf {
    let bin = std::env::var_os("CONNECT_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // <target>/release/deps/proxy_latency-… → <target>/sidecar/connect-proxy
            let exe = std::env::current_exe().unwrap();
            let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
            target.join("sidecar").join("connect-proxy")
        });
    assert!(
        bin.exists(),
        "{} is missing: cargo build --profile sidecar -p connect-core --features cli --bin \
         connect-proxy (or set CONNECT_PROXY_BIN)",
        bin.display()
    );
    bin
}

/// libconnect's proxy on both sides, `program()` being the command before the proxy's flags
/// (with the agent's address): inbound `db` in front of `echo`, outbound `web` with `db` as
/// its upstream.
fn libconnect_proxies(echo: &str, program: impl Fn() -> Command, what: &str) -> Sidecars {
    let start = |flags: &[&str], side: &str| {
        let mut c = program();
        c.args(["-log-level", "warn"]).args(flags);
        Proc::spawn(c, &format!("{what} ({side})"))
    };
    let inbound = start(
        &[
            "-service",
            "db",
            "-service-addr",
            echo,
            "-listen",
            "127.0.0.1:0",
        ],
        "inbound db",
    );
    inbound.wait_for("running!");
    let outbound = start(
        &["-service", "web", "-upstream", "db:127.0.0.1:0"],
        "outbound web",
    );
    let addr = outbound.wait_for("Upstream db listening on ");
    outbound.wait_for("running!");
    Sidecars {
        inbound,
        outbound,
        addr,
    }
}

/// `connect` with Consul's variables naming only `agent_http` (none when empty).
fn connect(agent_http: &str) -> Command {
    let bin = connect_bin();
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release --bin connect (or set CONNECT_BIN)",
        bin.display()
    );
    consul_env(Command::new(bin), agent_http)
}

/// `c` with Consul's variables naming only `agent_http` (none when empty).
fn consul_env(mut c: Command, agent_http: &str) -> Command {
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

/// `n` loopback addresses free right now (all bound at once, so they differ), for programs
/// that cannot report a port the system picked.
fn free_addrs<const N: usize>() -> [String; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().to_string())
}

// -- the sidecars from Debian packages ----------------------------------------------------

/// A sidecar proxy from a Debian package that plays `connect proxy`'s two roles.
struct Tool {
    name: &'static str,
    package: &'static str,
    /// Its executable's names, in the order tried.
    bins: &'static [&'static str],
    /// How it prints its version: the flag, and what precedes the version.
    version: [&'static str; 2],
    /// Starts both sides with the PEM files, in front of the echo server at the address.
    start: fn(&Path, &Pems, &str) -> Sidecars,
}

const STUNNEL: Tool = Tool {
    name: "stunnel",
    package: "stunnel4",
    bins: &["stunnel4", "stunnel"],
    version: ["-version", "stunnel "],
    start: stunnel,
};
const HAPROXY: Tool = Tool {
    name: "haproxy",
    package: "haproxy",
    bins: &["haproxy"],
    version: ["-v", "HAProxy version "],
    start: haproxy,
};

/// The first of `bins` on `PATH` or in the sbin/bin directories (haproxy is in /usr/sbin).
fn find_bin(bins: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .collect();
    bins.iter()
        .flat_map(|b| dirs.iter().map(move |d| d.join(b)))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            == Some("0")
    })
}

/// `apt-get install -y <packages>`, with `apt-get update` and a second try when the first
/// fails; why not, when it cannot.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let list = packages.join(" ");
    if !is_root() {
        return Err(format!(
            "not running as root (install it: apt-get install -y {list})"
        ));
    }
    if find_bin(&["apt-get"]).is_none() {
        return Err(format!(
            "no apt-get to install the Debian package(s) {list}"
        ));
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        Proc::spawn(c, &format!("apt-get {}", args.join(" "))).finish(Duration::from_secs(600))
    };
    let install: Vec<&str> = ["install", "-y", "--no-install-recommends"]
        .into_iter()
        .chain(packages.iter().copied())
        .collect();
    println!("installing {list} with apt-get");
    apt(&install).or_else(|_| apt(&["update"]).and_then(|()| apt(&install)))
}

/// Each tool's executable, installing the missing ones first when possible; for each one
/// still missing, one `SKIPPED <tool>: <why>` line and why.
fn sidecar_bins(tools: &[&Tool]) -> Vec<Result<PathBuf, String>> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|t| find_bin(t.bins).is_none())
        .map(|t| t.package)
        .collect();
    let why = if missing.is_empty() {
        String::new()
    } else {
        apt_install(&missing)
            .err()
            .unwrap_or_else(|| "apt-get installed it, yet none of its executables is found".into())
    };
    tools
        .iter()
        .map(|t| {
            find_bin(t.bins).ok_or_else(|| {
                let why = format!("{} is not installed; {why}", t.package);
                println!("SKIPPED {}: {why}", t.name);
                why
            })
        })
        .collect()
}

/// The version a tool prints (`stunnel -version`, `haproxy -v`).
fn tool_version(bin: &Path, [flag, prefix]: [&str; 2]) -> String {
    let mut c = Command::new(bin);
    c.arg(flag);
    let p = Proc::spawn(c, &format!("{} {flag}", bin.display()));
    let v = p.wait_for(prefix);
    v.split_whitespace().next().unwrap_or_default().to_owned()
}

/// The PEM files the sidecars read, from the agent's leaves for `web` and `db`: per side
/// `<name>.crt` (leaf and intermediates), `<name>.key`, and `<name>.pem` (both, for
/// HAProxy's `crt`); and `ca.pem`, the roots.
struct Pems {
    dir: tempfile::TempDir,
}

impl Pems {
    async fn write(agent: &Agent, names: &[&str]) -> Pems {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            let svc = agent.service(name).unwrap();
            svc.ready_wait(WAIT).await.unwrap();
            let m = svc.material().unwrap();
            let file = |ext: &str, text: &str| {
                std::fs::write(dir.path().join(format!("{name}.{ext}")), text).unwrap();
            };
            file("crt", &m.chain_pem);
            file("key", &m.key_pem);
            file("pem", &format!("{}{}", m.chain_pem, *m.key_pem));
            std::fs::write(dir.path().join("ca.pem"), &m.roots_pem).unwrap();
        }
        Pems { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// Writes a configuration file; its path.
    fn config(&self, file: &str, text: &str) -> String {
        std::fs::write(self.dir.path().join(file), text).unwrap();
        self.path(file)
    }
}

/// Two running proxies, `outbound` (plaintext in, mTLS to `inbound`) and `inbound` (mTLS in,
/// plaintext to the echo server), and the outbound's plaintext address.
struct Sidecars {
    inbound: Proc,
    outbound: Proc,
    addr: String,
}

/// stunnel on both sides, chain verification (`verify = 2`) each way.
fn stunnel(bin: &Path, pems: &Pems, echo: &str) -> Sidecars {
    let [inbound_addr, addr] = free_addrs();
    let common = "foreground = yes\npid =\ndebug = 3\n\
                  socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";
    let side = |name: &str, extra: &str, accept: &str, to: &str| {
        let conf = format!(
            "{common}[{name}]\n{extra}accept = {accept}\nconnect = {to}\n\
             cert = {}\nkey = {}\nCAfile = {}\nverify = 2\n",
            pems.path(&format!("{name}.crt")),
            pems.path(&format!("{name}.key")),
            pems.path("ca.pem"),
        );
        let mut c = Command::new(bin);
        c.arg(pems.config(&format!("stunnel-{name}.conf"), &conf));
        let mut p = Proc::spawn(c, &format!("stunnel ({name})"));
        p.wait_listening(accept);
        p
    };
    let inbound = side("db", "", &inbound_addr, echo);
    let outbound = side("web", "client = yes\n", &addr, &inbound_addr);
    Sidecars {
        inbound,
        outbound,
        addr,
    }
}

/// HAProxy on both sides in TCP mode, chain verification (`verify required`) each way.
fn haproxy(bin: &Path, pems: &Pems, echo: &str) -> Sidecars {
    let [inbound_addr, addr] = free_addrs();
    let common = "global\n  maxconn 4096\n\ndefaults\n  mode tcp\n  timeout connect 10s\n  \
                  timeout client 10m\n  timeout server 10m\n\n";
    let side = |name: &str, accept: &str, body: String| {
        let mut c = Command::new(bin);
        c.args(["-db", "-f"])
            .arg(pems.config(&format!("haproxy-{name}.cfg"), &format!("{common}{body}")));
        let mut p = Proc::spawn(c, &format!("haproxy ({name})"));
        p.wait_listening(accept);
        p
    };
    let (crt, ca) = (pems.path("db.pem"), pems.path("ca.pem"));
    let inbound = side(
        "db",
        &inbound_addr,
        format!(
            "frontend db\n  bind {inbound_addr} ssl crt {crt} ca-file {ca} verify required\n  \
             default_backend echo\n\nbackend echo\n  server echo {echo}\n"
        ),
    );
    let crt = pems.path("web.pem");
    let outbound = side(
        "web",
        &addr,
        format!(
            "frontend web\n  bind {addr}\n  default_backend db\n\nbackend db\n  \
             server db {inbound_addr} ssl verify required ca-file {ca} crt {crt}\n"
        ),
    );
    Sidecars {
        inbound,
        outbound,
        addr,
    }
}

// -- the servers and the client loop ----------------------------------------------------------

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
    svc.ready_wait(WAIT).await.unwrap();
    (agent, svc)
}

/// Names the path a panic happened on (when it is dropped while unwinding).
struct OnPanic<'a>(&'a str);

impl Drop for OnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("proxy_latency: that panic happened on the {} path", self.0);
        }
    }
}

/// `f` on the `what` path, which must finish within `limit`.
async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    let _context = OnPanic(what);
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {limit:?}"))
}

/// One 64-byte round trip; its duration in nanoseconds.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, buf: &mut [u8; MSG]) -> u64 {
    let t = Instant::now();
    s.write_all(buf).await.unwrap();
    s.read_exact(buf).await.unwrap();
    t.elapsed().as_nanos() as u64
}

/// Echoes `total` bytes through `s`, writing 64 KiB at a time while reading back; MiB/s
/// (of `total`: each byte also crosses the path on its way back).
async fn bulk<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, total: usize) -> f64 {
    let (mut r, mut w) = tokio::io::split(s);
    let chunk = vec![0xa5_u8; 64 * 1024];
    let t = Instant::now();
    let write = async {
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        w.flush().await.unwrap();
    };
    let read = async {
        let mut buf = vec![0_u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "the echo closed after {got} of {total} bytes");
            got += n;
        }
    };
    tokio::join!(write, read);
    total as f64 / (1024.0 * 1024.0) / t.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    /// Percentiles in µs, and `per_second`: how many one after another fit in a second.
    fn stats(mut self) -> serde_json::Value {
        self.0.sort_unstable();
        let v = &self.0;
        let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1e3;
        json!({"n": v.len(), "p50_us": p(0.5), "p90_us": p(0.9), "p99_us": p(0.99),
               "min_us": v[0] as f64 / 1e3, "mean_us": mean, "per_second": 1e6 / mean})
    }
}

/// How a path's client reaches the echo: libconnect's `dial_addr` to the mTLS echo server,
/// or plain TCP to a proxy's plaintext port (or to the echo server itself).
enum Via {
    Native(String),
    Tcp(String),
}

/// One path: its name in the JSON, and the proxies on it (none for native and plain TCP).
struct Route {
    name: &'static str,
    via: Via,
    proxies: Option<Sidecars>,
}

enum Conn {
    Tls(Box<connect_core::tls::Connection>),
    Tcp(TcpStream),
}

impl Conn {
    async fn open(web: &ConnectService, via: &Via) -> Conn {
        match via {
            Via::Native(addr) => Conn::Tls(Box::new(
                web.dial_addr(addr, "db")
                    .await
                    .unwrap_or_else(|e| panic!("dialing db at {addr}: {e}")),
            )),
            Via::Tcp(addr) => {
                let s = TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
                s.set_nodelay(true).unwrap();
                Conn::Tcp(s)
            }
        }
    }

    async fn round_trip(&mut self, buf: &mut [u8; MSG]) -> u64 {
        match self {
            Conn::Tls(c) => round_trip(c, buf).await,
            Conn::Tcp(c) => round_trip(c, buf).await,
        }
    }

    async fn bulk(&mut self, total: usize) -> f64 {
        match self {
            Conn::Tls(c) => bulk(c, total).await,
            Conn::Tcp(c) => bulk(c, total).await,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let bulk_mib: usize = bench_support::env_num("BENCH_BULK_MIB", if quick { 8 } else { 64 });
    let bulk_rounds: usize = bench_support::env_num("BENCH_BULK_ROUNDS", if quick { 1 } else { 5 });

    let tools = sidecar_bins(&[&STUNNEL, &HAPROXY]);
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
    // The sidecar build of the proxy, and the same proxy inside the all-in-one `connect`.
    let sidecar = libconnect_proxies(
        &echo_addr,
        || consul_env(Command::new(proxy_bin()), &http),
        "connect-proxy",
    );
    let all_in_one = libconnect_proxies(
        &echo_addr,
        || {
            let mut c = connect(&http);
            c.arg("proxy");
            c
        },
        "connect proxy",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Named directly: setting this process's environment is unsafe once threads run.
    let (client_agent, web, pems) = rt.block_on(async {
        let agent = Agent::new_async(AgentConfig::from_lookup(|k| {
            (k == "CONSUL_HTTP_ADDR").then(|| http.clone())
        }))
        .await
        .unwrap();
        let web = agent.service("web").unwrap();
        web.ready_wait(WAIT).await.unwrap();
        let pems = Pems::write(&agent, &["web", "db"]).await;
        (agent, web, pems)
    });

    let mut routes = vec![
        Route {
            name: "native",
            via: Via::Native(native_addr),
            proxies: None,
        },
        Route {
            name: "sidecar",
            via: Via::Tcp(sidecar.addr.clone()),
            proxies: Some(sidecar),
        },
        Route {
            name: "all_in_one",
            via: Via::Tcp(all_in_one.addr.clone()),
            proxies: Some(all_in_one),
        },
    ];
    let mut versions = serde_json::Map::new();
    let mut skipped = serde_json::Map::new();
    for (tool, bin) in [&STUNNEL, &HAPROXY].into_iter().zip(&tools) {
        let bin = match bin {
            Ok(bin) => bin,
            Err(why) => {
                skipped.insert(tool.name.to_owned(), json!(why));
                continue;
            }
        };
        versions.insert(tool.name.to_owned(), json!(tool_version(bin, tool.version)));
        let sidecars = (tool.start)(bin, &pems, &echo_addr);
        routes.push(Route {
            name: tool.name,
            via: Via::Tcp(sidecars.addr.clone()),
            proxies: Some(sidecars),
        });
    }
    routes.push(Route {
        name: "plain_tcp",
        via: Via::Tcp(echo_addr),
        proxies: None,
    });

    let results = rt.block_on(async {
        let mut buf = [0x5a_u8; MSG];

        // Established connections: warm up, then rounds in turn.
        let mut conns = Vec::new();
        for r in &routes {
            let c = within(WAIT, r.name, async {
                let mut c = Conn::open(&web, &r.via).await;
                for _ in 0..per_round.min(200) {
                    c.round_trip(&mut buf).await;
                }
                c
            })
            .await;
            conns.push(c);
        }
        let mut established: Vec<Samples> = routes.iter().map(|_| Samples::default()).collect();
        for _ in 0..rounds {
            for ((c, s), r) in conns.iter_mut().zip(&mut established).zip(&routes) {
                within(WAIT, r.name, async {
                    for _ in 0..per_round {
                        s.0.push(c.round_trip(&mut buf).await);
                    }
                })
                .await;
            }
        }
        drop(conns);

        // New connections: connect (handshake included) and the first echo, in turn.
        let mut fresh: Vec<Samples> = routes.iter().map(|_| Samples::default()).collect();
        for i in 0..new_conns + 5 {
            for (r, s) in routes.iter().zip(&mut fresh) {
                let took = within(WAIT, r.name, async {
                    let start = Instant::now();
                    let mut c = Conn::open(&web, &r.via).await;
                    c.round_trip(&mut buf).await;
                    start.elapsed().as_nanos() as u64
                })
                .await;
                // The first few fill session caches and the catalog lookup.
                if i >= 5 {
                    s.0.push(took);
                }
            }
        }

        // Bulk: one new connection per path and round, echoing `bulk_mib` MiB.
        let mut bulk: Vec<Vec<f64>> = routes.iter().map(|_| Vec::new()).collect();
        for _ in 0..bulk_rounds {
            for (r, b) in routes.iter().zip(&mut bulk) {
                b.push(
                    within(WAIT * 4, r.name, async {
                        let mut c = Conn::open(&web, &r.via).await;
                        c.round_trip(&mut buf).await;
                        c.bulk(bulk_mib << 20).await
                    })
                    .await,
                );
            }
        }
        client_agent.close();

        let mut out = serde_json::Map::new();
        for (((r, e), f), b) in routes.iter().zip(established).zip(fresh).zip(bulk) {
            let mut v = json!({"established": e.stats(), "new_connection": f.stats(),
                               "bulk_mib_per_s": median(b)});
            if let Some(p) = &r.proxies {
                v["rss_kib"] = json!({"inbound": p.inbound.rss_kib(),
                                      "outbound": p.outbound.rss_kib()});
                v["private_kib"] = json!({"inbound": p.inbound.private_kib(),
                                          "outbound": p.outbound.private_kib()});
            }
            out.insert(r.name.to_owned(), v);
        }
        serde_json::Value::Object(out)
    });

    println!(
        "{MSG}-byte echo round trip, one established connection, {} requests per path:",
        rounds * per_round
    );
    let get = |p: &str, k: &str, q: &str| results[p][k][q].as_f64().unwrap();
    for r in &routes {
        let name = r.name;
        println!(
            "  {name:<10} p50 {:7.1} µs  p99 {:7.1} µs   new connection + first echo: p50 {:7.1} µs  \
             p99 {:7.1} µs ({:6.0}/s)   bulk {:7.1} MiB/s{}",
            get(name, "established", "p50_us"),
            get(name, "established", "p99_us"),
            get(name, "new_connection", "p50_us"),
            get(name, "new_connection", "p99_us"),
            get(name, "new_connection", "per_second"),
            results[name]["bulk_mib_per_s"].as_f64().unwrap(),
            match &results[name]["rss_kib"] {
                serde_json::Value::Null => String::new(),
                v => format!(
                    "   RSS in {} KiB, out {} KiB; private in {} KiB, out {} KiB",
                    v["inbound"],
                    v["outbound"],
                    results[name]["private_kib"]["inbound"],
                    results[name]["private_kib"]["outbound"]
                ),
            }
        );
    }
    println!(
        "  added by the sidecar hop over native, p50: {:+.1} µs ({:.2}×)",
        get("sidecar", "established", "p50_us") - get("native", "established", "p50_us"),
        get("sidecar", "established", "p50_us") / get("native", "established", "p50_us"),
    );
    bench_support::write_json(
        "proxy_latency",
        "make bench-proxy",
        json!({"message_bytes": MSG, "requests_per_path": rounds * per_round,
               "rounds": rounds, "new_connections_per_path": new_conns,
               "bulk_mib": bulk_mib, "bulk_rounds": bulk_rounds,
               "versions": versions, "skipped": skipped}),
        results,
    );
    drop((routes, agent));
}
