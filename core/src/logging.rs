//! Opt-in logs for applications that embed libconnect through C, Python or Node, which have no
//! `tracing` subscriber of their own.
//!
//! `LIBCONNECT_LOG` takes `tracing_subscriber::EnvFilter` directives (`info`, `warn`,
//! `connect_core::tls=debug`, …); when it is set, the first call to [`init_from_env`] installs
//! a subscriber that writes one line per event to standard error. When it is unset nothing is
//! installed, so a Rust application's own subscriber (if any) keeps receiving the events.
//! Events never carry keys or ACL tokens.

use std::sync::OnceLock;

/// The environment variable read by [`init_from_env`].
pub(crate) const LOG_ENV: &str = "LIBCONNECT_LOG";

/// Installs the standard-error subscriber if `LIBCONNECT_LOG` is set and no global subscriber
/// exists yet. Idempotent and cheap after the first call; returns whether this call (or an
/// earlier one) installed it.
pub(crate) fn init_from_env() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let Some(directives) = std::env::var_os(LOG_ENV) else {
            return false;
        };
        let filter =
            tracing_subscriber::EnvFilter::builder().parse_lossy(directives.to_string_lossy());
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init()
            .is_ok()
    })
}
