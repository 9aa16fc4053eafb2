//! The HTTP(S) server limits of a real `connect agent` process: slow and idle clients are
//! dropped, connection counts are capped per client and in total, the agent keeps
//! answering, blocking queries are not cut, and bad `limits` values are refused.
//!
//! Each agent gets short limits from its own configuration file, so that the tests take
//! seconds. Other clients are told apart by their loopback source address (127.0.0.x).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cli_support::{Agent, command, run};

/// Generous: these machines are shared and slow; every limit under test is 1-2 s.
const CLOSE_WITHIN: Duration = Duration::from_secs(8);

/// A `-dev` agent with `limits { LIMITS }` (and more flags).
fn agent_with(limits: &str, extra: &[&str]) -> (Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, "limits.hcl", &format!("limits {{\n{limits}\n}}\n"));
    let mut args = vec!["-dev", "-config-file", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Agent::start(&args), dir)
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A TCP connection to `addr` from the loopback address `src` (a distinct client IP).
fn connect_from(src: &str, addr: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let dest: SocketAddr = addr.parse().unwrap();
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect_timeout(&dest.into(), Duration::from_secs(5))
        .unwrap();
    TcpStream::from(sock)
}

/// How a connection ended, as seen by a client that waits for it.
#[derive(Debug)]
struct Ended {
    /// Time from the call (or from `since`) to the end.
    after: Duration,
    /// What the server sent before closing.
    bytes: Vec<u8>,
}

impl Ended {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads until the server closes `s` (EOF or reset), calling `each_tick` every 100 ms
/// (a write error there also counts as closed). None if still open after `limit`.
fn wait_closed(
    s: &mut TcpStream,
    since: Instant,
    limit: Duration,
    mut each_tick: impl FnMut(&mut TcpStream) -> std::io::Result<()>,
) -> Option<Ended> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while since.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => {
                return Some(Ended {
                    after: since.elapsed(),
                    bytes,
                });
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                return Some(Ended {
                    after: since.elapsed(),
                    bytes,
                });
            }
        }
        if each_tick(s).is_err() {
            return Some(Ended {
                after: since.elapsed(),
                bytes,
            });
        }
    }
    None
}

/// Reads one response with a `Content-Length`; returns (status, head and body).
fn read_response(s: &mut TcpStream) -> (u16, String) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(n > 0, "closed mid-head: {}", String::from_utf8_lossy(&raw));
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head + &String::from_utf8_lossy(&body))
}

fn get(path: &str, keep_alive: bool) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
}

