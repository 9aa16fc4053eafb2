//! The ACL rule language: the `Rules` text of a policy, in HCL or JSON.
//!
//! Both syntaxes are first lowered into one small tree ([`Raw`]) so that a single walker gives
//! both the same meaning and the same error messages. HCL is parsed by `hcl-rs`; JSON by
//! `serde_json` into that tree directly, which keeps duplicate keys and source order visible
//! (a generic JSON map would silently drop a repeated key).
//!
//! Only the resources libconnect enforces are accepted. Consul's other resource types (`key`,
//! `session`, `event`, `query`, `keyring`, …) are rejected rather than ignored, so a policy
//! never appears to grant something that nothing checks.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::AclError;

/// An access level granted by a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AccessLevel {
    /// Explicitly refuse; stops the search for a broader rule.
    Deny,
    /// Read only.
    Read,
    /// Read and write.
    Write,
}

impl AccessLevel {
    /// The rule-language spelling: `"deny"`, `"read"` or `"write"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessLevel::Deny => "deny",
            AccessLevel::Read => "read",
            AccessLevel::Write => "write",
        }
    }

    /// Whether a rule at this level satisfies a request needing `required`.
    pub const fn grants(self, required: AccessLevel) -> bool {
        match self {
            AccessLevel::Write => true,
            AccessLevel::Read => matches!(required, AccessLevel::Read),
            AccessLevel::Deny => false,
        }
    }

    /// Consul's merge order when two policies speak about the same resource: deny, then
    /// write, then read. Deny first so that adding a policy can take access away on purpose.
    fn merge_rank(self) -> u8 {
        match self {
            AccessLevel::Deny => 3,
            AccessLevel::Write => 2,
            AccessLevel::Read => 1,
        }
    }
}

impl fmt::Display for AccessLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccessLevel {
    type Err = AclError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(AccessLevel::Deny),
            "read" => Ok(AccessLevel::Read),
            "write" => Ok(AccessLevel::Write),
            other => Err(AclError::invalid_rule(
                "access level",
                format!("{other:?} is not one of \"read\", \"write\" or \"deny\""),
            )),
        }
    }
}

/// Merges `new` into `slot` the way Consul merges policies; an unset side never wins.
fn merge_level(slot: &mut Option<AccessLevel>, new: Option<AccessLevel>) {
    if let Some(new) = new {
        match slot {
            Some(old) if old.merge_rank() >= new.merge_rank() => {}
            _ => *slot = Some(new),
        }
    }
}

/// A `service` or `service_prefix` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRule {
    /// Access to the service itself (`policy = …`).
    pub policy: AccessLevel,
    /// Access to intentions whose destination is this service (`intentions = …`), when set
    /// explicitly. See [`ServiceRule::effective_intentions`] for the value that applies.
    pub intentions: Option<AccessLevel>,
}

impl ServiceRule {
    /// The intentions access this rule grants. Unset, it follows Consul: `read` or `write` on
    /// the service grants `intentions = "read"` — a sidecar must see the intentions that
    /// protect it to enforce them — and `deny` denies intentions too.
    pub fn effective_intentions(&self) -> AccessLevel {
        match (self.intentions, self.policy) {
            (Some(explicit), _) => explicit,
            (None, AccessLevel::Read | AccessLevel::Write) => AccessLevel::Read,
            (None, AccessLevel::Deny) => AccessLevel::Deny,
        }
    }

    fn merge(&mut self, other: &ServiceRule) {
        let mut policy = Some(self.policy);
        merge_level(&mut policy, Some(other.policy));
        self.policy = policy.unwrap_or(self.policy);
        // The raw `intentions` values merge separately, as in Consul: a policy that leaves
        // `intentions` unset does not override another policy that set it.
        merge_level(&mut self.intentions, other.intentions);
    }
}

