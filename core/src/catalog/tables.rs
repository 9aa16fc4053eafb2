//! The catalog's three tables and the queries the health and catalog endpoints answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{AgentService, CatalogService, HealthCheck, Node, ServiceEntry};

/// Services and checks are keyed by `(node, id)`: IDs are only unique on their node.
type NodeScoped<T> = BTreeMap<(String, String), Arc<T>>;

/// Nodes, service instances and health checks of one datacenter.
///
/// Cloning is cheap (three reference counts) and a clone is an immutable snapshot: writes go
/// through the state store, which copies only the table it changes. Rows are `Arc`s so that
/// copying a table copies pointers, not services.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    nodes: Arc<BTreeMap<String, Arc<Node>>>,
    services: Arc<NodeScoped<AgentService>>,
    checks: Arc<NodeScoped<HealthCheck>>,
}

impl Catalog {
    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|n| &**n)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|n| &**n)
    }

    /// The service instance `service_id` on `node`.
    pub fn service(&self, node: &str, service_id: &str) -> Option<&AgentService> {
        self.services
            .get(&(node.to_owned(), service_id.to_owned()))
            .map(|s| &**s)
    }

    /// Every service instance with its node's name, by node then ID.
    pub fn services(&self) -> impl Iterator<Item = (&str, &AgentService)> {
        self.services
            .iter()
            .map(|((node, _), s)| (node.as_str(), &**s))
    }

    /// The check `check_id` on `node`.
    pub fn check(&self, node: &str, check_id: &str) -> Option<&HealthCheck> {
        self.checks
            .get(&(node.to_owned(), check_id.to_owned()))
            .map(|c| &**c)
    }

    /// Every check, by node then ID.
    pub fn checks(&self) -> impl Iterator<Item = &HealthCheck> {
        self.checks.values().map(|c| &**c)
    }

    /// The service instances on `node`, by ID.
    pub fn node_services<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a AgentService> {
        scoped(&self.services, node)
    }

    /// The checks on `node`, node-level and of its services, by ID.
    pub fn node_checks<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a HealthCheck> {
        scoped(&self.checks, node)
    }

    /// Instances of the service `name` with their node and checks, by node then instance ID
    /// (`/v1/health/service/:service`). With `passing_only`, instances with any check not
    /// passing are left out.
    pub fn health_service(&self, name: &str, passing_only: bool) -> Vec<ServiceEntry> {
        self.entries(|s| s.service == name, passing_only)
    }

    /// The Connect-capable endpoints of `name` (`/v1/health/connect/:service`, Consul API docs,
    /// Health): sidecar proxies whose `Proxy.DestinationServiceName` is `name`, and instances of
    /// `name` registered with `Connect.Native`. Dial them at [`ServiceEntry::dial_address`].
    pub fn health_connect(&self, name: &str, passing_only: bool) -> Vec<ServiceEntry> {
        self.entries(|s| s.is_connect_endpoint_for(name), passing_only)
    }

    /// Every service name with the union of its instances' tags, sorted
    /// (`/v1/catalog/services`).
    pub fn catalog_services(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for service in self.services.values() {
            out.entry(service.service.clone())
                .or_default()
                .extend(service.tags.iter().cloned());
        }
        for tags in out.values_mut() {
            tags.sort();
            tags.dedup();
        }
        out
    }

    /// Instances of `name` as flattened rows (`/v1/catalog/service/:service`).
    pub fn catalog_service(&self, name: &str) -> Vec<CatalogService> {
        self.rows(|s| s.service == name)
    }

    /// Connect-capable endpoints of `name` as flattened rows (`/v1/catalog/connect/:service`).
    pub fn catalog_connect(&self, name: &str) -> Vec<CatalogService> {
        self.rows(|s| s.is_connect_endpoint_for(name))
    }

    fn rows(&self, keep: impl Fn(&AgentService) -> bool) -> Vec<CatalogService> {
        self.services
            .iter()
            .filter(|(_, s)| keep(s))
            .filter_map(|((node, _), s)| Some(CatalogService::new(self.node(node)?, s)))
            .collect()
    }

    fn entries(
        &self,
        keep: impl Fn(&AgentService) -> bool,
        passing_only: bool,
    ) -> Vec<ServiceEntry> {
        self.services
            .iter()
            .filter(|(_, s)| keep(s))
            .filter_map(|((node, _), service)| {
                // The store never keeps a service without its node; skipping rather than
                // panicking keeps a query total even if that invariant were broken.
                let node = self.node(node)?;
                let checks = self
                    .node_checks(&node.node)
                    .filter(|c| c.service_id.is_empty() || c.service_id == service.id)
                    .cloned()
                    .collect();
                Some(ServiceEntry {
                    node: node.clone(),
                    service: (**service).clone(),
                    checks,
                })
            })
            .filter(|e| !passing_only || e.is_passing())
            .collect()
    }

    // Writes: only the state store calls these, after checking that services and checks refer
    // to rows that exist, so the tables stay consistent.

    pub(crate) fn put_node(&mut self, node: Node) {
        Arc::make_mut(&mut self.nodes).insert(node.node.clone(), Arc::new(node));
    }

    pub(crate) fn remove_node(&mut self, name: &str) -> bool {
        Arc::make_mut(&mut self.nodes).remove(name).is_some()
    }

    pub(crate) fn put_service(&mut self, node: &str, service: AgentService) {
        Arc::make_mut(&mut self.services)
            .insert((node.to_owned(), service.id.clone()), Arc::new(service));
    }

    pub(crate) fn remove_service(&mut self, node: &str, service_id: &str) -> bool {
        Arc::make_mut(&mut self.services)
            .remove(&(node.to_owned(), service_id.to_owned()))
            .is_some()
    }

    pub(crate) fn put_check(&mut self, check: HealthCheck) {
        Arc::make_mut(&mut self.checks).insert(
            (check.node.clone(), check.check_id.clone()),
            Arc::new(check),
        );
    }

    pub(crate) fn remove_check(&mut self, node: &str, check_id: &str) -> bool {
        Arc::make_mut(&mut self.checks)
            .remove(&(node.to_owned(), check_id.to_owned()))
            .is_some()
    }
}

/// The rows of a node-scoped table that belong to `node`, by ID.
fn scoped<'a, T>(table: &'a NodeScoped<T>, node: &'a str) -> impl Iterator<Item = &'a T> {
    table
        .range((node.to_owned(), String::new())..)
        .take_while(move |((n, _), _)| n == node)
        .map(|(_, row)| &**row)
}
