//! `connect proxy` end to end: a `connect agent -dev`, a plain TCP echo application, an inbound
//! proxy for `db` in front of it and an outbound proxy for `web` with `db` as upstream. Bytes
//! go through while web → db is allowed; once it is denied, new connections are refused and
//! the open one is closed; SIGTERM deregisters the instance. Run twice: as `connect proxy` and
//! as `connect-proxy`, the sidecar binary of the same proxy, which must behave alike.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cli_support::{Agent, BIN, Daemon, PROXY_BIN, TIMEOUT, command_of, echo_app, free_port};

enum Outcome {
    Echoed(TcpStream),
    Closed,
}

/// Writes `msg` to `addr` and reads it back, or sees the connection end first.
fn try_echo(addr: &str, msg: &[u8]) -> Outcome {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(msg).is_err() {
        return Outcome::Closed;
    }
    let mut buf = vec![0u8; msg.len()];
    match s.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(buf, msg);
            Outcome::Echoed(s)
        }
        Err(e) => {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "neither echoed nor closed: {e}"
            );
            Outcome::Closed
        }
    }
}

/// Retries `try_echo` until `want` (echoed or closed) or the timeout.
fn eventually(addr: &str, msg: &[u8], echoed: bool) -> Option<TcpStream> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match (try_echo(addr, msg), echoed) {
            (Outcome::Echoed(s), true) => return Some(s),
            (Outcome::Closed, false) => return None,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no {} through {addr} in time",
            if echoed { "echo" } else { "refusal" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A proxy binary and the arguments before the proxy's flags.
#[derive(Clone, Copy)]
struct Proxy {
    bin: &'static str,
    command: &'static [&'static str],
}

const CONNECT_PROXY: Proxy = Proxy {
    bin: BIN,
    command: &["proxy"],
};
const SIDECAR: Proxy = Proxy {
    bin: PROXY_BIN,
    command: &[],
};

impl Proxy {
    fn start(self, agent: &Agent, flags: &[&str]) -> Daemon {
        let args: Vec<&str> = self.command.iter().chain(flags).copied().collect();
        Daemon::start_bin(self.bin, agent, &args, "running!")
    }

    /// Runs the proxy with `flags` and no agent; returns (exit code, stdout, stderr).
    fn run(self, flags: &[&str]) -> (Option<i32>, String, String) {
        let out = command_of(self.bin)
            .args(self.command)
            .args(flags)
            .env("CONSUL_HTTP_ADDR", "127.0.0.1:1")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn proxies_carry_allowed_traffic_and_refuse_denied() {
    carry_and_refuse(CONNECT_PROXY);
}

#[test]
fn the_sidecar_binary_carries_allowed_traffic_and_refuses_denied() {
    carry_and_refuse(SIDECAR);
}

/// Both binaries take the same flags, print the same help (one-dash flags, as Consul's) and
/// refuse bad flags with exit code 1 before they reach any agent.
#[test]
fn the_sidecar_binary_takes_connect_proxys_flags() {
    let flags = |help: &str| -> Vec<String> {
        help.lines()
            .filter_map(|l| l.trim_start().strip_prefix('-'))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
            .filter(|f| !f.starts_with('V') && f != "version,")
            .collect()
    };
    let (code, help, _) = CONNECT_PROXY.run(&["-h"]);
    assert_eq!(code, Some(0));
    let (code, sidecar_help, _) = SIDECAR.run(&["-h"]);
    assert_eq!(code, Some(0));
    assert!(
        sidecar_help.contains("-service-addr <ADDR>"),
        "{sidecar_help}"
    );
    assert!(!sidecar_help.contains("--service"), "{sidecar_help}");
    assert_eq!(flags(&help), flags(&sidecar_help));
    assert!(flags(&help).len() >= 10, "{help}");

    let (code, out, _) = SIDECAR.run(&["-version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("connect-proxy "), "{out}");

    for proxy in [CONNECT_PROXY, SIDECAR] {
        for (flags, why) in [
            (
                &["-service", "db", "-bogus"][..],
                "unexpected argument '-bogus'",
            ),
            (&["-upstream", "db:9191"][..], "-service <NAME>"),
            (
                &["-service", "db", "-upstream", "db:x"][..],
                "neither PORT nor HOST:PORT",
            ),
            (
                &["-service", "db", "-mesh-gateway-mode", "far"][..],
                "invalid mesh gateway mode",
            ),
            (
                &["-service", "db", "-listen", "127.0.0.1:0"][..],
                "go together",
            ),
            (&["-service", "db"][..], "nothing to proxy"),
            (
                &["-service", "db", "-upstream", "db:0", "-log-level", "loud"][..],
                "invalid log level \"loud\"",
            ),
        ] {
            let (code, _, err) = proxy.run(flags);
            assert_eq!(code, Some(1), "{flags:?}: {err}");
            assert!(err.contains(why), "{flags:?}: {err}");
        }
        // An agent that is not there: a clear error, not a hang.
        let (code, _, err) = proxy.run(&["-service", "web", "-upstream", "db:0"]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.starts_with("Error: "), "{err}");
    }
}

fn carry_and_refuse(proxy: Proxy) {
    let agent = Agent::start(&["-dev"]);
    agent.cli(&["intention", "create", "web", "db"]).ok();
    let app = echo_app();
    let inbound = format!("127.0.0.1:{}", free_port());
    let mut db = proxy.start(
        &agent,
        &["-service", "db", "-service-addr", &app, "-listen", &inbound],
    );
    let port = free_port();
    let _web = proxy.start(
        &agent,
        &["-service", "web", "-upstream", &format!("db:{port}")],
    );
    let upstream = format!("127.0.0.1:{port}");

    // Allowed: bytes come back through web's upstream, db's inbound and the app.
    let mut open = eventually(&upstream, b"hello through the mesh", true).unwrap();
    open.write_all(b"again").unwrap();
    let mut buf = [0u8; 5];
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"again");

    // Denied: new connections are refused (closed without an echo) once db's proxy has the
    // change, and the connection that was open is closed by revocation.
    agent
        .cli(&["intention", "create", "-deny", "web", "db", "-replace"])
        .ok();
    assert!(eventually(&upstream, b"let me in", false).is_none());
    let mut b = [0u8; 1];
    match open.read(&mut b) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("revoked connection still carried {n} bytes"),
    }
    let log = db.wait_for_log("no longer authorized", TIMEOUT);
    assert!(log.contains("spiffe://"), "{log}");

    // SIGTERM: a clean exit that deregisters the instance.
    assert!(db.signal_and_wait("TERM", TIMEOUT).success());
    let r = agent.http("GET", "/v1/health/connect/db", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), serde_json::json!([]), "{}", r.body);
}

/// The symbol table of `bin` (`nm`), or `None` when binutils are missing.
fn symbols(bin: &str) -> Option<String> {
    let out = std::process::Command::new("nm").arg(bin).output().ok()?;
    assert!(out.status.success(), "nm {bin}: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `connect-proxy` links no in-process server (ARCHITECTURE.md, agent: `local.rs`): SQLite,
/// which only the server's store uses, is in `connect` and not in it. Built on glibc 2.36 or
/// later, both executables pack their relative relocations (`core/build.rs`).
#[test]
fn the_sidecar_binary_links_no_server() {
    let (Some(full), Some(sidecar)) = (symbols(BIN), symbols(PROXY_BIN)) else {
        eprintln!("SKIPPED the_sidecar_binary_links_no_server: nm is missing");
        return;
    };
    assert!(full.contains("sqlite3_open"), "connect has no SQLite?");
    assert!(
        sidecar.contains("connect_proxy"),
        "connect-proxy's own code is missing"
    );
    let linked: Vec<&str> = sidecar
        .lines()
        .filter(|l| l.contains("sqlite3_"))
        .take(5)
        .collect();
    assert!(linked.is_empty(), "connect-proxy links SQLite: {linked:?}");

    let glibc = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let version: Vec<u32> = glibc
        .trim_start_matches("glibc ")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    if version.as_slice() >= [2, 36].as_slice() {
        for bin in [BIN, PROXY_BIN] {
            let out = std::process::Command::new("readelf")
                .args(["-d", bin])
                .output()
                .unwrap();
            let dynamic = String::from_utf8_lossy(&out.stdout);
            assert!(dynamic.contains("(RELR)"), "{bin} on {glibc}: {dynamic}");
        }
    }
}