/// The parsed `Rules` of one policy, or the union of several.
///
/// Maps are keyed by the rule's name (for `*_prefixes`, the prefix). A name given twice —
/// in one text or across merged policies — keeps the higher of the two by Consul's merge order
/// (deny, write, read).
///
/// When an [`AclAuthorizer`](super::AclAuthorizer) looks a name up, the most specific rule decides:
/// an exact rule, else the longest matching prefix rule, else the ACL default policy. A deny
/// on a broader prefix therefore does not take back what a narrower rule grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRules {
    /// `acl = …`: access to ACL tokens and policies.
    pub acl: Option<AccessLevel>,
    /// `operator = …`: cluster-level operations such as the CA configuration.
    pub operator: Option<AccessLevel>,
    /// `mesh = …`: mesh-wide configuration; falls back to `operator` when unset.
    pub mesh: Option<AccessLevel>,
    /// `service "<name>" { … }` rules.
    pub services: BTreeMap<String, ServiceRule>,
    /// `service_prefix "<prefix>" { … }` rules.
    pub service_prefixes: BTreeMap<String, ServiceRule>,
    /// `node "<name>" { policy = … }` rules.
    pub nodes: BTreeMap<String, AccessLevel>,
    /// `node_prefix "<prefix>" { policy = … }` rules.
    pub node_prefixes: BTreeMap<String, AccessLevel>,
    /// `agent "<node>" { policy = … }` rules: the agent running on that node.
    pub agents: BTreeMap<String, AccessLevel>,
    /// `agent_prefix "<prefix>" { policy = … }` rules.
    pub agent_prefixes: BTreeMap<String, AccessLevel>,
}

impl PolicyRules {
    /// Parses a policy's `Rules`. Text whose first non-blank character is `{` is JSON;
    /// anything else is HCL. Empty text is an empty rule set, as in Consul.
    ///
    /// HCL is parsed as HCL 2, which is stricter than the HCL 1 Consul uses in one way that
    /// shows up in real policies: a block written on one line may hold only one attribute
    /// (`service "web" { policy = "read" }`); with more, put one per line.
    ///
    /// # Errors
    ///
    /// [`AclError::RulesSyntax`] when the text does not parse, and
    /// [`AclError::InvalidRule`] naming the offending rule for anything unknown or invalid.
    pub fn parse(text: &str) -> Result<PolicyRules, AclError> {
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Ok(PolicyRules::default());
        }
        let entries = if trimmed.starts_with('{') {
            raw_from_json(text)?
        } else {
            raw_from_hcl(text)?
        };
        PolicyRules::from_raw(entries)
    }

    /// Adds `other`'s rules to these, resolving overlaps by Consul's merge order.
    pub fn merge(&mut self, other: &PolicyRules) {
        merge_level(&mut self.acl, other.acl);
        merge_level(&mut self.operator, other.operator);
        merge_level(&mut self.mesh, other.mesh);
        for (target, source) in [
            (&mut self.services, &other.services),
            (&mut self.service_prefixes, &other.service_prefixes),
        ] {
            for (name, rule) in source {
                target
                    .entry(name.clone())
                    .and_modify(|existing| existing.merge(rule))
                    .or_insert(*rule);
            }
        }
        for (target, source) in [
            (&mut self.nodes, &other.nodes),
            (&mut self.node_prefixes, &other.node_prefixes),
            (&mut self.agents, &other.agents),
            (&mut self.agent_prefixes, &other.agent_prefixes),
        ] {
            for (name, level) in source {
                let mut slot = target.get(name).copied();
                merge_level(&mut slot, Some(*level));
                if let Some(level) = slot {
                    target.insert(name.clone(), level);
                }
            }
        }
    }

    /// Whether no rule is set at all.
    pub fn is_empty(&self) -> bool {
        *self == PolicyRules::default()
    }

    fn from_raw(entries: Entries) -> Result<PolicyRules, AclError> {
        let mut rules = PolicyRules::default();
        for (key, value) in entries {
            match key.as_str() {
                "acl" | "operator" | "mesh" => {
                    let level = access_value(&key, &key, value)?;
                    let slot = match key.as_str() {
                        "acl" => &mut rules.acl,
                        "operator" => &mut rules.operator,
                        _ => &mut rules.mesh,
                    };
                    if slot.is_some() {
                        return Err(AclError::invalid_rule(key, "is set more than once"));
                    }
                    *slot = Some(level);
                }
                "service" | "service_prefix" => {
                    for (name, body) in resource_entries(&key, value)? {
                        let rule = service_rule(&key, &name, body)?;
                        let map = if key == "service" {
                            &mut rules.services
                        } else {
                            &mut rules.service_prefixes
                        };
                        map.entry(name)
                            .and_modify(|existing| existing.merge(&rule))
                            .or_insert(rule);
                    }
                }
                "node" | "node_prefix" | "agent" | "agent_prefix" => {
                    for (name, body) in resource_entries(&key, value)? {
                        let level = node_rule(&key, &name, body)?;
                        let map = match key.as_str() {
                            "node" => &mut rules.nodes,
                            "node_prefix" => &mut rules.node_prefixes,
                            "agent" => &mut rules.agents,
                            _ => &mut rules.agent_prefixes,
                        };
                        let mut slot = map.get(&name).copied();
                        merge_level(&mut slot, Some(level));
                        if let Some(level) = slot {
                            map.insert(name, level);
                        }
                    }
                }
                _ => {
                    return Err(AclError::invalid_rule(
                        key,
                        "unsupported rule type; expected one of acl, agent, agent_prefix, mesh, \
                         node, node_prefix, operator, service, service_prefix",
                    ));
                }
            }
        }
        Ok(rules)
    }
}

