//! Child processes a test harness starts (OpenBao, etcd) that must not outlive the test binary.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each harness uses a different part"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binary named in the environment variable `var`, if set (it must exist).
pub fn from_env(var: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(var)?);
    assert!(p.is_file(), "{var}={} is not a file", p.display());
    Some(p)
}

/// `name` in a directory of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Starts `bin args` under a small `sh` watchdog that stops it when this process exits, even
/// when the handle is never dropped (a server kept in a static) or the process is killed.
/// SIGTERM to the returned child stops the server too.
pub fn spawn_watched(bin: &Path, args: &[String]) -> Child {
    let script = r#"parent=$1; shift; "$@" >/dev/null 2>&1 & b=$!
trap 'kill $b 2>/dev/null; wait $b 2>/dev/null; exit 0' TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.3; done
kill $b 2>/dev/null; wait $b 2>/dev/null"#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Stops a server started by [`spawn_watched`] and waits for it.
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
