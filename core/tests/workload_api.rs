//! The SPIFFE Workload API of a real `connect agent -dev` process, through a gRPC client on its
//! Unix socket: attestation by peer credentials, the security header, X.509-SVIDs pushed on a
//! CA rotation, bundles, JWT-SVIDs, intentions for a workload dialing a libconnect service,
//! and hostile input (ARCHITECTURE.md, workload).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli_support::{Agent, command, rotate_root};
use connect_core::agent::{AgentConfig, ConnectService};
use connect_core::http::client::HttpEndpoint;
use connect_core::tls::{self, Bundle, Identity, Svid};
use connect_core::workload::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use connect_core::workload::proto::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
    X509svidResponse,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Request};

const WAIT: Duration = Duration::from_secs(20);

/// A dev agent serving the Workload API on a socket in `dir`, with `workloads` (HCL blocks)
/// and leaves re-issued at once after a rotation.
fn agent_with(dir: &Path, workloads: &str) -> (Agent, PathBuf) {
    let socket = dir.join("workload.sock");
    let config = dir.join("agent.hcl");
    std::fs::write(
        &config,
        format!(
            "workload_api {{\n  socket = \"{}\"\n  socket_mode = \"0777\"\n  max_conns = 16\n  root_change_jitter = \"0s\"\n{workloads}\n}}\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut cmd = command();
    cmd.args(["agent", "-dev", "-http-port", "0", "-config-file"])
        .arg(&config);
    let agent = Agent::launch(cmd);
    assert!(
        agent.stderr().contains(&format!(
            "SPIFFE Workload API listening on unix://{}",
            socket.display()
        )),
        "{}",
        agent.stderr()
    );
    (agent, socket)
}

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid()
    })
}

async fn client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

/// The registration of `web` for this process's uid.
fn web_registration() -> String {
    format!("workload {{\n service = \"web\"\n uid = {}\n}}", my_uid())
}

/// A `FetchX509SVID` stream and its first message.
async fn svid_stream(
    c: &mut SpiffeWorkloadApiClient<Channel>,
) -> (tonic::Streaming<X509svidResponse>, X509svidResponse) {
    let mut stream = c
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (stream, first)
}

/// A request with the Workload API's security header.
fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

