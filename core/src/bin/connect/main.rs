//! `connect`: the libconnect control plane and its command-line client, in Consul's style.
//!
//! ```text
//! connect agent -dev
//! connect agent -server -data-dir /var/lib/connect -config-file agent.hcl
//! connect intention create -deny '*' db
//! connect intention check web db
//! connect ca roots -pem
//! connect leaf web
//! connect proxy -service db -service-addr 127.0.0.1:5432 -listen 127.0.0.1:20000
//! connect proxy -service web -upstream db:9191
//! connect proxy -service web -upstream db:9191:dc2
//! connect gateway mesh -listen 127.0.0.1:8443 -wan-address 203.0.113.7:8443
//! ```
//!
//! Flags are written as Consul writes them, with one dash (`-data-dir DIR`,
//! `-data-dir=DIR`); the two-dash forms work too. See [`go_style_args`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod agent;
mod client;
mod config_file;
mod gateway;
mod ha;
mod http_server;
mod proxy;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Rewrites Consul's single-dash long flags into the two-dash form clap parses.
///
/// An argument is rewritten when it starts with exactly one `-` followed by a letter and at
/// least one more character (`-dev` → `--dev`, `-data-dir=x` → `--data-dir=x`). One-letter
/// flags (`-h`), negative numbers (`-1`), a lone `-`, arguments that already have two dashes,
/// and everything after a `--` separator are left alone. Arguments that are not valid
/// UTF-8 are left alone too.
pub(crate) fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest {
            out.push(arg);
            continue;
        }
        let rewritten = match arg.to_str() {
            Some("--") => {
                rest = true;
                None
            }
            Some(s) => {
                let mut chars = s.chars();
                let single_dash = chars.next() == Some('-')
                    && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                    && chars.next().is_some();
                single_dash.then(|| OsString::from(format!("-{s}")))
            }
            None => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

/// Shows long flags in Consul's one-dash form in clap's help and error texts (`--data-dir`
/// → `-data-dir`); a bare `--` stays.
fn single_dash(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("--") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let before_ok = !out.ends_with('-');
        if before_ok && after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push('-');
        } else {
            out.push_str("--");
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// libconnect's control plane and client (Consul-compatible).
///
/// Flags take one dash, as Consul's do (`-data-dir DIR`); `--data-dir` works too.
#[derive(Debug, Parser)]
#[command(name = "connect", version, disable_help_subcommand = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `connect agent -h`: the connection limits, which only a configuration file sets.
const AGENT_LIMITS_HELP: &str = "\
HTTP(S) limits, set in a -config-file's `limits { ... }` block (defaults shown):
  http_max_conns_per_client = 200    connections from one client IP (0: no limit); over it, 429 and close
  http_max_conns            = 4096   connections in all, both listeners (at most the open-file limit
                                     allows); over it, 503 and close
  https_handshake_timeout   = \"5s\"   to finish the TLS handshake
  http_header_read_timeout  = \"10s\"  to send a request head (a new connection: to start one); then closed
  http_body_read_timeout    = \"30s\"  to send a request body; then 408 and close
  http_idle_timeout         = \"90s\"  a keep-alive connection with no request running; then closed
A running handler (a blocking query) is never timed out.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the control plane: CA, intentions, ACLs and catalog behind Consul's HTTP API.
    #[command(after_help = AGENT_LIMITS_HELP)]
    Agent(Box<AgentArgs>),
    /// Creates, checks and lists intentions.
    #[command(subcommand)]
    Intention(IntentionCommand),
    /// Reads and changes the CA configuration; lists the roots.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Prints a leaf certificate for SERVICE, then its private key (PEM).
    Leaf {
        #[command(flatten)]
        http: HttpArgs,
        /// The service name.
        service: String,
    },
    /// Runs Consul's built-in proxy for one service: inbound mTLS to a local application,
    /// and plaintext listeners for upstreams carried over mTLS.
    Proxy(Box<ProxyArgs>),
    /// Runs a gateway.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Prints the version.
    Version,
}

/// `connect proxy` flags (Consul's names).
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    /// The service this proxy represents: its identity, and the destination that intentions
    /// name for inbound connections.
    #[arg(long, value_name = "NAME", required = true)]
    pub(crate) service: String,
    /// The local application's address, where inbound connections are forwarded in
    /// plaintext (with -listen).
    #[arg(long = "service-addr", value_name = "ADDR")]
    pub(crate) service_addr: Option<String>,
    /// Address for inbound mTLS (with -service-addr); the instance is registered there.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// An upstream, `NAME:PORT` (plaintext listener on 127.0.0.1:PORT) or `NAME:HOST:PORT`,
    /// each optionally followed by `:DC` for a service in another datacenter; or Consul's
    /// upstream JSON (`{"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 9191,
    /// "MeshGateway": {"Mode": "local"}}`). May be repeated.
    #[arg(long, value_name = "NAME:PORT[:DC]", value_parser = proxy::parse_upstream)]
    pub(crate) upstream: Vec<proxy::Upstream>,
    /// How upstreams in another datacenter use mesh gateways unless they say: none, local or
    /// remote (default none).
    #[arg(long = "mesh-gateway-mode", value_name = "MODE", value_parser = proxy::parse_mesh_gateway_mode)]
    pub(crate) mesh_gateway_mode: Option<connect_core::catalog::MeshGatewayMode>,
    /// Log level: trace, debug, info, warn or error (default info).
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// `connect gateway` kinds.
#[derive(Debug, Subcommand)]
pub(crate) enum GatewayCommand {
    /// A mesh gateway: routes raw TLS by SNI to local instances or to another datacenter's
    /// gateway, without terminating it; registers itself with `Kind: mesh-gateway`.
    Mesh(Box<gateway::MeshGatewayArgs>),
}

/// `connect agent` flags (Consul's names).
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// Development mode: in memory, datacenter dc1, HTTP on 127.0.0.1:8500, intentions
    /// default allow.
    #[arg(long)]
    pub(crate) dev: bool,
    /// Run as a server (the only mode libconnect has; required unless -dev).
    #[arg(long)]
    pub(crate) server: bool,
    /// Directory for the state (SQLite); required unless -dev.
    #[arg(long = "data-dir", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// This datacenter (default dc1).
    #[arg(long, value_name = "NAME")]
    pub(crate) datacenter: Option<String>,
    /// The datacenter that owns the CA root (default: this one).
    #[arg(long = "primary-datacenter", value_name = "NAME")]
    pub(crate) primary_datacenter: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,
    /// Address the HTTP(S) API binds to (default 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub(crate) client: Option<String>,
    /// HTTP port (default 8500; 0 picks a free port; negative disables HTTP).
    #[arg(long = "http-port", value_name = "PORT", allow_negative_numbers = true)]
    pub(crate) http_port: Option<i64>,
    /// HTTPS port (off by default; 0 picks a free port), with a certificate from the CA.
    #[arg(
        long = "https-port",
        value_name = "PORT",
        allow_negative_numbers = true
    )]
    pub(crate) https_port: Option<i64>,
    /// A configuration file, JSON or HCL, with Consul's keys; may be repeated (later files
    /// win, flags win over files).
    #[arg(long = "config-file", value_name = "FILE")]
    pub(crate) config_file: Vec<PathBuf>,
    /// Log level: trace, debug, info, warn or error (default info).
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
    /// A secondary datacenter: the primary server's HTTPS address (`host:port`); may be
    /// repeated, tried in order.
    #[arg(long = "retry-join-wan", value_name = "ADDR")]
    pub(crate) retry_join_wan: Vec<String>,
    /// A secondary datacenter: PEM file with the primary datacenter's CA root, trusted for
    /// the first contact with the primary (Consul's `tls.defaults.ca_file`).
    #[arg(long = "primary-ca-file", value_name = "FILE")]
    pub(crate) primary_ca_file: Option<PathBuf>,
    /// Serve the SPIFFE Workload API on this Unix socket (over `workload_api.socket`);
    /// callers are attested against the `workload_api { workload { ... } }` registrations.
    #[arg(long = "workload-api-socket", value_name = "PATH")]
    pub(crate) workload_api_socket: Option<PathBuf>,
    /// Keep the state in etcd, shared with the datacenter's other servers: an etcd client URL;
    /// may be repeated (replaces `store.etcd.endpoints`).
    #[arg(long = "store-etcd", value_name = "URL")]
    pub(crate) store_etcd: Vec<String>,
    /// The key-encryption key (32 bytes, base64) that seals CA keys and token secrets in etcd
    /// [env: CONNECT_ETCD_KEK_FILE; else `store.etcd.kek_file`].
    #[arg(long = "store-etcd-kek-file", value_name = "FILE")]
    pub(crate) store_etcd_kek_file: Option<PathBuf>,
}

