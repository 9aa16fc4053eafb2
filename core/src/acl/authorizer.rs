//! Authorizers: the answer to "may this token do X to Y".
//!
//! An [`AclAuthorizer`] is compiled from the merged rules of a token's policies plus the ACL
//! default policy. It holds no reference to any store, so the same logic serves the in-memory
//! [`AclStore`](super::AclStore) today and a replicated state store later.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::{AccessLevel, AclError, PolicyRules};

/// The ACL `default_policy`: what happens when no rule speaks about a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AclDefaultPolicy {
    /// Allow what no rule covers (Consul's default, for gradual rollout).
    #[default]
    Allow,
    /// Deny what no rule covers (the production setting).
    Deny,
}

impl AclDefaultPolicy {
    /// The configuration spelling: `"allow"` or `"deny"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AclDefaultPolicy::Allow => "allow",
            AclDefaultPolicy::Deny => "deny",
        }
    }

    const fn allows(self) -> bool {
        matches!(self, AclDefaultPolicy::Allow)
    }
}

impl fmt::Display for AclDefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AclDefaultPolicy {
    type Err = AclError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(AclDefaultPolicy::Allow),
            "deny" => Ok(AclDefaultPolicy::Deny),
            other => Err(AclError::invalid_rule(
                "default_policy",
                format!("{other:?} is not \"allow\" or \"deny\""),
            )),
        }
    }
}

