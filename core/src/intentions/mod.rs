//! Intentions: which services may talk to which (spec §5).
//!
//! The model and its Consul JSON ([`Intention`]), validation and normalisation (§5.2),
//! precedence and evaluation order (§5.3), matching (§5.4) and the L4 authorization decision
//! (§5.5), and [`IntentionIndex`], which answers the authorization on the hot path.

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
