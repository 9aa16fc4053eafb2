//! Many concurrent mTLS connections held by one listener: heap and resident set per
//! connection and the accept rate, libconnect (`tls::Service`'s `Listener` and `dial_addr`,
//! revocation tracking on, as every service runs it) against bare tokio-rustls with the same
//! keys, provider, versions, groups, session cache and ticketer (its listener, like ours,
//! runs each handshake in its own task).
//!
//! Both ends live in one process, and each stack is measured in a fresh process of its own
//! (this executable again), so neither inherits the other's allocator pools. N connections
//! are opened with up to 64 handshakes in flight, each carries a one-byte echo (so the
//! tickets sent after the handshake have been processed) and all stay open; the live heap
//! (counted by the global allocator below) and the resident set are compared with before.
//! Dropping the client ends then leaves only the server ends, which splits the figure per
//! side. Kernel socket buffers are not heap and are the same for both stacks.
//!
//! Descriptors bound N: a held connection costs bare tokio-rustls two (its two ends) and
//! libconnect three (the listener keeps a second descriptor of each accepted socket, with
//! which revocation shuts it down). N larger than the open-file limit allows is measured at
//! the largest count that fits, for both stacks, and the output says so.
//!
//! Run: `cargo bench -p connect-core --bench conn_memory` (`BENCH_CONNECTIONS`, default
//! 10,000; `BENCH_QUICK=1` for 500; `make bench` raises the soft open-file limit to the hard
//! one first). Writes `conn_memory.json` for `scripts/bench-report.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod bench_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bench_support::mesh::Mesh;
use connect_core::tls;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use serde_json::json;
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

/// The two stacks' endpoints, built from one CA.
struct Setup {
    server: tls::Service,
    client: tls::Service,
    bare_server: Arc<ServerConfig>,
    bare_client: Arc<ClientConfig>,
}

fn setup() -> Setup {
    let mesh = Mesh::new();
    let server = tls::Service::new(
        mesh.identity("db"),
        tls::authorizer::from_intentions("db", Mesh::intentions()),
    )
    .unwrap();
    let client = tls::Service::new(
        mesh.identity("web"),
        tls::authorizer::from_intentions("web", Mesh::intentions()),
    )
    .unwrap();
    let (bare_server, bare_client) = mesh.bare_configs();
    Setup {
        server,
        client,
        bare_server,
        bare_client,
    }
}

/// How many handshakes are in flight at once while connections are opened.
const IN_FLIGHT: usize = 64;

/// One way of opening established, authenticated connections: a dialer and a listener.
trait Stack {
    type Client: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Server: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Dialer: Dialer<Conn = Self::Client>;
    fn dialer(&self) -> Self::Dialer;
    /// The next connection whose handshake the listener completed.
    async fn accept(&mut self) -> Self::Server;
}

trait Dialer: Clone + Send + Sync + 'static {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn dial(&self) -> impl Future<Output = Self::Conn> + Send;
    /// Whether the connection's handshake resumed an earlier session.
    fn resumed(c: &Self::Conn) -> bool;
}

