//! The C programs, run as processes against the freshly built `libconnect.so` (in the style of
//! rustls-ffi's `client_server.rs`): the C test suites, interop with OpenSSL's `s_client` and
//! `s_server`, and the examples against a real `connect agent -dev`. Also checks what the
//! shared library exports and its SONAME. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::root;

const LIMIT: Duration = Duration::from_secs(60);

/// `target/<profile>`: the test binary lives in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn is_ours(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(15).any(|w| w == b"connect_version"))
}

/// The library under test: `$CONNECT_FFI_LIB` (scripts/test-c.sh points it at the copy it
/// installed), else the one cargo just linked (in `deps/`, or uplifted beside it).
fn library() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Some(p) = std::env::var_os("CONNECT_FFI_LIB") {
            return PathBuf::from(p);
        }
        let candidates = [
            profile_dir().join("deps/libconnect.so"),
            profile_dir().join("libconnect.so"),
        ];
        candidates
            .iter()
            .find(|p| is_ours(p))
            .cloned()
            .unwrap_or_else(|| candidates[1].clone())
    })
    .clone()
}

/// A scratch directory for this test process, inside the target directory. Directories left by
/// earlier runs whose process is gone are removed first, so repeated runs do not pile up copies
/// of the library (a test process cannot clean up after itself: statics are never dropped).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let parent = profile_dir().join("c-programs");
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let d = parent.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// A directory holding a copy of the library under its SONAME, as an installation would. A
/// copy, taken once: a target directory shared with other checkouts may see its
/// `libconnect.so` replaced by another build while the tests run.
fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = scratch().join("lib");
        std::fs::create_dir_all(&d).unwrap();
        let major = env!("CARGO_PKG_VERSION_MAJOR");
        let minor = env!("CARGO_PKG_VERSION_MINOR");
        let soname = format!("libconnect.so.{major}.{minor}");
        std::fs::copy(library(), d.join(&soname)).unwrap();
        std::os::unix::fs::symlink(&soname, d.join("libconnect.so")).unwrap();
        assert!(
            is_ours(&d.join(&soname)),
            "{} is not this crate's build (another checkout sharing the target directory \
             rebuilt it?)",
            library().display()
        );
        d
    })
}

