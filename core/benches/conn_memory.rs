//! Heap held per established mTLS connection: libconnect (`tls::Service`'s `Listener` and
//! `dial_addr`, revocation tracking on, as every service runs it) against bare tokio-rustls
//! with the same keys, provider, versions, groups, session cache and ticketer.
//!
//! Both ends live in this process. N connections are opened one after the other and each
//! carries a one-byte echo (so the tickets sent after the handshake have been processed);
//! the live heap (counted by the global allocator below) and the resident set are compared
//! with before. Dropping the client ends then leaves only the server ends, which splits the
//! figure per side. Kernel socket buffers are not heap and are the same for both stacks.
//!
//! Run: `cargo bench -p connect-core --bench conn_memory` (`BENCH_CONNECTIONS`, default 1,000;
//! `BENCH_QUICK=1` for 200). Writes `conn_memory.json` for `scripts/bench-report.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod bench_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bench_support::mesh::Mesh;
use connect_core::tls;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// One way of opening an established, authenticated connection: both of its ends.
trait Stack {
    type Client: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Server: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn open(&mut self) -> (Self::Client, Self::Server);
}

struct Libconnect {
    listener: tls::Listener,
    client: tls::Service,
}

impl Stack for Libconnect {
    type Client = tls::Connection;
    type Server = tls::Connection;
    async fn open(&mut self) -> (tls::Connection, tls::Connection) {
        let c = self
            .client
            .dial_addr(self.listener.local_addr(), "db")
            .await
            .unwrap();
        let s = self.listener.accept().await.unwrap();
        (c, s)
    }
}

struct Bare {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl Stack for Bare {
    type Client = tokio_rustls::client::TlsStream<TcpStream>;
    type Server = tokio_rustls::server::TlsStream<TcpStream>;
    async fn open(&mut self) -> (Self::Client, Self::Server) {
        let addr = self.listener.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), self.listener.accept());
        let (c, s) = (c.unwrap(), s.unwrap().0);
        // As libconnect's listener and dialer do.
        c.set_nodelay(true).unwrap();
        s.set_nodelay(true).unwrap();
        let name = ServerName::try_from("db").unwrap();
        let (c, s) = tokio::join!(self.connector.connect(name, c), self.acceptor.accept(s));
        (c.unwrap(), s.unwrap())
    }
}

/// Opens a connection and echoes one byte over it.
async fn open_echoed<S: Stack>(stack: &mut S) -> (S::Client, S::Server) {
    let (mut c, mut s) = stack.open().await;
    let mut b = [7_u8; 1];
    c.write_all(&b).await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    s.write_all(&b).await.unwrap();
    c.read_exact(&mut b).await.unwrap();
    (c, s)
}

/// Lets background tasks (handshake tasks, the revocation registration) finish.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[derive(Debug)]
struct Held {
    /// Heap bytes per connection, both ends.
    both: f64,
    /// Heap bytes per connection, server end only.
    server: f64,
    /// Resident set per connection, both ends, KiB.
    rss_kib: f64,
    /// Heap bytes per connection not returned after closing everything (should be ~0).
    leftover: f64,
}

async fn measure<S: Stack>(stack: &mut S, n: usize) -> Held {
    // Warm-up: session caches full, lazily built state built, allocator pools grown.
    for _ in 0..50 {
        drop(open_echoed(stack).await);
    }
    let mut clients = Vec::with_capacity(n);
    let mut servers = Vec::with_capacity(n);
    settle().await;
    let (heap0, rss0) = (live(), bench_support::rss_kib());
    for _ in 0..n {
        let (c, s) = open_echoed(stack).await;
        clients.push(c);
        servers.push(s);
    }
    settle().await;
    let (heap1, rss1) = (live(), bench_support::rss_kib());
    drop(clients);
    settle().await;
    let heap2 = live();
    drop(servers);
    settle().await;
    let heap3 = live();
    // The vectors were allocated before the first count, so the connection objects themselves
    // (a rustls connection is kilobytes inline) are not in the differences; an application
    // holds them in a task or a struct on the heap, so they count. Dropping a vector frees its
    // slots too, which the same term puts back.
    let inline = (size_of::<S::Client>() + size_of::<S::Server>()) as f64;
    let per = |bytes: i64| bytes as f64 / n as f64 + inline;
    Held {
        both: per(heap1 - heap0),
        server: per(heap2 - heap0),
        rss_kib: (rss1 as f64 - rss0 as f64) / n as f64,
        leftover: per(heap3 - heap0),
    }
}

fn main() {
    let quick = bench_support::quick();
    let n: usize = bench_support::env_num("BENCH_CONNECTIONS", if quick { 200 } else { 1_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let setup = setup();
    let (lc, bare) = rt.block_on(async {
        let mut lc = Libconnect {
            listener: setup.server.listen("127.0.0.1:0").await.unwrap(),
            client: setup.client.clone(),
        };
        let mut bare = Bare {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::clone(&setup.bare_server)),
            connector: tokio_rustls::TlsConnector::from(Arc::clone(&setup.bare_client)),
        };
        // The counted heap does not depend on the order; the resident set does (malloc reuses
        // what the first run grew), which is why it is only a cross-check.
        let bare_held = measure(&mut bare, n).await;
        let lc_held = measure(&mut lc, n).await;
        (lc_held, bare_held)
    });
    let kib = |b: f64| b / 1024.0;
    println!("heap held per established mTLS connection, {n} connections:");
    for (name, h) in [("libconnect", &lc), ("bare rustls", &bare)] {
        println!(
            "  {name:<11} both ends {:6.1} KiB (server {:5.1} KiB, client {:5.1} KiB); RSS {:5.1} KiB; not returned after close {:+.0} B",
            kib(h.both),
            kib(h.server),
            kib(h.both - h.server),
            h.rss_kib,
            h.leftover
        );
    }
    println!(
        "  libconnect / bare rustls: {:.2}× (both ends)",
        lc.both / bare.both
    );
    let row = |h: &Held| {
        json!({
            "both_bytes": h.both,
            "server_bytes": h.server,
            "client_bytes": h.both - h.server,
            "rss_kib": h.rss_kib,
            "leftover_bytes": h.leftover,
        })
    };
    bench_support::write_json(
        "conn_memory",
        "cargo bench -p connect-core --bench conn_memory",
        json!({"connections": n}),
        json!({"libconnect": row(&lc), "rustls": row(&bare)}),
    );
}