impl FromStr for PolicyRules {
    type Err = AclError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyRules::parse(s)
    }
}

/// The keys and values of an object or block body, in source order, repeats included.
type Entries = Vec<(String, Raw)>;

/// The common shape of HCL and JSON rules before they are given meaning.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Str(String),
    /// A value of the wrong type; the text says which, for the error message.
    Other(&'static str),
    Map(Entries),
    List(Vec<Raw>),
    /// An HCL block. JSON has no blocks; it nests maps instead.
    Block {
        labels: Vec<String>,
        body: Entries,
    },
}

fn rule_label(kind: &str, name: &str) -> String {
    format!("{kind} {name:?}")
}

/// Splits a `service`/`node`/… value into (name, body) pairs, accepting the HCL block form
/// and the JSON `{"<name>": {…}}` and `[{"<name>": {…}}]` forms.
fn resource_entries(kind: &str, value: Raw) -> Result<Vec<(String, Entries)>, AclError> {
    match value {
        Raw::Block { mut labels, body } => {
            if labels.len() != 1 {
                return Err(AclError::invalid_rule(
                    kind,
                    format!(
                        "a {kind} block takes exactly one label (the name it applies to), found {}",
                        labels.len()
                    ),
                ));
            }
            let name = labels.pop().unwrap_or_default();
            Ok(vec![(name, body)])
        }
        Raw::Map(entries) => entries
            .into_iter()
            .map(|(name, body)| match body {
                Raw::Map(body) => Ok((name, body)),
                _ => Err(AclError::invalid_rule(
                    rule_label(kind, &name),
                    "must be an object of settings",
                )),
            })
            .collect(),
        Raw::List(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(resource_entries(kind, item)?);
            }
            Ok(out)
        }
        Raw::Str(_) | Raw::Other(_) => Err(AclError::invalid_rule(
            kind,
            format!("must be a block, e.g. {kind} \"name\" {{ policy = \"read\" }}"),
        )),
    }
}

