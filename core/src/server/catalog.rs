//! The catalog on the server: this node's services (the agent endpoints) and the catalog and
//! health queries, filtered by `service:read` as Consul filters them.

use std::collections::BTreeMap;

use super::Server;
use crate::acl::{ANONYMOUS_TOKEN_ACCESSOR_ID, AclAuthorizer, Permission};
use crate::catalog::{
    AgentService, Catalog, CatalogService, CheckRegistration, HealthCheck, HealthStatus, Node,
    NodeServices, ServiceEntry, ServiceRegistration,
};

/// `/v1/catalog/services`: every service name with its instances' tags.
pub type ServiceNames = BTreeMap<String, Vec<String>>;
use crate::duration::parse_go_duration;
use crate::filter::Filter;
use crate::state::{Indexed, Table};
use crate::{Error, ErrorKind};

/// The node-level check every node carries in Consul (its gossip health); this node is alive
/// while it answers, so it is always passing.
pub const SERF_HEALTH_CHECK_ID: &str = "serfHealth";
/// The prefix of a service's maintenance check ID (`_service_maintenance:<service id>`), as
/// Consul names it.
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";
/// The note of a maintenance check enabled without a reason (Consul's text).
const DEFAULT_MAINTENANCE_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a \
     default message.";
/// The output of a TTL check that was not updated in time (Consul's text).
pub const TTL_EXPIRED: &str = "TTL expired";
/// Longest check output kept, in bytes (Consul's default `check_output_max_size`).
pub const CHECK_OUTPUT_MAX: usize = 4096;

/// What a catalog or health query of one service asks besides its name (Consul API docs,
/// Catalog and Health: `?tag=`, `?node-meta=`, `?passing`, `?filter=`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServiceQuery {
    /// The Connect-capable endpoints of the service (`/connect/`) rather than its instances.
    pub connect: bool,
    /// Tags every returned instance carries (`?tag=`, repeatable: all must match).
    pub tags: Vec<String>,
    /// Node metadata every returned instance's node carries (`?node-meta=key:value`,
    /// repeatable: all must match).
    pub node_meta: Vec<(String, String)>,
    /// Only instances whose every check passes (`?passing`; health endpoints only).
    pub passing_only: bool,
    /// `?filter=`.
    pub filter: Option<Filter>,
}

/// What a one-service query reads of each result: the instance's tags, its node's metadata,
/// its service name and its node's name.
type RowParts<'a> = (&'a [String], &'a BTreeMap<String, String>, &'a str, &'a str);

impl ServiceQuery {
    /// The results of the query of `name` that the token may read: `?tag=` and `?node-meta=`,
    /// then `service:read` on each instance's service and `node:read` on its node (Consul API
    /// docs, Catalog and Health: both are required), then `?filter=`. Consul answers a Connect query only to a
    /// token that may read the destination, and anyone else with an empty list.
    fn select<T: serde::Serialize>(
        &self,
        authz: &AclAuthorizer,
        name: &str,
        rows: Vec<T>,
        parts: impl Fn(&T) -> RowParts<'_>,
    ) -> AclFiltered<Vec<T>> {
        if self.connect && !authz.service_read(name) {
            return AclFiltered::default();
        }
        let rows = rows
            .into_iter()
            .filter(|r| {
                let (tags, meta, _, _) = parts(r);
                self.tags.iter().all(|t| tags.contains(t))
                    && self.node_meta.iter().all(|(k, v)| meta.get(k) == Some(v))
            })
            .collect();
        acl_filter(authz, rows, |a, r| {
            let (_, _, service, node) = parts(r);
            a.service_read(service) && a.node_read(node)
        })
        .with_filter(self.filter.as_ref())
    }
}

/// Parses one `?node-meta=key:value` (Consul splits at the first `:`; a value may be empty).
pub fn parse_node_meta(pair: &str) -> Result<(String, String), Error> {
    match pair.split_once(':') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(Error::new(
            ErrorKind::InvalidParameter,
            format!("Invalid node-meta {pair:?}: expected key:value"),
        )),
    }
}

/// A read's result after ACL filtering: `filtered_by_acls` when something the token may not
/// see was left out and the token is not anonymous — Consul's
/// `X-Consul-Results-Filtered-By-ACLs`, which it never sets for an anonymous request, so as not
/// to tell strangers that hidden entries exist (Consul API docs, API structure).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AclFiltered<T> {
    /// What the token may see.
    pub value: T,
    /// Whether something was left out (for an authenticated token only).
    pub filtered_by_acls: bool,
}

