//! Running the real `connect` binary from tests: an agent on a free port (found in its
//! stderr), client commands with a timeout, a tiny HTTP/1.1 client, and `openssl`.
//! Every process is killed when its guard drops, also when a test panics.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a different part"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_connect");

/// `connect proxy` on its own (the sidecar build of the same proxy).
pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_connect-proxy");

/// How long an agent may take to start, and a client command to finish.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A command with none of Consul's variables from the test's environment.
pub fn command() -> Command {
    command_of(BIN)
}

/// [`command`] for another of the crate's binaries.
pub fn command_of(bin: &str) -> Command {
    let mut c = Command::new(bin);
    for k in INHERITED {
        c.env_remove(k);
    }
    c
}

/// The variables of the test's environment that would change what `connect` does.
const INHERITED: [&str; 6] = [
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_CACERT",
    "CONSUL_HTTP_SSL",
    "RUST_LOG",
    "CONNECT_ETCD_KEK_FILE",
];

/// Writes an agent configuration file into `dir` that enables ACLs with a default policy of
/// deny and `management` as the initial management token; returns its path.
pub fn default_deny_config(dir: &Path, management: &str) -> PathBuf {
    let cfg = dir.join("acl.hcl");
    std::fs::write(
        &cfg,
        format!(
            r#"
            acl {{
              enabled        = true
              default_policy = "deny"
              tokens {{
                initial_management = "{management}"
              }}
            }}
            "#
        ),
    )
    .unwrap();
    cfg
}

#[derive(Default)]
struct Log {
    text: String,
    done: bool,
}

/// A child's stderr, collected by a thread as it is written, to wait on.
pub struct StderrLog(Arc<(Mutex<Log>, Condvar)>);

impl StderrLog {
    /// Takes `child`'s piped stderr and collects it until the pipe closes.
    pub fn capture(child: &mut Child) -> StderrLog {
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).unwrap_or(0);
                let (lock, cv) = &*sink;
                let mut l = lock.lock().unwrap();
                if n == 0 {
                    l.done = true;
                    cv.notify_all();
                    return;
                }
                l.text.push_str(&line);
                cv.notify_all();
            }
        });
        StderrLog(log)
    }

    /// Waits until stderr contains `needle`; returns all of stderr so far. Panics, naming
    /// `who`, when the pipe closes or `timeout` passes first.
    pub fn wait_for(&self, who: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.0;
        let mut l = lock.lock().unwrap();
        loop {
            if l.text.contains(needle) {
                return l.text.clone();
            }
            let now = Instant::now();
            assert!(
                !l.done && now < deadline,
                "{who} did not log {needle:?}; stderr:\n{}",
                l.text
            );
            l = cv.wait_timeout(l, deadline - now).unwrap().0;
        }
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.0.0.lock().unwrap().text.clone()
    }
}

/// A running `connect agent`; killed on drop.
pub struct Agent {
    child: Child,
    /// `127.0.0.1:port` of the HTTP API.
    pub http: String,
    /// `127.0.0.1:port` of the HTTPS API, when asked for.
    pub https: Option<String>,
    log: StderrLog,
}

impl Agent {
    /// `connect agent ARGS -http-port 0`; waits until it says it is running.
    pub fn start(args: &[&str]) -> Agent {
        let mut cmd = command();
        cmd.arg("agent").args(args).args(["-http-port", "0"]);
        Agent::launch(cmd)
    }

    /// `connect agent ARGS -http-port 0` under an open-file limit of `limit` (soft and
    /// hard, set by `sh`'s `ulimit -n` before the agent starts); waits until it runs.
    pub fn start_with_open_file_limit(args: &[&str], limit: u32) -> Agent {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .arg("agent")
            .args(args)
            .args(["-http-port", "0"]);
        for k in INHERITED {
            cmd.env_remove(k);
        }
        Agent::launch(cmd)
    }

    /// Spawns `cmd` (a `connect agent` command line) and waits until it says it is running.
    pub fn launch(cmd: Command) -> Agent {
        Agent::launch_within(cmd, TIMEOUT)
    }

