//! Interop with TLS stacks nobody here wrote: the `openssl` CLI (client and server) and
//! Python's `ssl` module talk to libconnect's listener and dialer with Consul certificates.
//! Neither speaks ML-KEM on OpenSSL 3.0, so these also prove the X25519 fallback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up panics on failure"
)]

mod tls_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use connect_core::ErrorKind;
use connect_core::tls::{Service, authorizer, mtls_client};
use tls_support::{IO, Mesh, db_intentions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::time::timeout;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Runs a command with `input` on stdin, bounded by coreutils `timeout`; returns
/// (success, stdout, stderr).
fn run(args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = Command::new("timeout")
        .arg("10")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("timeout and the tool are installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run`] on a blocking thread, so that the runtime goes on serving the handshakes the tool
/// makes; `args` and `input` are copied before it starts.
fn run_aside(args: &[&str], input: &str) -> impl Future<Output = (bool, String, String)> + use<> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let input = input.to_owned();
    async move {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&refs, &input)
        })
        .await
        .unwrap()
    }
}

/// db behind intentions (`*→db deny`, `web→db allow`), echoing one line per connection.
async fn echo_server(mesh: &mut Mesh) -> (Service, u16, tokio::task::JoinHandle<Vec<String>>) {
    let db = Service::new(
        mesh.identity("db"),
        authorizer::from_intentions("db", db_intentions()),
    )
    .unwrap();
    let mut l = db.listen("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().port();
    let task = tokio::spawn(async move {
        let mut peers = Vec::new();
        while let Ok(Ok(conn)) = timeout(Duration::from_secs(15), l.accept()).await {
            peers.push(conn.peer_id().to_string());
            let mut r = BufReader::new(conn);
            let mut line = String::new();
            if timeout(IO, r.read_line(&mut line)).await.is_ok() {
                let mut conn = r.into_inner();
                let _ = conn.write_all(line.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        }
        peers
    });
    (db, port, task)
}

#[tokio::test]
async fn openssl_s_client_is_allowed_or_denied_by_intentions() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new();
    let roots = write(dir.path(), "roots.pem", &mesh.ca.roots().roots_pem());
    let (web_cert, web_key) = mesh.pem_pair("web");
    let (api_cert, api_key) = mesh.pem_pair("api");
    let web_cert = write(dir.path(), "web.pem", &web_cert);
    let web_key = write(dir.path(), "web.key", &web_key);
    let api_cert = write(dir.path(), "api.pem", &api_cert);
    let api_key = write(dir.path(), "api.key", &api_key);
    let (db, port, task) = echo_server(&mut mesh).await;
    let connect = format!("127.0.0.1:{port}");

    let s_client = |cert: &str, key: &str, extra: &[&str]| {
        let mut args = vec![
            "openssl",
            "s_client",
            "-connect",
            &connect,
            "-cert",
            cert,
            "-key",
            key,
            "-CAfile",
            &roots,
            "-verify_return_error",
            "-quiet",
        ];
        args.extend_from_slice(extra);
        run_aside(&args, "hello from openssl\n")
    };

    let (ok, out, err) = s_client(&web_cert, &web_key, &[]).await;
    assert!(ok, "web was refused: {out}{err}");
    assert_eq!(out.trim(), "hello from openssl", "{err}");

    let (ok, out, err) = s_client(&web_cert, &web_key, &["-tls1_2"]).await;
    assert!(ok, "TLS 1.2 web was refused: {out}{err}");
    assert_eq!(out.trim(), "hello from openssl", "{err}");

    let (_, out, err) = s_client(&api_cert, &api_key, &[]).await;
    assert!(!out.contains("hello"), "api got an echo: {out}");
    assert!(
        err.contains("access denied"),
        "no access_denied alert: {err}"
    );

    let (ok, out, err) = s_client(&api_cert, &api_key, &["-tls1_2"]).await;
    assert!(!ok && !out.contains("hello"), "{out}{err}");
    assert!(err.contains("access denied"), "{err}");

    let stats = db.server().stats();
    assert_eq!((stats.accepted, stats.denied), (2, 2), "{stats:?}");
    drop(db);
    task.abort();
}

#[tokio::test]
async fn openssl_s_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new();
    let roots = write(dir.path(), "roots.pem", &mesh.ca.roots().roots_pem());
    let (db, port, task) = echo_server(&mut mesh).await;
    let connect = format!("127.0.0.1:{port}");

    for version in ["-tls1_3", "-tls1_2"] {
        // s_client trusts db's root and would print the echo; it just has no certificate.
        let args = [
            "openssl",
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            &roots,
            "-verify_return_error",
            "-quiet",
            version,
        ];
        let (ok, out, err) = run_aside(&args, "hello from openssl\n").await;
        assert!(
            !ok,
            "{version}: s_client without a certificate succeeded: {out}{err}"
        );
        assert!(!out.contains("hello"), "{version}: got an echo: {out}");
        assert!(
            err.contains("alert certificate required"),
            "{version}: no certificate_required alert: {err}"
        );
    }

    let stats = db.server().stats();
    assert_eq!((stats.accepted, stats.failed), (0, 2), "{stats:?}");
    // Refused for the missing certificate, before intentions were asked.
    assert_eq!(stats.denied, 0, "{stats:?}");
    drop(db);
    task.abort();
}

#[tokio::test]
async fn python_ssl_client_is_allowed_or_denied_by_intentions() {
    const SCRIPT: &str = r#"
import socket, ssl, sys
host, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False  # Consul identities live in the URI SAN, not the host name
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(b"hello from python\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(100)
                if not chunk:
                    break
                data += chunk
            print("GOT", data.decode().strip(), "|", s.version(), "|", s.getpeercert()["subjectAltName"])
except ssl.SSLError as e:
    print("SSLERROR", e.reason)
    sys.exit(3)
"#;
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new();
    let roots = write(dir.path(), "roots.pem", &mesh.ca.roots().roots_pem());
    let (db, port, task) = echo_server(&mut mesh).await;
    let db_uri = mesh.uri("db");
    for (service, allowed) in [("web", true), ("api", false)] {
        let (cert, key) = mesh.pem_pair(service);
        let cert = write(dir.path(), &format!("{service}.pem"), &cert);
        let key = write(dir.path(), &format!("{service}.key"), &key);
        let args = [
            "python3",
            "-c",
            SCRIPT,
            "127.0.0.1",
            &port.to_string(),
            &cert,
            &key,
            &roots,
        ];
        let (ok, out, err) = run_aside(&args, "").await;
        if allowed {
            assert!(ok, "{service}: {out}{err}");
            assert!(
                out.starts_with("GOT hello from python | TLSv1.3"),
                "{out}{err}"
            );
            assert!(out.contains(&db_uri), "python saw db's URI SAN: {out}");
        } else {
            assert!(!ok, "{service} was let in: {out}");
            assert!(out.contains("ACCESS_DENIED"), "{out}{err}");
        }
    }
    assert_eq!(db.server().stats().denied, 1);
    task.abort();
}

#[tokio::test]
async fn our_client_against_openssl_s_server_with_required_client_certs() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new();
    let roots = write(dir.path(), "roots.pem", &mesh.ca.roots().roots_pem());
    let (db_cert, db_key) = mesh.pem_pair("db");
    let db_cert = write(dir.path(), "db.pem", &db_cert);
    let db_key = write(dir.path(), "db.key", &db_key);
    let web = mesh.identity("web");
    let client = mtls_client(&web, "db").build().unwrap();
    // The port is chosen by binding and releasing it, so another process may take it before
    // s_server binds; s_server then exits at once. Start again on a fresh port in that case
    // (at most 5 times) instead of waiting out the whole bound, and show s_server's error if
    // every attempt fails.
    let mut last_err = String::new();
    let mut started = None;
    'attempts: for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let accept = format!("127.0.0.1:{port}");
        let mut server = Command::new("timeout")
            .args([
                "15",
                "openssl",
                "s_server",
                "-accept",
                &accept,
                "-cert",
                &db_cert,
                "-key",
                &db_key,
                "-CAfile",
                &roots,
                "-Verify",
                "1",
                "-verify_return_error",
                "-rev",
                "-naccept",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded (20 s, since openssl starts slowly on a loaded machine).
        for _ in 0..400 {
            match client.dial_addr(("127.0.0.1", port)).await {
                Ok(c) => {
                    started = Some((server, port, c));
                    break 'attempts;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    if server.try_wait().unwrap().is_some() {
                        let out = server.wait_with_output().unwrap();
                        last_err = String::from_utf8_lossy(&out.stderr).into_owned();
                        continue 'attempts;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("dial: {e}"),
            }
        }
        let _ = server.kill();
        let out = server.wait_with_output().unwrap();
        last_err = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    let (mut server, port, mut conn) =
        started.unwrap_or_else(|| panic!("openssl s_server did not come up: {last_err}"));
    assert_eq!(conn.peer_id().to_string(), mesh.uri("db"));
    conn.write_all(b"hello\n").await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = timeout(IO, conn.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "olleh");
    drop(conn);

    // The same s_server is not the service an `api` dial expects.
    let wrong = mtls_client(&web, "api").build().unwrap();
    let e = wrong.dial_addr(("127.0.0.1", port)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerIdentityMismatch, "{e}");

    let _ = server.kill();
    let out = server.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("verify error"),
        "s_server rejected our client: {text}"
    );
}
