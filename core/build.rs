//! Link settings for the crate's executables (`connect`, `connect-proxy`).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // A position-independent executable's pointers in read-only data (vtables, string
        // tables) each need a relocation record, read by the loader at start and then kept
        // resident: about 470 KiB in every proxy process. Packed (DT_RELR, glibc 2.36 and
        // binutils 2.38 or later; older linkers warn and keep the plain records) they take a
        // few KiB, and the executable keeps its address randomisation (BENCHMARKS.md, "Sidecar
        // proxies").
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
