//! An in-memory ACL store: tokens and policies, bootstrap, and token resolution.
//!
//! The maps live in [`Tables`], which knows nothing about rules; compiling rules into an
//! [`AclAuthorizer`] happens in `authorizer.rs`. That split is deliberate: a later state store
//! replaces `Tables` (persistence, replication, blocking queries) without touching the
//! semantics of a rule.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{
    ANONYMOUS_TOKEN_ACCESSOR_ID, ANONYMOUS_TOKEN_SECRET_ID, AclAuthorizer, AclDefaultPolicy,
    AclError, GLOBAL_MANAGEMENT_POLICY_ID, GLOBAL_MANAGEMENT_POLICY_NAME, GLOBAL_MANAGEMENT_RULES,
    Policy, PolicyLink, PolicyRules, RESERVED_ID_PREFIX, Token,
};

/// How the ACL system is configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AclConfig {
    /// What applies where no rule does. Consul's default is `allow`.
    pub default_policy: AclDefaultPolicy,
    /// The local datacenter. When set, policies limited to other datacenters are ignored when
    /// resolving tokens; when unset, every policy applies.
    pub datacenter: Option<String>,
}

impl AclConfig {
    /// A configuration with this default policy and no datacenter.
    pub fn new(default_policy: AclDefaultPolicy) -> AclConfig {
        AclConfig {
            default_policy,
            datacenter: None,
        }
    }

    /// Sets the local datacenter.
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> AclConfig {
        self.datacenter = Some(datacenter.into());
        self
    }
}

/// Tokens and policies in memory, with cached authorizers.
///
/// Every method takes `&self`, so one store can be shared behind an `Arc` by request handlers.
/// Any write drops every cached authorizer: one policy change can affect any number of tokens,
/// and writes are rare next to resolutions.
pub struct AclStore {
    config: AclConfig,
    tables: RwLock<Tables>,
    /// Compiled authorizers by AccessorID (not by secret, to keep secrets in one map only).
    /// Lock order: `tables` first, then this.
    authorizers: Mutex<HashMap<String, Arc<AclAuthorizer>>>,
}

impl fmt::Debug for AclStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tables are keyed by secret; only counts are safe to show.
        let tables = self.read();
        f.debug_struct("AclStore")
            .field("config", &self.config)
            .field("tokens", &tables.tokens.len())
            .field("policies", &tables.policies.len())
            .field("bootstrapped", &tables.bootstrapped)
            .finish_non_exhaustive()
    }
}

/// The storage maps and the index counter, and nothing else.
#[derive(Default)]
struct Tables {
    index: u64,
    bootstrapped: bool,
    tokens: HashMap<String, Token>,
    /// SecretID → AccessorID.
    secrets: HashMap<String, String>,
    policies: HashMap<String, Policy>,
    /// Lower-cased name → ID: Consul compares policy names case-insensitively.
    policy_names: HashMap<String, String>,
}

impl Tables {
    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn insert_token(&mut self, token: Token) {
        self.secrets
            .insert(token.secret_id.clone(), token.accessor_id.clone());
        self.tokens.insert(token.accessor_id.clone(), token);
    }

    fn remove_token(&mut self, accessor_id: &str) -> Option<Token> {
        let token = self.tokens.remove(accessor_id)?;
        self.secrets.remove(&token.secret_id);
        Some(token)
    }

    fn insert_policy(&mut self, policy: Policy) {
        self.policy_names
            .insert(policy.name.to_lowercase(), policy.id.clone());
        self.policies.insert(policy.id.clone(), policy);
    }

    fn remove_policy(&mut self, id: &str) -> Option<Policy> {
        let policy = self.policies.remove(id)?;
        self.policy_names.remove(&policy.name.to_lowercase());
        Some(policy)
    }

    fn policy_by_name(&self, name: &str) -> Option<&Policy> {
        self.policy_names
            .get(&name.to_lowercase())
            .and_then(|id| self.policies.get(id))
    }

    /// A random UUID used by no token, as either accessor or secret.
    fn fresh_token_id(&self) -> String {
        loop {
            let id = uuid::Uuid::new_v4().to_string();
            if !self.tokens.contains_key(&id) && !self.secrets.contains_key(&id) {
                return id;
            }
        }
    }

    fn fresh_policy_id(&self) -> String {
        loop {
            let id = uuid::Uuid::new_v4().to_string();
            if !self.policies.contains_key(&id) {
                return id;
            }
        }
    }

    /// Validates links and normalises them to (ID, current name), without duplicates.
    fn resolve_links(&self, links: &[PolicyLink]) -> Result<Vec<PolicyLink>, AclError> {
        let mut out: Vec<PolicyLink> = Vec::with_capacity(links.len());
        for link in links {
            let policy = if !link.id.is_empty() {
                self.policies.get(&link.id).ok_or_else(|| {
                    AclError::InvalidToken(format!("No such ACL policy with ID {:?}", link.id))
                })?
            } else if !link.name.is_empty() {
                self.policy_by_name(&link.name).ok_or_else(|| {
                    AclError::InvalidToken(format!("No such ACL policy with name {:?}", link.name))
                })?
            } else {
                return Err(AclError::InvalidToken(
                    "a policy link needs an ID or a Name".into(),
                ));
            };
            if !out.iter().any(|l| l.id == policy.id) {
                out.push(PolicyLink {
                    id: policy.id.clone(),
                    name: policy.name.clone(),
                });
            }
        }
        Ok(out)
    }

