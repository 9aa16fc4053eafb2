//! `connect proxy` end to end: a `connect agent -dev`, a plain TCP echo application, an inbound
//! proxy for `db` in front of it and an outbound proxy for `web` with `db` as upstream. Bytes
//! go through while web → db is allowed; once it is denied, new connections are refused and
//! the open one is closed; SIGTERM deregisters the instance.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cli_support::{Agent, Daemon, TIMEOUT, echo_app, free_port};

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

#[test]
fn proxies_carry_allowed_traffic_and_refuse_denied() {
    let agent = Agent::start(&["-dev"]);
    agent.cli(&["intention", "create", "web", "db"]).ok();
    let app = echo_app();
    let inbound = format!("127.0.0.1:{}", free_port());
    let mut db = Daemon::start(
        &agent,
        &[
            "proxy",
            "-service",
            "db",
            "-service-addr",
            &app,
            "-listen",
            &inbound,
        ],
        "running!",
    );
    let port = free_port();
    let _web = Daemon::start(
        &agent,
        &[
            "proxy",
            "-service",
            "web",
            "-upstream",
            &format!("db:{port}"),
        ],
        "running!",
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
