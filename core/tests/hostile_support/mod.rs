//! The hostile-client mix against a real `connect agent` with ACLs on and default deny, shared
//! by `tests/hostile_agent.rs` (a short run in `make test`) and `benches/hostile.rs` (the long,
//! recorded run of `make hostile` against a release agent). One implementation, two lengths.
//!
//! Attackers come from other loopback addresses (127.0.0.2 and up) than the legitimate writers
//! (127.0.1.x) and the probe (127.0.0.1), as they would from other hosts, so that a per-client
//! connection limit applies to them and not to the clients the run checks on.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and benchmark code"
)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli_support::{Agent, default_deny_config};

/// The management token of the agent under attack (the legitimate writer's).
pub const MANAGEMENT: &str = "b7e4c1d2-hostile-management-0000-5ec4e7000001";

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How long the attack runs.
    pub duration: Duration,
    /// Connections held open by slowloris clients (half drip a header byte at a time, half
    /// send nothing).
    pub slowloris: usize,
    /// Threads per request-sending attack.
    pub workers: usize,
    /// Legitimate writers (each on its own intentions).
    pub writers: usize,
    /// Pause between two requests of one attacker.
    pub pause: Duration,
    /// Pause between two probes.
    pub probe_every: Duration,
    /// Longest wait for any answer; past it, a request counts as unanswered.
    pub answer_within: Duration,
}

impl Plan {
    /// The short run of the test suite.
    pub fn short() -> Plan {
        Plan {
            duration: Duration::from_secs(8),
            slowloris: 60,
            workers: 1,
            writers: 3,
            pause: Duration::from_millis(10),
            probe_every: Duration::from_millis(100),
            answer_within: Duration::from_secs(5),
        }
    }

    /// The recorded run: `secs` seconds, more attackers, no pause.
    pub fn long(secs: u64) -> Plan {
        Plan {
            duration: Duration::from_secs(secs),
            slowloris: 400,
            workers: 2,
            writers: 4,
            pause: Duration::from_millis(1),
            probe_every: Duration::from_millis(50),
            answer_within: Duration::from_secs(5),
        }
    }
}

/// Starts `connect agent -dev` with ACLs on, default deny and [`MANAGEMENT`], its
/// configuration file written into `dir`.
pub fn start_agent(dir: &Path) -> Agent {
    let cfg = default_deny_config(dir, MANAGEMENT);
    Agent::start(&[
        "-dev",
        "-config-file",
        cfg.to_str().unwrap(),
        "-log-level",
        "error",
    ])
}

// ---- a small client ------------------------------------------------------------------------

/// What came back: a status, or nothing.
#[derive(Debug)]
pub enum Answer {
    /// An HTTP response with this status and body.
    Status(u16, String),
    /// The connection failed, was closed or timed out before a full response.
    None(std::io::Error),
}

/// Opens a connection from `src` (a loopback address) to `dst`.
fn connect_from(src: Ipv4Addr, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
    }
    let s = RT.with(|rt| {
        rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(src.into(), 0))?;
            match tokio::time::timeout(timeout, sock.connect(dst)).await {
                Ok(s) => s?.into_std(),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            }
        })
    })?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

thread_local! {
    /// How long this thread's last TCP connect took (the probe reports it apart).
    static LAST_CONNECT: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// One request on a fresh connection from `src`; `extra` is raw header lines.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per attack, all spelled out"
)]
pub fn send(
    src: Ipv4Addr,
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &str,
    body: &[u8],
    timeout: Duration,
) -> Answer {
    let attempt = || -> std::io::Result<(u16, String)> {
        let start = Instant::now();
        let mut s = connect_from(src, addr.parse().unwrap(), timeout)?;
        LAST_CONNECT.set(start.elapsed());
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}");
        if !extra.to_ascii_lowercase().contains("content-length") {
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        if let Some(t) = token {
            let _ = write!(head, "X-Consul-Token: {t}\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        // The agent may answer (413) and close before the whole body is sent: read anyway.
        let wrote = s.write_all(body);
        let (raw, read) = read_response(&mut s);
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok());
        match (status, wrote, read) {
            (Some(status), _, _) => {
                let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                Ok((status, body.to_owned()))
            }
            (None, Err(e), _) | (None, _, Err(e)) => Err(e),
            (None, _, _) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed without a response",
            )),
        }
    };
    match attempt() {
        Ok((s, b)) => Answer::Status(s, b),
        Err(e) => Answer::None(e),
    }
}