    /// The token as readers see it: links to deleted policies dropped, renamed ones updated.
    fn present(&self, token: &Token) -> Token {
        let mut token = token.clone();
        token.policies = token
            .policies
            .iter()
            .filter_map(|link| {
                self.policies.get(&link.id).map(|p| PolicyLink {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
            })
            .collect();
        token
    }

    fn management_token(&mut self, description: &str, secret_id: String) -> Token {
        let accessor_id = self.fresh_token_id();
        let index = self.next_index();
        let token = Token {
            accessor_id,
            secret_id,
            description: description.to_owned(),
            policies: vec![PolicyLink {
                id: GLOBAL_MANAGEMENT_POLICY_ID.to_owned(),
                name: GLOBAL_MANAGEMENT_POLICY_NAME.to_owned(),
            }],
            local: false,
            create_index: index,
            modify_index: index,
        };
        self.insert_token(token.clone());
        token
    }
}

/// Canonical 8-4-4-4-12 hex, as Consul requires of user-chosen IDs.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Checks a caller-chosen token ID. The message names the field, never the value: the value
/// may be a secret.
fn check_token_id(field: &str, value: &str) -> Result<(), AclError> {
    if !is_uuid(value) {
        return Err(AclError::InvalidToken(format!(
            "{field} is not a valid UUID"
        )));
    }
    if value.starts_with(RESERVED_ID_PREFIX) {
        return Err(AclError::InvalidToken(format!(
            "{field}: UUIDs with the prefix {RESERVED_ID_PREFIX:?} are reserved"
        )));
    }
    Ok(())
}

fn check_policy(policy: &Policy) -> Result<(), AclError> {
    if policy.name.is_empty() {
        return Err(AclError::InvalidPolicy("no Name is set".into()));
    }
    let name_ok = policy.name.len() <= 128
        && policy
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(AclError::InvalidPolicy(format!(
            "invalid Name {:?}. Only alphanumeric characters, '-' and '_' are allowed, \
             at most 128 of them",
            policy.name
        )));
    }
    if policy.datacenters.iter().any(String::is_empty) {
        return Err(AclError::InvalidPolicy(
            "Datacenters must not contain an empty name".into(),
        ));
    }
    PolicyRules::parse(&policy.rules)?;
    Ok(())
}

impl AclStore {
    /// A store holding only the builtin `global-management` policy and the anonymous token.
    pub fn new(config: AclConfig) -> AclStore {
        let mut tables = Tables::default();
        let index = tables.next_index();
        tables.insert_policy(Policy {
            id: GLOBAL_MANAGEMENT_POLICY_ID.to_owned(),
            name: GLOBAL_MANAGEMENT_POLICY_NAME.to_owned(),
            description: "Builtin Policy that grants unlimited access".to_owned(),
            rules: GLOBAL_MANAGEMENT_RULES.to_owned(),
            datacenters: Vec::new(),
            create_index: index,
            modify_index: index,
        });
        let index = tables.next_index();
        tables.insert_token(Token {
            accessor_id: ANONYMOUS_TOKEN_ACCESSOR_ID.to_owned(),
            secret_id: ANONYMOUS_TOKEN_SECRET_ID.to_owned(),
            description: "Anonymous Token".to_owned(),
            policies: Vec::new(),
            local: false,
            create_index: index,
            modify_index: index,
        });
        AclStore {
            config,
            tables: RwLock::new(tables),
            authorizers: Mutex::new(HashMap::new()),
        }
    }

    /// Resumes a store from persisted tokens and policies. Rows with the builtin IDs replace
    /// the builtin ones, so a restart keeps exactly what was stored.
    pub fn restore(
        config: AclConfig,
        tokens: impl IntoIterator<Item = Token>,
        policies: impl IntoIterator<Item = Policy>,
        bootstrapped: bool,
    ) -> AclStore {
        let store = AclStore::new(config);
        {
            let mut tables = store.write();
            for mut policy in policies {
                tables.index = tables.index.max(policy.modify_index);
                // The builtin policy grants what this release knows, whatever an older one
                // stored (its rules cannot be edited, so nothing of the operator's is lost).
                if policy.id == GLOBAL_MANAGEMENT_POLICY_ID {
                    GLOBAL_MANAGEMENT_RULES.clone_into(&mut policy.rules);
                }
                if let Some(old) = tables.policies.get(&policy.id).cloned() {
                    tables.remove_policy(&old.id);
                }
                tables.insert_policy(policy);
            }
            for token in tokens {
                tables.index = tables.index.max(token.modify_index);
                tables.remove_token(&token.accessor_id);
                tables.insert_token(token);
            }
            tables.bootstrapped = bootstrapped;
        }
        store
    }

    /// Whether bootstrap (or an initial management token) has been used.
    pub fn bootstrapped(&self) -> bool {
        self.read().bootstrapped
    }