fn access_value(rule: &str, key: &str, value: Raw) -> Result<AccessLevel, AclError> {
    match value {
        Raw::Str(s) => s.parse().map_err(|_| {
            AclError::invalid_rule(
                rule,
                format!("invalid {key} {s:?}; expected \"read\", \"write\" or \"deny\""),
            )
        }),
        Raw::Other(what) => Err(AclError::invalid_rule(
            rule,
            format!("{key} must be a string, found {what}"),
        )),
        Raw::Map(_) | Raw::List(_) | Raw::Block { .. } => Err(AclError::invalid_rule(
            rule,
            format!("{key} must be a string such as \"read\""),
        )),
    }
}

fn set_once(
    rule: &str,
    key: &str,
    slot: &mut Option<AccessLevel>,
    value: Raw,
) -> Result<(), AclError> {
    if slot.is_some() {
        return Err(AclError::invalid_rule(
            rule,
            format!("{key} is set more than once"),
        ));
    }
    *slot = Some(access_value(rule, key, value)?);
    Ok(())
}

fn service_rule(kind: &str, name: &str, body: Entries) -> Result<ServiceRule, AclError> {
    let rule = rule_label(kind, name);
    let (mut policy, mut intentions) = (None, None);
    for (key, value) in body {
        match key.as_str() {
            "policy" => set_once(&rule, &key, &mut policy, value)?,
            "intentions" => set_once(&rule, &key, &mut intentions, value)?,
            _ => {
                return Err(AclError::invalid_rule(
                    rule,
                    format!("unknown key {key:?}; expected \"policy\" or \"intentions\""),
                ));
            }
        }
    }
    // Consul requires `policy` even when only `intentions` is of interest.
    let policy =
        policy.ok_or_else(|| AclError::invalid_rule(&rule, "missing required key \"policy\""))?;
    Ok(ServiceRule { policy, intentions })
}

fn node_rule(kind: &str, name: &str, body: Entries) -> Result<AccessLevel, AclError> {
    let rule = rule_label(kind, name);
    let mut policy = None;
    for (key, value) in body {
        match key.as_str() {
            "policy" => set_once(&rule, &key, &mut policy, value)?,
            _ => {
                return Err(AclError::invalid_rule(
                    rule,
                    format!("unknown key {key:?}; expected \"policy\""),
                ));
            }
        }
    }
    policy.ok_or_else(|| AclError::invalid_rule(&rule, "missing required key \"policy\""))
}

fn raw_from_hcl(text: &str) -> Result<Entries, AclError> {
    let body = hcl::parse(text).map_err(|e| AclError::RulesSyntax {
        message: e.to_string(),
    })?;
    Ok(hcl_body(&body))
}

fn hcl_body(body: &hcl::Body) -> Entries {
    body.iter()
        .map(|structure| match structure {
            hcl::Structure::Attribute(attr) => (attr.key().to_owned(), hcl_expr(attr.expr())),
            hcl::Structure::Block(block) => (
                block.identifier().to_owned(),
                Raw::Block {
                    labels: block
                        .labels()
                        .iter()
                        .map(|l| l.as_str().to_owned())
                        .collect(),
                    body: hcl_body(block.body()),
                },
            ),
        })
        .collect()
}

fn hcl_expr(expr: &hcl::Expression) -> Raw {
    use hcl::Expression as E;
    match expr {
        E::String(s) => Raw::Str(s.clone()),
        E::Null => Raw::Other("null"),
        E::Bool(_) => Raw::Other("a boolean"),
        E::Number(_) => Raw::Other("a number"),
        E::Array(items) => Raw::List(items.iter().map(hcl_expr).collect()),
        E::Object(object) => Raw::Map(
            object
                .iter()
                .map(|(key, value)| (key.to_string(), hcl_expr(value)))
                .collect(),
        ),
        E::Parenthesis(inner) => hcl_expr(inner),
        // Rules are data, not programs: no variables, functions or interpolation.
        _ => Raw::Other("an expression (only literal strings are allowed)"),
    }
}

