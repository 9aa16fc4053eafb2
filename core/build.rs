//! Link settings for the crate's executables (`connect`, `connect-proxy`).

use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let native = var("HOST") == var("TARGET");
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && native
        && glibc_at_least(2, 36)
    {
        // A position-independent executable's pointers in read-only data (vtables, string
        // tables) each need a relocation record, read by the loader at start and then kept
        // resident: about 470 KiB in every proxy process. Packed (DT_RELR) they take a few
        // KiB, and the executable keeps its address randomisation (BENCHMARKS.md, "Sidecar
        // proxies"). The linker then makes the executable require glibc 2.36's
        // `GLIBC_ABI_DT_RELR`, hence only when building on such a glibc for it; linkers older
        // than binutils 2.38 warn and keep the plain records.
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether this machine's glibc (`getconf GNU_LIBC_VERSION`: `glibc 2.36`) is at least
/// `major.minor`; false when it cannot tell.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