/// Reads one response: to the end of its `Content-Length` or last chunk, else to EOF (the
/// agent need not close first: it may still be waiting out an unread request body).
fn read_response(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = &raw[end + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => body.len() >= n,
                None => head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n"),
            };
            if done {
                return (raw, Ok(()));
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return (raw, Ok(())),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return (raw, Err(e)),
        }
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

// ---- counting ------------------------------------------------------------------------------

/// What one kind of request got.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests sent.
    pub tried: u64,
    /// Answers by class.
    pub ok_2xx: u64,
    /// 4xx answers.
    pub client_4xx: u64,
    /// 5xx answers.
    pub server_5xx: u64,
    /// No answer (closed, reset, timed out).
    pub unanswered: u64,
    /// Requests that must fail (guessed tokens, bad names) and got a 2xx, or answers that
    /// carried the management secret.
    pub violations: u64,
    /// A few examples of 5xx, violations and unanswered requests.
    pub examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, what: &str, answer: &Answer, must_fail: bool) {
        self.tried += 1;
        let mut note = None;
        match answer {
            Answer::Status(s, body) => {
                match s {
                    200..=299 => self.ok_2xx += 1,
                    500.. => self.server_5xx += 1,
                    _ => self.client_4xx += 1,
                }
                let leaked = body.contains(MANAGEMENT);
                if (must_fail && (200..300).contains(s)) || leaked {
                    self.violations += 1;
                    note = Some(format!(
                        "{what} -> {s}{}",
                        if leaked { " (secret in body)" } else { "" }
                    ));
                } else if *s >= 500 {
                    note = Some(format!(
                        "{what} -> {s}: {}",
                        body.chars().take(200).collect::<String>()
                    ));
                }
            }
            Answer::None(e) => {
                self.unanswered += 1;
                note = Some(format!("{what} -> no answer: {e}"));
            }
        }
        if let Some(n) = note
            && self.examples.len() < 5
        {
            self.examples.push(n.chars().take(300).collect());
        }
    }
}

/// Everything a run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Per attack kind.
    pub kinds: BTreeMap<&'static str, Tally>,
    /// Slowloris connections opened, and how many of them the agent closed.
    pub slow_opened: u64,
    /// Slowloris connections the agent closed (timeouts or limits at work).
    pub slow_closed: u64,
    /// Writes the agent acknowledged.
    pub acked_writes: u64,
    /// Acknowledged writes missing or different afterwards (stored intention).
    pub lost_writes: u64,
    /// Written intentions whose `/v1/connect/intentions/check` disagreed with the stored
    /// intention afterwards (the live authorizer on an older snapshot).
    pub check_disagrees: u64,
    /// Probe latencies.
    pub probe: Vec<Duration>,
    /// Probes without an answer within the plan's bound.
    pub probe_failures: u64,
    /// The slowest TCP connect of a probe (part of its latency: a dropped SYN is retried
    /// after a second by the kernel, whatever the agent does).
    pub probe_connect_max: Duration,
    /// Probes slower than 100 ms.
    pub probe_over_100ms: u64,
    /// Whether the agent was running at the end.
    pub alive: bool,
    /// Wall time of the attack.
    pub elapsed: Duration,
    /// The probe's period.
    pub probe_every: Duration,
}

impl Report {
    /// Answers with status 500 or above, over every kind.
    pub fn server_errors(&self) -> u64 {
        self.kinds.values().map(|t| t.server_5xx).sum()
    }

    /// Guessed-token or bad-name requests that succeeded, and answers leaking the secret.
    pub fn violations(&self) -> u64 {
        self.kinds.values().map(|t| t.violations).sum()
    }

    /// Requests of kinds that must always be answered but were not.
    pub fn unanswered(&self) -> u64 {
        self.kinds
            .iter()
            .filter(|(k, _)| !CUT_OFF_OK.contains(k))
            .map(|(_, t)| t.unanswered)
            .sum()
    }

