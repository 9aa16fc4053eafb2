//! ACLs, as in Consul: tokens, policies and their rule language, authorizers, and a store.
//!
//! A request's token (the `X-Consul-Token` header, or none) resolves through an
//! [`AclStore`] to an [`AclAuthorizer`], which answers permission questions such as
//! `service:write` on `web`. Denials are [`AclError::PermissionDenied`], shown to clients as
//! `Permission denied` (HTTP 403). When ACLs are disabled, use [`AclAuthorizer::allow_all`].
//!
//! Rules are written in HCL or JSON; see [`PolicyRules`] for the supported resources and
//! their precedence.

mod authorizer;
mod error;
mod model;
mod rules;
mod store;

pub use authorizer::{AclAuthorizer, AclDefaultPolicy, Permission};
pub use error::AclError;
pub use model::{
    ANONYMOUS_TOKEN_ACCESSOR_ID, ANONYMOUS_TOKEN_SECRET_ID, GLOBAL_MANAGEMENT_POLICY_ID,
    GLOBAL_MANAGEMENT_POLICY_NAME, GLOBAL_MANAGEMENT_RULES, Policy, PolicyLink, REDACTED_SECRET_ID,
    RESERVED_ID_PREFIX, Token,
};
pub use rules::{AccessLevel, PolicyRules, ServiceRule};
pub use store::{AclConfig, AclStore};
