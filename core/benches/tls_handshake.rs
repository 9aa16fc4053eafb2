//! mTLS cost of libconnect against bare rustls with the same keys and settings.
//!
//! In memory (two rustls connections pumping bytes through buffers, no sockets, so only TLS
//! is measured): full handshakes, resumed handshakes, and 1 MiB of application data over an
//! established session.
//!
//! Over loopback TCP, with plain TCP as the baseline: 1 MiB of bulk data (acknowledged by the
//! receiver), and a 64-byte request echoed back on an established connection, which is the
//! latency TLS adds to every request once the handshake is paid. Client and server run on one
//! current-thread tokio runtime, so the figures are CPU cost along the path, not parallelism;
//! `TCP_NODELAY` is set on every socket.
//!
//! libconnect: `MtlsServer::config()` (current-leaf resolver, client verifier checking roots,
//! SPIFFE ID and intentions) and `MtlsClient::config()` (server URI check) in memory; its
//! `Listener` and `MtlsClient::connect` (its `Connection` type) over loopback. Bare rustls:
//! `WebPkiClientVerifier` with the root, `with_single_cert`, `with_root_certificates` and a DNS
//! name in the leaf, the same provider, versions, key-exchange groups, session cache and
//! ticketer, through tokio-rustls over loopback. Run:
//! `cargo bench -p connect-core --bench tls_handshake` (filters: `mtls_`, `loopback_`;
//! `mtls_handshakes_paired` and `loopback_bulk_paired`: the handshake and in-memory bulk
//! figures, and the loopback bulk figures, with the stacks in turn, see
//! `bench_handshakes_paired` and `bench_loopback_paired`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark set-up")]

mod bench_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::mesh::Mesh;
use connect_core::tls::{self, MtlsClient, MtlsServer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Setup {
    libconnect: (Arc<ServerConfig>, Arc<ClientConfig>),
    bare: (Arc<ServerConfig>, Arc<ClientConfig>),
    /// libconnect's own server and client, for the socket path.
    server: MtlsServer,
    client: MtlsClient,
}

fn setup() -> Setup {
    let mesh = Mesh::new();
    let server = tls::mtls_server(&mesh.identity("db"))
        .authorize(tls::authorizer::from_intentions("db", Mesh::intentions()))
        .build()
        .unwrap();
    let client = tls::mtls_client(&mesh.identity("web"), "db")
        .build()
        .unwrap();
    Setup {
        libconnect: (server.config(), client.config()),
        bare: mesh.bare_configs(),
        server,
        client,
    }
}

/// Moves everything `from` wants to send into `to`, processing it; true if anything moved.
fn pump(from: &mut impl DerefConn, to: &mut impl DerefConn) -> bool {
    let mut buf = Vec::new();
    while from.conn().wants_write() {
        from.conn().write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.conn().read_tls(&mut rd).unwrap();
        to.conn().process_new_packets().unwrap();
        to.drain();
    }
    !buf.is_empty()
}

/// The common state of either side, and draining its plaintext.
trait DerefConn {
    fn conn(&mut self) -> &mut rustls::ConnectionCommon<impl rustls::SideData>;
    fn drain(&mut self);
}

impl DerefConn for ClientConnection {
    fn conn(&mut self) -> &mut rustls::ConnectionCommon<impl rustls::SideData> {
        &mut **self
    }
    fn drain(&mut self) {
        drain(self.reader());
    }
}

impl DerefConn for ServerConnection {
    fn conn(&mut self) -> &mut rustls::ConnectionCommon<impl rustls::SideData> {
        &mut **self
    }
    fn drain(&mut self) {
        drain(self.reader());
    }
}

fn drain(mut r: rustls::Reader<'_>) {
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        std::hint::black_box(&buf[..n]);
    }
}

/// A complete handshake (session tickets included); returns both ends.
fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("db").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    for _ in 0..20 {
        let a = pump(&mut c, &mut s);
        let b = pump(&mut s, &mut c);
        if !a && !b && !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (c, s)
}