    /// The configuration this store was built with.
    pub fn config(&self) -> &AclConfig {
        &self.config
    }

    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The write lock, with the authorizer cache already emptied: whatever the caller changes,
    /// no authorizer compiled before the change survives it.
    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        let tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        self.cache().clear();
        tables
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, Arc<AclAuthorizer>>> {
        self.authorizers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the initial management token, once. The returned token carries the new
    /// SecretID: this is the only time the caller learns it without another management token.
    ///
    /// # Errors
    ///
    /// [`AclError::BootstrapNotAllowed`] if bootstrap already happened or an initial
    /// management token was configured.
    pub fn bootstrap(&self) -> Result<Token, AclError> {
        let mut tables = self.write();
        if tables.bootstrapped {
            return Err(AclError::BootstrapNotAllowed);
        }
        let secret = tables.fresh_token_id();
        let token = tables.management_token("Bootstrap Token (Global Management)", secret);
        tables.bootstrapped = true;
        Ok(token)
    }

    /// Ensures a management token with this SecretID exists (Consul's
    /// `acl.tokens.initial_management`). Like Consul, it uses up the one-time bootstrap, and
    /// leaves an existing token with this secret as it is.
    ///
    /// # Errors
    ///
    /// [`AclError::InvalidToken`] if the secret is empty or the anonymous token's.
    pub fn set_initial_management_token(&self, secret_id: &str) -> Result<Token, AclError> {
        if secret_id.is_empty() {
            return Err(AclError::InvalidToken(
                "the initial management token must not be empty".into(),
            ));
        }
        if secret_id == ANONYMOUS_TOKEN_SECRET_ID {
            return Err(AclError::InvalidToken(
                "the initial management token cannot be the anonymous token".into(),
            ));
        }
        let mut tables = self.write();
        if let Some(token) = tables
            .secrets
            .get(secret_id)
            .and_then(|accessor| tables.tokens.get(accessor))
        {
            return Ok(tables.present(token));
        }
        let token = tables.management_token("Initial Management Token", secret_id.to_owned());
        tables.bootstrapped = true;
        Ok(token)
    }

    /// Resolves the SecretID of a request to its authorizer. `None` or an empty secret is the
    /// anonymous token.
    ///
    /// # Errors
    ///
    /// [`AclError::NotFound`] if no token has this secret; rule errors only if a stored
    /// policy no longer parses, which validation on write prevents.
    pub fn resolve(&self, secret_id: Option<&str>) -> Result<Arc<AclAuthorizer>, AclError> {
        let tables = self.read();
        let accessor = match secret_id {
            None | Some("") => ANONYMOUS_TOKEN_ACCESSOR_ID,
            Some(secret) => tables.secrets.get(secret).ok_or(AclError::NotFound)?,
        };
        // Holding the read lock while compiling keeps a concurrent write from slipping in
        // between compiling and caching a now-stale authorizer.
        let mut cache = self.cache();
        if let Some(authorizer) = cache.get(accessor) {
            return Ok(Arc::clone(authorizer));
        }
        let token = tables.tokens.get(accessor).ok_or(AclError::NotFound)?;
        let authorizer = Arc::new(self.compile(&tables, token)?);
        cache.insert(accessor.to_owned(), Arc::clone(&authorizer));
        Ok(authorizer)
    }

    fn compile(&self, tables: &Tables, token: &Token) -> Result<AclAuthorizer, AclError> {
        let mut rules = Vec::with_capacity(token.policies.len());
        for link in &token.policies {
            // A link to a deleted policy grants nothing; Consul skips it the same way.
            let Some(policy) = tables.policies.get(&link.id) else {
                continue;
            };
            if let Some(dc) = &self.config.datacenter
                && !policy.datacenters.is_empty()
                && !policy.datacenters.contains(dc)
            {
                continue;
            }
            rules.push(PolicyRules::parse(&policy.rules)?);
        }
        Ok(
            AclAuthorizer::from_rules(self.config.default_policy, &rules)
                .with_accessor_id(token.accessor_id.clone()),
        )
    }

    /// Creates a token. Empty AccessorID or SecretID are generated; given ones must be
    /// unused, non-reserved UUIDs. Policy links may name a policy by ID or by name.
    ///
    /// # Errors
    ///
    /// [`AclError::InvalidToken`] for a bad or taken ID or a link to an unknown policy.
    pub fn create_token(&self, token: Token) -> Result<Token, AclError> {
        let mut tables = self.write();
        let accessor_id = if token.accessor_id.is_empty() {
            tables.fresh_token_id()
        } else {
            check_token_id("AccessorID", &token.accessor_id)?;
            if tables.tokens.contains_key(&token.accessor_id) {
                return Err(AclError::InvalidToken(
                    "AccessorID is already in use".into(),
                ));
            }
            token.accessor_id
        };
        let secret_id = if token.secret_id.is_empty() {
            tables.fresh_token_id()
        } else {
            check_token_id("SecretID", &token.secret_id)?;
            if tables.secrets.contains_key(&token.secret_id) {
                return Err(AclError::InvalidToken("SecretID is already in use".into()));
            }
            token.secret_id
        };
        let policies = tables.resolve_links(&token.policies)?;
        let index = tables.next_index();
        let token = Token {
            accessor_id,
            secret_id,
            description: token.description,
            policies,
            local: token.local,
            create_index: index,
            modify_index: index,
        };
        tables.insert_token(token.clone());
        Ok(token)
    }

    /// The token with this AccessorID.
    ///
    /// # Errors
    ///
    /// [`AclError::NotFound`] if there is none.
    pub fn read_token(&self, accessor_id: &str) -> Result<Token, AclError> {
        let tables = self.read();
        let token = tables.tokens.get(accessor_id).ok_or(AclError::NotFound)?;
        Ok(tables.present(token))
    }

    /// The token with this SecretID (Consul's `token/self`).
    ///
    /// # Errors
    ///
    /// [`AclError::NotFound`] if there is none.
    pub fn read_token_by_secret(&self, secret_id: &str) -> Result<Token, AclError> {
        let tables = self.read();
        let token = tables
            .secrets
            .get(secret_id)
            .and_then(|accessor| tables.tokens.get(accessor))
            .ok_or(AclError::NotFound)?;
        Ok(tables.present(token))
    }

    /// Every token, ordered by AccessorID.
    pub fn list_tokens(&self) -> Vec<Token> {
        let tables = self.read();
        let mut tokens: Vec<Token> = tables.tokens.values().map(|t| tables.present(t)).collect();
        tokens.sort_by(|a, b| a.accessor_id.cmp(&b.accessor_id));
        tokens
    }

    /// Replaces the description, policies of the token with `token.accessor_id`. The SecretID
    /// may be left empty (kept) but not changed, and `local` cannot change.
    ///
    /// # Errors
    ///
    /// [`AclError::NotFound`] for an unknown AccessorID; [`AclError::InvalidToken`] for a
    /// changed SecretID or `local`, or a link to an unknown policy.
    pub fn update_token(&self, token: Token) -> Result<Token, AclError> {
        let mut tables = self.write();
        let existing = tables
            .tokens
            .get(&token.accessor_id)
            .ok_or(AclError::NotFound)?;
        if !token.secret_id.is_empty() && token.secret_id != existing.secret_id {
            return Err(AclError::InvalidToken(
                "Changing a token's SecretID is not permitted".into(),
            ));
        }
        if token.local != existing.local {
            return Err(AclError::InvalidToken(format!(
                "Cannot toggle local mode of {}",
                existing.accessor_id
            )));
        }
        let (secret_id, create_index) = (existing.secret_id.clone(), existing.create_index);
        let policies = tables.resolve_links(&token.policies)?;
        let index = tables.next_index();
        let token = Token {
            accessor_id: token.accessor_id,
            secret_id,
            description: token.description,
            policies,
            local: token.local,
            create_index,
            modify_index: index,
        };
        tables.insert_token(token.clone());
        Ok(token)
    }

    /// Deletes the token with this AccessorID.
    ///
    /// # Errors
    ///
    /// [`AclError::NotFound`] if there is none; [`AclError::NotPermitted`] for the anonymous
    /// token, which every tokenless request needs.
    pub fn delete_token(&self, accessor_id: &str) -> Result<(), AclError> {
        if accessor_id == ANONYMOUS_TOKEN_ACCESSOR_ID {
            return Err(AclError::NotPermitted(
                "Delete operation not permitted on the anonymous token".into(),
            ));
        }
        let mut tables = self.write();
        tables
            .remove_token(accessor_id)
            .map(drop)
            .ok_or(AclError::NotFound)
    }

    /// Creates a policy. An empty ID is generated; the name must be valid and unused
    /// (case-insensitively) and the rules must parse.
    ///
    /// # Errors
    ///
    /// [`AclError::InvalidPolicy`] for a bad or taken name or ID; the rule parser's errors for
    /// bad rules.
    pub fn create_policy(&self, policy: Policy) -> Result<Policy, AclError> {
        check_policy(&policy)?;
        let mut tables = self.write();
        let id = if policy.id.is_empty() {
            tables.fresh_policy_id()
        } else {
            if !is_uuid(&policy.id) {
                return Err(AclError::InvalidPolicy(format!(
                    "ID {:?} is not a valid UUID",
                    policy.id
                )));
            }
            if policy.id.starts_with(RESERVED_ID_PREFIX) {
                return Err(AclError::InvalidPolicy(format!(
                    "UUIDs with the prefix {RESERVED_ID_PREFIX:?} are reserved"
                )));
            }
            if tables.policies.contains_key(&policy.id) {
                return Err(AclError::InvalidPolicy(format!(
                    "A Policy with ID {:?} already exists",
                    policy.id
                )));
            }
            policy.id
        };
        if tables.policy_by_name(&policy.name).is_some() {
            return Err(AclError::InvalidPolicy(format!(
                "A Policy with Name {:?} already exists",
                policy.name
            )));
        }
        let index = tables.next_index();
        let policy = Policy {
            id,
            create_index: index,
            modify_index: index,
            ..policy
        };
        tables.insert_policy(policy.clone());
        Ok(policy)
    }

    /// The policy with this ID.
    ///
    /// # Errors
    ///
    /// [`AclError::PolicyNotFound`] if there is none.
    pub fn read_policy(&self, id: &str) -> Result<Policy, AclError> {
        self.read()
            .policies
            .get(id)
            .cloned()
            .ok_or_else(|| AclError::PolicyNotFound(id.to_owned()))
    }

    /// The policy with this name, compared case-insensitively.
    ///
    /// # Errors
    ///
    /// [`AclError::PolicyNotFound`] if there is none.
    pub fn read_policy_by_name(&self, name: &str) -> Result<Policy, AclError> {
        self.read()
            .policy_by_name(name)
            .cloned()
            .ok_or_else(|| AclError::PolicyNotFound(name.to_owned()))
    }

    /// Every policy, ordered by name.
    pub fn list_policies(&self) -> Vec<Policy> {
        let mut policies: Vec<Policy> = self.read().policies.values().cloned().collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        policies
    }

    /// Replaces the policy with `policy.id`. Tokens linking to it see the change at their
    /// next resolution.
    ///
    /// # Errors
    ///
    /// [`AclError::PolicyNotFound`] for an unknown ID; [`AclError::InvalidPolicy`] or a rule
    /// error as for [`AclStore::create_policy`]; [`AclError::NotPermitted`] when changing the
    /// rules or datacenters of `global-management`.
    pub fn update_policy(&self, policy: Policy) -> Result<Policy, AclError> {
        check_policy(&policy)?;
        let mut tables = self.write();
        let existing = tables
            .policies
            .get(&policy.id)
            .ok_or_else(|| AclError::PolicyNotFound(policy.id.clone()))?;
        if policy.id == GLOBAL_MANAGEMENT_POLICY_ID {
            if policy.rules != existing.rules {
                return Err(AclError::NotPermitted(
                    "Changing the Rules for the builtin global-management policy is not permitted"
                        .into(),
                ));
            }
            if policy.datacenters != existing.datacenters {
                return Err(AclError::NotPermitted(
                    "Changing the Datacenters of the builtin global-management policy is not \
                     permitted"
                        .into(),
                ));
            }
        }
        if tables
            .policy_by_name(&policy.name)
            .is_some_and(|other| other.id != policy.id)
        {
            return Err(AclError::InvalidPolicy(format!(
                "A Policy with Name {:?} already exists",
                policy.name
            )));
        }
        let create_index = existing.create_index;
        tables.remove_policy(&policy.id);
        let index = tables.next_index();
        let policy = Policy {
            create_index,
            modify_index: index,
            ..policy
        };
        tables.insert_policy(policy.clone());
        Ok(policy)
    }

    /// Deletes the policy with this ID. Tokens keep their link, which then grants nothing and
    /// no longer shows when the token is read.
    ///
    /// # Errors
    ///
    /// [`AclError::PolicyNotFound`] for an unknown ID; [`AclError::NotPermitted`] for
    /// `global-management`.
    pub fn delete_policy(&self, id: &str) -> Result<(), AclError> {
        if id == GLOBAL_MANAGEMENT_POLICY_ID {
            return Err(AclError::NotPermitted(
                "Deletion of the builtin global-management policy is not permitted".into(),
            ));
        }
        let mut tables = self.write();
        tables
            .remove_policy(id)
            .map(drop)
            .ok_or_else(|| AclError::PolicyNotFound(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const SECRET: &str = "3f8a9b3c-5d6e-4f70-8192-a3b4c5d6e7f8";
    const OTHER_SECRET: &str = "c0ffee00-1234-4abc-8def-0123456789ab";

    fn store(default: AclDefaultPolicy) -> AclStore {
        AclStore::new(AclConfig::new(default))
    }

    fn policy(store: &AclStore, name: &str, rules: &str) -> Policy {
        store.create_policy(Policy::new(name, rules)).unwrap()
    }

    fn token_with(store: &AclStore, secret: &str, policies: &[&str]) -> Token {
        store
            .create_token(Token {
                secret_id: secret.into(),
                policies: policies.iter().map(|n| PolicyLink::by_name(*n)).collect(),
                ..Token::default()
            })
            .unwrap()
    }

    fn assert_management(authz: &AclAuthorizer) {
        for name in ["web", "db", "", "anything-at-all"] {
            assert!(authz.service_read(name) && authz.service_write(name));
            assert!(authz.intention_read(name) && authz.intention_write(name));
            assert!(authz.node_read(name) && authz.node_write(name));
        }
        assert!(authz.operator_read() && authz.operator_write());
        assert!(authz.mesh_read() && authz.mesh_write());
        assert!(authz.acl_read() && authz.acl_write());
    }

    #[test]
    fn new_store_has_the_builtins() {
        let s = store(AclDefaultPolicy::Deny);
        let anon = s.read_token(ANONYMOUS_TOKEN_ACCESSOR_ID).unwrap();
        assert_eq!(anon.secret_id, ANONYMOUS_TOKEN_SECRET_ID);
        assert!(anon.policies.is_empty());
        let gm = s.read_policy(GLOBAL_MANAGEMENT_POLICY_ID).unwrap();
        assert_eq!(gm.name, GLOBAL_MANAGEMENT_POLICY_NAME);
        assert_eq!(
            s.read_policy_by_name("Global-Management").unwrap().id,
            gm.id
        );
    }

    #[test]
    fn bootstrap_once_then_refused() {
        let s = store(AclDefaultPolicy::Deny);
        let token = s.bootstrap().unwrap();
        assert!(is_uuid(&token.secret_id) && is_uuid(&token.accessor_id));
        assert_eq!(token.policies[0].id, GLOBAL_MANAGEMENT_POLICY_ID);
        assert_management(&s.resolve(Some(&token.secret_id)).unwrap());
        let err = s.bootstrap().unwrap_err();
        assert_eq!(err, AclError::BootstrapNotAllowed);
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("ACL bootstrap no longer allowed"));
        assert!(!err.to_string().contains(&token.secret_id));
    }

    #[test]
    fn management_token_allows_everything_under_default_deny() {
        let s = store(AclDefaultPolicy::Deny);
        let t = s.bootstrap().unwrap();
        let authz = s.resolve(Some(&t.secret_id)).unwrap();
        assert_management(&authz);
        assert_eq!(authz.accessor_id(), Some(t.accessor_id.as_str()));
        // The fallback for unmatched intentions is the ACL default, not a token permission.
        assert!(!authz.intention_default_allow());
    }

    #[test]
    fn initial_management_token_uses_up_bootstrap() {
        let s = store(AclDefaultPolicy::Deny);
        let t = s.set_initial_management_token(SECRET).unwrap();
        assert_eq!(t.secret_id, SECRET);
        assert_eq!(t.description, "Initial Management Token");
        assert_management(&s.resolve(Some(SECRET)).unwrap());
        assert_eq!(s.bootstrap().unwrap_err(), AclError::BootstrapNotAllowed);
        // Restarting with the same configuration changes nothing.
        let again = s.set_initial_management_token(SECRET).unwrap();
        assert_eq!(again.accessor_id, t.accessor_id);
        assert_eq!(s.list_tokens().len(), 2);
        assert!(s.set_initial_management_token("").is_err());
        assert!(s.set_initial_management_token("anonymous").is_err());
    }

    #[test]
    fn anonymous_token_serves_requests_without_one() {
        let s = store(AclDefaultPolicy::Deny);
        let none = s.resolve(None).unwrap();
        assert!(Arc::ptr_eq(&none, &s.resolve(Some("")).unwrap()));
        assert!(Arc::ptr_eq(&none, &s.resolve(Some("anonymous")).unwrap()));
        assert_eq!(none.accessor_id(), Some(ANONYMOUS_TOKEN_ACCESSOR_ID));
        assert!(!none.service_read("web"));
        // Granting the anonymous token a policy opens that resource to everyone.
        let p = policy(&s, "public-web", r#"service "web" { policy = "read" }"#);
        let mut anon = s.read_token(ANONYMOUS_TOKEN_ACCESSOR_ID).unwrap();
        anon.secret_id.clear();
        anon.policies = vec![PolicyLink::by_id(&p.id)];
        s.update_token(anon).unwrap();
        let after = s.resolve(None).unwrap();
        assert!(after.service_read("web") && !after.service_read("db"));
        let err = s.delete_token(ANONYMOUS_TOKEN_ACCESSOR_ID).unwrap_err();
        assert!(matches!(err, AclError::NotPermitted(_)));
    }

    #[test]
    fn default_allow_vs_deny_for_tokens() {
        for (default, expect) in [
            (AclDefaultPolicy::Allow, true),
            (AclDefaultPolicy::Deny, false),
        ] {
            let s = store(default);
            policy(&s, "web", r#"service "web" { policy = "write" }"#);
            token_with(&s, SECRET, &["web"]);
            let authz = s.resolve(Some(SECRET)).unwrap();
            assert!(authz.service_write("web"));
            assert_eq!(authz.service_read("db"), expect);
            assert_eq!(authz.operator_write(), expect);
            assert_eq!(authz.intention_default_allow(), expect);
            assert!(!authz.acl_read());
            assert_eq!(s.resolve(None).unwrap().node_read("n"), expect);
        }
    }

    #[test]
    fn unknown_token_is_acl_not_found() {
        let s = store(AclDefaultPolicy::Allow);
        let err = s.resolve(Some(SECRET)).unwrap_err();
        assert_eq!(err, AclError::NotFound);
        assert_eq!(err.kind(), ErrorKind::AclNotFound);
        assert_eq!(err.to_string(), "ACL not found");
        assert_eq!(s.read_token("nope").unwrap_err(), AclError::NotFound);
        assert_eq!(
            s.read_token_by_secret(SECRET).unwrap_err(),
            AclError::NotFound
        );
        assert_eq!(s.delete_token(SECRET).unwrap_err(), AclError::NotFound);
        let update = s.update_token(Token {
            accessor_id: OTHER_SECRET.into(),
            ..Token::default()
        });
        assert_eq!(update.unwrap_err(), AclError::NotFound);
        // A deleted token stops resolving at once.
        let t = token_with(&s, SECRET, &[]);
        s.resolve(Some(SECRET)).unwrap();
        s.delete_token(&t.accessor_id).unwrap();
        assert_eq!(s.resolve(Some(SECRET)).unwrap_err(), AclError::NotFound);
    }

    #[test]
    fn policy_validation() {
        let s = store(AclDefaultPolicy::Deny);
        let invalid_policy = |p: Policy| match s.create_policy(p) {
            Err(e @ AclError::InvalidPolicy(_)) => {
                assert_eq!(e.kind(), ErrorKind::InvalidAclPolicy);
                e.to_string()
            }
            other => panic!("{other:?}"),
        };
        assert!(invalid_policy(Policy::new("", "")).contains("no Name is set"));
        assert!(invalid_policy(Policy::new("has space", "")).contains("invalid Name"));
        assert!(invalid_policy(Policy::new("dots.are.bad", "")).contains("invalid Name"));
        assert!(invalid_policy(Policy::new("x".repeat(129), "")).contains("invalid Name"));
        policy(&s, &"x".repeat(128), "");
        policy(&s, "Web_ops-1", "");
        assert!(invalid_policy(Policy::new("web_OPS-1", "")).contains("already exists"));
        let mut bad_id = Policy::new("ok", "");
        bad_id.id = "not-a-uuid".into();
        assert!(invalid_policy(bad_id).contains("not a valid UUID"));
        let mut reserved = Policy::new("ok", "");
        reserved.id = "00000000-0000-0000-0000-000000000009".into();
        assert!(invalid_policy(reserved).contains("reserved"));
        let mut dc = Policy::new("ok", "");
        dc.datacenters = vec![String::new()];
        assert!(invalid_policy(dc).contains("Datacenters"));
        // Rules must parse; the error names the rule.
        let err = s
            .create_policy(Policy::new(
                "bad-rules",
                r#"service "web" { policy = "admin" }"#,
            ))
            .unwrap_err();
        assert!(matches!(err, AclError::InvalidRule { ref rule, .. } if rule == "service \"web\""));
        assert_eq!(err.kind(), ErrorKind::InvalidAclPolicy);
        assert!(s.read_policy_by_name("bad-rules").is_err());
    }

    #[test]
    fn policy_ids_are_kept_or_generated() {
        let s = store(AclDefaultPolicy::Deny);
        let mut p = Policy::new("fixed", "");
        p.id = OTHER_SECRET.into();
        let created = s.create_policy(p.clone()).unwrap();
        assert_eq!(created.id, OTHER_SECRET);
        assert!(created.create_index > 0 && created.create_index == created.modify_index);
        p.name = "fixed-2".into();
        assert!(
            s.create_policy(p)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        let generated = policy(&s, "generated", "");
        assert!(is_uuid(&generated.id));
    }

    #[test]
    fn token_validation() {
        let s = store(AclDefaultPolicy::Deny);
        let invalid = |t: Token| match s.create_token(t) {
            Err(e @ AclError::InvalidToken(_)) => {
                assert_eq!(e.kind(), ErrorKind::InvalidParameter);
                e.to_string()
            }
            other => panic!("{other:?}"),
        };
        let by = |links: Vec<PolicyLink>| Token {
            policies: links,
            ..Token::default()
        };
        assert!(invalid(by(vec![PolicyLink::by_name("missing")])).contains("No such ACL policy"));
        assert!(invalid(by(vec![PolicyLink::by_id(OTHER_SECRET)])).contains("No such ACL policy"));
        assert!(invalid(by(vec![PolicyLink::default()])).contains("needs an ID or a Name"));
        let bad_secret = Token {
            secret_id: "hunter2".into(),
            ..Token::default()
        };
        let msg = invalid(bad_secret);
        assert!(msg.contains("SecretID is not a valid UUID") && !msg.contains("hunter2"));
        let reserved = Token {
            accessor_id: "00000000-0000-0000-0000-000000000005".into(),
            ..Token::default()
        };
        assert!(invalid(reserved).contains("reserved"));
        token_with(&s, SECRET, &[]);
        let reused = Token {
            secret_id: SECRET.into(),
            ..Token::default()
        };
        let msg = invalid(reused);
        assert!(msg.contains("already in use") && !msg.contains(SECRET));
    }

    #[test]
    fn token_links_are_normalised_and_deduplicated() {
        let s = store(AclDefaultPolicy::Deny);
        let p = policy(&s, "web", "");
        let t = s
            .create_token(Token {
                policies: vec![
                    PolicyLink::by_name("WEB"),
                    PolicyLink::by_id(&p.id),
                    PolicyLink::by_name(GLOBAL_MANAGEMENT_POLICY_NAME),
                ],
                ..Token::default()
            })
            .unwrap();
        assert_eq!(
            t.policies,
            vec![
                PolicyLink {
                    id: p.id.clone(),
                    name: "web".into()
                },
                PolicyLink {
                    id: GLOBAL_MANAGEMENT_POLICY_ID.into(),
                    name: GLOBAL_MANAGEMENT_POLICY_NAME.into()
                },
            ]
        );
        // Renaming shows through; deleting drops the link on read.
        s.update_policy(Policy {
            name: "web-renamed".into(),
            ..p.clone()
        })
        .unwrap();
        assert_eq!(
            s.read_token(&t.accessor_id).unwrap().policies[0].name,
            "web-renamed"
        );
        s.delete_policy(&p.id).unwrap();
        assert_eq!(s.read_token(&t.accessor_id).unwrap().policies.len(), 1);
    }

    #[test]
    fn token_updates_keep_secret_and_local() {
        let s = store(AclDefaultPolicy::Deny);
        let t = token_with(&s, SECRET, &[]);
        let changed_secret = s.update_token(Token {
            secret_id: OTHER_SECRET.into(),
            ..t.clone()
        });
        let err = changed_secret.unwrap_err();
        assert!(err.to_string().contains("SecretID is not permitted"));
        assert!(!err.to_string().contains(SECRET) && !err.to_string().contains(OTHER_SECRET));
        let toggled = s.update_token(Token {
            local: true,
            ..t.clone()
        });
        assert!(toggled.unwrap_err().to_string().contains("local mode"));
        let updated = s
            .update_token(Token {
                secret_id: String::new(),
                description: "renamed".into(),
                ..t.clone()
            })
            .unwrap();
        assert_eq!(updated.secret_id, SECRET);
        assert_eq!(updated.create_index, t.create_index);
        assert!(updated.modify_index > t.modify_index);
        assert_eq!(
            s.read_token_by_secret(SECRET).unwrap().description,
            "renamed"
        );
    }

    #[test]
    fn cached_authorizers_follow_every_change() {
        let s = store(AclDefaultPolicy::Deny);
        let p = policy(&s, "web", r#"service "web" { policy = "read" }"#);
        let t = token_with(&s, SECRET, &["web"]);
        let first = s.resolve(Some(SECRET)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &s.resolve(Some(SECRET)).unwrap()),
            "cached"
        );
        assert!(first.service_read("web") && !first.service_write("web"));

        s.update_policy(Policy {
            rules: r#"service "web" { policy = "write" }"#.into(),
            ..p.clone()
        })
        .unwrap();
        assert!(s.resolve(Some(SECRET)).unwrap().service_write("web"));

        let other = policy(&s, "db", r#"service "db" { policy = "write" }"#);
        s.update_token(Token {
            policies: vec![PolicyLink::by_id(&other.id)],
            ..t.clone()
        })
        .unwrap();
        let now = s.resolve(Some(SECRET)).unwrap();
        assert!(now.service_write("db") && !now.service_read("web"));

        s.delete_policy(&other.id).unwrap();
        assert!(!s.resolve(Some(SECRET)).unwrap().service_read("db"));
    }

    #[test]
    fn deny_in_one_policy_beats_write_in_another() {
        let s = store(AclDefaultPolicy::Allow);
        policy(&s, "writer", r#"service_prefix "" { policy = "write" }"#);
        policy(&s, "no-db", r#"service "db" { policy = "deny" }"#);
        token_with(&s, SECRET, &["writer", "no-db"]);
        let authz = s.resolve(Some(SECRET)).unwrap();
        assert!(authz.service_write("web"));
        assert!(!authz.service_read("db") && !authz.intention_read("db"));
        let err = authz
            .require(crate::acl::Permission::ServiceWrite("db"))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Permission denied: token with AccessorID '")
        );
        assert!(!err.to_string().contains(SECRET));
    }

    #[test]
    fn datacenter_limited_policies() {
        let s = AclStore::new(AclConfig::new(AclDefaultPolicy::Deny).with_datacenter("dc1"));
        let mut here = Policy::new("here", r#"service "a" { policy = "read" }"#);
        here.datacenters = vec!["dc1".into()];
        let mut there = Policy::new("there", r#"service "b" { policy = "read" }"#);
        there.datacenters = vec!["dc2".into()];
        s.create_policy(here).unwrap();
        s.create_policy(there).unwrap();
        policy(&s, "everywhere", r#"service "c" { policy = "read" }"#);
        token_with(&s, SECRET, &["here", "there", "everywhere"]);
        let authz = s.resolve(Some(SECRET)).unwrap();
        assert!(authz.service_read("a") && !authz.service_read("b") && authz.service_read("c"));
    }

    #[test]
    fn global_management_is_protected() {
        let s = store(AclDefaultPolicy::Deny);
        let gm = s.read_policy(GLOBAL_MANAGEMENT_POLICY_ID).unwrap();
        let err = s.delete_policy(GLOBAL_MANAGEMENT_POLICY_ID).unwrap_err();
        assert!(
            err.to_string()
                .contains("Deletion of the builtin global-management policy")
        );
        let err = s
            .update_policy(Policy {
                rules: String::new(),
                ..gm.clone()
            })
            .unwrap_err();
        assert!(err.to_string().contains("Changing the Rules"));
        let err = s
            .update_policy(Policy {
                datacenters: vec!["dc9".into()],
                ..gm.clone()
            })
            .unwrap_err();
        assert!(err.to_string().contains("Changing the Datacenters"));
        let described = s
            .update_policy(Policy {
                description: "root".into(),
                ..gm
            })
            .unwrap();
        assert_eq!(described.description, "root");
        assert_eq!(
            s.delete_policy(OTHER_SECRET).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn secrets_never_leak_through_debug_or_errors() {
        let s = store(AclDefaultPolicy::Deny);
        let boot = s.bootstrap().unwrap();
        let t = token_with(&s, SECRET, &[]);
        let mut rendered = vec![
            format!("{s:?}"),
            format!("{t:?}"),
            format!("{boot:#?}"),
            format!("{:?}", s.list_tokens()),
            format!("{:?}", s.resolve(Some(SECRET)).unwrap()),
        ];
        let errors = [
            s.resolve(Some(OTHER_SECRET)).unwrap_err(),
            s.read_token_by_secret(OTHER_SECRET).unwrap_err(),
            s.create_token(Token {
                secret_id: SECRET.into(),
                ..Token::default()
            })
            .unwrap_err(),
            s.update_token(Token {
                secret_id: OTHER_SECRET.into(),
                ..t.clone()
            })
            .unwrap_err(),
            s.bootstrap().unwrap_err(),
            s.resolve(Some(SECRET))
                .unwrap()
                .require(crate::acl::Permission::AclWrite)
                .unwrap_err(),
        ];
        for e in &errors {
            rendered.push(e.to_string());
            rendered.push(format!("{e:?}"));
            rendered.push(crate::Error::from(e.clone()).to_string());
        }
        for text in &rendered {
            for secret in [SECRET, OTHER_SECRET, boot.secret_id.as_str()] {
                assert!(!text.contains(secret), "secret in {text}");
            }
        }
    }

    #[test]
    fn store_is_shareable_across_threads() {
        let s = Arc::new(store(AclDefaultPolicy::Deny));
        policy(&s, "web", r#"service "web" { policy = "write" }"#);
        token_with(&s, SECRET, &["web"]);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    (0..50).all(|_| s.resolve(Some(SECRET)).unwrap().service_write("web"))
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap());
        }
    }

    #[test]
    fn restore_brings_back_tokens_policies_and_the_bootstrap_flag() {
        let a = AclStore::new(AclConfig::new(AclDefaultPolicy::Deny));
        let mgmt = a.bootstrap().unwrap();
        let p = a
            .create_policy(Policy::new(
                "web-write",
                "service \"web\" {\n policy = \"write\"\n}",
            ))
            .unwrap();
        let b = AclStore::restore(
            AclConfig::new(AclDefaultPolicy::Deny),
            a.list_tokens(),
            a.list_policies(),
            true,
        );
        assert!(b.bootstrapped());
        assert_eq!(b.read_policy(&p.id).unwrap(), p);
        assert!(b.resolve(Some(&mgmt.secret_id)).unwrap().operator_write());
        assert!(matches!(b.bootstrap(), Err(AclError::BootstrapNotAllowed)));
    }
}