struct Libconnect {
    listener: tls::Listener,
    client: tls::Service,
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

impl Stack for Libconnect {
    type Client = tls::Connection;
    type Server = tls::Connection;
    type Dialer = LibconnectDialer;
    fn dialer(&self) -> LibconnectDialer {
        LibconnectDialer {
            client: self.client.clone(),
            addr: self.listener.local_addr(),
        }
    }
    async fn accept(&mut self) -> tls::Connection {
        self.listener.accept().await.unwrap()
    }
}

/// tokio-rustls with a listener shaped like libconnect's: an accept loop that runs each
/// handshake in its own task and queues the finished ones.
struct Bare {
    addr: SocketAddr,
    rx: mpsc::Receiver<tokio_rustls::server::TlsStream<TcpStream>>,
    task: JoinHandle<()>,
    connector: tokio_rustls::TlsConnector,
}

impl Bare {
    async fn new(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Bare {
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
        Bare {
            addr,
            rx,
            task,
            connector: tokio_rustls::TlsConnector::from(client),
        }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.task.abort();
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

impl Stack for Bare {
    type Client = tokio_rustls::client::TlsStream<TcpStream>;
    type Server = tokio_rustls::server::TlsStream<TcpStream>;
    type Dialer = BareDialer;
    fn dialer(&self) -> BareDialer {
        BareDialer {
            connector: self.connector.clone(),
            addr: self.addr,
        }
    }
    async fn accept(&mut self) -> Self::Server {
        self.rx.recv().await.unwrap()
    }
}

/// Opens `n` connections, `IN_FLIGHT` at a time, each carrying a one-byte echo; returns both
/// ends of each.
async fn open_many<S: Stack>(stack: &mut S, n: usize) -> (Vec<S::Client>, Vec<S::Server>) {
    let dialer = stack.dialer();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let clients = tokio::spawn(async move {
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
        let mut clients = Vec::with_capacity(n);
        while let Some(c) = dials.join_next().await {
            clients.push(c.unwrap());
        }
        clients
    });
    let mut echoes = JoinSet::new();
    for _ in 0..n {
        let mut s = stack.accept().await;
        echoes.spawn(async move {
            let mut b = [0_u8; 1];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
            s
        });
    }
    let mut servers = Vec::with_capacity(n);
    while let Some(s) = echoes.join_next().await {
        servers.push(s.unwrap());
    }
    (clients.await.unwrap(), servers)
}

/// Lets background tasks (handshake tasks, the revocation registration) finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// What one stack's process measured.
#[derive(Debug, Serialize, Deserialize)]
struct Held {
    /// Heap bytes per connection, both ends.
    both: f64,
    /// Heap bytes per connection, server end only.
    server: f64,
    /// Resident set per connection, both ends, KiB.
    rss_kib: f64,
    /// Heap bytes per connection not returned after closing everything (should be ~0).
    leftover: f64,
    /// Connections opened (handshake and echo done) per second, `IN_FLIGHT` at a time.
    accepts_per_s: f64,
    /// The share of those handshakes that resumed a session (cheaper than a full one).
    resumed: f64,
}

async fn measure<S: Stack>(stack: &mut S, n: usize) -> Held {
    // Warm-up: session caches full, lazily built state built, allocator pools and the
    // runtime's task slabs grown.
    drop(open_many(stack, IN_FLIGHT * 4).await);
    settle().await;
    let (heap0, rss0) = (live(), bench_support::rss_kib());
    let t = Instant::now();
    let (clients, servers) = open_many(stack, n).await;
    let resumed = clients.iter().filter(|c| S::Dialer::resumed(c)).count();
    let secs = t.elapsed().as_secs_f64();
    settle().await;
    let (heap1, rss1) = (live(), bench_support::rss_kib());
    // The vectors were allocated inside the counted window; a connection object held in a
    // task or a struct on the heap costs its inline size too, so the vectors' share is what
    // an application pays. Their unused capacity is at most their length, well under 1 %.
    drop(clients);
    settle().await;
    let heap2 = live();
    drop(servers);
    settle().await;
    let heap3 = live();
    let per = |bytes: i64| bytes as f64 / n as f64;
    Held {
        both: per(heap1 - heap0),
        server: per(heap2 - heap0),
        rss_kib: (rss1 as f64 - rss0 as f64) / n as f64,
        leftover: per(heap3 - heap0),
        accepts_per_s: n as f64 / secs,
        resumed: resumed as f64 / n as f64,
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

/// Descriptors one held connection costs, both ends, in the stack that needs the most.
const FDS_PER_CONN: usize = 3;
/// Descriptors left for everything else (the runtime, the warm-up's closing sockets, stdio).
const FD_MARGIN: usize = 64 + IN_FLIGHT * 4;

/// Env var naming the stack a child process measures.
const CHILD: &str = "CONN_MEMORY_STACK";

/// Runs in a child process: measures one stack and prints its figures as one JSON line.
fn child(stack: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let setup = setup();
    let held = rt.block_on(async {
        if stack == "libconnect" {
            let mut lc = Libconnect {
                listener: setup.server.listen("127.0.0.1:0").await.unwrap(),
                client: setup.client.clone(),
            };
            measure(&mut lc, n).await
        } else {
            let mut bare = Bare::new(
                Arc::clone(&setup.bare_server),
                Arc::clone(&setup.bare_client),
            )
            .await;
            measure(&mut bare, n).await
        }
    });
    println!("{}", serde_json::to_string(&held).unwrap());
}

fn run_child(stack: &str, n: usize) -> Held {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD, stack)
        .env("BENCH_CONNECTIONS", n.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the {stack} measurement failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
    serde_json::from_str(line).unwrap()
}

fn main() {
    let quick = bench_support::quick();
    let requested: usize =
        bench_support::env_num("BENCH_CONNECTIONS", if quick { 500 } else { 10_000 });
    if let Ok(stack) = std::env::var(CHILD) {
        return child(&stack, requested);
    }
    let limit = open_file_limit();
    let fits = limit.map_or(usize::MAX, |l| l.saturating_sub(FD_MARGIN) / FDS_PER_CONN);
    let n = requested.min(fits);
    if n < requested {
        println!(
            "SKIPPED {requested} connections: they need ~{} descriptors and the open-file limit is {} (raise it with `ulimit -n`); measuring {n}, the most that fit, for both stacks",
            requested * FDS_PER_CONN + FD_MARGIN,
            limit.unwrap_or(0)
        );
    }
    // The order does not change the counted heap; each stack has a fresh process anyway.
    let bare = run_child("rustls", n);
    let lc = run_child("libconnect", n);
    let kib = |b: f64| b / 1024.0;
    println!(
        "{n} established mTLS connections held by one listener, {IN_FLIGHT} handshakes in flight:"
    );
    for (name, h) in [("libconnect", &lc), ("bare rustls", &bare)] {
        println!(
            "  {name:<11} heap both ends {:6.2} KiB (server {:5.2} KiB, client {:5.2} KiB); RSS {:5.1} KiB; {:6.0} accepts/s ({:.0} % resumed); not returned after close {:+.0} B",
            kib(h.both),
            kib(h.server),
            kib(h.both - h.server),
            h.rss_kib,
            h.accepts_per_s,
            h.resumed * 100.0,
            h.leftover
        );
    }
    println!(
        "  libconnect / bare rustls: heap {:.3}× (both ends), {:.3}× (server end); accept rate {:.2}×",
        lc.both / bare.both,
        lc.server / bare.server,
        lc.accepts_per_s / bare.accepts_per_s
    );
    let row = |h: &Held| {
        json!({
            "both_bytes": h.both,
            "server_bytes": h.server,
            "client_bytes": h.both - h.server,
            "rss_kib": h.rss_kib,
            "leftover_bytes": h.leftover,
            "accepts_per_s": h.accepts_per_s,
            "resumed": h.resumed,
        })
    };
    bench_support::write_json(
        "conn_memory",
        "ulimit -n $(ulimit -Hn); cargo bench -p connect-core --bench conn_memory",
        json!({"connections": n, "requested": requested, "in_flight": IN_FLIGHT,
               "open_file_limit": limit}),
        json!({"libconnect": row(&lc), "rustls": row(&bare)}),
    );
}
