//! How an agent is set up: its backend, token and datacenter, and the one merge of explicit
//! settings over Consul's environment variables over the defaults that every binding uses.

use std::fmt;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::http::client::{ClientConfig, HttpEndpoint};
use crate::server::Server;
use crate::{Error, ErrorKind, SharedClock};

/// Where the agent gets its data.
#[derive(Debug, Clone)]
pub enum AgentBackend {
    /// Start a `-dev` server in this process.
    Dev,
    /// Use this server, in this process.
    InProcess(Server),
    /// Talk to a `connect agent` or Consul agent over HTTP(S); the requests carry the
    /// configuration's token and datacenter.
    Http(HttpEndpoint),
}

/// How an agent is set up.
#[derive(Clone)]
pub struct AgentConfig {
    /// The data source.
    pub backend: AgentBackend,
    /// The ACL token for every request (`CONSUL_HTTP_TOKEN`).
    pub token: Option<String>,
    /// The datacenter (default: the backend's).
    pub datacenter: Option<String>,
    /// Time for renewals and rotations.
    pub clock: SharedClock,
    /// Upper bound of the random delay before re-issuing leaves after a root rotation
    /// (Consul: 30 s).
    pub root_change_jitter: Duration,
    /// Run on this runtime instead of one the agent owns.
    pub runtime: Option<Handle>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("backend", &self.backend)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("root_change_jitter", &self.root_change_jitter)
            .finish_non_exhaustive()
    }
}

/// Settings given explicitly (a binding's arguments, a builder's setters): each one that is
/// set wins over Consul's environment variables, which win over the defaults. Applied by
/// [`AgentConfig::with_overrides`], the one place where the bindings' options are merged.
#[derive(Clone, Default)]
pub struct AgentOverrides {
    /// The HTTP API's address (over `CONSUL_HTTP_ADDR`).
    pub address: Option<String>,
    /// The ACL token (over `CONSUL_HTTP_TOKEN`); the empty string means no token, even when
    /// the environment names one.
    pub token: Option<String>,
    /// The datacenter (default: the backend's).
    pub datacenter: Option<String>,
    /// A PEM file of CAs to trust for HTTPS (over `CONSUL_CACERT`).
    pub ca_file: Option<String>,
    /// HTTPS for an address without a scheme (over `CONSUL_HTTP_SSL`, either way).
    pub https: Option<bool>,
    /// The bound of the random delay before leaves follow a root rotation.
    pub root_change_jitter: Option<Duration>,
}

impl fmt::Debug for AgentOverrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentOverrides")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("ca_file", &self.ca_file)
            .field("https", &self.https)
            .field("root_change_jitter", &self.root_change_jitter)
            .finish()
    }
}

impl AgentConfig {
    /// An in-process `-dev` server, like `connect agent -dev`.
    pub fn dev() -> AgentConfig {
        AgentConfig {
            backend: AgentBackend::Dev,
            token: None,
            datacenter: None,
            clock: crate::clock::system(),
            root_change_jitter: Duration::from_secs(30),
            runtime: None,
        }
    }

    /// An HTTP agent at `endpoint`, with no token and the peer's datacenter; the environment
    /// is not read.
    pub fn http(endpoint: HttpEndpoint) -> AgentConfig {
        AgentConfig {
            backend: AgentBackend::Http(endpoint),
            ..AgentConfig::dev()
        }
    }

    /// An HTTP agent configured from Consul's environment variables (`CONSUL_HTTP_ADDR`,
    /// `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`, `CONSUL_HTTP_SSL`).
    pub fn from_env() -> AgentConfig {
        AgentConfig::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`AgentConfig::from_env`] over any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> AgentConfig {
        let ClientConfig {
            endpoint,
            token,
            datacenter,
        } = ClientConfig::from_lookup(get);
        AgentConfig {
            token,
            datacenter,
            ..AgentConfig::http(endpoint)
        }
    }

    /// An HTTP agent from `overrides` over Consul's environment variables over the defaults:
    /// what `Agent()` in Python and `new Agent(options)` in Node build.
    pub fn from_env_with(overrides: AgentOverrides) -> Result<AgentConfig, Error> {
        AgentConfig::from_env().with_overrides(overrides)
    }