/// Keeps the items `allowed` passes; says whether any was dropped, for an authenticated token.
fn acl_filter<T>(
    authz: &AclAuthorizer,
    mut items: Vec<T>,
    allowed: impl Fn(&AclAuthorizer, &T) -> bool,
) -> AclFiltered<Vec<T>> {
    let before = items.len();
    items.retain(|i| allowed(authz, i));
    AclFiltered {
        filtered_by_acls: items.len() != before && authenticated(authz),
        value: items,
    }
}

impl<T: serde::Serialize> AclFiltered<Vec<T>> {
    /// Keeps the items `?filter=` passes, after ACL filtering (as Consul orders them).
    fn with_filter(mut self, filter: Option<&Filter>) -> Self {
        if let Some(f) = filter {
            self.value = f.apply(self.value);
        }
        self
    }
}

fn authenticated(authz: &AclAuthorizer) -> bool {
    authz
        .accessor_id()
        .is_some_and(|id| id != ANONYMOUS_TOKEN_ACCESSOR_ID)
}

/// Whether the token may read a check: its service's, or for a node check its node's.
fn check_readable(authz: &AclAuthorizer, check: &HealthCheck) -> bool {
    if check.service_id.is_empty() {
        authz.node_read(&check.node)
    } else {
        authz.service_read(&check.service_name)
    }
}

/// What writing a check needs: `service:write` on its service, `node:write` for a node check.
fn require_check_write(authz: &AclAuthorizer, check: &HealthCheck) -> Result<(), Error> {
    if check.service_id.is_empty() {
        authz.require(Permission::NodeWrite(&check.node))?;
    } else {
        authz.require(Permission::ServiceWrite(&check.service_name))?;
    }
    Ok(())
}

fn unknown_service(service_id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("Unknown service ID {service_id:?}"),
    )
}

/// Consul's bound on a check's output: longer output is cut, and says so.
fn bounded_output(output: &str) -> String {
    if output.len() <= CHECK_OUTPUT_MAX {
        return output.to_owned();
    }
    let mut end = CHECK_OUTPUT_MAX;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{} ... (captured {end} of {} bytes)",
        &output[..end],
        output.len()
    )
}

/// Consul's `vetServiceRegister` and `vetCheckRegister`: replacing an instance needs write on
/// the service that holds its ID now, and taking over a check ID needs write on whatever owns
/// the check now (its service, or the node for a node check). Without this, `service:write` on
/// `web` could overwrite `db`'s instance, or move its checks, by reusing their IDs.
fn vet_replacement(
    authz: &AclAuthorizer,
    catalog: &Catalog,
    node: &str,
    reg: &ServiceRegistration,
) -> Result<(), Error> {
    if let Some(existing) = catalog.service(node, &reg.id)
        && existing.service != reg.name
    {
        authz.require(Permission::ServiceWrite(&existing.service))?;
    }
    for check in reg.health_checks(node) {
        let Some(existing) = catalog.check(node, &check.check_id) else {
            continue;
        };
        if existing.service_id == reg.id {
            // This instance's own check; the instance was vetted above.
            continue;
        }
        if existing.service_id.is_empty() {
            authz.require(Permission::NodeWrite(node))?;
        } else {
            authz.require(Permission::ServiceWrite(&existing.service_name))?;
        }
    }
    Ok(())
}

impl Server {
    /// `PUT /v1/agent/service/register`: registers an instance on this node
    /// (`service:write` on its name; for a proxy also on its destination).
    pub fn register_service(
        &self,
        token: Option<&str>,
        mut reg: ServiceRegistration,
    ) -> Result<AgentService, Error> {
        reg.normalize();
        reg.validate()?;
        let authz = self.authorizer(token)?;
        authz.require(Permission::ServiceWrite(&reg.name))?;
        if let Some(dest) = reg
            .proxy
            .as_ref()
            .map(|p| p.destination_service_name.clone())
            && !dest.is_empty()
        {
            authz.require(Permission::ServiceWrite(&dest))?;
        }
        let node = &self.config().node_name;
        // What is registered now is checked inside the write, so that no registration can
        // slip in between the check and the replacement.
        Ok(self
            .store()
            .write(|tx| {
                vet_replacement(&authz, tx.catalog(), node, &reg)?;
                let service = tx.register_service(node, &reg)?;
                for check in reg.health_checks(node) {
                    self.reset_ttl(&check);
                }
                Ok::<_, Error>(service)
            })?
            .value)
    }

