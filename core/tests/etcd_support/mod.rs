//! Real etcd clusters on loopback for the etcd persistence's tests (core/src/state/tests.rs,
//! core/tests/ha_etcd.rs). The binary is Debian's `etcd-server` (`/usr/bin/etcd`), which
//! scripts/test.sh installs when missing; `LIBCONNECT_ETCD_BIN` names another.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "the store tests and the HA test use different parts"
)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

#[path = "../watched_support/mod.rs"]
mod watched;

/// The `etcd` binary: `LIBCONNECT_ETCD_BIN`, else `etcd` on PATH or in /usr/bin.
pub fn find_etcd() -> Option<PathBuf> {
    watched::from_env("LIBCONNECT_ETCD_BIN")
        .or_else(|| watched::on_path("etcd"))
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

/// `None` with one printed SKIPPED line when there is no etcd; in CI (`CI` or `LIBCONNECT_CI`
/// set), where scripts/test.sh installs it, a missing etcd fails the test instead.
pub fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_etcd();
    if found.is_none() {
        let ci = std::env::var_os("CI").is_some() || std::env::var_os("LIBCONNECT_CI").is_some();
        assert!(
            !ci,
            "{test}: etcd not found, and CI must run the etcd tests (scripts/test.sh installs \
             the Debian package etcd-server)"
        );
        println!(
            "SKIPPED {test}: etcd not found (apt-get install etcd-server, or set \
             LIBCONNECT_ETCD_BIN)"
        );
    }
    found
}

/// A free loopback port (bound and released; the race with other processes is accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const RUN_PREFIX: &str = "libconnect-etcd-";

/// Removes the directories of earlier test processes that no longer run.
fn remove_dead_runs(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(RUN_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// One member of a test cluster.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// An etcd cluster of `n` members on loopback, each under a watchdog that stops it with the
/// test process. Data lives in a temporary directory (on /dev/shm when there is one: fsync
/// there is cheap, which only the tests, never a deployment, may trade).
pub struct EtcdCluster {
    bin: PathBuf,
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    tls: Option<ServerTls>,
}

/// Client TLS of a cluster: members serve `https://` with `cert`/`key` and require client
/// certificates signed by `ca` (`--client-cert-auth`).
#[derive(Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one answers on its client port.
    ///
    /// A cluster kept in a static is never dropped (its members stop with the process), so its
    /// directory is named after the process and removed by the next run once that process is
    /// gone.
    pub fn start(bin: PathBuf, n: usize) -> EtcdCluster {
        EtcdCluster::start_with(bin, n, None)
    }

    /// [`start`](Self::start), with client TLS when `tls` is given.
    pub fn start_with(bin: PathBuf, n: usize, tls: Option<ServerTls>) -> EtcdCluster {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_dead_runs(&base);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{RUN_PREFIX}{}-", std::process::id()))
            .tempdir_in(&base)
            .unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            bin,
            members,
            dir,
            tls,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_ready(i);
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let client_url = if self.tls.is_some() {
            m.https_url()
        } else {
            m.client_url()
        };
        let mut args: Vec<String> = vec![
            format!("--name={}", m.name),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={}", m.peer_url()),
            format!("--initial-advertise-peer-urls={}", m.peer_url()),
            format!("--initial-cluster={initial}"),
            "--initial-cluster-token=libconnect-test".into(),
            "--initial-cluster-state=new".into(),
            // One store transaction is one etcd transaction; the default of 128 operations is
            // too few for a node with many services (see core/src/state/etcd.rs).
            "--max-txn-ops=10000".into(),
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
            "--log-level=error".into(),
        ];
        if let Some(tls) = &self.tls {
            args.extend([
                format!("--cert-file={}", tls.cert.display()),
                format!("--key-file={}", tls.key.display()),
                format!("--trusted-ca-file={}", tls.ca.display()),
                "--client-cert-auth".into(),
            ]);
        }
        let child = watched::spawn_watched(&self.bin, &args);
        self.members[i].child = Some(child);
    }

    fn wait_ready(&self, i: usize) {
        let port = self.members[i].client_port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "etcd member {i} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        if self.tls.is_some() {
            self.members.iter().map(Member::https_url).collect()
        } else {
            self.members.iter().map(Member::client_url).collect()
        }
    }

    /// Stops member `i` (SIGTERM to its watchdog, which stops etcd).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            watched::stop(&mut child);
        }
    }

    /// Starts a stopped member again with its data.
    pub fn restart(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            self.spawn(i);
            self.wait_ready(i);
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