/// Sends `data` from the client to the server in memory, 64 KiB at a time, as a socket write
/// loop would hand it over.
fn send(cc: &mut ClientConnection, sc: &mut ServerConnection, data: &[u8]) {
    for chunk in data.chunks(64 * 1024) {
        cc.writer().write_all(chunk).unwrap();
        pump(cc, sc);
    }
}

fn no_resumption(c: &Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut c = (**c).clone();
    c.resumption = Resumption::disabled();
    Arc::new(c)
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    let stacks = [("libconnect", &setup.libconnect), ("rustls", &setup.bare)];

    let mut g = c.benchmark_group("mtls_full_handshake");
    for (name, (server, client)) in stacks {
        let client = no_resumption(client);
        let (cc, _) = handshake(server, &client);
        assert_eq!(cc.handshake_kind(), Some(rustls::HandshakeKind::Full));
        g.bench_function(name, |b| b.iter(|| handshake(server, &client)));
    }
    g.finish();

    let mut g = c.benchmark_group("mtls_resumed_handshake");
    for (name, (server, client)) in stacks {
        // A client config of its own, so its session cache holds this server's tickets.
        let client = Arc::new((**client).clone());
        handshake(server, &client);
        let (cc, _) = handshake(server, &client);
        assert_eq!(cc.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        g.bench_function(name, |b| {
            b.iter(|| {
                let (cc, _) = handshake(server, &client);
                debug_assert_eq!(cc.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
            })
        });
    }
    g.finish();

    let data = vec![0x5au8; MIB];
    let mut g = c.benchmark_group("mtls_bulk_1mib");
    g.throughput(Throughput::Bytes(MIB as u64));
    for (name, (server, client)) in stacks {
        let (mut cc, mut sc) = handshake(server, client);
        cc.set_buffer_limit(None);
        g.bench_function(name, |b| b.iter(|| send(&mut cc, &mut sc, &data)));
    }
    g.finish();
}

const MIB: usize = 1024 * 1024;

/// Any of the three client streams over loopback.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// The server side of every stack. The first byte picks the mode: `e` echoes what it reads,
/// `s` swallows it and acknowledges every whole MiB with one byte.
async fn serve(mut s: impl Duplex) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply: &[u8] = if mode[0] == b'e' {
            &buf[..n]
        } else {
            got += n;
            if got < MIB {
                continue;
            }
            got -= MIB;
            b"k"
        };
        if s.write_all(reply).await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

async fn tcp_to(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Binds a loopback port and serves every connection `wrap` turns into a stream.
async fn accept_loop<S, F, W>(wrap: W) -> SocketAddr
where
    S: Duplex + 'static,
    F: Future<Output = Option<S>> + Send + 'static,
    W: Fn(TcpStream) -> F + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tcp.set_nodelay(true).unwrap();
            let conn = wrap(tcp);
            tokio::spawn(async move {
                if let Some(s) = conn.await {
                    serve(s).await;
                }
            });
        }
    });
    addr
}

