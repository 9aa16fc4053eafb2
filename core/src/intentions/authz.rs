//! The L4 authorization decision (Consul API docs, Agent Connect, `/v1/agent/connect/authorize`).

use std::fmt;
use std::sync::Arc;

use super::matching::match_one;
use super::{Intention, IntentionAction, MatchType, ServiceRef, authorize_intention_target};

/// Where the answer for a connection that no intention matches comes from; each has its own
/// reason text, which Consul clients display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DefaultSource {
    /// The agent's `DefaultIntentionPolicy` setting.
    IntentionPolicy,
    /// The ACL system's default policy (`acl.default_policy`).
    Acl,
    /// ACLs are disabled, which (as in Consul 1.2–1.8) allows everything.
    AclsDisabled,
}

impl DefaultSource {
    /// The reason Consul gives for a decision from this source.
    pub const fn reason(self) -> &'static str {
        match self {
            DefaultSource::IntentionPolicy => "Default intention policy",
            DefaultSource::Acl => "Default behavior configured by ACLs",
            DefaultSource::AclsDisabled => "ACLs disabled, access is allowed by default",
        }
    }
}

/// What happens to a connection that no intention matches.
///
/// The constructors keep the action and its source consistent: with ACLs disabled the answer
/// is always allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DefaultPolicy {
    action: IntentionAction,
    source: DefaultSource,
}

impl DefaultPolicy {
    /// ACLs disabled: allow.
    pub const ACLS_DISABLED: DefaultPolicy = DefaultPolicy {
        action: IntentionAction::Allow,
        source: DefaultSource::AclsDisabled,
    };

    /// An explicit agent-level default intention policy; it takes priority over ACLs.
    pub const fn intention_policy(action: IntentionAction) -> DefaultPolicy {
        DefaultPolicy {
            action,
            source: DefaultSource::IntentionPolicy,
        }
    }

    /// The ACL default policy (allow or deny).
    pub const fn acl(action: IntentionAction) -> DefaultPolicy {
        DefaultPolicy {
            action,
            source: DefaultSource::Acl,
        }
    }

    /// Allow or deny.
    pub const fn action(self) -> IntentionAction {
        self.action
    }

    /// Where the policy comes from.
    pub const fn source(self) -> DefaultSource {
        self.source
    }
}

/// Why a [`Decision`] came out as it did. Formats (only when asked) to Consul's reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecisionReason {
    /// An intention without permissions matched: its action decided.
    MatchedL4(Arc<Intention>),
    /// An intention with L7 permissions matched: denied at L4, since only a proxy that sees
    /// the requests can apply the permissions.
    MatchedL7(Arc<Intention>),
    /// No intention matched.
    Default(DefaultSource),
}

impl fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionReason::MatchedL4(ixn) => write!(f, "Matched L4 intention: {ixn}"),
            DecisionReason::MatchedL7(ixn) => write!(f, "Matched L7 intention: {ixn}"),
            DecisionReason::Default(source) => f.write_str(source.reason()),
        }
    }
}

/// The outcome of authorizing one connection. Building one never allocates: the matched
/// intention is shared, and the reason is only rendered when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Why; `to_string()` gives Consul's `Reason`.
    pub reason: DecisionReason,
    /// The intention that decided, if any.
    pub matched: Option<Arc<Intention>>,
    /// The precedence of the intention that decided, if any.
    pub precedence: Option<u32>,
    /// Whether the default policy decided because no intention matched.
    pub default_used: bool,
}

impl Decision {
    pub(super) fn from_intention(ixn: &Arc<Intention>) -> Decision {
        let (allowed, reason) = if ixn.permissions.is_empty() {
            (
                ixn.action == Some(IntentionAction::Allow),
                DecisionReason::MatchedL4(Arc::clone(ixn)),
            )
        } else {
            (false, DecisionReason::MatchedL7(Arc::clone(ixn)))
        };
        Decision {
            allowed,
            reason,
            matched: Some(Arc::clone(ixn)),
            precedence: Some(ixn.precedence),
            default_used: false,
        }
    }

