//! The catalog on the server: this node's services (the agent endpoints) and the catalog and
//! health queries, filtered by `service:read` as Consul filters them.

use std::collections::BTreeMap;

use super::Server;
use crate::acl::{AclAuthorizer, Permission};
use crate::catalog::{AgentService, Catalog, CatalogService, ServiceEntry, ServiceRegistration};
use crate::filter::Filter;
use crate::state::{Indexed, Table};
use crate::{Error, ErrorKind};

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
                Ok::<_, Error>(tx.register_service(node, &reg)?)
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

    /// `GET /v1/catalog/services`: names and their tags.
    pub fn catalog_services(
        &self,
        token: Option<&str>,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, Error> {
        let authz = self.authorizer(token)?;
        let Indexed { mut value, index } = self.store().catalog_services();
        value.retain(|name, _| authz.service_read(name));
        Ok(Indexed {
            value,
            index: index.max(1),
        })
    }

    /// `GET /v1/catalog/service/:name` (or `/v1/catalog/connect/:name` with `connect`).
    pub fn catalog_service(
        &self,
        token: Option<&str>,
        name: &str,
        connect: bool,
        filter: Option<&Filter>,
    ) -> Result<Indexed<Vec<CatalogService>>, Error> {
        self.authorizer(token)?
            .require(Permission::ServiceRead(name))?;
        let view = self.store().view();
        let rows = if connect {
            view.catalog().catalog_connect(name)
        } else {
            view.catalog().catalog_service(name)
        };
        let rows = match filter {
            Some(f) => f.apply(rows),
            None => rows,
        };
        Ok(Indexed {
            value: rows,
            index: view.max_index(Table::CATALOG).max(1),
        })
    }

    /// `GET /v1/health/service/:name` and `/v1/health/connect/:name` (Consul API docs, Health).
    pub fn health(
        &self,
        token: Option<&str>,
        name: &str,
        connect: bool,
        passing_only: bool,
        filter: Option<&Filter>,
    ) -> Result<Indexed<Vec<ServiceEntry>>, Error> {
        self.authorizer(token)?
            .require(Permission::ServiceRead(name))?;
        let Indexed { value, index } = if connect {
            self.store().health_connect(name, passing_only)
        } else {
            self.store().health_service(name, passing_only)
        };
        let value = match filter {
            Some(f) => f.apply(value),
            None => value,
        };
        Ok(Indexed {
            value,
            index: index.max(1),
        })
    }
}