/// DER certificates laid end to end, split again.
fn split_der(mut bytes: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        // A DER SEQUENCE: 0x30, then a short or long length.
        assert_eq!(bytes[0], 0x30);
        let (len, head) = match bytes[1] {
            n if n < 0x80 => (n as usize, 2),
            n => {
                let k = (n & 0x7f) as usize;
                let len = bytes[2..2 + k]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | *b as usize);
                (len, 2 + k)
            }
        };
        out.push(CertificateDer::from(bytes[..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    out
}

/// The SVID and bundle of a response as libconnect's own types (which check that the key is
/// the leaf's and the chain names a service).
fn svid_of(resp: &X509svidResponse) -> (Svid, Bundle) {
    assert_eq!(resp.svids.len(), 1, "one registration matches");
    let s = &resp.svids[0];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(s.x509_svid_key.clone()));
    let svid = Svid::from_der(split_der(&s.x509_svid), key).expect("a valid SVID with its key");
    assert_eq!(svid.spiffe_id().to_string(), s.spiffe_id);
    let td = svid.spiffe_id().host().to_string();
    let bundle = Bundle::new(&td, split_der(&s.bundle)).expect("a valid bundle");
    (svid, bundle)
}

/// Rotates `agent`'s root to an EC key of `bits` and reads `stream` until it delivers an SVID
/// that verifies against the new root alone. Returns the times from sending the rotation to the
/// push whose bundle holds the new root, and to the push of that SVID.
async fn rotate_and_follow(
    agent: &Arc<Agent>,
    stream: &mut tonic::Streaming<X509svidResponse>,
    bits: u32,
) -> (Duration, Duration) {
    let a = Arc::clone(agent);
    let started = Instant::now();
    let new_root = tokio::task::spawn_blocking(move || rotate_root(&a, "", "ec", bits))
        .await
        .unwrap();
    let roots = agent.roots();
    let pem = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == new_root.as_str())
        .unwrap()["RootCert"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_root_der = connect_core::certs::parse_pem_certificates(&pem).unwrap();
    let mut saw_bundle = None;
    loop {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a push after the rotation")
            .unwrap()
            .unwrap();
        let at = started.elapsed();
        let (svid, bundle) = svid_of(&msg);
        if saw_bundle.is_none() && bundle.roots().contains(&new_root_der[0]) {
            saw_bundle = Some(at);
        }
        let only_new = Bundle::new(bundle.trust_domain().as_str(), new_root_der.clone()).unwrap();
        let id = Identity::new("web", connect_core::clock::system());
        id.update_bundle(only_new).unwrap();
        if id.update_svid(svid).is_ok() {
            return (saw_bundle.unwrap_or(at), at);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_gets_its_svid_and_a_new_one_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = agent_with(dir.path(), &web_registration());
    let mut c = client(&socket).await;
    let (mut stream, first) = svid_stream(&mut c).await;
    let (svid, bundle) = svid_of(&first);
    assert!(
        svid.spiffe_id()
            .to_string()
            .ends_with("/ns/default/dc/dc1/svc/web")
    );
    assert_eq!(bundle.roots().len(), 1);

    // The socket has the configured mode.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o777);

    // The bundles stream answers the trust domain's roots.
    let mut bundles = c
        .fetch_x509_bundles(req(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let b = bundles.message().await.unwrap().unwrap();
    let key = format!("spiffe://{}", bundle.trust_domain().as_str());
    assert_eq!(
        split_der(&b.bundles[&key]),
        bundle.roots().to_vec(),
        "{:?}",
        b.bundles.keys()
    );

    // A rotation: the new root reaches the stream, then a leaf signed by it.
    let agent = Arc::new(agent);
    let (saw_bundle, saw_leaf) = rotate_and_follow(&agent, &mut stream, 384).await;
    eprintln!("rotation to push: bundle {saw_bundle:?}, new SVID {saw_leaf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_are_issued_validated_and_verifiable_with_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (_agent, socket) = agent_with(dir.path(), &web_registration());
    let mut c = client(&socket).await;
    let resp = c
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["db".into(), "api".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.svids.len(), 1);
    let token = resp.svids[0].svid.clone();
    assert!(resp.svids[0].spiffe_id.ends_with("/svc/web"));

    let valid = c
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.spiffe_id, resp.svids[0].spiffe_id);
    let claims = valid.claims.unwrap();
    assert!(claims.fields.contains_key("exp"));

    let wrong = c
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "other".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument, "{wrong:?}");
    let garbage = c
        .validate_jwtsvid(req(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: "a.b.c".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    let none = c
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);

    // The JWKS names the token's key.
    let mut jwks = c
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundles = jwks.message().await.unwrap().unwrap().bundles;
    assert_eq!(bundles.len(), 1);
    let doc: serde_json::Value = serde_json::from_slice(bundles.values().next().unwrap()).unwrap();
    use base64::Engine as _;
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert!(
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == header["kid"]),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_the_header_or_a_registration_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Registered for another uid (and for this uid only with an executable it is not).
    let (_agent, socket) = agent_with(
        dir.path(),
        &format!(
            "socket_group = 4242\nworkload {{\n service = \"web\"\n uid = 4242\n}}\nworkload {{\n service = \"db\"\n uid = {}\n path = \"/nonexistent/db\"\n}}",
            my_uid()
        ),
    );
    // The socket belongs to the configured group.
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&socket).unwrap().gid(), 4242);
    let mut c = client(&socket).await;
    let denied = c
        .fetch_x509svid(req(X509svidRequest {}))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = c
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let no_header = c
        .fetch_x509svid(Request::new(X509svidRequest {}))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(no_header.code(), Code::InvalidArgument, "{no_header:?}");
    assert!(no_header.message().contains("security header"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_leaves_the_agent_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = agent_with(dir.path(), &web_registration());
    // Garbage instead of an HTTP/2 preface: the connection is closed.
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xffu8; 4096][..], b""] {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        assert!(sink.len() < 64 * 1024, "a bounded answer to garbage");
    }
    // More connections than max_conns (16): the extra ones are closed at once.
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
            held.push(s);
        }
    }
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 40 - 16,
        "connections over the limit are closed ({closed})"
    );
    drop(held);
    // The dropped connections give their slots back once the server sees them close.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut c = client(&socket).await;
    // A request larger than the decoding limit.
    let huge = c
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: vec!["a".repeat(connect_core::workload::MAX_REQUEST_BYTES + 1)],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            huge.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{huge:?}"
    );
    // Too many audiences.
    let many = c
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: (0..100).map(|i| i.to_string()).collect(),
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(many.code(), Code::InvalidArgument);
    // A raw HTTP/2 client half-way through a frame, then gone.
    let mut raw = tokio::net::UnixStream::connect(&socket).await.unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    drop(raw);

    // Still serving, and the process is alive.
    let (_stream, msg) = svid_stream(&mut c).await;
    assert_eq!(msg.svids.len(), 1);
    assert!(agent.roots()["Roots"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intentions_rule_a_spiffe_workload_dialing_a_libconnect_service() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = agent_with(dir.path(), &web_registration());
    agent
        .cli(&["intention", "create", "-deny", "web", "vault"])
        .ok();
    // Two libconnect services of an HTTP agent: db (allowed by the dev default) and vault.
    let lib =
        connect_core::agent::Agent::new_async(AgentConfig::http(HttpEndpoint::new(&agent.http)))
            .await
            .unwrap();
    let mut listeners = Vec::new();
    for name in ["db", "vault"] {
        let svc: ConnectService = lib.service(name).unwrap();
        svc.ready_wait(WAIT).await.unwrap();
        let mut l = svc.listen("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr();
        tokio::spawn(async move {
            while let Ok(mut conn) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 5];
                    if conn.read_exact(&mut b).await.is_ok() {
                        let _ = conn.write_all(&b).await;
                    }
                });
            }
        });
        listeners.push((svc, addr));
    }
    // Wait until the db service's intentions include the deny of web → vault.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The workload's SVID from the socket, in a TLS identity of its own.
    let mut c = client(&socket).await;
    let (_stream, first) = svid_stream(&mut c).await;
    let (svid, bundle) = svid_of(&first);
    let web = Identity::new("web", connect_core::clock::system());
    web.update_bundle(bundle).unwrap();
    web.update_svid(svid).unwrap();

    let echo = |target: &'static str, addr| {
        let web = web.clone();
        async move {
            let client = tls::mtls_client(&web, target).build()?;
            let mut conn = client.dial_addr(addr).await?;
            conn.write_all(b"hello").await.map_err(io)?;
            let mut b = [0u8; 5];
            conn.read_exact(&mut b).await.map_err(io)?;
            Ok::<_, connect_core::Error>(b)
        }
    };
    assert_eq!(&echo("db", listeners[0].1).await.unwrap(), b"hello");
    assert!(
        echo("vault", listeners[1].1).await.is_err(),
        "web → vault is denied by intention"
    );
}

