//! `connect-proxy`: `connect proxy` on its own, for sidecars.
//!
//! ```text
//! connect-proxy -service db -service-addr 127.0.0.1:5432 -listen 127.0.0.1:20000
//! connect-proxy -service web -upstream db:9191
//! ```
//!
//! The same flags, environment and behaviour as `connect proxy`: both binaries compile one
//! proxy (`../connect/proxy.rs`) and one flag parser (`../connect/cli.rs`). This one links
//! nothing else — no agent, HTTP server, CA, gRPC or etcd client — so a sidecar, one per
//! service instance, maps far less code than the all-in-one `connect` (BENCHMARKS.md, "Sidecar
//! proxies", has the resident sets side by side).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

// Shared with `connect`, whose client commands use parts the proxy does not.
#[allow(dead_code)]
#[path = "../connect/cli.rs"]
mod cli;
#[path = "../connect/proxy.rs"]
mod proxy;

use std::process::ExitCode;

use clap::Parser;

/// Consul's built-in proxy for one service: inbound mTLS to a local application, and
/// plaintext listeners for upstreams carried over mTLS (the flags of `connect proxy`).
///
/// Flags take one dash, as Consul's do (`-service db`); `--service` works too.
#[derive(Debug, Parser)]
#[command(name = "connect-proxy", version)]
struct Cli {
    #[command(flatten)]
    args: proxy::ProxyArgs,
}

fn main() -> ExitCode {
    match cli::parse_args::<Cli>() {
        Ok(cli) => ExitCode::from(proxy::run(cli.args)),
        Err(code) => ExitCode::from(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
