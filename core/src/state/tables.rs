//! The in-memory tables: one consistent, immutable version of the whole state.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::acl::{Policy, Token};
use crate::ca::{BuiltinSecrets, CaConfiguration, CaRoot};
use crate::catalog::Catalog;
use crate::intentions::Intention;

use super::{Op, Snapshot, StateError, Table};

type ById<T> = Arc<BTreeMap<String, Arc<T>>>;

/// One version of the whole state, as of one index.
///
/// A read takes the current version (a reference count) and queries it without holding any
/// lock, so a slow reader never delays a writer and every read of it is consistent across
/// tables. A write copies the version — each table is behind its own `Arc`, so only the tables
/// it touches are copied — changes the copy and publishes it whole.
#[derive(Clone)]
pub struct Tables {
    index: u64,
    table_index: [u64; Table::COUNT],
    ca_config: Option<Arc<CaConfiguration>>,
    ca_roots: Arc<Vec<CaRoot>>,
    ca_secrets: Option<Arc<BuiltinSecrets>>,
    ca_serial: u64,
    intentions: ById<Intention>,
    acl_tokens: ById<Token>,
    acl_policies: ById<Policy>,
    acl_bootstrapped: bool,
    catalog: Catalog,
}

/// Counts only: rows hold secrets (CA keys, token secrets) that must not reach logs.
impl fmt::Debug for Tables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tables")
            .field("index", &self.index)
            .field("ca_roots", &self.ca_roots.len())
            .field("intentions", &self.intentions.len())
            .field("acl_tokens", &self.acl_tokens.len())
            .field("acl_policies", &self.acl_policies.len())
            .field("nodes", &self.catalog.nodes().count())
            .field("services", &self.catalog.services().count())
            .field("checks", &self.catalog.checks().count())
            .finish_non_exhaustive()
    }
}

impl Tables {
    /// The index of the last committed write to any table; at least 1.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The index of the last write to `table`; at least 1.
    pub fn table_index(&self, table: Table) -> u64 {
        self.table_index[table.slot()]
    }

    /// The highest index of `tables`, or the store index when none is given.
    pub fn max_index(&self, tables: &[Table]) -> u64 {
        tables
            .iter()
            .map(|t| self.table_index(*t))
            .max()
            .unwrap_or(self.index)
    }

    /// The CA configuration, once set.
    pub fn ca_config(&self) -> Option<&CaConfiguration> {
        self.ca_config.as_deref()
    }

    /// The CA roots, in the order they were stored.
    pub fn ca_roots(&self) -> &[CaRoot] {
        &self.ca_roots
    }

    /// The built-in CA's key and certificate, once set.
    pub fn ca_secrets(&self) -> Option<&BuiltinSecrets> {
        self.ca_secrets.as_deref()
    }

    /// The last CA serial number recorded; resume the counter after it.
    pub fn ca_serial(&self) -> u64 {
        self.ca_serial
    }

    /// Every intention, by ID.
    pub fn intentions(&self) -> impl Iterator<Item = &Intention> {
        self.intentions.values().map(|i| &**i)
    }

    /// The intention with this ID.
    pub fn intention(&self, id: &str) -> Option<&Intention> {
        self.intentions.get(id).map(|i| &**i)
    }

    /// Every ACL token, by AccessorID.
    pub fn acl_tokens(&self) -> impl Iterator<Item = &Token> {
        self.acl_tokens.values().map(|t| &**t)
    }

    /// The ACL token with this AccessorID.
    pub fn acl_token(&self, accessor_id: &str) -> Option<&Token> {
        self.acl_tokens.get(accessor_id).map(|t| &**t)
    }

    /// The ACL token with this SecretID.
    pub fn acl_token_by_secret(&self, secret_id: &str) -> Option<&Token> {
        self.acl_tokens().find(|t| t.secret_id == secret_id)
    }

    /// Every ACL policy, by ID.
    pub fn acl_policies(&self) -> impl Iterator<Item = &Policy> {
        self.acl_policies.values().map(|p| &**p)
    }

    /// The ACL policy with this ID.
    pub fn acl_policy(&self, id: &str) -> Option<&Policy> {
        self.acl_policies.get(id).map(|p| &**p)
    }

    /// Whether the one-time ACL bootstrap has happened.
    pub fn acl_bootstrapped(&self) -> bool {
        self.acl_bootstrapped
    }

    /// Nodes, services and checks.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The empty store. Index 1 stands for it, so that a table nobody wrote to reports 1 —
    /// never 0, which clients must not block on — and the first write (index 2) is still above
    /// it.
    pub(crate) fn empty() -> Tables {
        Tables {
            index: 1,
            table_index: [1; Table::COUNT],
            ca_config: None,
            ca_roots: Arc::default(),
            ca_secrets: None,
            ca_serial: 0,
            intentions: Arc::default(),
            acl_tokens: Arc::default(),
            acl_policies: Arc::default(),
            acl_bootstrapped: false,
            catalog: Catalog::default(),
        }
    }