fn raw_from_json(text: &str) -> Result<Entries, AclError> {
    match serde_json::from_str::<Raw>(text) {
        Ok(Raw::Map(entries)) => Ok(entries),
        Ok(_) => Err(AclError::RulesSyntax {
            message: "JSON rules must be an object".into(),
        }),
        Err(e) => Err(AclError::RulesSyntax {
            message: e.to_string(),
        }),
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Raw, E> {
        Ok(Raw::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Raw, E> {
        Ok(Raw::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Raw, E> {
        Ok(Raw::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Raw, E> {
        Ok(Raw::Other("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Raw>()? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Raw>()? {
            entries.push((key, value));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HCL: &str = r#"
        # Connect sidecar for web, read-only discovery of everything else.
        service "web" {
          policy = "write"
        }
        service "db" {
          policy     = "read"
          intentions = "write"
        }
        service_prefix "" {
          policy = "read"
        }
        service_prefix "internal-" {
          policy = "deny"
        }
        node "node-1" {
          policy = "write"
        }
        node_prefix "" {
          policy = "read"
        }
        agent "node-1" {
          policy = "deny"
        }
        agent_prefix "" {
          policy = "read"
        }
        operator = "read"
        acl      = "deny"
        mesh     = "write"
    "#;

    const JSON: &str = r#"{
        "service": {
            "web": { "policy": "write" },
            "db": { "policy": "read", "intentions": "write" }
        },
        "service_prefix": [
            { "": { "policy": "read" } },
            { "internal-": { "policy": "deny" } }
        ],
        "node": { "node-1": { "policy": "write" } },
        "node_prefix": { "": { "policy": "read" } },
        "agent": { "node-1": { "policy": "deny" } },
        "agent_prefix": [{ "": { "policy": "read" } }],
        "operator": "read",
        "acl": "deny",
        "mesh": "write"
    }"#;

    fn expected() -> PolicyRules {
        let mut r = PolicyRules {
            acl: Some(AccessLevel::Deny),
            operator: Some(AccessLevel::Read),
            mesh: Some(AccessLevel::Write),
            ..PolicyRules::default()
        };
        r.services.insert(
            "web".into(),
            ServiceRule {
                policy: AccessLevel::Write,
                intentions: None,
            },
        );
        r.services.insert(
            "db".into(),
            ServiceRule {
                policy: AccessLevel::Read,
                intentions: Some(AccessLevel::Write),
            },
        );
        r.service_prefixes.insert(
            String::new(),
            ServiceRule {
                policy: AccessLevel::Read,
                intentions: None,
            },
        );
        r.service_prefixes.insert(
            "internal-".into(),
            ServiceRule {
                policy: AccessLevel::Deny,
                intentions: None,
            },
        );
        r.nodes.insert("node-1".into(), AccessLevel::Write);
        r.node_prefixes.insert(String::new(), AccessLevel::Read);
        r.agents.insert("node-1".into(), AccessLevel::Deny);
        r.agent_prefixes.insert(String::new(), AccessLevel::Read);
        r
    }

    #[test]
    fn hcl_and_json_mean_the_same() {
        let hcl = PolicyRules::parse(HCL).unwrap();
        let json = PolicyRules::parse(JSON).unwrap();
        assert_eq!(hcl, expected());
        assert_eq!(json, expected());
    }

    #[test]
    fn empty_rules_are_an_empty_set() {
        assert!(PolicyRules::parse("").unwrap().is_empty());
        assert!(PolicyRules::parse("  \n").unwrap().is_empty());
        assert!(PolicyRules::parse("# only a comment\n").unwrap().is_empty());
        assert!(PolicyRules::parse("{}").unwrap().is_empty());
    }

    #[test]
    fn intentions_follow_the_service_policy_unless_set() {
        let rule = |policy, intentions| ServiceRule { policy, intentions };
        use AccessLevel::*;
        assert_eq!(rule(Read, None).effective_intentions(), Read);
        assert_eq!(rule(Write, None).effective_intentions(), Read);
        assert_eq!(rule(Deny, None).effective_intentions(), Deny);
        assert_eq!(rule(Read, Some(Write)).effective_intentions(), Write);
        assert_eq!(rule(Write, Some(Deny)).effective_intentions(), Deny);
        assert_eq!(rule(Deny, Some(Read)).effective_intentions(), Read);
    }

    #[test]
    fn repeated_names_merge_with_deny_first() {
        let rules = PolicyRules::parse(
            r#"
            service "web" { policy = "read" }
            service "web" { policy = "deny" }
            service "api" { policy = "read" }
            service "api" { policy = "write" }
            node "n" { policy = "write" }
            node "n" { policy = "read" }
            "#,
        )
        .unwrap();
        assert_eq!(rules.services["web"].policy, AccessLevel::Deny);
        assert_eq!(rules.services["api"].policy, AccessLevel::Write);
        assert_eq!(rules.nodes["n"], AccessLevel::Write);
    }

    #[test]
    fn merge_follows_consul() {
        let mut a = PolicyRules::parse(
            r#"
            service "web" { policy = "write" }
            service "db" {
              policy = "read"
              intentions = "write"
            }
            operator = "read"
            "#,
        )
        .unwrap();
        let b = PolicyRules::parse(
            r#"
            service "web" {
              policy = "read"
              intentions = "write"
            }
            service "db" { policy = "deny" }
            operator = "write"
            acl = "read"
            "#,
        )
        .unwrap();
        a.merge(&b);
        assert_eq!(
            a.services["web"],
            ServiceRule {
                policy: AccessLevel::Write,
                intentions: Some(AccessLevel::Write)
            }
        );
        // The deny wins the service, but the explicit intentions setting survives: an unset
        // field never overrides a set one.
        assert_eq!(
            a.services["db"],
            ServiceRule {
                policy: AccessLevel::Deny,
                intentions: Some(AccessLevel::Write)
            }
        );
        assert_eq!(a.operator, Some(AccessLevel::Write));
        assert_eq!(a.acl, Some(AccessLevel::Read));
    }

    fn invalid(text: &str) -> (String, String) {
        match PolicyRules::parse(text) {
            Err(AclError::InvalidRule { rule, message }) => (rule, message),
            other => panic!("expected InvalidRule for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn every_bad_rule_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            // Unknown blocks and top-level keys.
            (
                r#"key_prefix "" { policy = "read" }"#,
                "key_prefix",
                "unsupported rule type",
            ),
            (r#"keyring = "read""#, "keyring", "unsupported rule type"),
            (
                r#"{"session_prefix": {"": {"policy": "read"}}}"#,
                "session_prefix",
                "unsupported",
            ),
            (
                "agent \"n\" {\n  policy = \"read\"\n  intentions = \"read\"\n}",
                "agent \"n\"",
                "unknown key \"intentions\"",
            ),
            (
                r#"agent_prefix "" { policy = "list" }"#,
                "agent_prefix \"\"",
                "invalid policy",
            ),
            // Unknown keys inside a rule.
            (
                "service \"web\" {\n  policy = \"read\"\n  sentinel = \"x\"\n}",
                "service \"web\"",
                "unknown key \"sentinel\"",
            ),
            (
                "node \"n\" {\n  policy = \"read\"\n  intentions = \"read\"\n}",
                "node \"n\"",
                "unknown key \"intentions\"",
            ),
            (
                r#"{"service_prefix": {"api": {"policy": "read", "Policy": "write"}}}"#,
                "service_prefix \"api\"",
                "unknown key \"Policy\"",
            ),
            // Bad access levels.
            (
                r#"service "web" { policy = "admin" }"#,
                "service \"web\"",
                "invalid policy \"admin\"",
            ),
            (
                "service \"web\" {\n  policy = \"read\"\n  intentions = \"list\"\n}",
                "service \"web\"",
                "invalid intentions \"list\"",
            ),
            (
                r#"node_prefix "" { policy = "all" }"#,
                "node_prefix \"\"",
                "invalid policy",
            ),
            (
                r#"operator = "manage""#,
                "operator",
                "invalid operator \"manage\"",
            ),
            (r#"acl = "Write""#, "acl", "invalid acl \"Write\""),
            (r#"{"mesh": "sudo"}"#, "mesh", "invalid mesh \"sudo\""),
            // Wrong value types.
            (
                r#"operator = true"#,
                "operator",
                "must be a string, found a boolean",
            ),
            (r#"{"acl": 1}"#, "acl", "must be a string, found a number"),
            (
                r#"service "web" { policy = var.level }"#,
                "service \"web\"",
                "only literal strings",
            ),
            (
                r#"{"service": {"web": "read"}}"#,
                "service \"web\"",
                "must be an object",
            ),
            (r#"service = "read""#, "service", "must be a block"),
            // Missing policy, wrong label count, repeats.
            (
                r#"service "web" { intentions = "read" }"#,
                "service \"web\"",
                "missing required key \"policy\"",
            ),
            (
                r#"node "n" { }"#,
                "node \"n\"",
                "missing required key \"policy\"",
            ),
            (
                r#"service { policy = "read" }"#,
                "service",
                "exactly one label",
            ),
            (
                r#"service "a" "b" { policy = "read" }"#,
                "service",
                "found 2",
            ),
            // HCL rejects a repeated attribute itself; JSON needs the walker to.
            (
                r#"{"operator": "read", "operator": "write"}"#,
                "operator",
                "more than once",
            ),
            (
                r#"{"service": {"web": {"policy": "read", "policy": "write"}}}"#,
                "service \"web\"",
                "policy is set more than once",
            ),
        ];
        for (text, rule, message) in cases {
            let (got_rule, got_message) = invalid(text);
            assert_eq!(&got_rule, rule, "rule for {text:?}");
            assert!(
                got_message.contains(message),
                "{text:?}: {got_message:?} lacks {message:?}"
            );
            let err = PolicyRules::parse(text).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidAclPolicy);
            assert!(err.to_string().contains(rule), "{err} does not name {rule}");
        }
    }

    #[test]
    fn syntax_errors_are_typed() {
        for text in [
            "service \"web\" { policy = ",
            "{\"service\": ",
            "[1, 2]",
            "{\"a\": 1} trailing",
            "operator = \"read\"\noperator = \"write\"",
        ] {
            match PolicyRules::parse(text) {
                Err(e @ AclError::RulesSyntax { .. }) => {
                    assert_eq!(e.kind(), crate::ErrorKind::InvalidAclPolicy);
                    assert!(e.to_string().starts_with("Failed to parse ACL rules: "));
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn hcl1_one_line_blocks_need_one_attribute_per_line() {
        // HCL 2 (hcl-rs) does not accept several attributes on one line inside a block, which
        // Consul's HCL 1 parser did. Such rules fail loudly rather than half-parse.
        let one_line = r#"service "web" { policy = "read" intentions = "write" }"#;
        assert!(matches!(
            PolicyRules::parse(one_line),
            Err(AclError::RulesSyntax { .. })
        ));
        assert!(PolicyRules::parse(r#"service "web" { policy = "read" }"#).is_ok());
    }

    #[test]
    fn access_level_grants() {
        use AccessLevel::*;
        assert!(Write.grants(Write) && Write.grants(Read));
        assert!(Read.grants(Read) && !Read.grants(Write));
        assert!(!Deny.grants(Read) && !Deny.grants(Write));
        assert_eq!("write".parse::<AccessLevel>().unwrap(), Write);
        assert!("list".parse::<AccessLevel>().is_err());
    }
}