/// Retries a plain `GET` from 127.0.0.1 until it answers 200 (the agent may take a moment
/// to see a freed connection); returns how long that took.
fn get_ok_within(agent: &Agent, path: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let r = cli_support::try_http(&agent.http, "GET", path, &[], "", Duration::from_secs(2));
        match r {
            Ok(r) if r.status == 200 => return started.elapsed(),
            other => assert!(
                started.elapsed() < limit,
                "{path} not answered within {limit:?}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_slow_request_head_is_dropped_after_the_header_timeout() {
    let (agent, _dir) = agent_with(
        r#"http_header_read_timeout = "1s"
           http_idle_timeout = "30s""#,
        &[],
    );

    // A connection that never sends anything.
    let started = Instant::now();
    let mut silent = connect_from("127.0.0.1", &agent.http);
    let ended = wait_closed(&mut silent, started, CLOSE_WITHIN, |_| Ok(()))
        .expect("a silent connection was never closed");
    assert!(ended.after >= Duration::from_millis(900), "{ended:?}");
    assert!(ended.bytes.is_empty(), "{}", ended.text());

    // Slowloris: a request head that never ends, one header line every 100 ms.
    let started = Instant::now();
    let mut slow = connect_from("127.0.0.1", &agent.http);
    slow.write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: agent\r\n")
        .unwrap();
    let ended = wait_closed(&mut slow, started, CLOSE_WITHIN, |s| {
        s.write_all(b"X-Drip: 1\r\n")
    })
    .expect("a dripping request head was never cut");
    assert!(ended.after >= Duration::from_millis(900), "{ended:?}");
    assert!(ended.bytes.is_empty(), "{}", ended.text());

    // A request sent at once is answered as usual.
    assert_eq!(agent.http("GET", "/v1/agent/self", &[], "").status, 200);
}

#[test]
fn a_dripping_body_is_answered_408_and_cut() {
    let (agent, _dir) = agent_with(
        r#"http_body_read_timeout = "1s"
           http_header_read_timeout = "5s""#,
        &[],
    );
    let started = Instant::now();
    let mut s = connect_from("127.0.0.1", &agent.http);
    s.write_all(
        b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: agent\r\nContent-Length: 1000\r\n\r\n{",
    )
    .unwrap();
    let ended = wait_closed(&mut s, started, CLOSE_WITHIN, |s| s.write_all(b" "))
        .expect("a dripping body was never cut");
    assert!(ended.after >= Duration::from_millis(900), "{ended:?}");
    // The answer may be lost to the reset that closing on unread input causes; when it
    // arrives it is a 408.
    if !ended.bytes.is_empty() {
        let text = ended.text();
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert!(text.contains("limits.http_body_read_timeout"), "{text}");
    }

    // A body sent at once is read as usual.
    let r = agent.http(
        "PUT",
        "/v1/agent/service/register",
        &[],
        r#"{"Name": "web", "Port": 8080}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (agent, _dir) = agent_with(
        r#"http_idle_timeout = "1s"
           http_header_read_timeout = "5s""#,
        &[],
    );
    let mut s = connect_from("127.0.0.1", &agent.http);
    // Keep-alive works: two requests on one connection.
    for _ in 0..2 {
        s.write_all(get("/v1/agent/self", true).as_bytes()).unwrap();
        let (status, text) = read_response(&mut s);
        assert_eq!(status, 200, "{text}");
    }
    let idle_since = Instant::now();
    let ended = wait_closed(&mut s, idle_since, CLOSE_WITHIN, |_| Ok(()))
        .expect("an idle keep-alive connection was never closed");
    assert!(ended.after >= Duration::from_millis(900), "{ended:?}");
    assert!(ended.bytes.is_empty(), "{}", ended.text());
}

#[test]
fn connections_over_the_per_client_limit_get_429() {
    let (agent, _dir) = agent_with(
        r#"http_max_conns_per_client = 3
           http_header_read_timeout = "60s""#,
        &[],
    );
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| connect_from("127.0.0.1", &agent.http))
        .collect();
    // The fourth from the same address is answered 429 and closed at once.
    let started = Instant::now();
    let mut fourth = connect_from("127.0.0.1", &agent.http);
    let ended = wait_closed(&mut fourth, started, CLOSE_WITHIN, |_| Ok(()))
        .expect("the connection over the per-client limit was kept open");
    let text = ended.text();
    assert!(
        text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{text}"
    );
    assert!(text.contains("too many concurrent connections"), "{text}");

    // Another client is not affected.
    let mut other = connect_from("127.0.0.2", &agent.http);
    other
        .write_all(get("/v1/agent/self", false).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut other).0, 200);

    // Once one of its connections closes, the first client is served again.
    drop(held.pop());
    get_ok_within(&agent, "/v1/agent/self", Duration::from_secs(5));
}

#[test]
fn the_agent_keeps_answering_with_500_idle_sockets_open() {
    // 400 descriptors: the old server accepted until `accept` failed for want of
    // descriptors, and then answered nobody.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "l.hcl",
        "limits { http_header_read_timeout = \"60s\" }",
    );
    let agent =
        Agent::start_with_open_file_limit(&["-dev", "-config-file", cfg.to_str().unwrap()], 400);
    let flood: Vec<TcpStream> = (0..500)
        .map(|_| connect_from("127.0.0.2", &agent.http))
        .collect();
    // A normal client is answered while the flood is open.
    get_ok_within(&agent, "/v1/agent/self", Duration::from_secs(10));
    // The flooding client got 200 (the default per-client limit) and no more: the last
    // of its connections was refused.
    let mut last = flood.into_iter().last().unwrap();
    let ended = wait_closed(&mut last, Instant::now(), CLOSE_WITHIN, |_| Ok(()))
        .expect("the 500th connection from one client was kept open");
    assert!(
        ended.text().starts_with("HTTP/1.1 429 "),
        "{}",
        ended.text()
    );
    assert!(
        !agent
            .stderr()
            .contains("accepting an HTTP connection failed"),
        "{}",
        agent.stderr()
    );
}

#[test]
fn the_global_cap_answers_503_and_frees_up_when_idle_clients_time_out() {
    let (agent, _dir) = agent_with(
        r#"http_max_conns = 20
           http_max_conns_per_client = 0
           http_header_read_timeout = "2s""#,
        &[],
    );
    let held: Vec<TcpStream> = (0..20)
        .map(|_| connect_from("127.0.0.2", &agent.http))
        .collect();
    let started = Instant::now();
    let mut over = connect_from("127.0.0.1", &agent.http);
    let ended = wait_closed(&mut over, started, Duration::from_millis(1500), |_| Ok(()))
        .expect("the connection over the global cap was kept open");
    assert!(
        ended
            .text()
            .starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{}",
        ended.text()
    );
    // The held connections send nothing: the header timeout closes them and frees the cap.
    get_ok_within(&agent, "/v1/agent/self", CLOSE_WITHIN);
    drop(held);
}

