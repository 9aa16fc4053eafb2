//! Many concurrent mTLS connections held by one listener: heap and resident set per
//! connection and the accept rate, libconnect (`tls::Service`'s `Listener` and `dial_addr`,
//! revocation tracking on, as every service runs it) against bare tokio-rustls with the same
//! keys, provider, versions, groups, session cache and ticketer (its listener, like ours,
//! runs each handshake in its own task).
//!
//! Each stack runs in two fresh processes of its own (this executable again): the listener in
//! one, the dialing clients in the other, so neither end inherits the other's allocator pools
//! and each process holds one descriptor per connection (10,000 connections fit an open-file
//! limit of 20,000, which both ends in one process would not). The parent drives them over
//! their stdin and stdout. N connections are opened with up to 64 handshakes in flight, each
//! carries a one-byte echo (so the tickets sent after the handshake have been processed) and
//! all stay open; each process's live heap (counted by the global allocator below) and
//! resident set are compared with before. Kernel socket buffers are not heap and are the same
//! for both stacks.
//!
//! Run: `cargo bench -p connect-core --bench conn_memory` (`BENCH_CONNECTIONS`, default
//! 10,000; `BENCH_QUICK=1` for 500; `make bench` raises the soft open-file limit to the hard
//! one first). An N beyond the open-file limit is measured at the largest count that fits,
//! for both stacks, and the output says so. Writes `conn_memory.json` for
//! `scripts/bench-report.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod bench_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bench_support::mesh::Mesh;
use connect_core::tls;
use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

/// The system allocator, keeping a count of the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller guarantees `new_size` is valid.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::SeqCst) as i64
}

/// How many handshakes are in flight at once while connections are opened.
const IN_FLIGHT: usize = 64;

/// The listening end of a stack.
trait Server {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn addr(&self) -> SocketAddr;
    /// The next connection whose handshake the listener completed.
    async fn accept(&mut self) -> Self::Conn;
}

/// The dialing end of a stack.
trait Dialer: Clone + Send + Sync + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn dial(&self) -> impl Future<Output = Self::Conn> + Send;
    /// Whether the connection's handshake resumed an earlier session.
    fn resumed(c: &Self::Conn) -> bool;
}

impl Server for tls::Listener {
    type Conn = tls::Connection;
    fn addr(&self) -> SocketAddr {
        self.local_addr()
    }
    async fn accept(&mut self) -> tls::Connection {
        tls::Listener::accept(self).await.unwrap()
    }
}

#[derive(Clone)]
struct LibconnectDialer {
    client: tls::Service,
    addr: SocketAddr,
}

impl Dialer for LibconnectDialer {
    type Conn = tls::Connection;
    async fn dial(&self) -> tls::Connection {
        self.client.dial_addr(self.addr, "db").await.unwrap()
    }
    fn resumed(c: &tls::Connection) -> bool {
        c.is_resumed()
    }
}

/// tokio-rustls with a listener shaped like libconnect's: an accept loop that runs each
/// handshake in its own task and queues the finished ones.
struct Bare {
    addr: SocketAddr,
    rx: mpsc::Receiver<tokio_rustls::server::TlsStream<TcpStream>>,
    task: JoinHandle<()>,
}