/// One permission a request needs. The `&str` is the resource name: the service, the
/// intention's destination service, or the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Permission<'a> {
    /// `service:read` on a service.
    ServiceRead(&'a str),
    /// `service:write` on a service (register it, get its leaf certificate, authorize to it).
    ServiceWrite(&'a str),
    /// `intention:read` on intentions with this destination.
    IntentionRead(&'a str),
    /// `intention:write` on intentions with this destination.
    IntentionWrite(&'a str),
    /// `node:read` on a node.
    NodeRead(&'a str),
    /// `node:write` on a node.
    NodeWrite(&'a str),
    /// `agent:read` on the agent of a node (for example `/v1/agent/self`).
    AgentRead(&'a str),
    /// `agent:write` on the agent of a node.
    AgentWrite(&'a str),
    /// `operator:read`.
    OperatorRead,
    /// `operator:write` (for example the CA configuration).
    OperatorWrite,
    /// `mesh:read`.
    MeshRead,
    /// `mesh:write`.
    MeshWrite,
    /// `acl:read`.
    AclRead,
    /// `acl:write`.
    AclWrite,
}

impl Permission<'_> {
    /// The resource type as Consul names it in errors: `service`, `intention`, `node`, `agent`,
    /// `operator`, `mesh` or `acl`.
    pub const fn resource(&self) -> &'static str {
        match self {
            Permission::ServiceRead(_) | Permission::ServiceWrite(_) => "service",
            Permission::IntentionRead(_) | Permission::IntentionWrite(_) => "intention",
            Permission::NodeRead(_) | Permission::NodeWrite(_) => "node",
            Permission::AgentRead(_) | Permission::AgentWrite(_) => "agent",
            Permission::OperatorRead | Permission::OperatorWrite => "operator",
            Permission::MeshRead | Permission::MeshWrite => "mesh",
            Permission::AclRead | Permission::AclWrite => "acl",
        }
    }

    /// The access level needed: [`AccessLevel::Read`] or [`AccessLevel::Write`].
    pub const fn access(&self) -> AccessLevel {
        match self {
            Permission::ServiceRead(_)
            | Permission::IntentionRead(_)
            | Permission::NodeRead(_)
            | Permission::AgentRead(_)
            | Permission::OperatorRead
            | Permission::MeshRead
            | Permission::AclRead => AccessLevel::Read,
            _ => AccessLevel::Write,
        }
    }

    /// The named resource, for permissions that have one.
    pub const fn name(&self) -> Option<&str> {
        match self {
            Permission::ServiceRead(n)
            | Permission::ServiceWrite(n)
            | Permission::IntentionRead(n)
            | Permission::IntentionWrite(n)
            | Permission::NodeRead(n)
            | Permission::NodeWrite(n)
            | Permission::AgentRead(n)
            | Permission::AgentWrite(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Permission<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource(), self.access())
    }
}

/// Decides permissions for one token.
///
/// Cheap to share: the store hands out `Arc<AclAuthorizer>` and callers check as many
/// permissions as a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclAuthorizer {
    inner: Inner,
    accessor_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inner {
    /// ACLs disabled: everything, including ACL management, is allowed.
    AllowAll,
    Rules {
        rules: PolicyRules,
        default: AclDefaultPolicy,
    },
}

impl AclAuthorizer {
    /// The authorizer used when ACLs are disabled: every permission is granted and intentions
    /// default to allow.
    pub fn allow_all() -> AclAuthorizer {
        AclAuthorizer {
            inner: Inner::AllowAll,
            accessor_id: None,
        }
    }

    /// Compiles the union of `policies` over the ACL `default_policy`.
    ///
    /// Overlapping rules merge as in Consul (for the same name, deny beats write beats read);
    /// lookup then takes the exact rule, else the longest matching prefix rule, else the
    /// default. The default never grants `acl:*`: in Consul only a rule (or disabled ACLs)
    /// gives access to the ACL system itself.
    pub fn from_rules<'a, I>(default: AclDefaultPolicy, policies: I) -> AclAuthorizer
    where
        I: IntoIterator<Item = &'a PolicyRules>,
    {
        let mut rules = PolicyRules::default();
        for policy in policies {
            rules.merge(policy);
        }
        AclAuthorizer {
            inner: Inner::Rules { rules, default },
            accessor_id: None,
        }
    }

    /// Records which token this authorizer belongs to, so denials can name it.
    pub fn with_accessor_id(mut self, accessor_id: impl Into<String>) -> AclAuthorizer {
        self.accessor_id = Some(accessor_id.into());
        self
    }

    /// The AccessorID of the token this authorizer was built for, if recorded.
    pub fn accessor_id(&self) -> Option<&str> {
        self.accessor_id.as_deref()
    }

    /// Whether the permission is granted.
    pub fn allows(&self, permission: Permission<'_>) -> bool {
        match &self.inner {
            Inner::AllowAll => true,
            Inner::Rules { rules, default } => decide(rules, *default, permission),
        }
    }

    /// Like [`AclAuthorizer::allows`], but a denial is the error to return to the client.
    ///
    /// # Errors
    ///
    /// [`AclError::PermissionDenied`], naming the token's AccessorID (never its secret), the
    /// permission and the resource, in Consul's wording.
    pub fn require(&self, permission: Permission<'_>) -> Result<(), AclError> {
        if self.allows(permission) {
            return Ok(());
        }
        let who = match &self.accessor_id {
            Some(id) => format!("token with AccessorID '{id}'"),
            None => "provided token".to_owned(),
        };
        let on = permission
            .name()
            .map(|n| format!(" on {n}"))
            .unwrap_or_default();
        Err(AclError::PermissionDenied {
            detail: Some(format!("{who} lacks permission '{permission}'{on}")),
        })
    }

    /// `service:read` on `name`.
    pub fn service_read(&self, name: &str) -> bool {
        self.allows(Permission::ServiceRead(name))
    }

    /// `service:write` on `name`.
    pub fn service_write(&self, name: &str) -> bool {
        self.allows(Permission::ServiceWrite(name))
    }

    /// `intention:read` on intentions whose destination is `destination`.
    pub fn intention_read(&self, destination: &str) -> bool {
        self.allows(Permission::IntentionRead(destination))
    }

    /// `intention:write` on intentions whose destination is `destination`.
    pub fn intention_write(&self, destination: &str) -> bool {
        self.allows(Permission::IntentionWrite(destination))
    }

    /// `node:read` on `name`.
    pub fn node_read(&self, name: &str) -> bool {
        self.allows(Permission::NodeRead(name))
    }

    /// `node:write` on `name`.
    pub fn node_write(&self, name: &str) -> bool {
        self.allows(Permission::NodeWrite(name))
    }

    /// `agent:read` on the agent of node `name`.
    pub fn agent_read(&self, name: &str) -> bool {
        self.allows(Permission::AgentRead(name))
    }

    /// `agent:write` on the agent of node `name`.
    pub fn agent_write(&self, name: &str) -> bool {
        self.allows(Permission::AgentWrite(name))
    }

    /// `operator:read`.
    pub fn operator_read(&self) -> bool {
        self.allows(Permission::OperatorRead)
    }

    /// `operator:write`.
    pub fn operator_write(&self) -> bool {
        self.allows(Permission::OperatorWrite)
    }

    /// `mesh:read`; without a `mesh` rule, `operator` decides, as in Consul.
    pub fn mesh_read(&self) -> bool {
        self.allows(Permission::MeshRead)
    }

    /// `mesh:write`; without a `mesh` rule, `operator` decides, as in Consul.
    pub fn mesh_write(&self) -> bool {
        self.allows(Permission::MeshWrite)
    }

    /// `acl:read`.
    pub fn acl_read(&self) -> bool {
        self.allows(Permission::AclRead)
    }

    /// `acl:write`.
    pub fn acl_write(&self) -> bool {
        self.allows(Permission::AclWrite)
    }

    /// What a connection matches when no intention does. No rule can change it: it is the ACL
    /// default policy (allow when ACLs are disabled), for every token alike, the management
    /// token included.
    pub fn intention_default_allow(&self) -> bool {
        match &self.inner {
            Inner::AllowAll => true,
            Inner::Rules { default, .. } => default.allows(),
        }
    }
}

/// The exact rule for `name`, else the rule of its longest matching prefix.
fn lookup<'r, T>(
    exact: &'r BTreeMap<String, T>,
    prefixes: &'r BTreeMap<String, T>,
    name: &str,
) -> Option<&'r T> {
    exact.get(name).or_else(|| {
        (0..=name.len())
            .rev()
            .filter(|&end| name.is_char_boundary(end))
            .find_map(|end| prefixes.get(&name[..end]))
    })
}

fn decide(rules: &PolicyRules, default: AclDefaultPolicy, permission: Permission<'_>) -> bool {
    let need = permission.access();
    let or_default =
        |level: Option<AccessLevel>| level.map_or(default.allows(), |l| l.grants(need));
    let service = |name: &str| lookup(&rules.services, &rules.service_prefixes, name);
    match permission {
        Permission::ServiceRead(name) | Permission::ServiceWrite(name) => {
            or_default(service(name).map(|r| r.policy))
        }
        Permission::IntentionRead(name) | Permission::IntentionWrite(name) => {
            or_default(service(name).map(|r| r.effective_intentions()))
        }
        Permission::NodeRead(name) | Permission::NodeWrite(name) => {
            or_default(lookup(&rules.nodes, &rules.node_prefixes, name).copied())
        }
        Permission::AgentRead(name) | Permission::AgentWrite(name) => {
            or_default(lookup(&rules.agents, &rules.agent_prefixes, name).copied())
        }
        Permission::OperatorRead | Permission::OperatorWrite => or_default(rules.operator),
        Permission::MeshRead | Permission::MeshWrite => or_default(rules.mesh.or(rules.operator)),
        Permission::AclRead | Permission::AclWrite => rules.acl.is_some_and(|l| l.grants(need)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(default: AclDefaultPolicy, text: &str) -> AclAuthorizer {
        AclAuthorizer::from_rules(default, [&PolicyRules::parse(text).unwrap()])
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let a = authz(
            AclDefaultPolicy::Deny,
            r#"
            service_prefix "" { policy = "read" }
            service_prefix "api" { policy = "write" }
            service_prefix "api-internal" { policy = "deny" }
            service "api-internal-gw" { policy = "read" }
            service "api" { policy = "deny" }
            "#,
        );
        // The empty prefix covers everything else.
        assert!(a.service_read("web") && !a.service_write("web"));
        // Longest prefix wins over shorter ones.
        assert!(a.service_write("api-public"));
        assert!(!a.service_read("api-internal-x"));
        // An exact rule wins over any prefix, in both directions.
        assert!(a.service_read("api-internal-gw") && !a.service_write("api-internal-gw"));
        assert!(!a.service_read("api"));
        // A deny on a broader prefix does not override a more specific grant.
        let b = authz(
            AclDefaultPolicy::Allow,
            r#"
            service_prefix "" { policy = "deny" }
            service_prefix "web" { policy = "write" }
            "#,
        );
        assert!(b.service_write("web-1"));
        assert!(!b.service_read("db"));
    }

    #[test]
    fn prefixes_respect_utf8_boundaries() {
        let a = authz(
            AclDefaultPolicy::Deny,
            r#"service_prefix "caf" { policy = "read" }"#,
        );
        assert!(a.service_read("café"));
        assert!(!a.service_read("ca"));
    }

    #[test]
    fn default_policy_covers_what_no_rule_does() {
        let text = r#"service "web" { policy = "read" }"#;
        let allow = authz(AclDefaultPolicy::Allow, text);
        let deny = authz(AclDefaultPolicy::Deny, text);
        assert!(allow.service_write("db") && allow.node_write("n") && allow.operator_write());
        assert!(allow.mesh_write() && allow.intention_write("db"));
        assert!(!deny.service_read("db") && !deny.node_read("n") && !deny.operator_read());
        assert!(!deny.mesh_read() && !deny.intention_read("db"));
        // The rule itself applies under both defaults.
        assert!(!allow.service_write("web") && deny.service_read("web"));
        assert!(allow.intention_default_allow());
        assert!(!deny.intention_default_allow());
        // The default never opens the ACL system.
        assert!(!allow.acl_read() && !allow.acl_write());
    }

    #[test]
    fn intentions_implied_by_service_policy() {
        let a = authz(
            AclDefaultPolicy::Allow,
            r#"
            service "read" { policy = "read" }
            service "write" { policy = "write" }
            service "denied" { policy = "deny" }
            service "manager" {
              policy = "read"
              intentions = "write"
            }
            service "blind" {
              policy = "write"
              intentions = "deny"
            }
            service_prefix "team-" { policy = "write" }
            "#,
        );
        assert!(a.intention_read("read") && !a.intention_write("read"));
        assert!(a.intention_read("write") && !a.intention_write("write"));
        assert!(!a.intention_read("denied"));
        assert!(a.intention_read("manager") && a.intention_write("manager"));
        assert!(!a.service_write("manager"));
        assert!(!a.intention_read("blind") && a.service_write("blind"));
        assert!(a.intention_read("team-x") && !a.intention_write("team-x"));
        // No rule: the default policy decides.
        assert!(a.intention_write("other"));
    }

    #[test]
    fn nodes_operator_mesh_acl() {
        let a = authz(
            AclDefaultPolicy::Deny,
            r#"
            node_prefix "" { policy = "read" }
            node "gw" { policy = "write" }
            operator = "read"
            acl = "write"
            "#,
        );
        assert!(a.node_read("x") && !a.node_write("x") && a.node_write("gw"));
        assert!(a.operator_read() && !a.operator_write());
        // mesh falls back to operator.
        assert!(a.mesh_read() && !a.mesh_write());
        assert!(a.acl_read() && a.acl_write());
        let b = authz(
            AclDefaultPolicy::Deny,
            "operator = \"read\"\nmesh = \"write\"",
        );
        assert!(b.mesh_write() && !b.operator_write());
        let c = authz(
            AclDefaultPolicy::Allow,
            "operator = \"deny\"\nacl = \"read\"",
        );
        assert!(!c.mesh_read() && c.acl_read() && !c.acl_write());
    }

    #[test]
    fn agent_rules_follow_node_precedence() {
        let a = authz(
            AclDefaultPolicy::Deny,
            r#"
            agent_prefix "" { policy = "read" }
            agent_prefix "edge-" { policy = "write" }
            agent "edge-9" { policy = "deny" }
            "#,
        );
        assert!(a.agent_read("node-1") && !a.agent_write("node-1"));
        assert!(a.agent_write("edge-1"));
        assert!(!a.agent_read("edge-9"));
        // Agent rules are their own resource: node rules do not grant them, nor they nodes.
        assert!(!a.node_read("node-1"));
        let n = authz(
            AclDefaultPolicy::Deny,
            r#"node_prefix "" { policy = "write" }"#,
        );
        assert!(!n.agent_read("node-1"));
        // No rule: the default policy decides.
        assert!(authz(AclDefaultPolicy::Allow, "").agent_read("node-1"));
        assert!(!authz(AclDefaultPolicy::Deny, "").agent_read("node-1"));
        let err = authz(AclDefaultPolicy::Deny, "")
            .require(Permission::AgentRead("node-1"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Permission denied: provided token lacks permission 'agent:read' on node-1"
        );
    }

    #[test]
    fn policies_merge_and_deny_wins_on_the_same_resource() {
        let p1 = PolicyRules::parse(r#"service "web" { policy = "write" }"#).unwrap();
        let p2 = PolicyRules::parse(r#"service "web" { policy = "deny" }"#).unwrap();
        let p3 = PolicyRules::parse(r#"service "db" { policy = "write" }"#).unwrap();
        let a = AclAuthorizer::from_rules(AclDefaultPolicy::Allow, [&p1, &p2, &p3]);
        assert!(!a.service_read("web"));
        assert!(a.service_write("db"));
        let b = AclAuthorizer::from_rules(AclDefaultPolicy::Deny, [&p3, &p1]);
        assert!(b.service_write("web") && b.service_write("db"));
    }

    #[test]
    fn allow_all_allows_everything() {
        let a = AclAuthorizer::allow_all();
        assert!(a.service_write("x") && a.intention_write("x") && a.node_write("x"));
        assert!(a.operator_write() && a.mesh_write() && a.acl_write());
        assert!(a.intention_default_allow());
        assert!(a.require(Permission::AclWrite).is_ok());
    }

    #[test]
    fn require_names_accessor_and_permission() {
        let a = authz(AclDefaultPolicy::Deny, "").with_accessor_id("acc-1");
        let err = a.require(Permission::ServiceWrite("web")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::PermissionDenied);
        assert_eq!(
            err.to_string(),
            "Permission denied: token with AccessorID 'acc-1' lacks permission 'service:write' on web"
        );
        let err = authz(AclDefaultPolicy::Deny, "")
            .require(Permission::OperatorRead)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Permission denied: provided token lacks permission 'operator:read'"
        );
        assert_eq!(
            Permission::IntentionWrite("db").to_string(),
            "intention:write"
        );
    }

    #[test]
    fn default_policy_parses() {
        assert_eq!(
            "deny".parse::<AclDefaultPolicy>().unwrap(),
            AclDefaultPolicy::Deny
        );
        assert_eq!(
            "allow".parse::<AclDefaultPolicy>().unwrap(),
            AclDefaultPolicy::Allow
        );
        assert!("extend-cache".parse::<AclDefaultPolicy>().is_err());
        assert_eq!(AclDefaultPolicy::default(), AclDefaultPolicy::Allow);
    }
}