    /// A percentile of the probe latencies.
    pub fn probe_percentile(&self, p: f64) -> Duration {
        let mut v = self.probe.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    /// The table printed by the harness and on a test failure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>7} {:>7} {:>5} {:>10} {:>11}",
            "kind", "tried", "2xx", "4xx", "5xx", "no answer", "violations"
        );
        for (k, t) in &self.kinds {
            let _ = writeln!(
                out,
                "{:<16} {:>8} {:>7} {:>7} {:>5} {:>10} {:>11}",
                k, t.tried, t.ok_2xx, t.client_4xx, t.server_5xx, t.unanswered, t.violations
            );
        }
        let tried: u64 = self.kinds.values().map(|t| t.tried).sum();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let _ = writeln!(
            out,
            "\nrequests tried: {tried} in {:.1} s; slowloris connections: {} opened, {} closed by the agent",
            self.elapsed.as_secs_f64(),
            self.slow_opened,
            self.slow_closed
        );
        let _ = writeln!(
            out,
            "5xx: {}  crashes: {}  unauthorized successes / bad names accepted / secret leaks: {}  \
             unanswered (must-answer kinds): {}",
            self.server_errors(),
            u8::from(!self.alive),
            self.violations(),
            self.unanswered()
        );
        let _ = writeln!(
            out,
            "acknowledged writes: {}  lost: {}  /check disagreeing with the stored intention: {}",
            self.acked_writes, self.lost_writes, self.check_disagrees
        );
        let _ = writeln!(
            out,
            "probe (GET /v1/connect/ca/roots every {} ms): {} answered, {} not; \
             p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; over 100 ms: {}; slowest connect {:.2} ms",
            self.probe_every.as_millis(),
            self.probe.len(),
            self.probe_failures,
            ms(self.probe_percentile(0.5)),
            ms(self.probe_percentile(0.99)),
            ms(self.probe_percentile(1.0)),
            self.probe_over_100ms,
            ms(self.probe_connect_max),
        );
        for (k, t) in &self.kinds {
            for e in &t.examples {
                let _ = writeln!(out, "  {k}: {e}");
            }
        }
        out
    }
}

/// Kinds where the agent may cut the connection instead of answering: an oversized body, and
/// a request whose `Content-Length` claims 10 GiB but sends 2 bytes (answered when a body
/// timeout or an early 413 ends it; today it waits).
const CUT_OFF_OK: &[&str] = &["oversized", "oversized-claim"];

// ---- the attacks ---------------------------------------------------------------------------

/// The names the issue lists as accepted today: NUL, newline, `/`, `..`, 10,000 characters.
fn bad_names() -> Vec<String> {
    vec![
        "web\0db".into(),
        "web\ndb".into(),
        "a/b".into(),
        "..".into(),
        ".".into(),
        "web db".into(),
        "a".repeat(10_000),
    ]
}

/// A source address for attacker `n`: 127.0.0.2 and up, spread over 32 addresses.
fn attacker(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (n % 32) as u8)
}

struct Ctx {
    addr: String,
    /// A token whose only rule is `acl = "read"`, and the management token's AccessorID.
    acl_reader: String,
    management_accessor: String,
    plan: Plan,
    stop: AtomicBool,
    report: Mutex<Report>,
}

