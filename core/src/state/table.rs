//! The store's tables and the indexed values its reads return.

use std::fmt;

/// One table of the store: the unit a blocking query waits on.
///
/// The names are part of the persisted layout (SQLite table names and `table_index.<name>` meta
/// keys): they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Table {
    /// The CA configuration (one row).
    CaConfig,
    /// The CA roots, active and rotated out, in order.
    CaRoots,
    /// The built-in CA's private key and certificate, and the serial counter.
    CaSecrets,
    /// Intentions, by ID.
    Intentions,
    /// ACL tokens, by AccessorID.
    AclTokens,
    /// ACL policies, by ID.
    AclPolicies,
    /// Whether the one-time ACL bootstrap has happened.
    AclBootstrap,
    /// Catalog nodes, by name.
    Nodes,
    /// Catalog service instances, by node and ID.
    Services,
    /// Health checks, by node and ID.
    Checks,
}

impl Table {
    /// Every table, in slot order.
    pub const ALL: &'static [Table] = &[
        Table::CaConfig,
        Table::CaRoots,
        Table::CaSecrets,
        Table::Intentions,
        Table::AclTokens,
        Table::AclPolicies,
        Table::AclBootstrap,
        Table::Nodes,
        Table::Services,
        Table::Checks,
    ];

    /// The tables a health or catalog query reads, and so waits on.
    pub const CATALOG: &'static [Table] = &[Table::Nodes, Table::Services, Table::Checks];

    pub(crate) const COUNT: usize = Table::ALL.len();

    /// The table's stable name, e.g. `ca_roots`.
    pub const fn name(self) -> &'static str {
        match self {
            Table::CaConfig => "ca_config",
            Table::CaRoots => "ca_roots",
            Table::CaSecrets => "ca_secrets",
            Table::Intentions => "intentions",
            Table::AclTokens => "acl_tokens",
            Table::AclPolicies => "acl_policies",
            Table::AclBootstrap => "acl_bootstrap",
            Table::Nodes => "nodes",
            Table::Services => "services",
            Table::Checks => "checks",
        }
    }

    /// The table with this name.
    pub fn from_name(name: &str) -> Option<Table> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    pub(crate) const fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value with the index it was read at: the `X-Consul-Index` to send and to block on next.
///
/// The store returns it with the index of the table(s) the value came from, never 0; the HTTP
/// client returns a decoded response body with its `X-Consul-Index` (1 when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// What was read (or, for a write, what was stored).
    pub value: T,
    /// The table's index at the read (or the index the write committed at); for a response,
    /// its `X-Consul-Index`.
    pub index: u64,
}
