//! The ACL side of the server. [`AclStore`] holds the rules' semantics; every change is
//! mirrored into the state store so that it is durable and blocking queries see it.

use std::sync::Arc;

use super::{Server, ServerConfig};
use crate::Error;
use crate::acl::{
    AclAuthorizer, AclConfig, AclError, AclStore, Permission, Policy, REDACTED_SECRET_ID, Token,
};
use crate::state::Store;

/// Builds the ACL store from persisted rows; applies the configured initial management token.
pub(super) fn open_acl(config: &ServerConfig, store: &Store) -> Result<AclStore, Error> {
    let view = store.view();
    let acl_config =
        AclConfig::new(config.acl_default_policy).with_datacenter(config.datacenter.clone());
    let acl = AclStore::restore(
        acl_config,
        view.acl_tokens().cloned(),
        view.acl_policies().cloned(),
        view.acl_bootstrapped(),
    );
    if let Some(secret) = &config.acl_initial_management_token {
        let token = acl.set_initial_management_token(secret)?;
        mirror_token(store, token)?;
        store.set_acl_bootstrapped(true)?;
    }
    // The builtin policy and anonymous token are rows like any other. The builtin policy's
    // rules are rewritten when a release grants it more (as Consul's leader does), so that a
    // data directory from an older release does not hold back its management tokens.
    for policy in acl.list_policies() {
        if view.acl_policy(&policy.id) != Some(&policy) {
            store.put_acl_policy(policy)?;
        }
    }
    for token in acl.list_tokens() {
        if view.acl_token(&token.accessor_id).is_none() {
            store.put_acl_token(token)?;
        }
    }
    Ok(acl)
}

fn mirror_token(store: &Store, token: Token) -> Result<Token, Error> {
    store.put_acl_token(token.clone())?;
    Ok(token)
}

/// Consul shows a token's SecretID only to a caller with `acl:write`: with `acl:read` alone a
/// caller could otherwise read the management token's secret and become it.
fn redact(authz: &AclAuthorizer, mut token: Token) -> Token {
    if !authz.acl_write() {
        REDACTED_SECRET_ID.clone_into(&mut token.secret_id);
    }
    token
}

impl Server {
    /// Every ACL endpoint refuses with Consul's `ACL support disabled` (HTTP 401) when ACLs
    /// are off: with no enforcement, tokens and policies would only pretend to protect.
    fn acls_enabled(&self) -> Result<(), Error> {
        if self.config().acl_enabled {
            Ok(())
        } else {
            Err(AclError::Disabled.into())
        }
    }

    /// The caller's authorizer, for an ACL endpoint.
    fn acl_system(&self, token: Option<&str>) -> Result<Arc<AclAuthorizer>, Error> {
        self.acls_enabled()?;
        self.authorizer(token)
    }

    /// `GET /v1/agent/self` needs `agent:read` on this agent's node, as in Consul.
    pub fn agent_self_allowed(&self, token: Option<&str>) -> Result<(), Error> {
        self.authorizer(token)?
            .require(Permission::AgentRead(&self.config().node_name))?;
        Ok(())
    }

    /// `PUT /v1/acl/bootstrap`: the one-time management token.
    pub fn acl_bootstrap(&self) -> Result<Token, Error> {
        self.acls_enabled()?;
        let token = self.inner.acl.bootstrap()?;
        self.store().write(|tx| {
            tx.put_acl_token(token.clone())?;
            tx.set_acl_bootstrapped(true);
            Ok::<_, Error>(())
        })?;
        Ok(token)
    }

    /// Creates a policy (`acl:write`).
    pub fn acl_policy_create(&self, token: Option<&str>, policy: Policy) -> Result<Policy, Error> {
        self.acl_system(token)?.require(Permission::AclWrite)?;
        let policy = self.inner.acl.create_policy(policy)?;
        self.store().put_acl_policy(policy.clone())?;
        Ok(policy)
    }

    /// Reads a policy by ID (`acl:read`).
    pub fn acl_policy_read(&self, token: Option<&str>, id: &str) -> Result<Policy, Error> {
        self.acl_system(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.read_policy(id)?)
    }

    /// Reads a policy by name (`acl:read`).
    pub fn acl_policy_read_by_name(
        &self,
        token: Option<&str>,
        name: &str,
    ) -> Result<Policy, Error> {
        self.acl_system(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.read_policy_by_name(name)?)
    }

    /// Lists policies (`acl:read`).
    pub fn acl_policy_list(&self, token: Option<&str>) -> Result<Vec<Policy>, Error> {
        self.acl_system(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.list_policies())
    }

    /// Updates a policy (`acl:write`).
    pub fn acl_policy_update(&self, token: Option<&str>, policy: Policy) -> Result<Policy, Error> {
        self.acl_system(token)?.require(Permission::AclWrite)?;
        let policy = self.inner.acl.update_policy(policy)?;
        self.store().put_acl_policy(policy.clone())?;
        Ok(policy)
    }

    /// Deletes a policy (`acl:write`).
    pub fn acl_policy_delete(&self, token: Option<&str>, id: &str) -> Result<(), Error> {
        self.acl_system(token)?.require(Permission::AclWrite)?;
        self.inner.acl.delete_policy(id)?;
        self.store().delete_acl_policy(id)?;
        Ok(())
    }

    /// Creates a token (`acl:write`).
    pub fn acl_token_create(&self, token: Option<&str>, new: Token) -> Result<Token, Error> {
        self.acl_system(token)?.require(Permission::AclWrite)?;
        let created = self.inner.acl.create_token(new)?;
        mirror_token(self.store(), created)
    }

    /// Reads a token by AccessorID (`acl:read`); its SecretID reads `<hidden>` unless the
    /// caller has `acl:write`.
    pub fn acl_token_read(&self, token: Option<&str>, accessor_id: &str) -> Result<Token, Error> {
        let authz = self.acl_system(token)?;
        authz.require(Permission::AclRead)?;
        Ok(redact(&authz, self.inner.acl.read_token(accessor_id)?))
    }

    /// The token the request carries (`/v1/acl/token/self`); needs no permission. Its SecretID
    /// is shown, as in Consul: the caller just presented it.
    pub fn acl_token_self(&self, token: Option<&str>) -> Result<Token, Error> {
        self.acls_enabled()?;
        let secret = token.filter(|t| !t.is_empty()).ok_or(AclError::NotFound)?;
        Ok(self.inner.acl.read_token_by_secret(secret)?)
    }

    /// Lists tokens (`acl:read`); SecretIDs read `<hidden>` unless the caller has `acl:write`.
    pub fn acl_token_list(&self, token: Option<&str>) -> Result<Vec<Token>, Error> {
        let authz = self.acl_system(token)?;
        authz.require(Permission::AclRead)?;
        Ok(self
            .inner
            .acl
            .list_tokens()
            .into_iter()
            .map(|t| redact(&authz, t))
            .collect())
    }

    /// Updates a token (`acl:write`).
    pub fn acl_token_update(&self, token: Option<&str>, update: Token) -> Result<Token, Error> {
        self.acl_system(token)?.require(Permission::AclWrite)?;
        let updated = self.inner.acl.update_token(update)?;
        mirror_token(self.store(), updated)
    }

    /// Deletes a token (`acl:write`).
    pub fn acl_token_delete(&self, token: Option<&str>, accessor_id: &str) -> Result<(), Error> {
        self.acl_system(token)?.require(Permission::AclWrite)?;
        self.inner.acl.delete_token(accessor_id)?;
        self.store().delete_acl_token(accessor_id)?;
        Ok(())
    }
}