    /// [`Agent::launch`], waiting up to `timeout` (a secondary datacenter's server starts
    /// only once its primary has signed its intermediate).
    pub fn launch_within(cmd: Command, timeout: Duration) -> Agent {
        let mut agent = Agent::spawn(cmd);
        let text = agent.wait_for_log("==> libconnect agent running!", timeout);
        agent.http = listening(&text, "==> HTTP API listening on http://")
            .unwrap_or_else(|| panic!("no HTTP address in:\n{text}"));
        agent.https = listening(&text, "==> HTTPS API listening on https://");
        agent
    }

    /// Spawns `cmd` (a `connect agent` command line) without waiting for it to run: its
    /// addresses stay empty; watch it with [`Agent::wait_for_log`].
    pub fn spawn(mut cmd: Command) -> Agent {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn connect agent");
        let log = StderrLog::capture(&mut child);
        Agent {
            child,
            http: String::new(),
            https: None,
            log,
        }
    }

    /// Waits until stderr contains `needle`; returns all of stderr so far.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.log.wait_for("agent", needle, timeout)
    }

    /// Everything the agent wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.log.text()
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`) and waits up to `timeout` for the exit.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        signal_and_wait(&mut self.child, signal, timeout)
    }

    /// SIGKILL (`kill -9`) and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `connect ARGS` against this agent (via `CONSUL_HTTP_ADDR`).
    pub fn cli(&self, args: &[&str]) -> Out {
        run(command().env("CONSUL_HTTP_ADDR", &self.http).args(args))
    }

    /// Like [`Agent::cli`] with extra environment.
    pub fn cli_env(&self, env: &[(&str, &str)], args: &[&str]) -> Out {
        let mut c = command();
        c.env("CONSUL_HTTP_ADDR", &self.http);
        for (k, v) in env {
            c.env(k, v);
        }
        run(c.args(args))
    }

    /// A raw HTTP request to this agent.
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        http(&self.http, method, path, headers, body)
    }

    /// `GET /v1/connect/ca/roots` as JSON.
    pub fn roots(&self) -> Value {
        let r = self.http("GET", "/v1/connect/ca/roots", &[], "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|s| s.trim().to_owned())
}

/// Sends `signal` (`TERM`, `INT`) to `child` and waits up to `timeout` for its exit.
pub fn signal_and_wait(child: &mut Child, signal: &str, timeout: Duration) -> ExitStatus {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{signal} failed");
    wait_timeout(child, timeout)
        .unwrap_or_else(|| panic!("process still running {timeout:?} after SIG{signal}"))
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Out {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Panics with the output unless the exit code is 0.
    pub fn ok(self) -> Out {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }
}

/// Runs a command to completion, killing it after [`TIMEOUT`].
pub fn run(cmd: &mut Command) -> Out {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = match wait_timeout(&mut child, TIMEOUT) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {TIMEOUT:?}: {cmd:?}");
        }
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A raw HTTP response.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Body (dechunked).
    pub body: String,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// `X-Consul-Index`.
    pub fn index(&self) -> u64 {
        self.headers["x-consul-index"].parse().unwrap()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), with timeouts.
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> std::io::Result<Resp> {
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated response")
    })?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// [`try_http`] with a 5 s timeout; panics on I/O errors.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    try_http(addr, method, path, headers, body, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The PEM blocks of `text`, in order, each with its BEGIN/END lines.
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ") {
            blocks.extend(cur.take());
        }
    }
    blocks
}

/// `openssl verify -CAfile CA [-untrusted U] CERT`; returns (success, output).
pub fn openssl_verify(ca: &Path, untrusted: Option<&Path>, cert: &Path) -> (bool, String) {
    let mut c = Command::new("openssl");
    c.arg("verify").arg("-CAfile").arg(ca);
    if let Some(u) = untrusted {
        c.arg("-untrusted").arg(u);
    }
    c.arg(cert);
    let o = run(&mut c);
    (o.code == 0, format!("{}{}", o.stdout, o.stderr))
}

/// A free port on 127.0.0.1 (for a process that must be told its address before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain TCP echo application on a free port (no TLS: a proxy or gateway in front of it does
/// that part); served by threads until the test process exits.
pub fn echo_app() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The trust domain and a service's SPIFFE ID in dc1.
pub fn service_uri(roots: &Value, dc: &str, service: &str) -> String {
    format!(
        "spiffe://{}/ns/default/dc/{dc}/svc/{service}",
        roots["TrustDomain"].as_str().unwrap()
    )
}

// ---- Added for the hostile-client run (tests/hostile_agent.rs, benches/hostile.rs) ----------

impl Agent {
    /// Whether the process is still running (false once it exited or crashed).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

// ---- Long-running commands other than the agent (gateways, proxies) --------------------------

/// A running `connect` command that serves until signalled (`gateway mesh`, `proxy`); its
/// stderr is collected; killed on drop.
pub struct Daemon {
    child: Child,
    log: StderrLog,
}

impl Daemon {
    /// `connect ARGS` against `agent`; waits until stderr contains `ready`.
    pub fn start(agent: &Agent, args: &[&str], ready: &str) -> Daemon {
        Daemon::start_bin(BIN, agent, args, ready)
    }

    /// [`Daemon::start`] with another of the crate's binaries.
    pub fn start_bin(bin: &str, agent: &Agent, args: &[&str], ready: &str) -> Daemon {
        let mut cmd = command_of(bin);
        cmd.env("CONSUL_HTTP_ADDR", &agent.http)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn connect");
        let log = StderrLog::capture(&mut child);
        let d = Daemon { child, log };
        d.wait_for_log(ready, TIMEOUT);
        d
    }

    /// Waits until stderr contains `needle`; returns all of stderr so far.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.log.wait_for("command", needle, timeout)
    }

    /// The text after `prefix` up to the first blank on the first stderr line containing it
    /// (an address the command printed).
    pub fn logged_after(&self, prefix: &str) -> String {
        let text = self.wait_for_log(prefix, TIMEOUT);
        let rest = text
            .lines()
            .find_map(|l| l.split_once(prefix).map(|(_, r)| r))
            .unwrap();
        rest.split_whitespace().next().unwrap_or("").to_owned()
    }

    /// Everything written on stderr so far.
    pub fn stderr(&self) -> String {
        self.log.text()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`TERM`, `INT`) and waits up to `timeout` for the exit.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        signal_and_wait(&mut self.child, signal, timeout)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Federated datacenters (tests/multi_dc.rs, tests/multi_dc_mesh.rs) ----------------------

/// Starts dc1, a primary, with the configuration file `dc1_config`, then dc2, a secondary,
/// with `dc2_config`, joined to dc1's HTTPS address (`-retry-join-wan`) with dc1's active root
/// as the file that trusts the first contact (written to `dir/dc1-root.pem`). Data go to
/// `dir/data1` and `dir/data2`; dc2 may take up to `converge` to start, since it serves only
/// once dc1 signed its intermediate.
pub fn start_federation(
    dir: &Path,
    dc1_config: &Path,
    dc2_config: &Path,
    converge: Duration,
) -> (Agent, Agent) {
    let p = |name: &str| dir.join(name);
    let dc1 = Agent::start(&[
        "-server",
        "-data-dir",
        p("data1").to_str().unwrap(),
        "-config-file",
        dc1_config.to_str().unwrap(),
        "-node",
        "server-1",
        "-https-port",
        "0",
    ]);
    let dc1_https = dc1.https.clone().expect("dc1 serves HTTPS");
    let (_, root) = active_root(&dc1);
    std::fs::write(p("dc1-root.pem"), root).unwrap();
    let mut cmd = command();
    cmd.arg("agent").args([
        "-server",
        "-data-dir",
        p("data2").to_str().unwrap(),
        "-config-file",
        dc2_config.to_str().unwrap(),
        "-node",
        "server-2",
        "-http-port",
        "0",
        "-https-port",
        "0",
        "-retry-join-wan",
        &dc1_https,
        "-primary-ca-file",
        p("dc1-root.pem").to_str().unwrap(),
    ]);
    let dc2 = Agent::launch_within(cmd, converge);
    (dc1, dc2)
}

/// The entry of `roots` (a `/v1/connect/ca/roots` answer) marked active, if any.
pub fn active_entry(roots: &Value) -> Option<Value> {
    roots["Roots"]
        .as_array()?
        .iter()
        .find(|r| r["Active"] == true)
        .cloned()
}

/// The agent's active root: its ID and its certificate (PEM).
pub fn active_root(agent: &Agent) -> (String, String) {
    let roots = agent.roots();
    let active = active_entry(&roots).expect("an active root");
    let text = |k: &str| active[k].as_str().unwrap().to_owned();
    (text("ID"), text("RootCert"))
}

/// A root rotation in `primary` by `PUT /v1/connect/ca/configuration` with `token`: a new key
/// type or size makes a new root, cross-signed by the old one. Returns the new root's ID.
pub fn rotate_root(primary: &Agent, token: &str, key_type: &str, bits: u32) -> String {
    let (before, _) = active_root(primary);
    let body = serde_json::json!({"Provider": "consul",
                      "Config": {"PrivateKeyType": key_type, "PrivateKeyBits": bits}})
    .to_string();
    let r = try_http(
        &primary.http,
        "PUT",
        "/v1/connect/ca/configuration",
        &[("X-Consul-Token", token)],
        &body,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let (after, _) = active_root(primary);
    assert_ne!(before, after, "the primary rotated its root");
    after
}

/// Waits, polling every `poll`, until the secondary's roots name `root_id` as active with its
/// own signing key (a new intermediate installed); returns its roots answer. Panics after
/// `limit`.
pub fn follows(secondary: &Agent, root_id: &str, poll: Duration, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let roots = secondary.roots();
        let active = active_entry(&roots);
        if roots["ActiveRootID"] == root_id
            && active.as_ref().is_some_and(|a| {
                a["ID"] == root_id
                    && a["IntermediateCerts"]
                        .as_array()
                        .is_some_and(|i| !i.is_empty())
            })
        {
            return roots;
        }
        assert!(
            Instant::now() < deadline,
            "the secondary did not follow root {root_id} within {limit:?}: {roots:#}\n\
             its stderr:\n{}",
            secondary.stderr()
        );
        std::thread::sleep(poll);
    }
}

/// `connect gateway mesh -listen 127.0.0.1:0 EXTRA…` against `agent`, once running; with the
/// address it listens on.
pub fn mesh_gateway(agent: &Agent, extra: &[&str]) -> (Daemon, String) {
    let mut args = vec!["gateway", "mesh", "-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let gw = Daemon::start(agent, &args, "==> Mesh gateway running!");
    let addr = gw.logged_after("listening on ");
    (gw, addr)
}

/// `openssl s_client -connect ADDR -servername SNI` with a client certificate (`cert`, whose
/// intermediates go out through `-cert_chain`: `-cert` sends its first certificate alone) and
/// `key`, trusting `ca` only; writes `input`, ends the session 2 s later (time for an echo),
/// and returns whether it succeeded and its output (stdout, then stderr).
pub fn s_client(
    addr: &str,
    sni: &str,
    cert: &Path,
    key: &Path,
    ca: &Path,
    input: &[u8],
) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", sni])
        .arg("-cert")
        .arg(cert)
        .arg("-cert_chain")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-showcerts"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    // s_client ends the session when stdin ends: give the echo time first.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        drop(stdin);
    });
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("openssl s_client did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The signing key ID a certificate (DER) names as its issuer: its AuthorityKeyIdentifier, as
/// colon hex.
pub fn issuer_key(der: &[u8]) -> String {
    connect_core::certs::CertInfo::from_der(der)
        .unwrap()
        .authority_key_id
        .as_deref()
        .map(connect_core::certs::colon_hex)
        .unwrap_or_default()
}