/// Flags of every client command (Consul's names and environment variables).
#[derive(Debug, Clone, Args)]
pub(crate) struct HttpArgs {
    /// Address of the agent: host:port or a URL [env: CONSUL_HTTP_ADDR; default
    /// 127.0.0.1:8500].
    #[arg(long = "http-addr", value_name = "ADDR")]
    pub(crate) http_addr: Option<String>,
    /// ACL token [env: CONSUL_HTTP_TOKEN].
    #[arg(long, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// PEM file of CA certificates to trust for HTTPS [env: CONSUL_CACERT].
    #[arg(long = "ca-file", value_name = "FILE")]
    pub(crate) ca_file: Option<String>,
    /// Datacenter to query (default: the agent's).
    #[arg(long, value_name = "NAME")]
    pub(crate) datacenter: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum IntentionCommand {
    /// Creates an intention from SRC to DST (allow unless -deny); fails if one exists,
    /// unless -replace.
    Create {
        #[command(flatten)]
        http: HttpArgs,
        /// Allow the connection (the default).
        #[arg(long, conflicts_with = "deny")]
        allow: bool,
        /// Deny the connection.
        #[arg(long)]
        deny: bool,
        /// Replace an existing intention with the same source and destination.
        #[arg(long)]
        replace: bool,
        /// Metadata, `key=value`; may be repeated.
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Source service (`*` for any).
        src: String,
        /// Destination service (`*` for any).
        dst: String,
    },
    /// Checks whether SRC may connect to DST: prints Allowed or Denied; exit 0 allowed,
    /// 2 denied, 1 error.
    Check {
        #[command(flatten)]
        http: HttpArgs,
        /// Source service.
        src: String,
        /// Destination service.
        dst: String,
    },
    /// Lists the intentions matching a source or a destination, in precedence order.
    Match {
        #[command(flatten)]
        http: HttpArgs,
        /// Match by source.
        #[arg(
            long,
            conflicts_with = "destination",
            required_unless_present = "destination"
        )]
        source: bool,
        /// Match by destination.
        #[arg(long)]
        destination: bool,
        /// The service name.
        name: String,
    },
    /// Shows one intention, by SRC DST or by ID.
    Get {
        #[command(flatten)]
        http: HttpArgs,
        /// SRC DST, or an intention ID.
        #[arg(num_args = 1..=2, required = true, value_name = "SRC DST | ID")]
        args: Vec<String>,
    },
    /// Deletes one intention, by SRC DST or by ID.
    Delete {
        #[command(flatten)]
        http: HttpArgs,
        /// SRC DST, or an intention ID.
        #[arg(num_args = 1..=2, required = true, value_name = "SRC DST | ID")]
        args: Vec<String>,
    },
    /// Lists every intention.
    List {
        #[command(flatten)]
        http: HttpArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Prints the CA configuration (JSON).
    GetConfig {
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Applies a CA configuration from a JSON file; a new key rotates the root.
    SetConfig {
        #[command(flatten)]
        http: HttpArgs,
        /// The configuration, JSON (`{"Provider": "consul", "Config": {...}}`).
        #[arg(long = "config-file", value_name = "FILE", required = true)]
        config_file: PathBuf,
    },
    /// Prints the CA roots (JSON, or PEM with -pem).
    Roots {
        #[command(flatten)]
        http: HttpArgs,
        /// Print the root certificates as PEM.
        #[arg(long)]
        pem: bool,
    },
}

/// Logs to standard error at `level` (a tracing filter), with the HTTP and TLS libraries
/// held at warn so that a debug level shows libconnect's own events.
pub(crate) fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "{level},hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn"
    ));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The runtime a command runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Runtime {
    /// Worker threads, for the long-running commands (agent, proxy); on the way out,
    /// blocking work still running gets this long to finish.
    MultiThread { grace: Duration },
    /// This thread only, for one request and its answer.
    CurrentThread,
}