    /// Builds the tables from a persisted snapshot, refusing one whose rows contradict each
    /// other: starting from inconsistent state would only move the failure somewhere harder to
    /// understand.
    pub(crate) fn from_snapshot(s: Snapshot) -> Result<Tables, StateError> {
        let corrupt = |message: String| StateError::Corrupt {
            location: "snapshot".to_owned(),
            message,
        };
        // See `empty` for why nothing is below 1.
        let index = s.index.max(1);
        let mut table_index = [1; Table::COUNT];
        for (table, i) in &s.table_indexes {
            if *i > index {
                return Err(corrupt(format!(
                    "table {table} has index {i}, above the store index {index}"
                )));
            }
            table_index[table.slot()] = (*i).max(1);
        }
        let mut catalog = Catalog::default();
        for node in s.nodes {
            catalog.put_node(node);
        }
        for (node, service) in s.services {
            if catalog.node(&node).is_none() {
                return Err(corrupt(format!(
                    "service {:?} is on node {node:?}, which does not exist",
                    service.id
                )));
            }
            catalog.put_service(&node, service);
        }
        for check in s.checks {
            if catalog.node(&check.node).is_none() {
                return Err(corrupt(format!(
                    "check {:?} is on node {:?}, which does not exist",
                    check.check_id, check.node
                )));
            }
            if !check.service_id.is_empty()
                && catalog.service(&check.node, &check.service_id).is_none()
            {
                return Err(corrupt(format!(
                    "check {:?} is of service {:?}, which does not exist on node {:?}",
                    check.check_id, check.service_id, check.node
                )));
            }
            catalog.put_check(check);
        }
        Ok(Tables {
            index,
            table_index,
            ca_config: s.ca_config.map(Arc::new),
            ca_roots: Arc::new(s.ca_roots),
            ca_secrets: s.ca_secrets.map(Arc::new),
            ca_serial: s.ca_serial,
            intentions: by_id(s.intentions, |i| i.id.clone()),
            acl_tokens: by_id(s.acl_tokens, |t| t.accessor_id.clone()),
            acl_policies: by_id(s.acl_policies, |p| p.id.clone()),
            acl_bootstrapped: s.acl_bootstrapped,
            catalog,
        })
    }

    /// The whole state as plain data.
    pub(crate) fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            index: self.index,
            table_indexes: Table::ALL
                .iter()
                .map(|t| (*t, self.table_index(*t)))
                .collect(),
            ca_config: self.ca_config().cloned(),
            ca_roots: self.ca_roots.to_vec(),
            ca_secrets: self.ca_secrets().cloned(),
            ca_serial: self.ca_serial,
            intentions: self.intentions().cloned().collect(),
            acl_tokens: self.acl_tokens().cloned().collect(),
            acl_policies: self.acl_policies().cloned().collect(),
            acl_bootstrapped: self.acl_bootstrapped,
            nodes: self.catalog.nodes().cloned().collect(),
            services: self
                .catalog
                .services()
                .map(|(node, s)| (node.to_owned(), s.clone()))
                .collect(),
            checks: self.catalog.checks().cloned().collect(),
        }
    }

    /// Applies one already-validated operation of the transaction committing at `index`.
    pub(crate) fn apply(&mut self, op: &Op, index: u64) {
        self.table_index[op.table().slot()] = index;
        match op {
            Op::SetCaConfig(c) => self.ca_config = Some(Arc::new(c.clone())),
            Op::SetCaRoots(r) => self.ca_roots = Arc::new(r.clone()),
            Op::SetCaSecrets(s) => self.ca_secrets = Some(Arc::new(s.clone())),
            Op::SetCaSerial(n) => self.ca_serial = *n,
            Op::PutIntention(i) => {
                Arc::make_mut(&mut self.intentions).insert(i.id.clone(), Arc::new(i.clone()));
            }
            Op::DeleteIntention { id } => {
                Arc::make_mut(&mut self.intentions).remove(id);
            }
            Op::PutAclToken(t) => {
                Arc::make_mut(&mut self.acl_tokens)
                    .insert(t.accessor_id.clone(), Arc::new(t.clone()));
            }
            Op::DeleteAclToken { accessor_id } => {
                Arc::make_mut(&mut self.acl_tokens).remove(accessor_id);
            }
            Op::PutAclPolicy(p) => {
                Arc::make_mut(&mut self.acl_policies).insert(p.id.clone(), Arc::new(p.clone()));
            }
            Op::DeleteAclPolicy { id } => {
                Arc::make_mut(&mut self.acl_policies).remove(id);
            }
            Op::SetAclBootstrapped(b) => self.acl_bootstrapped = *b,
            Op::PutNode(n) => self.catalog.put_node(n.clone()),
            Op::DeleteNode { node } => {
                self.catalog.remove_node(node);
            }
            Op::PutService { node, service } => self.catalog.put_service(node, service.clone()),
            Op::DeleteService { node, service_id } => {
                self.catalog.remove_service(node, service_id);
            }
            Op::PutCheck(c) => self.catalog.put_check(c.clone()),
            Op::DeleteCheck { node, check_id } => {
                self.catalog.remove_check(node, check_id);
            }
        }
    }

    pub(crate) fn set_index(&mut self, index: u64) {
        self.index = index;
    }
}

fn by_id<T>(rows: Vec<T>, key: impl Fn(&T) -> String) -> ById<T> {
    Arc::new(rows.into_iter().map(|r| (key(&r), Arc::new(r))).collect())
}
