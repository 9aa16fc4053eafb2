//! The README's endpoint matrix is generated from the router's table
//! (`connect_core::http::api::endpoints`): this test fails when the README section is stale,
//! and `CONNECT_BLESS=1` rewrites it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::Path;

const BEGIN: &str = "<!-- endpoints:begin (generated from the router's table by core/tests/readme_endpoints.rs; CONNECT_BLESS=1 rewrites) -->\n";
const END: &str = "<!-- endpoints:end -->";

#[test]
fn the_readme_endpoint_matrix_is_the_routers_table() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let start = text
        .find(BEGIN)
        .expect("the README has the endpoints:begin marker")
        + BEGIN.len();
    let end = start
        + text[start..]
            .find(END)
            .expect("the README has the endpoints:end marker");
    let generated = connect_core::http::api::compatibility_matrix();
    if std::env::var_os("CONNECT_BLESS").is_some() {
        let updated = format!("{}{generated}{}", &text[..start], &text[end..]);
        std::fs::write(&readme, updated).unwrap();
        return;
    }
    assert!(
        text[start..end] == generated,
        "README.md's endpoint matrix is stale: run CONNECT_BLESS=1 cargo test -p connect-core \
         --features cli --test readme_endpoints"
    );
}

#[test]
fn every_served_endpoint_is_in_the_matrix_once() {
    let endpoints = connect_core::http::api::endpoints();
    let mut seen = std::collections::BTreeSet::new();
    for e in &endpoints {
        assert!(
            seen.insert((e.method, e.path)),
            "{} {} listed twice",
            e.method,
            e.path
        );
        assert!(e.path.starts_with("/v1/"), "{}", e.path);
    }
    assert!(endpoints.len() > 50);
}