impl Ctx {
    fn record(&self, kind: &'static str, what: &str, answer: &Answer, must_fail: bool) {
        let mut r = self.report.lock().unwrap();
        r.kinds
            .entry(kind)
            .or_default()
            .add(what, answer, must_fail);
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    fn rand(&self) -> u64 {
        rand::random()
    }

    fn coin(&self) -> bool {
        rand::random()
    }
}

/// Slowloris: connections that drip a header one byte at a time, or say nothing.
fn slowloris(ctx: &Ctx, first: usize, count: usize) {
    let header = b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut conns: Vec<(Option<TcpStream>, usize, bool)> =
        (0..count).map(|i| (None, 0, i.is_multiple_of(2))).collect();
    while ctx.running() {
        for (i, (conn, sent, drip)) in conns.iter_mut().enumerate() {
            if conn.is_none() {
                if let Ok(s) = connect_from(
                    attacker(first + i),
                    ctx.addr.parse().unwrap(),
                    Duration::from_secs(1),
                ) {
                    s.set_write_timeout(Some(Duration::from_millis(50))).ok();
                    *conn = Some(s);
                    *sent = 0;
                    ctx.report.lock().unwrap().slow_opened += 1;
                }
                continue;
            }
            if !*drip {
                // Idle: only notice that the agent closed it.
                let s = conn.as_mut().unwrap();
                s.set_nonblocking(true).ok();
                let mut b = [0u8; 64];
                // Any answer (a 408) or end of stream means the agent is done with it.
                let closed = !matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
                s.set_nonblocking(false).ok();
                if closed {
                    *conn = None;
                    ctx.report.lock().unwrap().slow_closed += 1;
                }
                continue;
            }
            let byte = header.get(*sent).copied().unwrap_or(b'a');
            if conn.as_mut().unwrap().write_all(&[byte]).is_err() {
                *conn = None;
                ctx.report.lock().unwrap().slow_closed += 1;
            } else {
                *sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Requests built by `next` from attacker address `src`, until the end of the run.
fn flood(ctx: &Ctx, src: Ipv4Addr, mut next: impl FnMut(&Ctx, Ipv4Addr)) {
    while ctx.running() {
        next(ctx, src);
        std::thread::sleep(ctx.plan.pause);
    }
}

fn oversized(ctx: &Ctx, src: Ipv4Addr) {
    let t = ctx.plan.answer_within;
    let body = vec![b'{'; (1 << 20) + 4096];
    let a = send(
        src,
        &ctx.addr,
        "PUT",
        "/v1/agent/service/register",
        Some(MANAGEMENT),
        "",
        &body,
        t,
    );
    ctx.record("oversized", "PUT register (1 MiB + 4 KiB)", &a, false);
}

fn oversized_claim(ctx: &Ctx, src: Ipv4Addr) {
    let t = ctx.plan.answer_within;
    let a = send(
        src,
        &ctx.addr,
        "POST",
        "/v1/connect/intentions",
        None,
        "Content-Length: 10737418240\r\n",
        b"{}",
        t,
    );
    ctx.record(
        "oversized-claim",
        "POST intentions (claims 10 GiB, sends 2 bytes)",
        &a,
        true,
    );
}

fn nested_json(ctx: &Ctx, src: Ipv4Addr) {
    let depth = 1_000 + (ctx.rand() % 100_000) as usize;
    let body = if ctx.coin() {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        format!("{}1{}", "{\"Meta\":".repeat(depth), "}".repeat(depth))
    };
    let (method, path) = [
        ("PUT", "/v1/agent/service/register"),
        ("POST", "/v1/connect/intentions"),
        ("POST", "/v1/agent/connect/authorize"),
        ("PUT", "/v1/acl/policy"),
        ("PUT", "/v1/connect/ca/sign"),
        ("PUT", "/v1/connect/ca/configuration"),
    ][(ctx.rand() % 6) as usize];
    let token = (ctx.coin()).then_some(MANAGEMENT);
    let a = send(
        src,
        &ctx.addr,
        method,
        path,
        token,
        "",
        body.as_bytes(),
        ctx.plan.answer_within,
    );
    ctx.record(
        "nested-json",
        &format!("{method} {path} depth {depth}"),
        &a,
        true,
    );
}

/// Endpoints that take `?filter=`.
const FILTERED: &[&str] = &[
    "/v1/catalog/service/web",
    "/v1/connect/intentions",
    "/v1/health/service/web",
    "/v1/agent/services",
];

fn nested_filter(ctx: &Ctx, src: Ipv4Addr) {
    let depth = 1_000 + (ctx.rand() % 20_000) as usize;
    let filter = match ctx.rand() % 3 {
        0 => format!("{}ServiceName == x{}", "(".repeat(depth), ")".repeat(depth)),
        1 => format!("{}ServiceName == x", "not ".repeat(depth)),
        _ => "(".repeat(depth),
    };
    let path = FILTERED[(ctx.rand() % FILTERED.len() as u64) as usize];
    let token = (ctx.coin()).then_some(MANAGEMENT);
    let a = send(
        src,
        &ctx.addr,
        "GET",
        &format!("{path}?filter={}", encode(&filter)),
        token,
        "",
        b"",
        ctx.plan.answer_within,
    );
    ctx.record(
        "nested-filter",
        &format!("GET {path} depth {depth}"),
        &a,
        false,
    );
}

fn many_regex(ctx: &Ctx, src: Ipv4Addr) {
    let n = 100 + (ctx.rand() % 300) as usize;
    let filter = vec!["ServiceName matches \"a{30000}\""; n].join(" or ");
    let token = (ctx.coin()).then_some(MANAGEMENT);
    let a = send(
        src,
        &ctx.addr,
        "GET",
        &format!(
            "{}?filter={}",
            FILTERED[(ctx.rand() % FILTERED.len() as u64) as usize],
            encode(&filter)
        ),
        token,
        "",
        b"",
        ctx.plan.answer_within,
    );
    ctx.record("many-regex", &format!("{n} x a{{30000}}"), &a, false);
}

/// Query parameters that overflow or mislead a parser. The long fractions are about an hour
/// (or garbage, to a parser that overflows): asked of the intentions, whose index the writers
/// keep moving past 1, a blocking read answers at once.
fn garbage_query(ctx: &Ctx, src: Ipv4Addr) {
    let q = [
        "index=1&wait=1.0000000000000000000000000000000000001h",
        "index=1&wait=.100000000000000000000000000000m",
        "index=1&wait=99999999999999999999h",
        "index=184467440737095516160&wait=1ms",
        "index=-1&wait=1ms",
        "wait=1ms&index=1&dc=%00",
        "filter=%00%0a%ff",
        "index=1&wait=.999999999999999999999999999999h&filter=Action%20%3D%3D%20allow",
    ][(ctx.rand() % 8) as usize];
    let a = send(
        src,
        &ctx.addr,
        "GET",
        &format!("/v1/connect/intentions?{q}"),
        None,
        "",
        b"",
        ctx.plan.answer_within,
    );
    ctx.record("garbage-query", q, &a, false);
}

/// Protected requests with a guessed, malformed or no token: any 2xx is a violation.
fn token_guess(ctx: &Ctx, src: Ipv4Addr) {
    let guess =
        uuid::Uuid::from_u128(u128::from(ctx.rand()) << 64 | u128::from(ctx.rand())).to_string();
    let token = match ctx.rand() % 5 {
        0 => None,
        1 => Some("anonymous".to_owned()),
        2 => Some("x".repeat(5_000)),
        _ => Some(guess),
    };
    let n = ctx.rand() % 1000;
    let reqs: [(&str, String, String); 11] = [
        (
            "PUT",
            format!("/v1/connect/intentions/exact?source=guess-{n}&destination=db"),
            r#"{"Action":"allow"}"#.into(),
        ),
        (
            "DELETE",
            "/v1/connect/intentions/exact?source=legit-0-0&destination=legit-db".into(),
            String::new(),
        ),
        (
            "PUT",
            "/v1/agent/service/register".into(),
            format!(r#"{{"Name":"guess-{n}","Port":1}}"#),
        ),
        (
            "PUT",
            "/v1/agent/service/deregister/web".into(),
            String::new(),
        ),
        (
            "PUT",
            "/v1/acl/policy".into(),
            format!(r#"{{"Name":"guess-{n}","Rules":"acl = \"write\""}}"#),
        ),
        (
            "PUT",
            "/v1/acl/token".into(),
            r#"{"Policies":[{"Name":"global-management"}]}"#.into(),
        ),
        (
            "PUT",
            "/v1/connect/ca/configuration".into(),
            r#"{"Provider":"consul","Config":{}}"#.into(),
        ),
        ("GET", "/v1/acl/tokens".into(), String::new()),
        ("GET", "/v1/agent/connect/ca/leaf/web".into(), String::new()),
        ("GET", "/v1/connect/ca/configuration".into(), String::new()),
        ("GET", "/v1/agent/self".into(), String::new()),
    ];
    let (method, path, body) = &reqs[(ctx.rand() % reqs.len() as u64) as usize];
    let a = send(
        src,
        &ctx.addr,
        method,
        path,
        token.as_deref(),
        "",
        body.as_bytes(),
        ctx.plan.answer_within,
    );
    let shown = path.split('?').next().unwrap_or(path);
    ctx.record("token-guess", &format!("{method} {shown}"), &a, true);
}

/// Invalid names, with the management token so that only validation can refuse them.
fn bad_name(ctx: &Ctx, src: Ipv4Addr) {
    let names = bad_names();
    let name = &names[(ctx.rand() % names.len() as u64) as usize];
    let q = quoted(name);
    let (method, path, body) = match ctx.rand() % 4 {
        0 => (
            "PUT",
            "/v1/agent/service/register".to_owned(),
            format!(r#"{{"Name":{q},"Port":1}}"#),
        ),
        1 => (
            "PUT",
            format!(
                "/v1/connect/intentions/exact?source={}&destination=db",
                encode(name)
            ),
            r#"{"Action":"allow"}"#.to_owned(),
        ),
        2 => (
            "POST",
            "/v1/connect/intentions".to_owned(),
            format!(r#"{{"SourceName":"web","DestinationName":{q},"Action":"deny"}}"#),
        ),
        _ => (
            "GET",
            format!("/v1/agent/connect/ca/leaf/{}", encode(name)),
            String::new(),
        ),
    };
    let a = send(
        src,
        &ctx.addr,
        method,
        &path,
        Some(MANAGEMENT),
        "",
        body.as_bytes(),
        ctx.plan.answer_within,
    );
    let shown: String = name.escape_debug().take(24).collect();
    let what = format!(
        "{method} {} name {shown:?}",
        path.split('?')
            .next()
            .unwrap_or(&path)
            .chars()
            .take(40)
            .collect::<String>()
    );
    ctx.record("bad-name", &what, &a, true);
}

/// Creates a policy `acl = "read"` and a token with it; returns its SecretID and the
/// management token's AccessorID.
fn acl_reader(addr: &str) -> (String, String) {
    let t = Duration::from_secs(10);
    let call = |method: &str, path: &str, body: &str| -> serde_json::Value {
        match send(
            Ipv4Addr::LOCALHOST,
            addr,
            method,
            path,
            Some(MANAGEMENT),
            "",
            body.as_bytes(),
            t,
        ) {
            Answer::Status(200, b) => serde_json::from_str(&b).unwrap(),
            other => panic!("{method} {path}: {other:?}"),
        }
    };
    call(
        "PUT",
        "/v1/acl/policy",
        r#"{"Name":"acl-reader","Rules":"acl = \"read\""}"#,
    );
    let token = call(
        "PUT",
        "/v1/acl/token",
        r#"{"Policies":[{"Name":"acl-reader"}]}"#,
    );
    let me = call("GET", "/v1/acl/token/self", "");
    (
        token["SecretID"].as_str().unwrap().to_owned(),
        me["AccessorID"].as_str().unwrap().to_owned(),
    )
}

/// A token with only `acl = "read"` lists and reads tokens: allowed, but no SecretID may
/// show (Consul prints `<hidden>` without `acl:write`); the management secret in a body is
/// a violation.
fn acl_read(ctx: &Ctx, src: Ipv4Addr) {
    let path = if ctx.coin() {
        "/v1/acl/tokens".to_owned()
    } else {
        format!("/v1/acl/token/{}", ctx.management_accessor)
    };
    let a = send(
        src,
        &ctx.addr,
        "GET",
        &path,
        Some(&ctx.acl_reader),
        "",
        b"",
        ctx.plan.answer_within,
    );
    let shown = if path.ends_with("tokens") {
        "GET /v1/acl/tokens"
    } else {
        "GET /v1/acl/token/<management>"
    };
    ctx.record("acl-read", shown, &a, false);
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A legitimate client: intention writes with the management token, from 127.0.1.x (the
/// probe alone uses 127.0.0.1, so that its connections share no port space). Returns,
/// per source written at least once with an acknowledgement, the actions it may hold now:
/// the last acknowledged one, and any written after it without an answer (which the agent
/// may have applied all the same).
fn writer(ctx: &Ctx, id: usize) -> HashMap<String, Vec<&'static str>> {
    let mut acked = HashMap::new();
    let mut i = 0u64;
    while ctx.running() {
        let source = format!("legit-{id}-{}", i % 20);
        let action = if (i / 20).is_multiple_of(2) {
            "allow"
        } else {
            "deny"
        };
        let a = send(
            Ipv4Addr::new(127, 0, 1, 1 + id as u8),
            &ctx.addr,
            "PUT",
            &format!("/v1/connect/intentions/exact?source={source}&destination=legit-db"),
            Some(MANAGEMENT),
            "",
            format!(r#"{{"Action":"{action}"}}"#).as_bytes(),
            ctx.plan.answer_within,
        );
        if let Answer::Status(200, body) = &a
            && body.trim() == "true"
        {
            acked.insert(source, vec![action]);
            ctx.report.lock().unwrap().acked_writes += 1;
        } else if let Some(possible) = acked.get_mut(&source) {
            possible.push(action);
        }
        ctx.record("legit-write", "PUT intention (management token)", &a, false);
        i += 1;
        std::thread::sleep(ctx.plan.pause * 2);
    }
    acked
}

/// A normal request at a steady pace, timed.
fn probe(ctx: &Ctx) {
    while ctx.running() {
        let start = Instant::now();
        let a = send(
            Ipv4Addr::LOCALHOST,
            &ctx.addr,
            "GET",
            "/v1/connect/ca/roots",
            None,
            "",
            b"",
            ctx.plan.answer_within,
        );
        let took = start.elapsed();
        {
            let mut r = ctx.report.lock().unwrap();
            match &a {
                Answer::Status(200, _) => r.probe.push(took),
                _ => r.probe_failures += 1,
            }
            r.probe_connect_max = r.probe_connect_max.max(LAST_CONNECT.get());
            if took > Duration::from_millis(100) {
                r.probe_over_100ms += 1;
            }
        }
        ctx.record("probe", "GET /v1/connect/ca/roots", &a, false);
        std::thread::sleep(ctx.plan.probe_every.saturating_sub(took));
    }
}

/// Runs the whole mix against the agent at `addr`, then checks every acknowledged write.
pub fn run(agent: &mut Agent, plan: &Plan) -> Report {
    let (acl_reader, management_accessor) = acl_reader(&agent.http);
    let ctx = Arc::new(Ctx {
        addr: agent.http.clone(),
        acl_reader,
        management_accessor,
        plan: plan.clone(),
        stop: AtomicBool::new(false),
        report: Mutex::new(Report::default()),
    });
    let start = Instant::now();
    let mut attackers = Vec::new();
    type Attack = fn(&Ctx, Ipv4Addr);
    let kinds: [Attack; 9] = [
        acl_read,
        oversized,
        oversized_claim,
        nested_json,
        nested_filter,
        many_regex,
        garbage_query,
        token_guess,
        bad_name,
    ];
    let mut n = 0;
    for attack in kinds {
        for _ in 0..plan.workers {
            let c = Arc::clone(&ctx);
            let src = attacker(n);
            n += 1;
            attackers.push(std::thread::spawn(move || flood(&c, src, attack)));
        }
    }
    // Slowloris in groups of 25 connections per thread, each connection from its own address.
    for g in (0..plan.slowloris).step_by(25) {
        let c = Arc::clone(&ctx);
        let count = 25.min(plan.slowloris - g);
        attackers.push(std::thread::spawn(move || slowloris(&c, g, count)));
    }
    let writers: Vec<_> = (0..plan.writers)
        .map(|id| {
            let c = Arc::clone(&ctx);
            std::thread::spawn(move || writer(&c, id))
        })
        .collect();
    let prober = {
        let c = Arc::clone(&ctx);
        std::thread::spawn(move || probe(&c))
    };

    std::thread::sleep(plan.duration);
    ctx.stop.store(true, Ordering::Relaxed);
    for t in attackers {
        t.join().unwrap();
    }
    prober.join().unwrap();
    let acked: Vec<HashMap<String, Vec<&'static str>>> =
        writers.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed = start.elapsed();

    // Every acknowledged write must be there, and the live authorizer must agree with it.
    let (mut lost, mut disagree) = (0, 0);
    for (source, possible) in acked.iter().flatten() {
        let t = plan.answer_within;
        let stored = send(
            Ipv4Addr::LOCALHOST,
            &agent.http,
            "GET",
            &format!("/v1/connect/intentions/exact?source={source}&destination=legit-db"),
            Some(MANAGEMENT),
            "",
            b"",
            t,
        );
        let action = match &stored {
            Answer::Status(200, body) => serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["Action"].as_str().map(str::to_owned)),
            _ => None,
        };
        if !action.as_deref().is_some_and(|a| possible.contains(&a)) {
            lost += 1;
        }
        let check = send(
            Ipv4Addr::LOCALHOST,
            &agent.http,
            "GET",
            &format!("/v1/connect/intentions/check?source={source}&destination=legit-db"),
            Some(MANAGEMENT),
            "",
            b"",
            t,
        );
        // The live authorizer must say what the stored intention says.
        let agrees = matches!(&check, Answer::Status(200, body)
            if serde_json::from_str::<serde_json::Value>(body)
                .is_ok_and(|v| v["Allowed"] == (action.as_deref() == Some("allow"))));
        if !agrees {
            disagree += 1;
        }
    }

    let mut report = std::mem::take(&mut *ctx.report.lock().unwrap());
    report.lost_writes = lost;
    report.check_disagrees = disagree;
    report.elapsed = elapsed;
    report.probe_every = plan.probe_every;
    report.alive = agent.running();
    report
}