/// Runs `f` on a new runtime and returns its exit code; a runtime that cannot start is
/// reported as `Error: ...` with exit code 1.
pub(crate) fn with_runtime(kind: Runtime, f: impl FnOnce(&tokio::runtime::Runtime) -> u8) -> u8 {
    let mut builder = match kind {
        Runtime::MultiThread { .. } => tokio::runtime::Builder::new_multi_thread(),
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: starting the runtime: {e}");
            return 1;
        }
    };
    let code = f(&runtime);
    if let Runtime::MultiThread { grace } = kind {
        runtime.shutdown_timeout(grace);
    }
    code
}

/// Runs a long-lived data-plane command (`proxy`, `gateway mesh`): logging at `log_level`, a
/// multi-thread runtime, `serve` until a signal ends it. What `serve` hands back — also on an
/// error after it registered something — is closed by `close` outside `block_on`, where close
/// waits for the deregistration to reach the agent (inside a runtime it would only start it).
pub(crate) fn serve_until_signal<T>(
    log_level: Option<&str>,
    serve: impl std::future::Future<Output = Result<T, (connect_core::Error, Option<T>)>>,
    close: impl FnOnce(T),
) -> u8 {
    init_logging(log_level.unwrap_or("info"));
    let runtime = Runtime::MultiThread {
        grace: Duration::from_secs(1),
    };
    with_runtime(runtime, |rt| {
        let (code, held) = match rt.block_on(serve) {
            Ok(held) => (0, Some(held)),
            Err((e, held)) => {
                eprintln!("Error: {e}");
                (1, held)
            }
        };
        if let Some(held) = held {
            close(held);
        }
        code
    })
}

