//! End to end: the real `connect` binary as a dev agent, driven by its own client commands,
//! raw HTTP and `openssl verify`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::time::{Duration, Instant};

use cli_support::{
    Agent, command, default_deny_config, openssl_verify, pem_blocks, run, service_uri,
};
use serde_json::{Value, json};

#[test]
fn roots_and_a_leaf_verify_with_openssl() {
    let agent = Agent::start(&["-dev"]);
    let dir = tempfile::tempdir().unwrap();
    let roots_pem = agent.cli(&["ca", "roots", "-pem"]).ok().stdout;
    assert_eq!(pem_blocks(&roots_pem).len(), 1, "{roots_pem}");
    let roots_json: Value = serde_json::from_str(&agent.cli(&["ca", "roots"]).ok().stdout).unwrap();
    assert_eq!(roots_json["Roots"].as_array().unwrap().len(), 1);
    assert_eq!(roots_json["ActiveRootID"], roots_json["Roots"][0]["ID"]);

    let leaf = agent.cli(&["leaf", "web"]).ok().stdout;
    let blocks = pem_blocks(&leaf);
    assert_eq!(blocks.len(), 2, "certificate then key: {leaf}");
    assert!(blocks[0].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(blocks[1].contains("PRIVATE KEY-----"));
    let roots = dir.path().join("roots.pem");
    let cert = dir.path().join("leaf.pem");
    let key = dir.path().join("leaf.key");
    std::fs::write(&roots, &roots_pem).unwrap();
    std::fs::write(&cert, &blocks[0]).unwrap();
    std::fs::write(&key, &blocks[1]).unwrap();
    let (ok, out) = openssl_verify(&roots, None, &cert);
    assert!(ok, "{out}");

    // The key is the certificate's, and the certificate names the service.
    let pubkey = |args: &[&str]| {
        run(std::process::Command::new("openssl").args(args))
            .ok()
            .stdout
    };
    assert_eq!(
        pubkey(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]),
        pubkey(&["pkey", "-pubout", "-in", key.to_str().unwrap()])
    );
    let text = pubkey(&["x509", "-noout", "-text", "-in", cert.to_str().unwrap()]);
    assert!(
        text.contains(&format!("URI:{}", service_uri(&roots_json, "dc1", "web"))),
        "{text}"
    );
}

#[test]
fn intentions_from_the_cli_and_authorize_over_http() {
    let agent = Agent::start(&["-dev"]);
    let out = agent.cli(&["intention", "create", "-deny", "*", "db"]).ok();
    assert_eq!(out.stdout.trim(), "Created: * => db (deny)");
    let out = agent
        .cli(&["intention", "create", "-allow", "web", "db"])
        .ok();
    assert_eq!(out.stdout.trim(), "Created: web => db (allow)");

    // A second create fails unless -replace.
    let dup = agent.cli(&["intention", "create", "web", "db"]);
    assert_eq!(dup.code, 1, "{dup:?}");
    assert!(dup.stderr.starts_with("Error: "), "{dup:?}");
    assert!(dup.stderr.contains("already exists"), "{dup:?}");
    agent
        .cli(&["intention", "create", "-replace", "-deny", "web", "db"])
        .ok();
    let check = agent.cli(&["intention", "check", "web", "db"]);
    assert_eq!((check.code, check.stdout.trim()), (2, "Denied"));
    agent
        .cli(&["intention", "create", "-replace", "-allow", "web", "db"])
        .ok();

    let allowed = agent.cli(&["intention", "check", "web", "db"]);
    assert_eq!((allowed.code, allowed.stdout.trim()), (0, "Allowed"));
    let denied = agent.cli(&["intention", "check", "api", "db"]);
    assert_eq!((denied.code, denied.stdout.trim()), (2, "Denied"));
    // No intention names "other": the dev agent's default is allow.
    let other = agent.cli(&["intention", "check", "api", "other"]);
    assert_eq!(other.code, 0, "{other:?}");

    let m = agent
        .cli(&["intention", "match", "-destination", "db"])
        .ok()
        .stdout;
    assert_eq!(
        m.lines().collect::<Vec<_>>(),
        ["web => db (allow)", "* => db (deny)"]
    );
    let m = agent
        .cli(&["intention", "match", "-source", "web"])
        .ok()
        .stdout;
    // `*` as a source covers web too.
    assert_eq!(
        m.lines().collect::<Vec<_>>(),
        ["web => db (allow)", "* => db (deny)"]
    );
    let neither = agent.cli(&["intention", "match", "db"]);
    assert_eq!(neither.code, 1, "{neither:?}");
    assert!(neither.stderr.contains("Usage"), "{neither:?}");

    // Authorize over HTTP follows the intentions.
    let roots = agent.roots();
    for (src, want) in [("web", true), ("api", false)] {
        let body = json!({"Target": "db", "ClientCertURI": service_uri(&roots, "dc1", src)});
        let r = agent.http(
            "POST",
            "/v1/agent/connect/authorize",
            &[],
            &body.to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["Authorized"], want, "{src}: {}", r.body);
    }

    // List, get (by names and by ID), delete.
    let list = agent.cli(&["intention", "list"]).ok().stdout;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("ID "), "{list}");
    let get = agent.cli(&["intention", "get", "web", "db"]).ok().stdout;
    assert!(get.contains("Action:       allow"), "{get}");
    let id = get
        .lines()
        .find_map(|l| l.strip_prefix("ID:"))
        .unwrap()
        .trim()
        .to_owned();
    let by_id = agent.cli(&["intention", "get", &id]).ok().stdout;
    assert_eq!(by_id, get);
    let del = agent.cli(&["intention", "delete", "web", "db"]).ok();
    assert_eq!(del.stdout.trim(), "Intention deleted.");
    let gone = agent.cli(&["intention", "get", "web", "db"]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("Intention not found"), "{gone:?}");
    // Now only `* => db (deny)` speaks for web.
    assert_eq!(agent.cli(&["intention", "check", "web", "db"]).code, 2);
    let star_id = agent
        .cli(&["intention", "get", "*", "db"])
        .ok()
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("ID:").map(|s| s.trim().to_owned()))
        .unwrap();
    agent.cli(&["intention", "delete", &star_id]).ok();
    let empty = agent.cli(&["intention", "list"]).ok();
    assert_eq!(empty.stdout.trim(), "There are no intentions.");
    // Invalid input is the server's 400, printed as an error.
    let bad = agent.cli(&["intention", "create", "a/b/c/d", "db"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.starts_with("Error: "), "{bad:?}");
}

