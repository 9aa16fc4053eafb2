//! Links the addon against Node-API (ARCHITECTURE.md, Node conventions).

fn main() {
    napi_build::setup();
}