/// The copy of the library the tests link and inspect.
fn tested_library() -> PathBuf {
    let soname = format!(
        "libconnect.so.{}.{}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    lib_dir().join(soname)
}

/// Compiles one C or C++ source against the committed header and the built library.
fn build(source: &str) -> PathBuf {
    let src = root().join(source);
    let stem = src.file_stem().unwrap().to_str().unwrap().to_owned();
    let out = scratch().join(&stem);
    let cpp = source.ends_with(".cpp");
    let mut cmd = Command::new(if cpp { "c++" } else { "cc" });
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g"])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("tests/c"))
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(lib_dir())
        .arg("-lconnect")
        .arg(format!("-Wl,-rpath,{}", lib_dir().display()))
        .arg("-pthread");
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "compiling {source}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Waits for `child` at most `limit`, killing it past that.
fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child kept in a [`Guard`], at most `limit`.
fn wait_status(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{what} did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    wait_bounded(child, LIMIT, what)
}

/// Kills a background process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines of a child's stdout on a thread, so that waiting for one is bounded.
fn line_reader(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, what: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(prefix) => return l,
            Ok(_) => {}
            Err(e) => panic!("{what}: no line with {prefix:?}: {e}"),
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_library_exports_only_connect_symbols_and_has_its_soname() {
    let o = run(
        Command::new("nm")
            .args(["-D", "--defined-only", "--format=posix"])
            .arg(tested_library()),
        "nm",
    );
    assert!(o.status.success(), "nm: {}", text(&o.stderr));
    let names: Vec<String> = text(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(names.len() > 40, "{names:?}");
    let foreign: Vec<&String> = names
        .iter()
        .filter(|n| !n.starts_with("connect_"))
        .collect();
    assert!(
        foreign.is_empty(),
        "exported without the prefix: {foreign:?}"
    );
    let o = run(
        Command::new("readelf").arg("-d").arg(tested_library()),
        "readelf",
    );
    let soname = format!(
        "[libconnect.so.{}.{}]",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert!(
        text(&o.stdout)
            .lines()
            .any(|l| l.contains("(SONAME)") && l.contains(&soname)),
        "no SONAME {soname}:\n{}",
        text(&o.stdout)
    );
}

fn c_suite(source: &str, name: &str) {
    let exe = build(source);
    let o = run(&mut Command::new(&exe), name);
    assert!(
        o.status.success() && text(&o.stdout).contains(&format!("{name}: ok")),
        "{name} failed\nstdout:\n{}\nstderr:\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn c_misuse_suite_passes() {
    c_suite("tests/c/test_misuse.c", "test_misuse");
}

#[test]
fn c_mtls_suite_passes() {
    c_suite("tests/c/test_mtls.c", "test_mtls");
}

#[test]
fn c_contract_suite_passes() {
    c_suite("tests/c/test_contract.c", "test_contract");
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Builds tests/c/interop.c and starts `interop MODE DIR` with its standard streams piped;
/// returns DIR, a fresh scratch directory where it writes the PEM files OpenSSL is given.
fn start_interop(mode: &str) -> (PathBuf, Child) {
    assert!(
        have("openssl"),
        "openssl is needed (scripts/test.sh installs it)"
    );
    let exe = build("tests/c/interop.c");
    let dir = scratch().join(format!("interop-{mode}"));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(&exe)
        .arg(mode)
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (dir, child)
}

#[test]
fn openssl_s_client_talks_to_a_c_server_and_a_denied_one_is_refused() {
    let (dir, mut child) = start_interop("server");
    let lines = line_reader(child.stdout.take().unwrap());
    let server = Guard(child);
    let port = wait_line(&lines, "PORT ", "interop server")
        .trim_start_matches("PORT ")
        .to_owned();
    let s_client = |who: &str| {
        let mut c = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(dir.join(format!("{who}-chain.pem")))
            .arg("-key")
            .arg(dir.join(format!("{who}-key.pem")))
            .arg("-CAfile")
            .arg(dir.join("roots.pem"))
            .args(["-verify_return_error", "-ign_eof", "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"hello\n").unwrap();
        wait_bounded(c, LIMIT, "openssl s_client")
    };
    // "api" is denied by intentions: OpenSSL sees the access_denied alert.
    let denied = s_client("api");
    let all = text(&denied.stdout) + &text(&denied.stderr);
    assert!(all.contains("access denied"), "{all}");
    assert!(!all.contains("echo: hello"), "{all}");
    // "web" is allowed and gets its line back.
    let allowed = s_client("web");
    assert!(
        text(&allowed.stdout).contains("echo: hello"),
        "{}\n{}",
        text(&allowed.stdout),
        text(&allowed.stderr)
    );
    let peer = wait_line(&lines, "PEER ", "interop server");
    assert!(peer.ends_with("/ns/default/dc/dc1/svc/web"), "{peer}");
    let mut server = server;
    assert!(wait_status(&mut server.0, LIMIT, "interop server").success());
}

#[test]
fn a_c_client_talks_to_openssl_s_server() {
    let (dir, mut child) = start_interop("client");
    let lines = line_reader(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let _client = Guard(child);
    wait_line(&lines, "READY", "interop client");
    // A free port for s_server.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s_server = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(dir.join("db-chain.pem"))
        .arg("-key")
        .arg(dir.join("db-key.pem"))
        .arg("-CAfile")
        .arg(dir.join("roots.pem"))
        .args([
            "-Verify",
            "1",
            "-verify_return_error",
            "-naccept",
            "1",
            "-rev",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server_lines = line_reader(s_server.stdout.take().unwrap());
    let s_server = Guard(s_server);
    wait_line(&server_lines, "ACCEPT", "openssl s_server");
    writeln!(stdin, "{port}").unwrap();
    drop(stdin);
    let peer = wait_line(&lines, "PEER ", "interop client");
    assert!(peer.ends_with("/svc/db"), "{peer}");
    // s_server -rev answers with the line reversed.
    let got = wait_line(&lines, "GOT ", "interop client");
    assert!(got.contains("olleh"), "{got}");
    drop(s_server);
}

/// The `connect` agent binary of connect-core (built by scripts/test-c.sh; built here if
/// missing).
fn connect_binary() -> PathBuf {
    let bin = profile_dir().join("connect");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let o = Command::new(cargo)
            .current_dir(root())
            .args([
                "build",
                "-p",
                "connect-core",
                "--features",
                "cli",
                "--bin",
                "connect",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    bin
}

#[test]
fn the_examples_echo_with_intentions_through_a_connect_agent() {
    let agent = Command::new(connect_binary())
        .args(["agent", "-dev", "-http-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = Guard(agent);
    let agent_lines = line_reader(agent.0.stderr.take().unwrap());
    let http = wait_line(&agent_lines, "HTTP API listening on", "connect agent");
    let http = http.rsplit("http://").next().unwrap().trim().to_owned();

    let server_exe = build("examples/c/echo_server.c");
    let client_exe = build("examples/c/echo_client.c");
    let mut server = Command::new(&server_exe)
        .env("CONSUL_HTTP_ADDR", &http)
        .args(["-listen", "127.0.0.1:0", "-allow", "web", "-count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server_lines = line_reader(server.stdout.take().unwrap());
    let mut server = Guard(server);
    let listening = wait_line(&server_lines, "listening on", "echo_server");
    let addr = listening.rsplit(' ').next().unwrap().to_owned();

    let client = |name: &str, msg: &str| {
        run(
            Command::new(&client_exe)
                .env("CONSUL_HTTP_ADDR", &http)
                .args(["-service", name, &addr, msg]),
            "echo_client",
        )
    };
    let denied = client("api", "let me in");
    assert!(!denied.status.success());
    assert!(
        text(&denied.stderr).contains("TLS") && text(&denied.stderr).contains("access denied"),
        "{}",
        text(&denied.stderr)
    );
    let allowed = client("web", "hello over the mesh");
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    assert!(
        text(&allowed.stdout).starts_with("hello over the mesh"),
        "{}",
        text(&allowed.stdout)
    );
    let from = wait_line(&server_lines, "connection from", "echo_server");
    assert!(from.ends_with("/svc/web"), "{from}");
    assert!(wait_status(&mut server.0, LIMIT, "echo_server").success());
    let _ = agent.0.kill();
}

#[test]
fn the_cpp_raii_example_runs() {
    let exe = build("examples/c/raii_echo.cpp");
    let o = run(&mut Command::new(&exe), "raii_echo");
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("api denied"));
    assert!(text(&o.stdout).contains("web got: hello from C++"));
}