#[test]
fn ca_rotation_by_set_config_cross_signs() {
    let agent = Agent::start(&["-dev"]);
    let dir = tempfile::tempdir().unwrap();
    let before = agent.roots();
    let old_id = before["ActiveRootID"].as_str().unwrap().to_owned();
    let old_root = dir.path().join("old-root.pem");
    std::fs::write(&old_root, before["Roots"][0]["RootCert"].as_str().unwrap()).unwrap();

    let cfg = dir.path().join("ca.json");
    std::fs::write(
        &cfg,
        json!({"Provider": "consul", "Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}})
            .to_string(),
    )
    .unwrap();
    let out = agent
        .cli(&["ca", "set-config", "-config-file", cfg.to_str().unwrap()])
        .ok();
    assert_eq!(out.stdout.trim(), "Configuration updated!");
    let got: Value = serde_json::from_str(&agent.cli(&["ca", "get-config"]).ok().stdout).unwrap();
    assert_eq!(got["Provider"], "consul");
    assert_eq!(got["Config"]["PrivateKeyType"], "rsa");

    let after: Value = serde_json::from_str(&agent.cli(&["ca", "roots"]).ok().stdout).unwrap();
    let roots = after["Roots"].as_array().unwrap();
    assert_eq!(roots.len(), 2, "{after:#}");
    let new_id = after["ActiveRootID"].as_str().unwrap();
    assert_ne!(new_id, old_id);
    assert!(
        roots
            .iter()
            .any(|r| r["ID"] == old_id && r["Active"] == false)
    );
    let active = roots.iter().find(|r| r["ID"] == new_id).unwrap();
    let new_root = dir.path().join("new-root.pem");
    std::fs::write(&new_root, active["RootCert"].as_str().unwrap()).unwrap();
    let cross = active["IntermediateCerts"].as_array().unwrap();
    assert_eq!(
        cross.len(),
        1,
        "the old root's cross-signature of the new one"
    );
    let cross_pem = dir.path().join("cross.pem");
    std::fs::write(&cross_pem, cross[0].as_str().unwrap()).unwrap();
    let pem = agent.cli(&["ca", "roots", "-pem"]).ok().stdout;
    assert_eq!(pem_blocks(&pem).len(), 2, "{pem}");

    // A leaf issued now chains to the new root, and to the old one through the cross-signed
    // certificate (which the leaf bundle carries).
    let leaf = agent.cli(&["leaf", "web"]).ok().stdout;
    let blocks = pem_blocks(&leaf);
    assert_eq!(blocks.len(), 3, "leaf, cross-signed root, key: {leaf}");
    let leaf_pem = dir.path().join("leaf.pem");
    std::fs::write(&leaf_pem, &blocks[0]).unwrap();
    let (ok, out) = openssl_verify(&new_root, None, &leaf_pem);
    assert!(ok, "{out}");
    let (ok, out) = openssl_verify(&old_root, Some(&cross_pem), &leaf_pem);
    assert!(ok, "{out}");
    let (ok, _) = openssl_verify(&old_root, None, &leaf_pem);
    assert!(
        !ok,
        "without the cross-signed certificate the old root cannot verify"
    );

    // An invalid configuration is refused with the server's message.
    std::fs::write(
        &cfg,
        json!({"Provider": "consul", "Config": {"LeafCertTTL": "1m"}}).to_string(),
    )
    .unwrap();
    let bad = agent.cli(&["ca", "set-config", "-config-file", cfg.to_str().unwrap()]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("leaf cert TTL"), "{bad:?}");
    std::fs::write(&cfg, "{not json").unwrap();
    let bad = agent.cli(&["ca", "set-config", "-config-file", cfg.to_str().unwrap()]);
    assert_eq!(bad.code, 1, "{bad:?}");
}

#[test]
fn acls_from_a_config_file_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = default_deny_config(dir.path(), "root-secret-1234");
    let agent = Agent::start(&[
        "-dev",
        "-config-file",
        cfg.to_str().unwrap(),
        "-log-level",
        "trace",
    ]);

    let r = agent.http("GET", "/v1/connect/ca/configuration", &[], "");
    assert_eq!(r.status, 403, "{}", r.body);
    let no = agent.cli(&["ca", "get-config"]);
    assert_eq!(no.code, 1, "{no:?}");
    assert!(no.stderr.starts_with("Error: Permission denied"), "{no:?}");
    let no = agent.cli(&["intention", "create", "web", "db"]);
    assert_eq!(no.code, 1, "{no:?}");

    agent
        .cli(&["ca", "get-config", "-token", "root-secret-1234"])
        .ok();
    agent
        .cli(&[
            "intention",
            "create",
            "-token=root-secret-1234",
            "web",
            "db",
        ])
        .ok();
    let env = agent.cli_env(
        &[("CONSUL_HTTP_TOKEN", "root-secret-1234")],
        &["intention", "check", "web", "db"],
    );
    assert_eq!(env.code, 0, "{env:?}");
    // -token wins over the environment.
    let wrong = agent.cli_env(
        &[("CONSUL_HTTP_TOKEN", "root-secret-1234")],
        &["intention", "list", "-token", "not-a-token"],
    );
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("ACL not found"), "{wrong:?}");
    // With ACLs on, the ACL default policy decides for unmatched connections.
    let unmatched = agent.cli(&["intention", "check", "-token", "root-secret-1234", "a", "b"]);
    assert_eq!(unmatched.code, 2, "{unmatched:?}");
    let r = agent.http(
        "GET",
        "/v1/connect/ca/configuration?token=root-secret-1234",
        &[],
        "",
    );
    assert_eq!(r.status, 200);

    // Requests were logged (trace level), tokens never.
    let log = agent.wait_for_log("/v1/connect/ca/configuration", Duration::from_secs(5));
    assert!(!log.contains("root-secret-1234"), "{log}");
}