/// Waits for SIGINT or SIGTERM; returns its name.
pub(crate) async fn shutdown_signal() -> Result<&'static str, connect_core::Error> {
    use connect_core::{Error, ErrorKind};
    use tokio::signal::unix::{SignalKind, signal};
    let io =
        |e: std::io::Error| Error::new(ErrorKind::Io, format!("installing signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    Ok(tokio::select! {
        _ = term.recv() => "terminated",
        _ = int.recv() => "interrupt",
    })
}

fn main() -> ExitCode {
    let args = go_style_args(std::env::args_os());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and errors name flags as the user writes them: with one dash.
            let text = single_dash(&e.render().to_string());
            if e.use_stderr() {
                eprint!("{text}");
                return ExitCode::from(1);
            }
            print!("{text}");
            return ExitCode::SUCCESS;
        }
    };
    let code = match cli.command {
        Command::Version => {
            println!("connect v{}", connect_core::VERSION);
            0
        }
        Command::Agent(args) => agent::run(*args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Gateway(GatewayCommand::Mesh(args)) => gateway::run(*args),
        Command::Intention(cmd) => client::run(client::ClientCommand::Intention(cmd)),
        Command::Ca(cmd) => client::run(client::ClientCommand::Ca(cmd)),
        Command::Leaf { http, service } => {
            client::run(client::ClientCommand::Leaf { http, service })
        }
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        go_style_args(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap_or_default())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_two_dash() {
        assert_eq!(
            rewrite(&[
                "connect",
                "agent",
                "-dev",
                "-data-dir=/x",
                "-http-port",
                "0",
                "--node",
                "n",
                "-h",
                "-1",
                "-",
                "--",
                "-after"
            ]),
            [
                "connect",
                "agent",
                "--dev",
                "--data-dir=/x",
                "--http-port",
                "0",
                "--node",
                "n",
                "-h",
                "-1",
                "-",
                "--",
                "-after"
            ]
        );
    }

    #[test]
    fn help_shows_one_dash() {
        assert_eq!(
            single_dash("  --data-dir <DIR>  x -- y ---z '--help'"),
            "  -data-dir <DIR>  x -- y ---z '-help'"
        );
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
