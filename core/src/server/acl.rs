//! The ACL side of the server. [`AclStore`] holds the rules' semantics; every change is
//! mirrored into the state store so that it is durable and blocking queries see it.

use super::{Server, ServerConfig};
use crate::Error;
use crate::acl::{AclConfig, AclError, AclStore, Permission, Policy, Token};
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
    // The builtin policy and anonymous token are rows like any other.
    for policy in acl.list_policies() {
        if view.acl_policy(&policy.id).is_none() {
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

impl Server {
    /// `PUT /v1/acl/bootstrap`: the one-time management token.
    pub fn acl_bootstrap(&self) -> Result<Token, Error> {
        if !self.config().acl_enabled {
            return Err(Error::new(
                crate::ErrorKind::InvalidParameter,
                "ACL support disabled",
            ));
        }
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
        self.authorizer(token)?.require(Permission::AclWrite)?;
        let policy = self.inner.acl.create_policy(policy)?;
        self.store().put_acl_policy(policy.clone())?;
        Ok(policy)
    }

    /// Reads a policy by ID (`acl:read`).
    pub fn acl_policy_read(&self, token: Option<&str>, id: &str) -> Result<Policy, Error> {
        self.authorizer(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.read_policy(id)?)
    }

    /// Reads a policy by name (`acl:read`).
    pub fn acl_policy_read_by_name(
        &self,
        token: Option<&str>,
        name: &str,
    ) -> Result<Policy, Error> {
        self.authorizer(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.read_policy_by_name(name)?)
    }

    /// Lists policies (`acl:read`).
    pub fn acl_policy_list(&self, token: Option<&str>) -> Result<Vec<Policy>, Error> {
        self.authorizer(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.list_policies())
    }

    /// Updates a policy (`acl:write`).
    pub fn acl_policy_update(&self, token: Option<&str>, policy: Policy) -> Result<Policy, Error> {
        self.authorizer(token)?.require(Permission::AclWrite)?;
        let policy = self.inner.acl.update_policy(policy)?;
        self.store().put_acl_policy(policy.clone())?;
        Ok(policy)
    }

    /// Deletes a policy (`acl:write`).
    pub fn acl_policy_delete(&self, token: Option<&str>, id: &str) -> Result<(), Error> {
        self.authorizer(token)?.require(Permission::AclWrite)?;
        self.inner.acl.delete_policy(id)?;
        self.store().delete_acl_policy(id)?;
        Ok(())
    }

    /// Creates a token (`acl:write`).
    pub fn acl_token_create(&self, token: Option<&str>, new: Token) -> Result<Token, Error> {
        self.authorizer(token)?.require(Permission::AclWrite)?;
        let created = self.inner.acl.create_token(new)?;
        mirror_token(self.store(), created)
    }

    /// Reads a token by AccessorID (`acl:read`).
    pub fn acl_token_read(&self, token: Option<&str>, accessor_id: &str) -> Result<Token, Error> {
        self.authorizer(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.read_token(accessor_id)?)
    }

    /// The token the request carries (`/v1/acl/token/self`); needs no permission.
    pub fn acl_token_self(&self, token: Option<&str>) -> Result<Token, Error> {
        let secret = token.filter(|t| !t.is_empty()).ok_or(AclError::NotFound)?;
        Ok(self.inner.acl.read_token_by_secret(secret)?)
    }

    /// Lists tokens (`acl:read`).
    pub fn acl_token_list(&self, token: Option<&str>) -> Result<Vec<Token>, Error> {
        self.authorizer(token)?.require(Permission::AclRead)?;
        Ok(self.inner.acl.list_tokens())
    }

    /// Updates a token (`acl:write`).
    pub fn acl_token_update(&self, token: Option<&str>, update: Token) -> Result<Token, Error> {
        self.authorizer(token)?.require(Permission::AclWrite)?;
        let updated = self.inner.acl.update_token(update)?;
        mirror_token(self.store(), updated)
    }

    /// Deletes a token (`acl:write`).
    pub fn acl_token_delete(&self, token: Option<&str>, accessor_id: &str) -> Result<(), Error> {
        self.authorizer(token)?.require(Permission::AclWrite)?;
        self.inner.acl.delete_token(accessor_id)?;
        self.store().delete_acl_token(accessor_id)?;
        Ok(())
    }
}
