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
//! `-data-dir=DIR`); the two-dash forms work too. See [`cli::go_style_args`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod agent;
mod cli;
mod client;
mod config_file;
mod gateway;
mod ha;
mod http_server;
mod proxy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cli::HttpArgs;
use proxy::ProxyArgs;

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

fn main() -> ExitCode {
    let cli = match cli::parse_args::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
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

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
