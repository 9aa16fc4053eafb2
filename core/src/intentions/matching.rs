//! Which intentions apply to a service (Consul API docs, Intentions, and the per-intention test of
//! authorize).

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use super::{
    DEFAULT_NAMESPACE, Intention, IntentionAction, IntentionError, WILDCARD, compare_precedence,
};

/// Empty namespaces and partitions mean `default` everywhere Consul compares them (both
/// defaults are spelled `default`).
pub(crate) fn or_default(value: &str) -> &str {
    if value.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        value
    }
}

/// A service as intentions see it: borrowed, so that a lookup on the hot path allocates nothing.
///
/// An empty `partition` or `namespace` means `default`; an empty `peer` means a local service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ServiceRef<'a> {
    /// Admin partition.
    pub partition: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Service name.
    pub name: &'a str,
    /// The peer the service lives in; empty for a local service.
    pub peer: &'a str,
}

impl<'a> ServiceRef<'a> {
    /// A local service in the default partition and namespace.
    pub const fn new(name: &'a str) -> ServiceRef<'a> {
        ServiceRef {
            partition: "",
            namespace: "",
            name,
            peer: "",
        }
    }

    /// A local service in `namespace` of the default partition.
    pub const fn in_namespace(namespace: &'a str, name: &'a str) -> ServiceRef<'a> {
        ServiceRef {
            namespace,
            ..ServiceRef::new(name)
        }
    }
}

/// Which side of an intention a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchType {
    /// Intentions whose source is the given service (what may it connect to?).
    Source,
    /// Intentions whose destination is the given service (who may connect to it?).
    Destination,
}

impl MatchType {
    /// The query spelling: `source` or `destination`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MatchType::Source => "source",
            MatchType::Destination => "destination",
        }
    }
}

impl fmt::Display for MatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MatchType {
    type Err = IntentionError;

    /// Parses the `by=` query value; anything else is an error, never a silent non-match.
    fn from_str(value: &str) -> Result<MatchType, IntentionError> {
        match value {
            "source" => Ok(MatchType::Source),
            "destination" => Ok(MatchType::Destination),
            _ => Err(IntentionError::UnknownMatchType {
                value: value.to_owned(),
            }),
        }
    }
}

/// Whether one side of an intention is in the set Consul's store looks up for (`ns`, `name`):
/// `*/*`, then `ns/*` unless `ns` is `*`, then `ns/name` unless either is `*`.
///
/// Invalid sides such as `*/web` are in no set, so they never match, as in Consul.
fn side_matches(side_ns: &str, side_name: &str, ns: &str, name: &str) -> bool {
    let (side_ns, ns) = (or_default(side_ns), or_default(ns));
    if side_ns == WILDCARD {
        return side_name == WILDCARD;
    }
    ns != WILDCARD
        && side_ns == ns
        && (side_name == WILDCARD || (name != WILDCARD && side_name == name))
}

/// One side of an intention, as the matchers compare it.
struct Side<'a> {
    /// `None` for the destination: destinations are local, so there is no peer to compare.
    peer: Option<&'a str>,
    partition: &'a str,
    ns: &'a str,
    name: &'a str,
}

impl<'a> Side<'a> {
    fn of(ixn: &'a Intention, by: MatchType) -> Side<'a> {
        match by {
            MatchType::Source => Side {
                peer: Some(&ixn.source_peer),
                partition: &ixn.source_partition,
                ns: &ixn.source_ns,
                name: &ixn.source_name,
            },
            MatchType::Destination => Side {
                peer: None,
                partition: &ixn.destination_partition,
                ns: &ixn.destination_ns,
                name: &ixn.destination_name,
            },
        }
    }

    /// Peers and partitions are never wildcards: they must be equal.
    fn same_tenancy(&self, service: &ServiceRef<'_>) -> bool {
        self.peer.is_none_or(|peer| peer == service.peer)
            && or_default(self.partition) == or_default(service.partition)
    }
}

/// Whether `ixn`'s chosen side covers `service` under the store's lookup rule (Consul API docs,
/// Intentions).
fn covers(ixn: &Intention, by: MatchType, service: &ServiceRef<'_>) -> bool {
    let side = Side::of(ixn, by);
    side.same_tenancy(service) && side_matches(side.ns, side.name, service.namespace, service.name)
}

/// The intentions whose `by` side covers each of `services`, each list in evaluation order
/// (Consul API docs, `/v1/connect/intentions/match`).
///
/// Partitions compare with empty meaning `default`. Matching by source also requires the
/// source peer to equal the service's; destinations are always local, so their peer is ignored.
pub fn match_intentions<'a, T: Borrow<Intention>>(
    intentions: &'a [T],
    by: MatchType,
    services: &[ServiceRef<'_>],
) -> Vec<Vec<&'a T>> {
    services
        .iter()
        .map(|service| match_one(intentions, by, service))
        .collect()
}

