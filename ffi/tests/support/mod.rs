//! What the ffi test binaries share.

use std::path::{Path, PathBuf};

/// The repository's root (the parent of `ffi/`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