    /// Like [`AgentConfig::from_env_with`] over any lookup (tests pass a map).
    pub fn from_lookup_with(
        overrides: AgentOverrides,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, Error> {
        AgentConfig::from_lookup(get).with_overrides(overrides)
    }

    /// This configuration with every setting of `overrides` that is set replacing its own.
    /// An address, a CA file or HTTPS describe an HTTP agent: given for any other backend
    /// they are refused with `INVALID_PARAMETER` (HTTPS off is no contradiction).
    pub fn with_overrides(mut self, overrides: AgentOverrides) -> Result<AgentConfig, Error> {
        let AgentOverrides {
            address,
            token,
            datacenter,
            ca_file,
            https,
            root_change_jitter,
        } = overrides;
        match &mut self.backend {
            AgentBackend::Http(endpoint) => {
                if address.is_some() {
                    endpoint.address = address;
                }
                if ca_file.is_some() {
                    endpoint.ca_file = ca_file;
                }
                if let Some(h) = https {
                    endpoint.https = h;
                }
            }
            AgentBackend::Dev | AgentBackend::InProcess(_) => {
                if address.is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidParameter,
                        "an HTTP address applies to HTTP agents, not to an in-process server",
                    ));
                }
                if ca_file.is_some() || https == Some(true) {
                    return Err(Error::new(
                        ErrorKind::InvalidParameter,
                        "a CA file and HTTPS apply to HTTP agents: set an HTTP address first",
                    ));
                }
            }
        }
        if let Some(t) = token {
            // Consul reads an empty token as none; said explicitly, it still hides the
            // environment's.
            self.token = (!t.is_empty()).then_some(t);
        }
        if datacenter.is_some() {
            self.datacenter = datacenter;
        }
        if let Some(j) = root_change_jitter {
            self.root_change_jitter = j;
        }
        Ok(self)
    }

    /// The HTTP client's settings, derived from this configuration (its endpoint, token and
    /// datacenter); `None` unless the backend is HTTP.
    pub fn client_config(&self) -> Option<ClientConfig> {
        match &self.backend {
            AgentBackend::Http(endpoint) => Some(ClientConfig {
                endpoint: endpoint.clone(),
                token: self.token.clone(),
                datacenter: self.datacenter.clone(),
            }),
            AgentBackend::Dev | AgentBackend::InProcess(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ENV: [(&str, &str); 4] = [
        ("CONSUL_HTTP_ADDR", "env.example:8500"),
        ("CONSUL_HTTP_TOKEN", "env-token"),
        ("CONSUL_CACERT", "/env/ca.pem"),
        ("CONSUL_HTTP_SSL", "true"),
    ];

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn endpoint(c: &AgentConfig) -> &HttpEndpoint {
        match &c.backend {
            AgentBackend::Http(e) => e,
            other => panic!("not an HTTP backend: {other:?}"),
        }
    }

    fn all_overrides() -> AgentOverrides {
        AgentOverrides {
            address: Some("opt.example:8501".into()),
            token: Some("opt-token".into()),
            datacenter: Some("dc9".into()),
            ca_file: Some("/opt/ca.pem".into()),
            https: Some(false),
            root_change_jitter: Some(Duration::from_millis(5)),
        }
    }

    #[test]
    fn defaults_apply_when_neither_options_nor_environment_say() {
        let c = AgentConfig::from_lookup_with(AgentOverrides::default(), lookup(&[])).unwrap();
        let e = endpoint(&c);
        assert_eq!(e.address, None);
        assert_eq!(e.base_url().unwrap(), "http://127.0.0.1:8500");
        assert_eq!(e.ca_file, None);
        assert!(!e.https);
        assert_eq!(c.token, None);
        assert_eq!(c.datacenter, None);
        assert_eq!(c.root_change_jitter, Duration::from_secs(30));
    }

    #[test]
    fn the_environment_wins_over_the_defaults() {
        let c = AgentConfig::from_lookup_with(AgentOverrides::default(), lookup(&ENV)).unwrap();
        let e = endpoint(&c);
        assert_eq!(e.address.as_deref(), Some("env.example:8500"));
        assert_eq!(e.ca_file.as_deref(), Some("/env/ca.pem"));
        assert!(e.https);
        assert_eq!(e.base_url().unwrap(), "https://env.example:8500");
        assert_eq!(c.token.as_deref(), Some("env-token"));
        // Empty variables count as unset.
        let empty = ENV.map(|(k, _)| (k, ""));
        let c = AgentConfig::from_lookup_with(AgentOverrides::default(), lookup(&empty)).unwrap();
        assert_eq!(endpoint(&c), &HttpEndpoint::default());
        assert_eq!(c.token, None);
    }

    #[test]
    fn every_option_wins_over_the_environment() {
        let c = AgentConfig::from_lookup_with(all_overrides(), lookup(&ENV)).unwrap();
        let e = endpoint(&c);
        assert_eq!(e.address.as_deref(), Some("opt.example:8501"));
        assert_eq!(e.ca_file.as_deref(), Some("/opt/ca.pem"));
        // HTTPS off said explicitly turns off CONSUL_HTTP_SSL.
        assert!(!e.https);
        assert_eq!(c.token.as_deref(), Some("opt-token"));
        assert_eq!(c.datacenter.as_deref(), Some("dc9"));
        assert_eq!(c.root_change_jitter, Duration::from_millis(5));
        let on = AgentOverrides {
            https: Some(true),
            ..AgentOverrides::default()
        };
        let c = AgentConfig::from_lookup_with(on, lookup(&[])).unwrap();
        assert!(endpoint(&c).https);
    }

    #[test]
    fn options_left_unset_keep_the_environment_field_by_field() {
        for field in 0..4 {
            let mut o = all_overrides();
            match field {
                0 => o.address = None,
                1 => o.token = None,
                2 => o.ca_file = None,
                _ => o.https = None,
            }
            let c = AgentConfig::from_lookup_with(o, lookup(&ENV)).unwrap();
            let e = endpoint(&c);
            let want = |is_env: bool, env: &str, opt: &str| {
                Some(if is_env { env } else { opt }.to_owned())
            };
            assert_eq!(
                e.address,
                want(field == 0, "env.example:8500", "opt.example:8501")
            );
            assert_eq!(c.token, want(field == 1, "env-token", "opt-token"));
            assert_eq!(e.ca_file, want(field == 2, "/env/ca.pem", "/opt/ca.pem"));
            assert_eq!(e.https, field == 3);
        }
    }

    #[test]
    fn an_empty_token_option_means_no_token_even_over_the_environment() {
        let o = AgentOverrides {
            token: Some(String::new()),
            ..AgentOverrides::default()
        };
        let c = AgentConfig::from_lookup_with(o, lookup(&ENV)).unwrap();
        assert_eq!(c.token, None);
        assert_eq!(c.client_config().unwrap().token, None);
    }

    #[test]
    fn the_client_config_is_derived_from_the_one_token_and_datacenter() {
        let c = AgentConfig::from_lookup_with(all_overrides(), lookup(&ENV)).unwrap();
        let client = c.client_config().unwrap();
        assert_eq!(&client.endpoint, endpoint(&c));
        assert_eq!(client.token, c.token);
        assert_eq!(client.datacenter, c.datacenter);
        assert!(!format!("{c:?}").contains("opt-token"));
        assert!(!format!("{:?}", all_overrides()).contains("opt-token"));
        assert!(AgentConfig::dev().client_config().is_none());
    }

    #[test]
    fn a_dev_agent_takes_token_datacenter_and_jitter_but_refuses_http_settings() {
        let o = AgentOverrides {
            token: Some("t".into()),
            datacenter: Some("dc2".into()),
            https: Some(false),
            root_change_jitter: Some(Duration::ZERO),
            ..AgentOverrides::default()
        };
        let c = AgentConfig::dev().with_overrides(o).unwrap();
        assert!(matches!(c.backend, AgentBackend::Dev));
        assert_eq!(c.token.as_deref(), Some("t"));
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.root_change_jitter, Duration::ZERO);
        for o in [
            AgentOverrides {
                https: Some(true),
                ..AgentOverrides::default()
            },
            AgentOverrides {
                ca_file: Some("/ca.pem".into()),
                ..AgentOverrides::default()
            },
            AgentOverrides {
                address: Some("127.0.0.1:8500".into()),
                ..AgentOverrides::default()
            },
        ] {
            let e = AgentConfig::dev().with_overrides(o).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{e}");
        }
    }

    #[test]
    fn an_http_agent_without_the_environment_starts_from_the_defaults() {
        let c = AgentConfig::http(HttpEndpoint::default())
            .with_overrides(all_overrides())
            .unwrap();
        assert_eq!(endpoint(&c).base_url().unwrap(), "http://opt.example:8501");
        let c = AgentConfig::http(HttpEndpoint::default())
            .with_overrides(AgentOverrides::default())
            .unwrap();
        assert_eq!(c.token, None);
        assert_eq!(endpoint(&c), &HttpEndpoint::default());
    }
}
