//! Links the addon against Node-API (conventions 28).

fn main() {
    napi_build::setup();
}
