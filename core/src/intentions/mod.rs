//! Intentions: which services may talk to which (Consul docs: Intentions).
//!
//! The model and its Consul JSON ([`Intention`]), validation and normalisation (Consul docs:
//! Intentions), precedence and evaluation order (Consul docs: Intentions), matching (Consul API
//! docs) and the L4 authorization decision (Consul API docs, Agent Connect), and
//! [`IntentionIndex`], which answers the authorization on the hot path.

mod authz;
mod error;
mod index;
mod json;
mod matching;
mod model;
mod precedence;
mod validate;

pub use authz::{
    Decision, DecisionReason, DefaultPolicy, DefaultSource, authorize, authorize_candidates,
};
pub use error::IntentionError;
pub use index::{IntentionIndex, SharedIntentionIndex};
pub(crate) use matching::or_default;
pub use matching::{MatchType, ServiceRef, authorize_intention_target, match_intentions};
pub use model::{
    DEFAULT_NAMESPACE, DEFAULT_PARTITION, Intention, IntentionAction,
    IntentionHttpHeaderPermission, IntentionHttpPermission, IntentionPermission,
    SOURCE_TYPE_CONSUL, WILDCARD,
};
pub use precedence::{compare_precedence, sort_by_precedence};
pub use validate::{MAX_DESCRIPTION_LEN, MAX_META_KEY_LEN, MAX_META_PAIRS, MAX_META_VALUE_LEN};
