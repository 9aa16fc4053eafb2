//! Child processes a test harness starts (OpenBao, etcd) that must not outlive the test binary.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each harness uses a different part"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

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
