//! What `connect` and `connect-proxy` share: Consul's one-dash flags, the agent flags and
//! environment, logging, and the runtime a command runs on. Both binaries compile this file
//! (`connect-proxy` through `#[path]`), so the proxy alone parses and behaves as `connect proxy`.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser};
use connect_core::agent::{AgentConfig, AgentOverrides};
use connect_core::{Error, ErrorKind};

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
pub(crate) fn single_dash(text: &str) -> String {
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

/// Parses the process's arguments as `P`, in Consul's one-dash style; help and errors are
/// printed with one-dash flags. `Err` carries the exit code: 0 after help or the version,
/// 1 after a usage error.
pub(crate) fn parse_args<P: Parser>() -> Result<P, u8> {
    P::try_parse_from(go_style_args(std::env::args_os())).map_err(|e| {
        // Help and errors name flags as the user writes them: with one dash.
        let text = single_dash(&e.render().to_string());
        if e.use_stderr() {
            eprint!("{text}");
            1
        } else {
            print!("{text}");
            0
        }
    })
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

/// The agent settings: the flags over Consul's environment variables, merged as every
/// binding merges its options.
pub(crate) fn agent_config(http: &HttpArgs) -> Result<AgentConfig, Error> {
    agent_config_from(http, |k| std::env::var(k).ok())
}

/// [`agent_config`] over any lookup of the environment (tests pass a map).
fn agent_config_from(
    http: &HttpArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AgentConfig, Error> {
    AgentConfig::from_lookup_with(
        AgentOverrides {
            address: http.http_addr.clone(),
            token: http.token.clone(),
            datacenter: http.datacenter.clone(),
            ca_file: http.ca_file.clone(),
            ..AgentOverrides::default()
        },
        env,
    )
}

/// Consul's log levels (and `err`, Consul's spelling of `error`), as `tracing` names them.
pub(crate) fn log_level(level: &str) -> Result<&'static str, Error> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "err" | "error" => "error",
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("invalid log level {level:?}: use trace, debug, info, warn or error"),
            ));
        }
    })
}

/// Logs to standard error at `level` (one of [`log_level`]'s), with the HTTP and TLS
/// libraries held at warn so that a debug level shows libconnect's own events.
///
/// A fixed `Targets` filter rather than an `EnvFilter`: the latter compiles its directives
/// with the regex engine, code and heap that every proxy process would keep resident for
/// nothing (BENCHMARKS.md, "Sidecar proxies").
pub(crate) fn init_logging(level: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = level.parse().unwrap_or(LevelFilter::INFO);
    let quiet = LevelFilter::WARN.min(level);
    let filter = Targets::new()
        .with_default(level)
        .with_targets(["hyper", "hyper_util", "reqwest", "rustls"].map(|t| (t, quiet)));
    // The registry, not `fmt()`'s subscriber: that one holds its own INFO ceiling below the
    // filter, which would silence `-log-level debug` and `trace`.
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(filter)
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
    match log_level.map_or(Ok("info"), self::log_level) {
        Ok(level) => init_logging(level),
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    }
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
pub(crate) async fn shutdown_signal() -> Result<&'static str, Error> {
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

    fn env(k: &str) -> Option<String> {
        match k {
            "CONSUL_HTTP_ADDR" => Some("env.example:8500".into()),
            "CONSUL_HTTP_TOKEN" => Some("env-token".into()),
            "CONSUL_CACERT" => Some("/env/ca.pem".into()),
            _ => None,
        }
    }

    #[test]
    fn flags_win_over_the_environment() {
        let http = HttpArgs {
            http_addr: Some("flag.example:8501".into()),
            token: Some("flag-token".into()),
            ca_file: Some("/flag/ca.pem".into()),
            datacenter: Some("dc9".into()),
        };
        let c = agent_config_from(&http, env)
            .unwrap()
            .client_config()
            .unwrap();
        assert_eq!(c.endpoint.address.as_deref(), Some("flag.example:8501"));
        assert_eq!(c.token.as_deref(), Some("flag-token"));
        assert_eq!(c.endpoint.ca_file.as_deref(), Some("/flag/ca.pem"));
        assert_eq!(c.datacenter.as_deref(), Some("dc9"));
    }

    #[test]
    fn the_environment_fills_what_no_flag_says() {
        let http = HttpArgs {
            http_addr: None,
            token: None,
            ca_file: None,
            datacenter: None,
        };
        let c = agent_config_from(&http, env)
            .unwrap()
            .client_config()
            .unwrap();
        assert_eq!(c.endpoint.address.as_deref(), Some("env.example:8500"));
        assert_eq!(c.token.as_deref(), Some("env-token"));
        assert_eq!(c.endpoint.ca_file.as_deref(), Some("/env/ca.pem"));
        assert_eq!(c.datacenter, None);
        // An empty -token hides the environment's, as Consul's CLI does.
        let empty = HttpArgs {
            token: Some(String::new()),
            ..http
        };
        let c = agent_config_from(&empty, env)
            .unwrap()
            .client_config()
            .unwrap();
        assert_eq!(c.token, None);
    }
}
