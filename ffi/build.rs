//! Sets the SONAME of `libconnect.so` (plain cargo sets none). The library is 0.x, so every
//! minor release may break the ABI: the SONAME carries major and minor (ARCHITECTURE.md, C ABI
//! conventions).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "freebsd" || os == "android" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libconnect.so.{major}.{minor}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