#[test]
fn https_listener_with_consul_cacert() {
    let agent = Agent::start(&["-dev", "-https-port", "0"]);
    let https = agent.https.clone().expect("an HTTPS line");
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, agent.cli(&["ca", "roots", "-pem"]).ok().stdout).unwrap();
    let roots_s = roots.to_str().unwrap();

    let env = [
        ("CONSUL_HTTP_ADDR", https.as_str()),
        ("CONSUL_HTTP_SSL", "true"),
        ("CONSUL_CACERT", roots_s),
    ];
    let out = agent.cli_env(&env, &["ca", "roots"]).ok();
    assert!(out.stdout.contains("ActiveRootID"), "{out:?}");
    let port = https.rsplit(':').next().unwrap();
    let by_name = format!("https://localhost:{port}");
    agent
        .cli(&["ca", "roots", "-http-addr", &by_name, "-ca-file", roots_s])
        .ok();
    // Without the CA the server certificate is not trusted.
    let untrusted = agent.cli(&["ca", "roots", "-http-addr", &format!("https://{https}")]);
    assert_eq!(untrusted.code, 1, "{untrusted:?}");

    // The server certificate is the node's agent identity, issued by the CA.
    let o = run(std::process::Command::new("openssl").args([
        "s_client",
        "-connect",
        &https,
        "-CAfile",
        roots_s,
        "-verify_return_error",
        "-brief",
    ]));
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("Verification: OK"), "{o:?}");

    // A root rotation reissues the server certificate from the new root; clients that
    // trust only the old root still connect, through the cross-signed certificate.
    let cfg = dir.path().join("ca.json");
    std::fs::write(
        &cfg,
        json!({"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
            .to_string(),
    )
    .unwrap();
    agent
        .cli(&["ca", "set-config", "-config-file", cfg.to_str().unwrap()])
        .ok();
    let after = agent.roots();
    let new_root = dir.path().join("new-root.pem");
    let active = after["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Active"] == true)
        .unwrap();
    std::fs::write(&new_root, active["RootCert"].as_str().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = run(std::process::Command::new("openssl").args([
            "s_client",
            "-connect",
            &https,
            "-CAfile",
            new_root.to_str().unwrap(),
            "-verify_return_error",
            "-brief",
        ]));
        if o.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server certificate was not reissued from the new root: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.cli_env(&env, &["ca", "roots"]).ok();
}

#[test]
fn blocking_query_through_the_agent() {
    let agent = Agent::start(&["-dev"]);
    let first = agent.http("GET", "/v1/connect/intentions", &[], "");
    let idx = first.index();
    let addr = agent.http.clone();
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let r = cli_support::http(
            &addr,
            "GET",
            &format!("/v1/connect/intentions?index={idx}&wait=8s"),
            &[],
            "",
        );
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    agent.cli(&["intention", "create", "web", "db"]).ok();
    let (woke, took) = waiter.join().unwrap();
    assert!(woke.index() > idx);
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(woke.json().as_array().unwrap().len(), 1);
    let same = agent.http(
        "GET",
        &format!("/v1/connect/intentions?index={}&wait=300ms", woke.index()),
        &[],
        "",
    );
    assert_eq!(same.index(), woke.index());
}

#[test]
fn sigterm_and_sigint_exit_zero_promptly() {
    let mut agent = Agent::start(&["-dev"]);
    // A blocking query in flight must not hold the shutdown up.
    let idx = agent.http("GET", "/v1/connect/intentions", &[], "").index();
    let addr = agent.http.clone();
    let _blocked = std::thread::spawn(move || {
        cli_support::try_http(
            &addr,
            "GET",
            &format!("/v1/connect/intentions?index={idx}&wait=60s"),
            &[],
            "",
            Duration::from_secs(15),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let status = agent.signal_and_wait("TERM", Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(agent.stderr().contains("==> libconnect agent stopped"));

    let mut agent = Agent::start(&["-dev"]);
    let status = agent.signal_and_wait("INT", Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
}

#[test]
fn bad_usage_exits_one_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad_cfg = dir.path().join("bad.hcl");
    std::fs::write(&bad_cfg, "acl { default_policy = \"sometimes\" }").unwrap();
    let bad_cfg = bad_cfg.to_str().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    for (args, want) in [
        (&[][..], "Usage"),
        (&["agent", "-bogus"][..], "-bogus"),
        (&["nonsense"][..], "nonsense"),
        (&["agent"][..], "-server"),
        (&["agent", "-server"][..], "data_dir"),
        (&["agent", "-dev", "-log-level", "loud"][..], "log level"),
        (
            &["agent", "-dev", "-config-file", "/nonexistent.hcl"][..],
            "nonexistent",
        ),
        (
            &["agent", "-dev", "-config-file", bad_cfg][..],
            "acl.default_policy",
        ),
        (&["agent", "-dev", "-http-port", "x"][..], "-http-port"),
        (&["intention", "check", "web"][..], "DST"),
        (
            &["intention", "create", "-allow", "-deny", "a", "b"][..],
            "-deny",
        ),
        (&["intention", "get", "a", "b", "c"][..], "Usage"),
        (&["ca", "set-config"][..], "-config-file"),
        (&["ca", "roots", "-http-addr", &closed][..], "Error: "),
        (&["leaf", "web", "-http-addr", "http://[bad"][..], "Error: "),
    ] {
        let out = run(command().args(args));
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(want), "{args:?}: {out:?}");
    }
    // Help and version are not errors.
    let help = run(command().args(["agent", "-help"]));
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("-data-dir <DIR>"), "{help:?}");
    let v = run(command().arg("-version"));
    assert_eq!(v.code, 0);
    assert!(v.stdout.contains(connect_core::VERSION));
}