    /// `PUT /v1/agent/service/deregister/:id`.
    pub fn deregister_service(&self, token: Option<&str>, service_id: &str) -> Result<(), Error> {
        let node = &self.config().node_name;
        let view = self.store().view();
        let service = view.catalog().service(node, service_id).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("Unknown service ID {service_id:?}"),
            )
        })?;
        self.authorizer(token)?
            .require(Permission::ServiceWrite(&service.service))?;
        self.store().deregister_service(node, service_id)?;
        Ok(())
    }

    /// `GET /v1/agent/services`: this node's instances by ID, those the token may read.
    pub fn agent_services(
        &self,
        token: Option<&str>,
        filter: Option<&Filter>,
    ) -> Result<BTreeMap<String, AgentService>, Error> {
        let authz = self.authorizer(token)?;
        let view = self.store().view();
        let mut out = BTreeMap::new();
        for s in view.catalog().node_services(&self.config().node_name) {
            if authz.service_read(&s.service)
                && filter.is_none_or(|f| serde_json::to_value(s).is_ok_and(|v| f.matches(&v)))
            {
                out.insert(s.id.clone(), s.clone());
            }
        }
        Ok(out)
    }

    /// `GET /v1/catalog/services`: names and their tags, those the token may read.
    pub fn catalog_services(
        &self,
        token: Option<&str>,
    ) -> Result<Indexed<AclFiltered<ServiceNames>>, Error> {
        let authz = self.authorizer(token)?;
        let Indexed { mut value, index } = self.store().catalog_services();
        let before = value.len();
        value.retain(|name, _| authz.service_read(name));
        Ok(Indexed {
            value: AclFiltered {
                filtered_by_acls: value.len() != before && authenticated(&authz),
                value,
            },
            index: index.max(1),
        })
    }

    /// `GET /v1/catalog/service/:name` (or `/v1/catalog/connect/:name` with
    /// [`ServiceQuery::connect`]): the rows the token may read — an empty list, not an error,
    /// for a token that may read none, as Consul answers.
    pub fn catalog_service(
        &self,
        token: Option<&str>,
        name: &str,
        query: &ServiceQuery,
    ) -> Result<Indexed<AclFiltered<Vec<CatalogService>>>, Error> {
        let authz = self.authorizer(token)?;
        let view = self.store().view();
        let rows = if query.connect {
            view.catalog().catalog_connect(name)
        } else {
            view.catalog().catalog_service(name)
        };
        let value = query.select(&authz, name, rows, |r| {
            (&r.service_tags, &r.node_meta, &r.service_name, &r.node)
        });
        let index = view.max_index(Table::CATALOG).max(1);
        Ok(Indexed { value, index })
    }

    /// `GET /v1/health/service/:name` and `/v1/health/connect/:name` (Consul API docs, Health):
    /// the entries the token may read, each with its node's and its own checks.
    pub fn health(
        &self,
        token: Option<&str>,
        name: &str,
        query: &ServiceQuery,
    ) -> Result<Indexed<AclFiltered<Vec<ServiceEntry>>>, Error> {
        let authz = self.authorizer(token)?;
        let Indexed { value, index } = if query.connect {
            self.store().health_connect(name, query.passing_only)
        } else {
            self.store().health_service(name, query.passing_only)
        };
        let value = query.select(&authz, name, value, |e| {
            (
                &e.service.tags,
                &e.node.meta,
                &e.service.service,
                &e.node.node,
            )
        });
        let index = index.max(1);
        Ok(Indexed { value, index })
    }

    /// `GET /v1/agent/service/:id`: one instance on this node (`service:read` on it).
    pub fn agent_service(
        &self,
        token: Option<&str>,
        service_id: &str,
    ) -> Result<AgentService, Error> {
        let authz = self.authorizer(token)?;
        let view = self.store().view();
        let service = view
            .catalog()
            .service(&self.config().node_name, service_id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("unknown service ID: {service_id}"),
                )
            })?;
        authz.require(Permission::ServiceRead(&service.service))?;
        Ok(service.clone())
    }

    /// `GET /v1/agent/checks`: this node's checks by ID, those the token may read.
    pub fn agent_checks(
        &self,
        token: Option<&str>,
        filter: Option<&Filter>,
    ) -> Result<BTreeMap<String, HealthCheck>, Error> {
        let authz = self.authorizer(token)?;
        let view = self.store().view();
        let checks = view
            .catalog()
            .node_checks(&self.config().node_name)
            .cloned()
            .collect();
        let checks = acl_filter(&authz, checks, check_readable).with_filter(filter);
        Ok(checks
            .value
            .into_iter()
            .map(|c| (c.check_id.clone(), c))
            .collect())
    }

    /// `PUT /v1/agent/check/register`: a TTL check on this node, of one of its instances when
    /// `ServiceID` is set (`service:write` on it; `node:write` for a node check). Replacing a
    /// check needs write on whatever owns it now.
    pub fn register_check(
        &self,
        token: Option<&str>,
        reg: CheckRegistration,
    ) -> Result<HealthCheck, Error> {
        let authz = self.authorizer(token)?;
        let node = &self.config().node_name;
        Ok(self
            .store()
            .write(|tx| {
                let service = if reg.service_id.is_empty() {
                    None
                } else {
                    Some(
                        tx.catalog()
                            .service(node, &reg.service_id)
                            .cloned()
                            .ok_or_else(|| unknown_service(&reg.service_id))?,
                    )
                };
                let check = reg.to_health_check(node, service.as_ref());
                require_check_write(&authz, &check)?;
                if let Some(existing) = tx.catalog().check(node, &check.check_id) {
                    require_check_write(&authz, existing)?;
                }
                self.reset_ttl(&check);
                Ok::<_, Error>(tx.register_check(check)?)
            })?
            .value)
    }

    /// `PUT /v1/agent/check/deregister/:id`.
    pub fn deregister_check(&self, token: Option<&str>, check_id: &str) -> Result<(), Error> {
        let authz = self.authorizer(token)?;
        let node = &self.config().node_name;
        self.store().write(|tx| {
            if let Some(existing) = tx.catalog().check(node, check_id) {
                require_check_write(&authz, existing)?;
            }
            Ok::<_, Error>(tx.deregister_check(node, check_id)?)
        })?;
        Ok(())
    }

    /// `PUT /v1/agent/check/pass|warn|fail/:id` and `/v1/agent/check/update/:id`: sets a TTL
    /// check's status and output (cut at [`CHECK_OUTPUT_MAX`] bytes, as Consul does), with
    /// write on its service (or node). Only TTL checks are updated through the API, as in Consul.
    pub fn update_check(
        &self,
        token: Option<&str>,
        check_id: &str,
        status: HealthStatus,
        output: &str,
    ) -> Result<HealthCheck, Error> {
        let authz = self.authorizer(token)?;
        let node = &self.config().node_name;
        let output = bounded_output(output);
        Ok(self
            .store()
            .write(|tx| {
                let existing = tx.catalog().check(node, check_id).ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."),
                    )
                })?;
                require_check_write(&authz, existing)?;
                if existing.check_type != "ttl" {
                    return Err(Error::new(
                        ErrorKind::InvalidParameter,
                        format!("CheckID {check_id:?} does not have associated TTL"),
                    ));
                }
                // Inside the write: an expiry pass (also a write) never sees this update
                // with the old deadline.
                self.reset_ttl(existing);
                Ok(tx.update_check(node, check_id, status, &output)?)
            })?
            .value)
    }

    /// Turns critical, with Consul's output `TTL expired`, every TTL check of this node not
    /// updated within its TTL since it was registered or last updated (Consul docs: Health
    /// checks, TTL); a check met first here (after a restart) starts its timer now. Returns
    /// when the next check is due; [`Server::run_ttl_expiry`] calls it in a loop.
    pub fn expire_ttl_checks(&self) -> Result<Option<time::OffsetDateTime>, Error> {
        let now = self.clock().now();
        let node = &self.config().node_name;
        let next = self.store().write(|tx| {
            let mut deadlines = self.ttl_deadlines();
            let checks: Vec<HealthCheck> = tx
                .catalog()
                .node_checks(node)
                .filter(|c| c.check_type == "ttl")
                .cloned()
                .collect();
            deadlines.retain(|id, _| checks.iter().any(|c| c.check_id == *id));
            let mut next: Option<time::OffsetDateTime> = None;
            for c in checks {
                let Ok(ttl) = parse_go_duration(&c.definition.ttl) else {
                    continue;
                };
                let deadline = *deadlines.entry(c.check_id.clone()).or_insert(now + ttl);
                if deadline > now {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                } else if c.status != HealthStatus::Critical || c.output != TTL_EXPIRED {
                    tx.update_check(node, &c.check_id, HealthStatus::Critical, TTL_EXPIRED)?;
                }
            }
            Ok::<_, Error>(next)
        })?;
        Ok(next.value)
    }

    /// Runs [`Server::expire_ttl_checks`] for as long as the returned future is polled: at the
    /// next check's deadline, and at least every second so that a check registered meanwhile
    /// is seen (Consul's agent runs a timer per check). `connect agent` and an [`Agent`] with
    /// its own in-process server spawn it; dropping or aborting the task stops it.
    ///
    /// [`Agent`]: crate::agent::Agent
    pub async fn run_ttl_expiry(self) {
        let most = std::time::Duration::from_secs(1);
        loop {
            let s = self.clone();
            let next = match tokio::task::spawn_blocking(move || s.expire_ttl_checks()).await {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "expiring TTL checks failed");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiring TTL checks panicked");
                    None
                }
            };
            let wait = next
                .and_then(|d| std::time::Duration::try_from(d - self.clock().now()).ok())
                .map_or(most, |d| d.min(most));
            tokio::time::sleep(wait).await;
        }
    }

    /// Restarts a TTL check's timer (registration and every update), as Consul's agent does.
    fn reset_ttl(&self, check: &HealthCheck) {
        if check.check_type != "ttl" {
            return;
        }
        if let Ok(ttl) = parse_go_duration(&check.definition.ttl) {
            let deadline = self.clock().now() + ttl;
            self.ttl_deadlines()
                .insert(check.check_id.clone(), deadline);
        }
    }

    fn ttl_deadlines(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, time::OffsetDateTime>> {
        self.inner
            .ttl_deadlines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `PUT /v1/agent/service/maintenance/:id`: with `enable`, adds the critical
    /// `_service_maintenance:<id>` check (its notes the reason), which takes the instance out
    /// of `?passing`; without, removes it (`service:write` on the instance).
    pub fn service_maintenance(
        &self,
        token: Option<&str>,
        service_id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), Error> {
        let authz = self.authorizer(token)?;
        let node = &self.config().node_name;
        let check_id = format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}");
        self.store().write(|tx| {
            let service = tx
                .catalog()
                .service(node, service_id)
                .cloned()
                .ok_or_else(|| unknown_service(service_id))?;
            authz.require(Permission::ServiceWrite(&service.service))?;
            if !enable {
                if tx.catalog().check(node, &check_id).is_some() {
                    tx.deregister_check(node, &check_id)?;
                }
                return Ok::<_, Error>(());
            }
            let mut check = HealthCheck::node_check(node, &check_id, HealthStatus::Critical);
            check.name = "Service Maintenance Mode".to_owned();
            check.notes = if reason.is_empty() {
                DEFAULT_MAINTENANCE_REASON
            } else {
                reason
            }
            .to_owned();
            check.service_id = service.id.clone();
            check.check_type = "maintenance".to_owned();
            tx.register_check(check)?;
            Ok(())
        })?;
        Ok(())
    }

    /// `GET /v1/catalog/nodes`: the nodes the token may read (`node:read`), with
    /// `?node-meta=` and `?filter=`.
    pub fn catalog_nodes(
        &self,
        token: Option<&str>,
        node_meta: &[(String, String)],
        filter: Option<&Filter>,
    ) -> Result<Indexed<AclFiltered<Vec<Node>>>, Error> {
        let authz = self.authorizer(token)?;
        let view = self.store().view();
        let nodes = view
            .catalog()
            .nodes()
            .filter(|n| node_meta.iter().all(|(k, v)| n.meta.get(k) == Some(v)))
            .cloned()
            .collect();
        let value = acl_filter(&authz, nodes, |a, n| a.node_read(&n.node)).with_filter(filter);
        Ok(Indexed {
            value,
            index: view.max_index(&[Table::Nodes]).max(1),
        })
    }

    /// `GET /v1/catalog/node/:node`: the node and its instances the token may read, or `None`
    /// (Consul's `null`) for a node that does not exist or that the token may not read.
    pub fn catalog_node(
        &self,
        token: Option<&str>,
        node: &str,
    ) -> Result<Indexed<AclFiltered<Option<NodeServices>>>, Error> {
        let authz = self.authorizer(token)?;
        let view = self.store().view();
        let index = view.max_index(Table::CATALOG).max(1);
        let Some(n) = view.catalog().node(node) else {
            return Ok(Indexed {
                value: AclFiltered::default(),
                index,
            });
        };
        if !authz.node_read(&n.node) {
            return Ok(Indexed {
                value: AclFiltered {
                    value: None,
                    filtered_by_acls: authenticated(&authz),
                },
                index,
            });
        }
        let services = view.catalog().node_services(node).cloned().collect();
        let services = acl_filter(&authz, services, |a, s| a.service_read(&s.service));
        Ok(Indexed {
            value: AclFiltered {
                filtered_by_acls: services.filtered_by_acls,
                value: Some(NodeServices {
                    node: n.clone(),
                    services: services
                        .value
                        .into_iter()
                        .map(|s| (s.id.clone(), s))
                        .collect(),
                }),
            },
            index,
        })
    }

    /// The checks `select` picks, those the token may read, with `?filter=`: the one
    /// implementation of `/v1/health/node/:node`, `/v1/health/checks/:service` and
    /// `/v1/health/state/:state` (Consul API docs, Health).
    pub fn health_checks(
        &self,
        token: Option<&str>,
        select: &HealthChecksOf,
        filter: Option<&Filter>,
    ) -> Result<Indexed<AclFiltered<Vec<HealthCheck>>>, Error> {
        let authz = self.authorizer(token)?;
        let view = self.store().view();
        let catalog = view.catalog();
        let checks: Vec<HealthCheck> = match select {
            HealthChecksOf::Node(node) => catalog.node_checks(node).cloned().collect(),
            HealthChecksOf::Service(name) => catalog
                .checks()
                .filter(|c| !c.service_id.is_empty() && c.service_name == *name)
                .cloned()
                .collect(),
            HealthChecksOf::State(state) => catalog
                .checks()
                .filter(|c| state.is_none_or(|s| c.status == s))
                .cloned()
                .collect(),
        };
        let value = acl_filter(&authz, checks, check_readable).with_filter(filter);
        Ok(Indexed {
            value,
            index: view.max_index(Table::CATALOG).max(1),
        })
    }

    /// The node this server runs on, registered so that agent-local services have a node: with
    /// a UUID made once and kept in the store (Consul's node ID), and Consul's `serfHealth`
    /// node check, passing while this agent answers.
    pub(super) fn register_self(&self) -> Result<(), Error> {
        let c = self.config();
        self.store().write(|tx| {
            let existing = tx.catalog().node(&c.node_name).cloned();
            let mut node = Node::new(&c.node_name, &c.node_address, &c.datacenter);
            if let Some(old) = existing {
                node.meta = old.meta;
                node.id = old.id;
            }
            if node.id.is_empty() {
                node.id = uuid::Uuid::new_v4().to_string();
            }
            tx.register_node(node)?;
            if tx
                .catalog()
                .check(&c.node_name, SERF_HEALTH_CHECK_ID)
                .is_none()
            {
                let mut serf = HealthCheck::node_check(
                    &c.node_name,
                    SERF_HEALTH_CHECK_ID,
                    HealthStatus::Passing,
                );
                serf.name = "Serf Health Status".to_owned();
                serf.output = "Agent alive and reachable".to_owned();
                tx.register_check(serf)?;
            }
            Ok::<_, Error>(())
        })?;
        Ok(())
    }
}

/// Which checks [`Server::health_checks`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthChecksOf {
    /// Every check on a node, node-level and of its instances (`/v1/health/node/:node`).
    Node(String),
    /// The checks of a service's instances (`/v1/health/checks/:service`).
    Service(String),
    /// Checks in one state, or all with `None` (`/v1/health/state/:state`, `any`).
    State(Option<HealthStatus>),
}