/// A client stream of each stack, connected to its server, in `mode`.
/// One established client stream per stack; with `control`, a second bare rustls one too
/// (`rustls_control`), which shows how far two identical stacks differ in one process.
async fn loopback_clients(
    setup: &Setup,
    mode: u8,
    control: bool,
) -> Vec<(&'static str, Box<dyn Duplex>)> {
    let tcp_addr = accept_loop(|tcp| async { Some(tcp) }).await;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&setup.bare.0));
    let rustls_addr = accept_loop(move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await.ok() }
    })
    .await;
    // libconnect's own accept path: handshake task, authorization, revocation registry.
    let mut listener = setup.server.listen("127.0.0.1:0").await.unwrap();
    let lc_addr = listener.local_addr();
    tokio::spawn(async move {
        while let Ok(c) = listener.accept().await {
            tokio::spawn(serve(c));
        }
    });

    let plain: Box<dyn Duplex> = Box::new(tcp_to(tcp_addr).await);
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&setup.bare.1));
    let name = ServerName::try_from("db").unwrap();
    let bare: Box<dyn Duplex> = Box::new(
        connector
            .connect(name, tcp_to(rustls_addr).await)
            .await
            .unwrap(),
    );
    let lc: Box<dyn Duplex> = Box::new(setup.client.connect(tcp_to(lc_addr).await).await.unwrap());
    let mut out = vec![("tcp", plain), ("rustls", bare), ("libconnect", lc)];
    if control {
        let name = ServerName::try_from("db").unwrap();
        let again = connector
            .connect(name, tcp_to(rustls_addr).await)
            .await
            .unwrap();
        out.push(("rustls_control", Box::new(again)));
    }
    for (_, s) in &mut out {
        s.write_all(&[mode]).await.unwrap();
        s.flush().await.unwrap();
    }
    out
}

fn bench_loopback(c: &mut Criterion) {
    let setup = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let data = vec![0x5au8; MIB];
    let mut g = c.benchmark_group("loopback_bulk_1mib");
    g.throughput(Throughput::Bytes(MIB as u64));
    for (name, mut s) in rt.block_on(loopback_clients(&setup, b's', false)) {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        send_acknowledged(&mut s, &data).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();

    let request = [0x42u8; 64];
    let mut g = c.benchmark_group("loopback_echo_64b");
    for (name, mut s) in rt.block_on(loopback_clients(&setup, b'e', false)) {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut back = [0u8; 64];
                    let start = Instant::now();
                    for _ in 0..iters {
                        s.write_all(&request).await.unwrap();
                        s.flush().await.unwrap();
                        s.read_exact(&mut back).await.unwrap();
                    }
                    let took = start.elapsed();
                    assert_eq!(back, request);
                    took
                })
            })
        });
    }
    g.finish();
}

/// Sends `data` 64 KiB at a time, then waits for the receiver to acknowledge all of it.
async fn send_acknowledged(s: &mut Box<dyn Duplex>, data: &[u8]) {
    for chunk in data.chunks(64 * 1024) {
        s.write_all(chunk).await.unwrap();
    }
    s.flush().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

/// Sends `mib` MiB, each acknowledged by the receiver; returns MiB/s.
async fn bulk_rate(s: &mut Box<dyn Duplex>, data: &[u8], mib: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..mib {
        send_acknowledged(s, data).await;
    }
    mib as f64 / start.elapsed().as_secs_f64()
}

/// Loopback bulk with the stacks in turn: criterion measures one stack after the other, so
/// whatever the machine does meanwhile (another process, frequency, the allocator's state
/// after the previous stack) falls on one of them. Here every round sends the same amount over
/// each stack, starting with a different one each round, and the ratio is taken per round.
/// Writes `tls_loopback.json` (`make bench` reports its median ratio as the loopback target).
/// Runs unless a filter that does not match `loopback_bulk_paired` is given.
fn bench_loopback_paired(_: &mut Criterion) {
    if !selected("loopback_bulk_paired") {
        return;
    }
    let quick = bench_support::quick();
    let rounds: usize = bench_support::env_num("BENCH_ROUNDS", if quick { 5 } else { 41 });
    let mib: usize = bench_support::env_num("BENCH_MIB", if quick { 4 } else { 32 });
    let setup = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = vec![0x5au8; MIB];
    let mut stacks = rt.block_on(loopback_clients(&setup, b's', true));
    let n = stacks.len();
    let rates = in_turn(rounds, n, |i| {
        rt.block_on(bulk_rate(&mut stacks[i].1, &data, mib))
    });
    let names: Vec<&str> = stacks.iter().map(|(n, _)| *n).collect();
    let at = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let bare = at("rustls");
    let mut results = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        results.insert(
            (*name).to_owned(),
            serde_json::json!({ "median_mib_per_s": median(&rates[i]), "rounds_mib_per_s": rates[i] }),
        );
        println!(
            "loopback_bulk_paired/{name}: median {:.0} MiB/s over {rounds} rounds of {mib} MiB",
            median(&rates[i])
        );
    }
    // The control: a second bare rustls connection against the first, the harness's own
    // spread between two identical stacks in this process.
    for (stack, key) in [
        ("libconnect", "libconnect_vs_rustls"),
        ("rustls_control", "rustls_control_vs_rustls"),
    ] {
        let ratio = per_round_ratio(&rates[at(stack)], &rates[bare]);
        println!(
            "loopback_bulk_paired: {stack} / rustls per round: {}",
            ratio.summary
        );
        results.insert(key.into(), ratio.json);
    }
    bench_support::write_json(
        "tls_loopback",
        "cargo bench -p connect-core --bench tls_handshake -- loopback_bulk_paired",
        serde_json::json!({ "rounds": rounds, "mib_per_round": mib, "write_size": 64 * 1024 }),
        serde_json::Value::Object(results),
    );
}