    pub(super) fn from_default(policy: DefaultPolicy) -> Decision {
        Decision {
            allowed: policy.action == IntentionAction::Allow,
            reason: DecisionReason::Default(policy.source),
            matched: None,
            precedence: None,
            default_used: true,
        }
    }
}

/// Decides a connection from `source` given the intentions for its destination, already in
/// evaluation order: the first whose source covers `source` wins, else `default`.
///
/// This is the agent's walk over the `intention-match` cache result; use it when the candidate
/// list comes from elsewhere (a Consul agent), and [`IntentionIndex`] otherwise.
///
/// [`IntentionIndex`]: super::IntentionIndex
pub fn authorize_candidates<'a, I>(
    candidates: I,
    source: &ServiceRef<'_>,
    default: DefaultPolicy,
) -> Decision
where
    I: IntoIterator<Item = &'a Arc<Intention>>,
{
    candidates
        .into_iter()
        .find(|ixn| authorize_intention_target(ixn, MatchType::Source, source).is_some())
        .map_or_else(|| Decision::from_default(default), Decision::from_intention)
}

/// Decides a connection from `source` to `destination` over a whole set of intentions, in the
/// straightforward way: match by destination, sort, walk.
///
/// It allocates; [`IntentionIndex::authorize`] gives the same answer without doing so.
///
/// [`IntentionIndex::authorize`]: super::IntentionIndex::authorize
pub fn authorize(
    intentions: &[Arc<Intention>],
    destination: &ServiceRef<'_>,
    source: &ServiceRef<'_>,
    default: DefaultPolicy,
) -> Decision {
    let candidates = match_one(intentions, MatchType::Destination, destination);
    authorize_candidates(candidates, source, default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intentions::{IntentionHttpPermission, IntentionPermission};

    const DENY_BY_ACL: DefaultPolicy = DefaultPolicy::acl(IntentionAction::Deny);

    fn arc(ixn: Intention) -> Arc<Intention> {
        Arc::new(ixn)
    }

    fn with(mut ixn: Intention, f: impl FnOnce(&mut Intention)) -> Intention {
        f(&mut ixn);
        ixn.normalize();
        ixn
    }

    #[test]
    fn l4_match_reason_is_the_server_string_form() {
        let ixn = arc(with(
            Intention::new("web", "db", IntentionAction::Allow),
            |i| {
                i.id = "e9ebc19f-d481-42b1-4871-4d298d3acd5c".into();
            },
        ));
        let d = authorize(
            &[Arc::clone(&ixn)],
            &ServiceRef::new("db"),
            &ServiceRef::new("web"),
            DENY_BY_ACL,
        );
        assert!(d.allowed);
        assert_eq!(
            d.reason.to_string(),
            "Matched L4 intention: ALLOW default/web => default/db (ID: e9ebc19f-d481-42b1-4871-4d298d3acd5c)"
        );
        assert_eq!(d.matched, Some(ixn));
        assert_eq!(d.precedence, Some(9));
        assert!(!d.default_used);
    }

    #[test]
    fn l4_deny_denies() {
        let ixns = [arc(Intention::new("web", "db", IntentionAction::Deny))];
        let d = authorize(
            &ixns,
            &ServiceRef::new("db"),
            &ServiceRef::new("web"),
            DefaultPolicy::ACLS_DISABLED,
        );
        assert!(!d.allowed);
        assert!(
            d.reason
                .to_string()
                .starts_with("Matched L4 intention: DENY default/web => default/db")
        );
    }

    #[test]
    fn l7_intention_denies_at_l4() {
        let l7 = with(Intention::new("web", "db", IntentionAction::Allow), |i| {
            i.action = None;
            i.permissions = vec![IntentionPermission::new(
                IntentionAction::Allow,
                IntentionHttpPermission {
                    path_prefix: "/".into(),
                    ..IntentionHttpPermission::default()
                },
            )];
        });
        let d = authorize(
            &[arc(l7)],
            &ServiceRef::new("db"),
            &ServiceRef::new("web"),
            DefaultPolicy::ACLS_DISABLED,
        );
        assert!(!d.allowed);
        assert_eq!(
            d.reason.to_string(),
            "Matched L7 intention:  default/web => default/db (ID: )"
        );
        assert!(matches!(d.reason, DecisionReason::MatchedL7(_)));
    }

    #[test]
    fn no_match_uses_the_default_policy_and_its_reason() {
        let ixns = [arc(Intention::new("api", "db", IntentionAction::Deny))];
        let cases = [
            (
                DefaultPolicy::intention_policy(IntentionAction::Allow),
                true,
                "Default intention policy",
            ),
            (
                DefaultPolicy::intention_policy(IntentionAction::Deny),
                false,
                "Default intention policy",
            ),
            (
                DefaultPolicy::acl(IntentionAction::Allow),
                true,
                "Default behavior configured by ACLs",
            ),
            (DENY_BY_ACL, false, "Default behavior configured by ACLs"),
            (
                DefaultPolicy::ACLS_DISABLED,
                true,
                "ACLs disabled, access is allowed by default",
            ),
        ];
        for (policy, allowed, reason) in cases {
            let d = authorize(
                &ixns,
                &ServiceRef::new("db"),
                &ServiceRef::new("web"),
                policy,
            );
            assert_eq!(
                (d.allowed, d.reason.to_string().as_str()),
                (allowed, reason),
                "{policy:?}"
            );
            assert!(d.default_used);
            assert_eq!((d.matched, d.precedence), (None, None));
        }
    }

    #[test]
    fn the_first_match_in_precedence_order_wins() {
        // Listed lowest precedence first so that input order cannot be what decides.
        let ixns = [
            arc(with(
                Intention::new("*", "*", IntentionAction::Allow),
                |i| {
                    (i.source_ns, i.destination_ns) = ("*".into(), "*".into());
                },
            )),
            arc(Intention::new("*", "db", IntentionAction::Allow)),
            arc(Intention::new("web", "db", IntentionAction::Deny)),
        ];
        let db = ServiceRef::new("db");
        let d = authorize(
            &ixns,
            &db,
            &ServiceRef::new("web"),
            DefaultPolicy::ACLS_DISABLED,
        );
        assert_eq!((d.allowed, d.precedence), (false, Some(9)));
        let d = authorize(&ixns, &db, &ServiceRef::new("api"), DENY_BY_ACL);
        assert_eq!((d.allowed, d.precedence), (true, Some(8)));
        let d = authorize(
            &ixns,
            &ServiceRef::in_namespace("ns1", "cache"),
            &ServiceRef::new("api"),
            DENY_BY_ACL,
        );
        assert_eq!((d.allowed, d.precedence), (true, Some(1)));
    }

    #[test]
    fn source_peer_and_partition_must_match() {
        let peered = arc(with(
            Intention::new("web", "db", IntentionAction::Allow),
            |i| {
                i.source_partition.clear();
                i.source_peer = "cluster-01".into();
            },
        ));
        let in_ap1 = arc(with(
            Intention::new("web", "db", IntentionAction::Allow),
            |i| {
                i.source_partition = "ap1".into();
            },
        ));
        let ixns = [peered, in_ap1];
        let db = ServiceRef::new("db");
        let check = |source: ServiceRef<'_>| authorize(&ixns, &db, &source, DENY_BY_ACL).allowed;
        assert!(!check(ServiceRef::new("web")));
        assert!(check(ServiceRef {
            peer: "cluster-01",
            ..ServiceRef::new("web")
        }));
        assert!(!check(ServiceRef {
            peer: "cluster-02",
            ..ServiceRef::new("web")
        }));
        assert!(check(ServiceRef {
            partition: "ap1",
            ..ServiceRef::new("web")
        }));
    }

    #[test]
    fn candidates_from_elsewhere_are_walked_in_the_order_given() {
        let deny = arc(Intention::new("web", "db", IntentionAction::Deny));
        let allow = arc(with(
            Intention::new("*", "db", IntentionAction::Allow),
            |_| {},
        ));
        let d = authorize_candidates([&allow, &deny], &ServiceRef::new("web"), DENY_BY_ACL);
        assert!(
            d.allowed,
            "the caller's order is trusted, as the agent trusts the cache"
        );
    }
}
