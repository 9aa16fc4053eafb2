//! `Agent`, `agent.intentions` and `agent.ca`.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};

use connect_core::agent::{self, AgentConfig, AgentOverrides};
use connect_core::ca::CaConfiguration;
use connect_core::intentions::IntentionAction;

use crate::errors::{Result, invalid};
use crate::runtime::{self, wait};
use crate::service::Service;

/// The per-process agent: a cache of roots, leaves and intentions over an in-process dev
/// server or a Consul (or `connect agent`) HTTP API.
#[pyclass(frozen, module = "libconnect", name = "Agent")]
pub(crate) struct Agent {
    pub(crate) inner: agent::Agent,
}

fn start(py: Python<'_>, config: AgentConfig) -> Result<Agent> {
    let inner = py.detach(|| agent::Agent::new(config))?;
    Ok(Agent { inner })
}

#[pymethods]
impl Agent {
    #[new]
    #[pyo3(signature = (address=None, token=None, datacenter=None, ca_file=None, *, https=None, root_change_jitter=None))]
    #[allow(clippy::too_many_arguments, reason = "Python keyword arguments")]
    fn new(
        py: Python<'_>,
        address: Option<String>,
        token: Option<String>,
        datacenter: Option<String>,
        ca_file: Option<String>,
        https: Option<bool>,
        root_change_jitter: Option<f64>,
    ) -> Result<Self> {
        let config = AgentConfig::from_env_with(AgentOverrides {
            address,
            token,
            datacenter,
            ca_file,
            https,
            root_change_jitter: runtime::timeout(root_change_jitter)?,
        })?;
        start(py, config)
    }

    /// An agent with an in-process `-dev` server (like `connect agent -dev`).
    #[staticmethod]
    #[pyo3(signature = (*, root_change_jitter=None))]
    fn dev(py: Python<'_>, root_change_jitter: Option<f64>) -> Result<Self> {
        let config = AgentConfig::dev().with_overrides(AgentOverrides {
            root_change_jitter: runtime::timeout(root_change_jitter)?,
            ..AgentOverrides::default()
        })?;
        start(py, config)
    }

    #[getter]
    fn datacenter(&self) -> &str {
        self.inner.datacenter()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    #[getter]
    fn intentions(&self) -> Intentions {
        Intentions {
            agent: self.inner.clone(),
        }
    }

    #[getter]
    fn ca(&self) -> Ca {
        Ca {
            agent: self.inner.clone(),
        }
    }

    #[pyo3(signature = (name, *, ready_timeout=Some(10.0)), text_signature = "(self, /, name, *, ready_timeout=10.0)")]
    fn service(&self, py: Python<'_>, name: &str, ready_timeout: Option<f64>) -> Result<Service> {
        let limit = runtime::timeout(ready_timeout)?;
        let svc = Service::new(self.inner.service(name)?);
        if limit != Some(Duration::ZERO) {
            svc.ready_wait(py, limit)?;
        }
        Ok(svc)
    }

    /// Checks a JWT-SVID for `audience`; returns its claims (`sub` is the SPIFFE ID).
    fn validate_jwt_svid<'py>(
        &self,
        py: Python<'py>,
        token: &str,
        audience: &str,
    ) -> Result<Bound<'py, PyAny>> {
        let valid = wait(py, None, "validate_jwt_svid", async move {
            Ok(self.inner.validate_jwt_svid(token, audience).await?)
        })?;
        let text = serde_json::Value::Object(valid.claims).to_string();
        Ok(py.import("json")?.call_method1("loads", (text,))?)
    }

    fn close(&self) {
        self.inner.close();
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        _exc_type: Option<Bound<'_, PyType>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<libconnect.Agent datacenter={:?} closed={}>",
            self.inner.datacenter(),
            if self.inner.is_closed() {
                "True"
            } else {
                "False"
            }
        )
    }
}

fn action(name: &str) -> Result<IntentionAction> {
    IntentionAction::from_name(name)
        .ok_or_else(|| invalid(format!("action must be 'allow' or 'deny', got {name:?}")))
}

/// `agent.intentions`: who may connect to whom.
#[pyclass(frozen, module = "libconnect", name = "Intentions")]
pub(crate) struct Intentions {
    agent: agent::Agent,
}

#[pymethods]
impl Intentions {
    fn upsert(&self, py: Python<'_>, source: &str, destination: &str, action: &str) -> Result<()> {
        let action = self::action(action)?;
        wait(py, None, "intentions.upsert", async move {
            Ok(self
                .agent
                .intention_upsert(source, destination, action)
                .await?)
        })
    }

    fn delete(&self, py: Python<'_>, source: &str, destination: &str) -> Result<()> {
        wait(py, None, "intentions.delete", async move {
            Ok(self.agent.intention_delete(source, destination).await?)
        })
    }

    fn check(&self, py: Python<'_>, source: &str, destination: &str) -> Result<bool> {
        wait(py, None, "intentions.check", async move {
            Ok(self.agent.intention_check(source, destination).await?)
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<libconnect.Intentions datacenter={:?}>",
            self.agent.datacenter()
        )
    }
}

/// `agent.ca`: the certificate authority's roots and configuration.
#[pyclass(frozen, module = "libconnect", name = "CA")]
pub(crate) struct Ca {
    agent: agent::Agent,
}

#[pymethods]
impl Ca {
    fn roots_pem<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>> {
        let pem = wait(py, None, "ca.roots_pem", async move {
            Ok(self.agent.roots().await?.roots_pem())
        })?;
        Ok(PyBytes::new(py, pem.as_bytes()))
    }

    #[pyo3(signature = (provider, config=None, *, force_without_cross_signing=false))]
    fn set_config(
        &self,
        py: Python<'_>,
        provider: String,
        config: Option<Bound<'_, PyAny>>,
        force_without_cross_signing: bool,
    ) -> Result<()> {
        // Any JSON-able mapping: through `json.dumps`, so nested values keep their types.
        let map = match config {
            None => serde_json::Map::new(),
            Some(c) => {
                let text: String = py.import("json")?.call_method1("dumps", (c,))?.extract()?;
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => return Err(invalid("config must be a mapping of provider options")),
                }
            }
        };
        let mut ca = CaConfiguration::consul(map);
        ca.provider = provider;
        ca.force_without_cross_signing = force_without_cross_signing;
        wait(py, None, "ca.set_config", async move {
            Ok(self.agent.ca_set_config(ca).await?)
        })
    }

    fn __repr__(&self) -> String {
        format!("<libconnect.CA datacenter={:?}>", self.agent.datacenter())
    }
}