/// Whether a harness outside criterion's groups should run: criterion's filter is its one
/// positional argument (option values here are numbers), and `name` runs unless a filter that
/// does not match it is given.
fn selected(name: &str) -> bool {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && a.parse::<f64>().is_err());
    filter.is_none_or(|f| name.contains(f.as_str()))
}

/// The median of `v`.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures `stacks` stacks in turn: a warm-up round that is not counted, then `rounds`
/// rounds, each starting with the next stack; `measure(i)` gives stack `i`'s rate. Returns
/// each stack's rates, round by round.
fn in_turn(rounds: usize, stacks: usize, mut measure: impl FnMut(usize) -> f64) -> Vec<Vec<f64>> {
    for i in 0..stacks {
        measure(i);
    }
    let mut rates = vec![Vec::with_capacity(rounds); stacks];
    for round in 0..rounds {
        for k in 0..stacks {
            let i = (round + k) % stacks;
            rates[i].push(measure(i));
        }
    }
    rates
}

/// Rates of two stacks measured side by side, round by round, compared per round.
struct PerRoundRatio {
    /// "median x % (range y–z %)".
    summary: String,
    /// `{median, min, max, rounds}` for the report.
    json: serde_json::Value,
}

fn per_round_ratio(a: &[f64], b: &[f64]) -> PerRoundRatio {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let mid = median(&ratios);
    PerRoundRatio {
        summary: format!(
            "median {:.1} % (range {:.1}–{:.1} %)",
            mid * 100.0,
            lo * 100.0,
            hi * 100.0
        ),
        json: serde_json::json!({ "median": mid, "min": lo, "max": hi, "rounds": ratios }),
    }
}