#[test]
fn a_blocking_query_outlives_the_timeouts() {
    let (agent, _dir) = agent_with(
        r#"http_header_read_timeout = "1s"
           http_idle_timeout = "1s"
           http_body_read_timeout = "1s""#,
        &[],
    );
    let idx = agent.http("GET", "/v1/connect/intentions", &[], "").index();
    let mut s = connect_from("127.0.0.1", &agent.http);
    let started = Instant::now();
    s.write_all(get(&format!("/v1/connect/intentions?index={idx}&wait=3s"), true).as_bytes())
        .unwrap();
    let (status, text) = read_response(&mut s);
    let waited = started.elapsed();
    assert_eq!(status, 200, "{text}");
    assert!(
        waited >= Duration::from_millis(2500),
        "did not block: {waited:?}"
    );
    // The connection is still usable afterwards.
    s.write_all(get("/v1/agent/self", false).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s).0, 200);
}

#[test]
fn the_https_listener_times_out_handshakes_and_serves_tls() {
    let (agent, dir) = agent_with(
        r#"https_handshake_timeout = "1s"
           http_header_read_timeout = "30s""#,
        &["-https-port", "0"],
    );
    let https = agent.https.clone().expect("an HTTPS listener");

    // No ClientHello, and half of one: both dropped after the handshake timeout.
    for first in [&b""[..], &b"\x16\x03\x01\x02\x00\x01"[..]] {
        let started = Instant::now();
        let mut s = connect_from("127.0.0.1", &https);
        s.write_all(first).unwrap();
        let ended = wait_closed(&mut s, started, Duration::from_secs(6), |_| Ok(()))
            .expect("an unfinished TLS handshake was kept open");
        assert!(ended.after >= Duration::from_millis(900), "{ended:?}");
    }

    // A real client is served.
    let roots = write_config(
        &dir,
        "roots.pem",
        &agent.cli(&["ca", "roots", "-pem"]).ok().stdout,
    );
    let env = [
        ("CONSUL_HTTP_ADDR", https.as_str()),
        ("CONSUL_HTTP_SSL", "true"),
        ("CONSUL_CACERT", roots.to_str().unwrap()),
    ];
    let out = agent.cli_env(&env, &["ca", "roots"]).ok();
    assert!(out.stdout.contains("ActiveRootID"), "{out:?}");
}

#[test]
fn bad_limit_values_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (text, want)) in [
        (
            "limits { http_max_conns_per_client = -1 }",
            "limits.http_max_conns_per_client: must be between 0 (no limit) and 1048576, got -1",
        ),
        (
            "limits { http_max_conns = 0 }",
            "limits.http_max_conns: must be between 1 and 1048576, got 0",
        ),
        (
            "limits { https_handshake_timeout = \"soon\" }",
            "limits.https_handshake_timeout: time: invalid duration \"soon\"",
        ),
        (
            "limits { http_idle_timeout = \"0s\" }",
            "limits.http_idle_timeout: must be greater than zero",
        ),
        (
            "limits { http_header_read_timeout = 10 }",
            "limits.http_header_read_timeout: expected a duration string",
        ),
        (
            "limits { http_body_read_timeout = \"48h\" }",
            "limits.http_body_read_timeout: must be at most 24h",
        ),
        (
            r#"{"limits": {"http_max_conns": "many"}}"#,
            "limits.http_max_conns: expected an integer",
        ),
        ("limits = 3", "limits: expected a block"),
    ]
    .into_iter()
    .enumerate()
    {
        let ext = if text.starts_with('{') { "json" } else { "hcl" };
        let cfg = write_config(&dir, &format!("bad{i}.{ext}"), text);
        let out = run(command().args([
            "agent",
            "-dev",
            "-http-port",
            "0",
            "-config-file",
            cfg.to_str().unwrap(),
        ]));
        assert_eq!(out.code, 1, "{text}: {out:?}");
        assert!(
            out.stderr.starts_with("Error: config file "),
            "{text}: {out:?}"
        );
        assert!(out.stderr.contains(want), "{text}: {out:?}");
    }

    // The limits and their defaults are in the agent's help.
    let help = run(command().args(["agent", "-h"])).ok();
    for key in [
        "http_max_conns_per_client = 200",
        "http_max_conns            = 4096",
        "https_handshake_timeout   = \"5s\"",
        "http_header_read_timeout  = \"10s\"",
        "http_body_read_timeout    = \"30s\"",
        "http_idle_timeout         = \"90s\"",
    ] {
        assert!(help.stdout.contains(key), "{key}: {}", help.stdout);
    }
}

#[test]
fn sigterm_stops_the_agent_at_once_with_idle_and_half_sent_requests_open() {
    let mut agent = Agent::start(&["-dev"]);
    let _silent = connect_from("127.0.0.1", &agent.http);
    // A request head that is never finished owes nobody an answer: it must not hold the
    // shutdown for the whole grace period (3 s).
    let mut half = connect_from("127.0.0.1", &agent.http);
    half.write_all(b"GET /v1/agent/self HTTP/1.1\r\nHost: agent\r\n")
        .unwrap();
    let mut idle = connect_from("127.0.0.1", &agent.http);
    idle.write_all(get("/v1/agent/self", true).as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    let started = Instant::now();
    let status = agent.signal_and_wait("TERM", Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(agent.stderr().contains("==> libconnect agent stopped"));
}
