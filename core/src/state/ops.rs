//! What a [`Persistence`](super::Persistence) sees: committed transactions of typed row
//! operations, and the full snapshot it hands back at start.

use std::collections::{BTreeMap, BTreeSet};

use crate::acl::{Policy, Token};
use crate::ca::{BuiltinSecrets, CaConfiguration, CaRoot};
use crate::catalog::{AgentService, HealthCheck, Node};
use crate::intentions::Intention;

use super::Table;

/// One row change. Rows carry their final `CreateIndex`/`ModifyIndex`: a persistence stores
/// them as given and never computes anything.
///
/// Deletes that cascade (a node's services and checks, a service's checks) arrive as explicit
/// deletes of every row, so a persistence needs no knowledge of how tables relate.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Op {
    /// Replaces the CA configuration.
    SetCaConfig(CaConfiguration),
    /// Replaces the whole list of CA roots; order is significant.
    SetCaRoots(Vec<CaRoot>),
    /// Replaces the built-in CA's key and certificate. Persist with owner-only access.
    SetCaSecrets(BuiltinSecrets),
    /// Records the last serial number handed out.
    SetCaSerial(u64),
    /// Inserts or replaces an intention, keyed by ID.
    PutIntention(Intention),
    /// Deletes an intention.
    DeleteIntention {
        /// Its ID.
        id: String,
    },
    /// Inserts or replaces an ACL token, keyed by AccessorID.
    PutAclToken(Token),
    /// Deletes an ACL token.
    DeleteAclToken {
        /// Its AccessorID.
        accessor_id: String,
    },
    /// Inserts or replaces an ACL policy, keyed by ID.
    PutAclPolicy(Policy),
    /// Deletes an ACL policy.
    DeleteAclPolicy {
        /// Its ID.
        id: String,
    },
    /// Sets whether the ACL bootstrap has happened.
    SetAclBootstrapped(bool),
    /// Inserts or replaces a node, keyed by name.
    PutNode(Node),
    /// Deletes a node row.
    DeleteNode {
        /// The node's name.
        node: String,
    },
    /// Inserts or replaces a service instance, keyed by node and ID.
    PutService {
        /// The node it runs on.
        node: String,
        /// The instance.
        service: AgentService,
    },
    /// Deletes a service instance.
    DeleteService {
        /// The node it runs on.
        node: String,
        /// Its ID.
        service_id: String,
    },
    /// Inserts or replaces a check, keyed by its node and ID.
    PutCheck(HealthCheck),
    /// Deletes a check.
    DeleteCheck {
        /// The node it belongs to.
        node: String,
        /// Its ID.
        check_id: String,
    },
}

impl Op {
    /// The table the operation changes.
    pub fn table(&self) -> Table {
        match self {
            Op::SetCaConfig(_) => Table::CaConfig,
            Op::SetCaRoots(_) => Table::CaRoots,
            Op::SetCaSecrets(_) | Op::SetCaSerial(_) => Table::CaSecrets,
            Op::PutIntention(_) | Op::DeleteIntention { .. } => Table::Intentions,
            Op::PutAclToken(_) | Op::DeleteAclToken { .. } => Table::AclTokens,
            Op::PutAclPolicy(_) | Op::DeleteAclPolicy { .. } => Table::AclPolicies,
            Op::SetAclBootstrapped(_) => Table::AclBootstrap,
            Op::PutNode(_) | Op::DeleteNode { .. } => Table::Nodes,
            Op::PutService { .. } | Op::DeleteService { .. } => Table::Services,
            Op::PutCheck(_) | Op::DeleteCheck { .. } => Table::Checks,
        }
    }
}

/// A committed transaction: every operation of one write, all at one index.
///
/// A persistence must apply it atomically — all operations and the new index, or nothing — and
/// durably before returning, because the store acknowledges the write as soon as it returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Txn {
    /// The store index the transaction commits at; one more than the previous transaction's.
    pub index: u64,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Txn {
    /// The tables the transaction changes; each gets `index` as its table index.
    pub fn tables(&self) -> BTreeSet<Table> {
        self.ops.iter().map(Op::table).collect()
    }
}

/// The whole state, as a persistence hands it to the store at start (and as
/// [`Store::snapshot`](super::Store::snapshot) returns it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The index of the last committed transaction; 0 for nothing yet.
    pub index: u64,
    /// The index of the last transaction that changed each table; missing means none.
    pub table_indexes: BTreeMap<Table, u64>,
    /// The CA configuration.
    pub ca_config: Option<CaConfiguration>,
    /// The CA roots, in order, with their `rotated_out_at`.
    pub ca_roots: Vec<CaRoot>,
    /// The built-in CA's key and certificate.
    pub ca_secrets: Option<BuiltinSecrets>,
    /// The last serial number handed out.
    pub ca_serial: u64,
    /// Intentions.
    pub intentions: Vec<Intention>,
    /// ACL tokens.
    pub acl_tokens: Vec<Token>,
    /// ACL policies.
    pub acl_policies: Vec<Policy>,
    /// Whether the ACL bootstrap has happened.
    pub acl_bootstrapped: bool,
    /// Catalog nodes.
    pub nodes: Vec<Node>,
    /// Service instances with the name of their node.
    pub services: Vec<(String, AgentService)>,
    /// Health checks.
    pub checks: Vec<HealthCheck>,
}