/// In-memory handshakes and bulk with the stacks in turn, as `bench_loopback_paired` does for
/// bulk over loopback: each round times the same number of full (then resumed) handshakes, then
/// the same MiB of application data, on each stack, starting with a different stack each round,
/// and the ratio of rates is taken per round, so what the machine does meanwhile falls on both.
/// Writes `tls_handshakes.json` (`make bench` reports its median ratios as the handshake and
/// in-memory bulk targets).
fn bench_handshakes_paired(_: &mut Criterion) {
    if !selected("mtls_handshakes_paired") {
        return;
    }
    let quick = bench_support::quick();
    let rounds: usize = bench_support::env_num("BENCH_ROUNDS", if quick { 5 } else { 31 });
    let per_round: usize = bench_support::env_num("BENCH_HANDSHAKES", if quick { 20 } else { 200 });
    let setup = setup();
    let stacks = [("libconnect", &setup.libconnect), ("rustls", &setup.bare)];
    let mut results = serde_json::Map::new();
    for kind in ["full", "resumed"] {
        // Per stack: its server config and a client config of its own (with resumption off
        // for full handshakes; for resumed ones its session cache holds this server's tickets).
        let configs: Vec<_> = stacks
            .iter()
            .map(|(_, (server, client))| {
                let client = if kind == "full" {
                    no_resumption(client)
                } else {
                    Arc::new((**client).clone())
                };
                handshake(server, &client);
                let (cc, _) = handshake(server, &client);
                let want = if kind == "full" {
                    rustls::HandshakeKind::Full
                } else {
                    rustls::HandshakeKind::Resumed
                };
                assert_eq!(cc.handshake_kind(), Some(want));
                (Arc::clone(server), client)
            })
            .collect();
        let rates = in_turn(rounds, stacks.len(), |i| {
            let (server, client) = &configs[i];
            let start = Instant::now();
            for _ in 0..per_round {
                std::hint::black_box(handshake(server, client));
            }
            per_round as f64 / start.elapsed().as_secs_f64()
        });
        let ratio = per_round_ratio(&rates[0], &rates[1]);
        for (i, (name, _)) in stacks.iter().enumerate() {
            println!(
                "mtls_handshakes_paired/{kind}/{name}: median {:.0}/s over {rounds} rounds of {per_round}",
                median(&rates[i])
            );
        }
        println!(
            "mtls_handshakes_paired/{kind}: libconnect / rustls per round: {}",
            ratio.summary
        );
        results.insert(
            kind.to_owned(),
            serde_json::json!({
                "libconnect_per_s": median(&rates[0]),
                "rustls_per_s": median(&rates[1]),
                "libconnect_vs_rustls": ratio.json,
            }),
        );
    }
    // In-memory bulk: the record layer alone, as `mtls_bulk_1mib`, with the stacks in turn.
    // The two stacks negotiate the same suite, so the same rustls code encrypts either way.
    let mib_per_round: usize = bench_support::env_num("BENCH_MIB", if quick { 4 } else { 32 });
    let data = vec![0x5au8; MIB];
    let mut conns: Vec<_> = stacks
        .iter()
        .map(|(_, (server, client))| {
            let (mut cc, sc) = handshake(server, client);
            cc.set_buffer_limit(None);
            (cc, sc)
        })
        .collect();
    let suites: Vec<_> = conns
        .iter()
        .map(|(cc, _)| cc.negotiated_cipher_suite().map(|s| s.suite()))
        .collect();
    assert_eq!(
        suites[0], suites[1],
        "the stacks negotiated different suites"
    );
    let rates = in_turn(rounds, stacks.len(), |i| {
        let (cc, sc) = &mut conns[i];
        let start = Instant::now();
        for _ in 0..mib_per_round {
            send(cc, sc, &data);
        }
        mib_per_round as f64 / start.elapsed().as_secs_f64()
    });
    let ratio = per_round_ratio(&rates[0], &rates[1]);
    println!(
        "mtls_handshakes_paired/bulk: {:?}; libconnect {:.0} MiB/s, rustls {:.0} MiB/s; \
         libconnect / rustls per round: {}",
        suites[0],
        median(&rates[0]),
        median(&rates[1]),
        ratio.summary
    );
    results.insert(
        "bulk".to_owned(),
        serde_json::json!({
            "libconnect_mib_per_s": median(&rates[0]),
            "rustls_mib_per_s": median(&rates[1]),
            "libconnect_vs_rustls": ratio.json,
            "suite": format!("{:?}", suites[0]),
        }),
    );
    bench_support::write_json(
        "tls_handshakes",
        "cargo bench -p connect-core --bench tls_handshake -- mtls_handshakes_paired",
        serde_json::json!({ "rounds": rounds, "handshakes_per_round": per_round,
                            "bulk_mib_per_round": mib_per_round }),
        serde_json::Value::Object(results),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench, bench_handshakes_paired, bench_loopback, bench_loopback_paired
}
criterion_main!(benches);