fn io(e: std::io::Error) -> connect_core::Error {
    connect_core::Error::new(connect_core::ErrorKind::Io, e.to_string())
}

/// The time from a CA rotation (`PUT /v1/connect/ca/configuration` sent) to the
/// `FetchX509SVID` stream's pushes: the new root in the bundle, and a new SVID signed by it
/// (leaves re-issued without jitter). Prints p50 and max over `ROTATIONS` rotations; figures
/// in BENCHMARKS.md. `cargo test --release -p connect-core --features cli --test workload_api
/// -- --ignored --nocapture rotation_to_push`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand, figures in BENCHMARKS.md"]
async fn rotation_to_push_latency() {
    const ROTATIONS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let (agent, socket) = agent_with(dir.path(), &web_registration());
    let agent = Arc::new(agent);
    let mut c = client(&socket).await;
    let (mut stream, _) = svid_stream(&mut c).await;
    let (mut bundle_ms, mut svid_ms) = (Vec::new(), Vec::new());
    for i in 0..ROTATIONS {
        let bits = if i % 2 == 0 { 384 } else { 256 };
        let (bundle, svid) = rotate_and_follow(&agent, &mut stream, bits).await;
        bundle_ms.push(bundle.as_secs_f64() * 1000.0);
        svid_ms.push(svid.as_secs_f64() * 1000.0);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (b50, bmax) = stats(&mut bundle_ms);
    let (s50, smax) = stats(&mut svid_ms);
    println!(
        "workload API rotation to push over {ROTATIONS} rotations: new root in the bundle p50 {b50:.1} ms max {bmax:.1} ms; new SVID p50 {s50:.1} ms max {smax:.1} ms"
    );
}