impl Bare {
    async fn new(server: Arc<ServerConfig>) -> Bare {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let task = tokio::spawn(async move {
            let mut handshakes = JoinSet::new();
            loop {
                while handshakes.try_join_next().is_some() {}
                let (tcp, _) = listener.accept().await.unwrap();
                // As libconnect's listener and dialer do.
                tcp.set_nodelay(true).unwrap();
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                handshakes.spawn(async move {
                    let s = acceptor.accept(tcp).await.unwrap();
                    let _ = tx.send(s).await;
                });
            }
        });
        Bare { addr, rx, task }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server for Bare {
    type Conn = tokio_rustls::server::TlsStream<TcpStream>;
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    async fn accept(&mut self) -> Self::Conn {
        self.rx.recv().await.unwrap()
    }
}

#[derive(Clone)]
struct BareDialer {
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
}

impl Dialer for BareDialer {
    type Conn = tokio_rustls::client::TlsStream<TcpStream>;
    async fn dial(&self) -> Self::Conn {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("db").unwrap();
        self.connector.connect(name, tcp).await.unwrap()
    }
    fn resumed(c: &Self::Conn) -> bool {
        c.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

/// Accepts `n` connections and answers each one's byte; returns them all.
async fn accept_many<S: Server>(server: &mut S, n: usize) -> Vec<S::Conn> {
    let mut echoes = JoinSet::new();
    for _ in 0..n {
        let mut s = server.accept().await;
        echoes.spawn(async move {
            let mut b = [0_u8; 1];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
            s
        });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(s) = echoes.join_next().await {
        held.push(s.unwrap());
    }
    held
}

/// Opens `n` connections, `IN_FLIGHT` at a time, each carrying a one-byte echo.
async fn open_many<D: Dialer>(dialer: &D, n: usize) -> Vec<D::Conn> {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut dials = JoinSet::new();
    for _ in 0..n {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let dialer = dialer.clone();
        dials.spawn(async move {
            let mut c = dialer.dial().await;
            let mut b = [7_u8; 1];
            c.write_all(&b).await.unwrap();
            c.read_exact(&mut b).await.unwrap();
            drop(permit);
            c
        });
    }
    let mut held = Vec::with_capacity(n);
    while let Some(c) = dials.join_next().await {
        held.push(c.unwrap());
    }
    held
}

/// Lets background tasks (handshake tasks, the revocation registration, closing sockets)
/// finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// One end of a stack: how it gets `k` more connections to hold.
trait End {
    type Conn;
    /// Opens or accepts `k` connections, each with its one-byte echo, and says what it saw.
    async fn hold(&mut self, k: usize) -> (Vec<Self::Conn>, Value);
}

struct ServerEnd<S>(S);

impl<S: Server> End for ServerEnd<S> {
    type Conn = S::Conn;
    async fn hold(&mut self, k: usize) -> (Vec<S::Conn>, Value) {
        (accept_many(&mut self.0, k).await, json!({}))
    }
}

struct ClientEnd<D>(D);

impl<D: Dialer> End for ClientEnd<D> {
    type Conn = D::Conn;
    async fn hold(&mut self, k: usize) -> (Vec<D::Conn>, Value) {
        let t = Instant::now();
        let conns = open_many(&self.0, k).await;
        let secs = t.elapsed().as_secs_f64();
        let resumed = conns.iter().filter(|c| D::resumed(c)).count();
        (conns, json!({"secs": secs, "resumed": resumed}))
    }
}

/// One end's connections and its figures, driven by the parent's commands, one per line on
/// stdin, each answered with one JSON line on stdout:
/// - `hold K`: the server accepts and echoes K connections, the client opens them
///   (`{"secs", "resumed"}` from the client: seconds from first dial to last echo, and how
///   many resumed);
/// - `mark`: the baseline heap and resident set (`{}`);
/// - `measure`: heap bytes and resident KiB now above the baseline (`{"heap", "rss_kib"}`);
/// - `drop`: every connection closed (`{"heap"}` still above the baseline).
async fn command_loop<E: End>(mut end: E) {
    let mut held: Vec<E::Conn> = Vec::new();
    let (mut heap0, mut rss0) = (live(), bench_support::rss_kib());
    loop {
        // A blocking read on a thread of the pool: the commands are few and far between.
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        if line.is_empty() {
            return;
        }
        let mut words = line.split_whitespace();
        let reply = match (words.next(), words.next()) {
            (Some("hold"), Some(k)) => {
                let (conns, reply) = end.hold(k.parse().unwrap()).await;
                held.extend(conns);
                reply
            }
            (Some("mark"), None) => {
                settle().await;
                (heap0, rss0) = (live(), bench_support::rss_kib());
                json!({})
            }
            (Some("measure"), None) => {
                settle().await;
                let rss = bench_support::rss_kib() as i64 - rss0 as i64;
                json!({"heap": live() - heap0, "rss_kib": rss})
            }
            (Some("drop"), None) => {
                held = Vec::new();
                settle().await;
                json!({"heap": live() - heap0})
            }
            _ => panic!("unknown command {line:?}"),
        };
        println!("{reply}");
    }
}

/// Env vars a child process reads: its role (`server` or `client`), its stack
/// (`libconnect` or `rustls`), the mesh file and, for a client, the listener's address.
const ROLE: &str = "CONN_MEMORY_ROLE";
const STACK: &str = "CONN_MEMORY_STACK";
const MESH: &str = "CONN_MEMORY_MESH";
const ADDR: &str = "CONN_MEMORY_ADDR";

/// Runs in a child process: one end of one stack.
fn child(role: &str) {
    let stack = std::env::var(STACK).unwrap();
    let mesh = Mesh::from_json(&std::fs::read_to_string(std::env::var(MESH).unwrap()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (bare_server, bare_client) = mesh.bare_configs();
    rt.block_on(async {
        match (role, stack.as_str()) {
            ("server", "libconnect") => {
                let db = tls::Service::new(
                    mesh.identity("db"),
                    tls::authorizer::from_intentions("db", Mesh::intentions()),
                )
                .unwrap();
                serve(db.listen("127.0.0.1:0").await.unwrap()).await;
            }
            ("server", _) => serve(Bare::new(bare_server).await).await,
            ("client", stack) => {
                let addr: SocketAddr = std::env::var(ADDR).unwrap().parse().unwrap();
                if stack == "libconnect" {
                    let client = tls::Service::new(
                        mesh.identity("web"),
                        tls::authorizer::from_intentions("web", Mesh::intentions()),
                    )
                    .unwrap();
                    dial(LibconnectDialer { client, addr }).await;
                } else {
                    let connector = tokio_rustls::TlsConnector::from(bare_client);
                    dial(BareDialer { connector, addr }).await;
                }
            }
            _ => panic!("unknown role {role:?}"),
        }
    });
}

async fn serve<S: Server>(server: S) {
    println!("{}", json!({"addr": server.addr().to_string()}));
    command_loop(ServerEnd(server)).await;
}

async fn dial<D: Dialer>(dialer: D) {
    println!("{}", json!({}));
    command_loop(ClientEnd(dialer)).await;
}

/// The parent's end of a child process.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(role: &str, stack: &str, mesh: &std::path::Path, addr: Option<&str>) -> Proc {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, role)
            .env(STACK, stack)
            .env(MESH, mesh)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(a) = addr {
            cmd.env(ADDR, a);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Proc {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn reply(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "a measuring process ended early");
        serde_json::from_str(&line).unwrap()
    }

    /// Sends `command` to both ends and returns their replies (server, client).
    fn both(server: &mut Proc, client: &mut Proc, command: &str) -> (Value, Value) {
        server.send(command);
        client.send(command);
        (server.reply(), client.reply())
    }

    fn finish(mut self) {
        drop(self.stdin);
        assert!(
            self.child.wait().unwrap().success(),
            "a measuring process failed"
        );
    }
}

/// What one stack measured.
#[derive(Debug)]
struct Held {
    /// Heap bytes per connection, server end.
    server: f64,
    /// Heap bytes per connection, client end.
    client: f64,
    /// Resident set per connection, KiB, server and client end.
    rss_kib: (f64, f64),
    /// Heap bytes per connection not returned after closing everything, both ends (~0).
    leftover: f64,
    /// Connections opened (handshake and echo done) per second, `IN_FLIGHT` at a time.
    accepts_per_s: f64,
    /// The share of those handshakes that resumed a session (cheaper than a full one).
    resumed: f64,
}

fn measure(stack: &str, mesh: &std::path::Path, n: usize) -> Held {
    let mut server = Proc::spawn("server", stack, mesh, None);
    let addr = server.reply()["addr"].as_str().unwrap().to_owned();
    let mut client = Proc::spawn("client", stack, mesh, Some(&addr));
    client.reply();
    // Warm-up: session caches full, lazily built state built, allocator pools and the
    // runtime's task slabs grown.
    Proc::both(&mut server, &mut client, &format!("hold {}", IN_FLIGHT * 4));
    client.send("drop");
    client.reply();
    server.send("drop");
    server.reply();
    Proc::both(&mut server, &mut client, "mark");
    let (_, opened) = Proc::both(&mut server, &mut client, &format!("hold {n}"));
    // The vectors holding the connections were allocated inside the counted window; a
    // connection object held in a task or a struct on the heap costs its inline size too,
    // so their share is what an application pays.
    let (s, c) = Proc::both(&mut server, &mut client, "measure");
    client.send("drop");
    let c_left = client.reply();
    server.send("drop");
    let s_left = server.reply();
    server.finish();
    client.finish();
    let per = |v: &Value| v.as_f64().unwrap() / n as f64;
    Held {
        server: per(&s["heap"]),
        client: per(&c["heap"]),
        rss_kib: (per(&s["rss_kib"]), per(&c["rss_kib"])),
        leftover: per(&s_left["heap"]) + per(&c_left["heap"]),
        accepts_per_s: n as f64 / opened["secs"].as_f64().unwrap(),
        resumed: per(&opened["resumed"]),
    }
}

/// The soft open-file limit, from `/proc/self/limits` (none where it is missing).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return None;
    }
    soft.parse().ok()
}

/// Descriptors one held connection costs each process (its end's socket).
const FDS_PER_CONN: usize = 1;
/// Descriptors left for everything else (the runtime, the warm-up's closing sockets, stdio).
const FD_MARGIN: usize = 64 + IN_FLIGHT * 4;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return child(&role);
    }
    let quick = bench_support::quick();
    let requested: usize =
        bench_support::env_num("BENCH_CONNECTIONS", if quick { 500 } else { 10_000 });
    let limit = open_file_limit();
    let fits = limit.map_or(usize::MAX, |l| l.saturating_sub(FD_MARGIN) / FDS_PER_CONN);
    let n = requested.min(fits);
    if n < requested {
        println!(
            "SKIPPED {requested} connections: they need ~{} descriptors in each process and the open-file limit is {} (raise it with `ulimit -n`); measuring {n}, the most that fit, for both stacks",
            requested * FDS_PER_CONN + FD_MARGIN,
            limit.unwrap_or(0)
        );
    }
    // Both ends of a stack must trust one CA; the file holds private keys, so it is the
    // owner's alone and removed afterwards.
    let dir = bench_support::out_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mesh_path = dir.join(format!("conn_memory_mesh.{}.json", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&mesh_path)
            .unwrap();
        f.write_all(Mesh::new().to_json().as_bytes()).unwrap();
    }
    // The order does not change the counted heap; each stack has fresh processes anyway.
    let bare = measure("rustls", &mesh_path, n);
    let lc = measure("libconnect", &mesh_path, n);
    std::fs::remove_file(&mesh_path).unwrap();
    let kib = |b: f64| b / 1024.0;
    println!(
        "{n} established mTLS connections held by one listener, {IN_FLIGHT} handshakes in flight (listener and clients in separate processes):"
    );
    for (name, h) in [("libconnect", &lc), ("bare rustls", &bare)] {
        println!(
            "  {name:<11} heap both ends {:6.2} KiB (server {:5.2} KiB, client {:5.2} KiB); RSS {:5.1} KiB (server {:4.1}); {:6.0} accepts/s ({:.0} % resumed); not returned after close {:+.0} B",
            kib(h.server + h.client),
            kib(h.server),
            kib(h.client),
            h.rss_kib.0 + h.rss_kib.1,
            h.rss_kib.0,
            h.accepts_per_s,
            h.resumed * 100.0,
            h.leftover
        );
    }
    println!(
        "  libconnect / bare rustls: heap {:.3}× (both ends), {:.3}× (server end); accept rate {:.2}×",
        (lc.server + lc.client) / (bare.server + bare.client),
        lc.server / bare.server,
        lc.accepts_per_s / bare.accepts_per_s
    );
    let row = |h: &Held| {
        json!({
            "both_bytes": h.server + h.client,
            "server_bytes": h.server,
            "client_bytes": h.client,
            "rss_kib": h.rss_kib.0 + h.rss_kib.1,
            "server_rss_kib": h.rss_kib.0,
            "client_rss_kib": h.rss_kib.1,
            "leftover_bytes": h.leftover,
            "accepts_per_s": h.accepts_per_s,
            "resumed": h.resumed,
        })
    };
    bench_support::write_json(
        "conn_memory",
        "ulimit -n $(ulimit -Hn); cargo bench -p connect-core --bench conn_memory",
        json!({"connections": n, "requested": requested, "in_flight": IN_FLIGHT,
               "open_file_limit": limit, "processes": "listener and clients apart"}),
        json!({"libconnect": row(&lc), "rustls": row(&bare)}),
    );
}