/// [`match_intentions`] for one service.
pub(super) fn match_one<'a, T: Borrow<Intention>>(
    intentions: &'a [T],
    by: MatchType,
    service: &ServiceRef<'_>,
) -> Vec<&'a T> {
    let mut matched: Vec<&T> = intentions
        .iter()
        .filter(|ixn| covers((*ixn).borrow(), by, service))
        .collect();
    matched.sort_by(|a, b| compare_precedence((*a).borrow(), (*b).borrow()));
    matched
}

/// Whether `ixn` covers `target` on its `by` side and, if it does, whether it allows
/// (Consul's `AuthorizeIntentionTarget`): `None` when it does not cover the target,
/// `Some(allowed)` when it does.
///
/// This is the test the authorize walk applies to each candidate: the peer must be equal, the
/// partition equal (empty meaning `default`), and the namespace and name each `*` or equal. An
/// intention with L7 permissions has no action and so never allows here.
pub fn authorize_intention_target(
    ixn: &Intention,
    by: MatchType,
    target: &ServiceRef<'_>,
) -> Option<bool> {
    let side = Side::of(ixn, by);
    let covered = side.same_tenancy(target)
        && (side.ns == WILDCARD || or_default(side.ns) == or_default(target.namespace))
        && (side.name == WILDCARD || side.name == target.name);
    covered.then_some(ixn.action == Some(IntentionAction::Allow))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An intention whose chosen side is (ns, name) and whose other side is `other/other`.
    fn side(by: MatchType, ns: &str, name: &str) -> Intention {
        let mut ixn = Intention::new("other", "other", IntentionAction::Allow);
        match by {
            MatchType::Source => (ixn.source_ns, ixn.source_name) = (ns.into(), name.into()),
            MatchType::Destination => {
                (ixn.destination_ns, ixn.destination_name) = (ns.into(), name.into());
            }
        }
        ixn.normalize();
        ixn
    }

    fn pairs(by: MatchType, list: &[&Intention]) -> Vec<(String, String)> {
        list.iter()
            .map(|ixn| match by {
                MatchType::Source => (ixn.source_ns.clone(), ixn.source_name.clone()),
                MatchType::Destination => {
                    (ixn.destination_ns.clone(), ixn.destination_name.clone())
                }
            })
            .collect()
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    /// The store vectors of Consul's intention match (ARCHITECTURE.md, intentions), run against
    /// both sides.
    #[test]
    fn store_match_vectors() {
        for by in [MatchType::Source, MatchType::Destination] {
            let inserted: Vec<Intention> = [
                ("foo", "*"),
                ("foo", "bar"),
                ("foo", "baz"),
                ("bar", "bar"),
                ("bar", "*"),
                ("*", "*"),
            ]
            .iter()
            .map(|(ns, name)| side(by, ns, name))
            .collect();
            let result = match_intentions(&inserted, by, &[ServiceRef::in_namespace("foo", "bar")]);
            assert_eq!(
                pairs(by, &result[0]),
                owned(&[("foo", "bar"), ("foo", "*"), ("*", "*")]),
                "{by}"
            );

            let without_wildcard = &inserted[..5];
            let result = match_intentions(
                without_wildcard,
                by,
                &[
                    ServiceRef::in_namespace("foo", "bar"),
                    ServiceRef::in_namespace("bar", "bar"),
                ],
            );
            let result: Vec<_> = result.iter().map(|list| pairs(by, list)).collect();
            assert_eq!(
                result,
                [
                    owned(&[("foo", "bar"), ("foo", "*")]),
                    owned(&[("bar", "bar"), ("bar", "*")])
                ],
                "{by}"
            );
        }
    }

    #[test]
    fn wildcard_queries_follow_the_store_lookup() {
        let by = MatchType::Destination;
        let inserted: Vec<Intention> = [("foo", "*"), ("foo", "bar"), ("*", "*"), ("*", "bar")]
            .iter()
            .map(|(ns, name)| side(by, ns, name))
            .collect();
        let queries = [
            ServiceRef::in_namespace("foo", "*"),
            ServiceRef::in_namespace("*", "*"),
            ServiceRef::in_namespace("*", "bar"),
        ];
        let result: Vec<_> = match_intentions(&inserted, by, &queries)
            .iter()
            .map(|list| pairs(by, list))
            .collect();
        // `*/bar` is invalid and never matched; `ns/*` queries do not reach exact names.
        assert_eq!(
            result,
            [
                owned(&[("foo", "*"), ("*", "*")]),
                owned(&[("*", "*")]),
                owned(&[("*", "*")])
            ]
        );
    }

    #[test]
    fn partitions_and_peers_must_be_equal() {
        let mut in_ap1 = Intention::new("web", "db", IntentionAction::Allow);
        in_ap1.destination_partition = "ap1".into();
        in_ap1.source_partition.clear();
        in_ap1.source_peer = "cluster-01".into();
        let intentions = [in_ap1];

        let db_ap1 = ServiceRef {
            partition: "ap1",
            ..ServiceRef::new("db")
        };
        assert_eq!(
            match_intentions(&intentions, MatchType::Destination, &[db_ap1])[0].len(),
            1
        );
        let db = ServiceRef::new("db");
        assert!(match_intentions(&intentions, MatchType::Destination, &[db])[0].is_empty());

        let web_peer = ServiceRef {
            peer: "cluster-01",
            ..ServiceRef::new("web")
        };
        assert_eq!(
            match_intentions(&intentions, MatchType::Source, &[web_peer])[0].len(),
            1
        );
        let web = ServiceRef::new("web");
        assert!(match_intentions(&intentions, MatchType::Source, &[web])[0].is_empty());
    }

    #[test]
    fn match_type_parses_the_query_value() {
        assert_eq!("source".parse(), Ok(MatchType::Source));
        assert_eq!("destination".parse(), Ok(MatchType::Destination));
        let err = "unknown".parse::<MatchType>().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidParameter);
        assert_eq!(
            err.to_string(),
            "unknown intention match type \"unknown\": must be 'source' or 'destination'"
        );
    }

    /// `TestAuthorizeIntentionTarget` of `agent/connect/authz_test.go`: the intentions there
    /// leave every field but the named ones empty. `(auth, match)` is `Some(auth)` or `None`.
    #[test]
    fn authorize_intention_target_vectors() {
        fn bare(f: impl FnOnce(&mut Intention)) -> Intention {
            let mut ixn = Intention::default();
            f(&mut ixn);
            ixn
        }
        let allow = Some(IntentionAction::Allow);
        let deny = Some(IntentionAction::Deny);
        let web = ServiceRef::new("web");
        let web_default = ServiceRef::in_namespace("default", "web");
        let src = MatchType::Source;
        let dst = MatchType::Destination;
        let cases: Vec<(&str, ServiceRef<'_>, Intention, MatchType, Option<bool>)> = vec![
            (
                "source, not matching name",
                web,
                bare(|i| i.source_name = "db".into()),
                src,
                None,
            ),
            (
                "source, allow",
                web,
                bare(|i| {
                    i.source_name = "web".into();
                    i.action = allow;
                }),
                src,
                Some(true),
            ),
            (
                "source, no action",
                web,
                bare(|i| i.source_name = "web".into()),
                src,
                Some(false),
            ),
            (
                "source wildcard, default namespace, deny",
                web_default,
                bare(|i| {
                    i.source_name = "*".into();
                    i.source_ns = "default".into();
                    i.action = deny;
                }),
                src,
                Some(false),
            ),
            (
                "source wildcard, allow",
                web,
                bare(|i| {
                    i.source_name = "*".into();
                    i.action = allow;
                }),
                src,
                Some(true),
            ),
            (
                "destination, not matching name",
                web,
                bare(|i| i.destination_name = "db".into()),
                dst,
                None,
            ),
            (
                "destination, allow",
                web,
                bare(|i| {
                    i.destination_name = "web".into();
                    i.action = allow;
                }),
                dst,
                Some(true),
            ),
            (
                "destination, deny",
                web,
                bare(|i| {
                    i.destination_name = "web".into();
                    i.action = deny;
                }),
                dst,
                Some(false),
            ),
            (
                "destination wildcard, deny",
                web,
                bare(|i| {
                    i.destination_name = "*".into();
                    i.action = deny;
                }),
                dst,
                Some(false),
            ),
            (
                "destination wildcard, allow",
                web,
                bare(|i| {
                    i.destination_name = "*".into();
                    i.action = allow;
                }),
                dst,
                Some(true),
            ),
            (
                "peer matches",
                ServiceRef {
                    peer: "cluster-01",
                    ..web_default
                },
                bare(|i| {
                    i.source_name = "web".into();
                    i.source_ns = "default".into();
                    i.source_peer = "cluster-01".into();
                    i.action = allow;
                }),
                src,
                Some(true),
            ),
            (
                "peer differs",
                ServiceRef {
                    peer: "cluster-02",
                    ..web_default
                },
                bare(|i| {
                    i.source_name = "web".into();
                    i.source_ns = "default".into();
                    i.source_peer = "cluster-01".into();
                    i.action = allow;
                }),
                src,
                None,
            ),
        ];
        for (name, target, ixn, by, want) in cases {
            assert_eq!(
                authorize_intention_target(&ixn, by, &target),
                want,
                "{name}"
            );
        }
    }

    /// The legacy `CertURI.Authorize` vectors: client `default/web` against one intention.
    #[test]
    fn legacy_uri_authorize_vectors() {
        let client = ServiceRef::in_namespace("default", "web");
        let cases = [
            ("different", "db", None, None),
            ("default", "db", None, None),
            ("default", "web", Some(IntentionAction::Allow), Some(true)),
            ("default", "web", Some(IntentionAction::Deny), Some(false)),
            ("default", "*", Some(IntentionAction::Deny), Some(false)),
            ("default", "*", Some(IntentionAction::Allow), Some(true)),
        ];
        for (ns, name, action, want) in cases {
            let ixn = Intention {
                source_ns: ns.into(),
                source_name: name.into(),
                action,
                ..Intention::default()
            };
            assert_eq!(
                authorize_intention_target(&ixn, MatchType::Source, &client),
                want,
                "{ns}/{name} {action:?}"
            );
        }
    }
}

impl<'a> From<&'a crate::spiffe::ServiceId> for ServiceRef<'a> {
    /// The source side of an authorization: a peer's parsed SPIFFE service ID. Trust domain and
    /// datacenter are deliberately not part of the match (ARCHITECTURE.md, intentions).
    fn from(id: &'a crate::spiffe::ServiceId) -> ServiceRef<'a> {
        ServiceRef {
            partition: &id.partition,
            namespace: &id.namespace,
            name: &id.service,
            peer: "",
        }
    }
}

#[cfg(test)]
mod spiffe_tests {
    use super::ServiceRef;
    use crate::spiffe::SpiffeId;

    #[test]
    fn a_parsed_service_id_is_a_source() {
        let id = SpiffeId::parse("spiffe://1234.consul/ap/bizdev/ns/ns1/dc/dc1/svc/web").unwrap();
        let r = ServiceRef::from(id.as_service().unwrap());
        assert_eq!(
            (r.partition, r.namespace, r.name, r.peer),
            ("bizdev", "ns1", "web", "")
        );
    }
}
