//! The hot-path index: authorize a connection with one hash lookup per name part and a short
//! linear scan, without allocating and without a lock.

// Names are chosen by operators, not peers, so a fast non-keyed hash is safe here.
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::matching::or_default;
use super::{
    DEFAULT_PARTITION, Decision, DefaultPolicy, Intention, ServiceRef, WILDCARD, sort_by_precedence,
};

/// The intentions that may decide for one destination, in evaluation order, with their
/// sources laid out flat beside them so the hot scan compares short strings in one array
/// instead of chasing each intention.
#[derive(Debug, Default)]
struct Candidates {
    intentions: Box<[Arc<Intention>]>,
    sources: Box<[SourceMatcher]>,
}

/// One candidate's source side, pre-normalized (ARCHITECTURE.md, intentions).
#[derive(Debug)]
struct SourceMatcher {
    /// `None` for `*`.
    name: Option<Box<str>>,
    /// `None` for `*`; else the namespace with empty read as `default`.
    namespace: Option<Box<str>>,
    /// `None` for the default partition.
    partition: Option<Box<str>>,
    /// `None` for a local source.
    peer: Option<Box<str>>,
}

/// The source of one authorization, normalized once per call rather than per candidate.
struct Source<'a> {
    name: &'a str,
    namespace: &'a str,
    /// `None` for the default partition.
    partition: Option<&'a str>,
    /// `None` for a local source.
    peer: Option<&'a str>,
}

impl<'a> Source<'a> {
    fn of(s: &ServiceRef<'a>) -> Source<'a> {
        let partition = or_default(s.partition);
        Source {
            name: s.name,
            namespace: or_default(s.namespace),
            partition: (partition != DEFAULT_PARTITION).then_some(partition),
            peer: (!s.peer.is_empty()).then_some(s.peer),
        }
    }
}

/// String equality without a call into `memcmp` for the short names intentions use; profiling
/// showed the library call dominating the hot path.
#[inline]
fn eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        if x != y {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

fn opt_eq(want: Option<&str>, got: Option<&str>) -> bool {
    match (want, got) {
        (None, None) => true,
        (Some(w), Some(g)) => eq(w, g),
        _ => false,
    }
}

impl SourceMatcher {
    fn of(ixn: &Intention) -> SourceMatcher {
        let wild = |v: &str| (v != WILDCARD).then(|| Box::<str>::from(v));
        let partition = or_default(&ixn.source_partition);
        SourceMatcher {
            name: wild(&ixn.source_name),
            namespace: wild(or_default(&ixn.source_ns)),
            partition: (partition != DEFAULT_PARTITION).then(|| partition.into()),
            peer: (!ixn.source_peer.is_empty()).then(|| ixn.source_peer.as_str().into()),
        }
    }

    #[inline]
    fn covers(&self, source: &Source<'_>) -> bool {
        // Name first: it is the field that differs most often.
        self.name.as_deref().is_none_or(|n| eq(n, source.name))
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| eq(ns, source.namespace))
            && opt_eq(self.partition.as_deref(), source.partition)
            && opt_eq(self.peer.as_deref(), source.peer)
    }
}

impl From<Vec<Arc<Intention>>> for Candidates {
    fn from(list: Vec<Arc<Intention>>) -> Candidates {
        Candidates {
            sources: list.iter().map(|i| SourceMatcher::of(i)).collect(),
            intentions: list.into_boxed_slice(),
        }
    }
}

/// One namespace of one partition.
#[derive(Debug)]
struct NamespaceCandidates {
    /// Per destination name with intentions of its own: those merged with the namespace's
    /// `ns/*` and the partition's `*/*` ones.
    names: HashMap<Box<str>, Candidates>,
    /// For every other name (and a `*` name query): `ns/*` merged with `*/*`.
    any_name: Candidates,
}

/// One partition.
#[derive(Debug)]
struct PartitionCandidates {
    namespaces: HashMap<Box<str>, NamespaceCandidates>,
    /// For every other namespace (and a `*` namespace query): the `*/*` intentions.
    any_namespace: Candidates,
}

/// Where an intention's destination sends it in the index.
enum Slot<'a> {
    /// `*/*`: every list of the partition.
    Everywhere,
    /// `ns/*`: every list of the namespace.
    Namespace(&'a str),
    /// `ns/name`.
    Service(&'a str, &'a str),
    /// `*/name` is invalid and, as in Consul's store, matches nothing.
    Nowhere,
}

impl<'a> Slot<'a> {
    fn of(ixn: &'a Intention) -> Slot<'a> {
        let ns = or_default(&ixn.destination_ns);
        let name = ixn.destination_name.as_str();
        match (ns == WILDCARD, name == WILDCARD) {
            (true, true) => Slot::Everywhere,
            (true, false) => Slot::Nowhere,
            (false, true) => Slot::Namespace(ns),
            (false, false) => Slot::Service(ns, name),
        }
    }
}

/// Intentions arranged by destination so that [`IntentionIndex::authorize`] costs a few hash
/// lookups and a scan of the candidates, allocating nothing.
///
/// Each destination's list already holds the wildcard intentions that apply to it, merged in
/// evaluation order, so the scan is the agent's first-match walk (Consul API docs, Agent Connect)
/// and gives the same answer as [`authorize`](super::authorize) over the same intentions. The index
/// is immutable; build a new one when intentions change and publish it through
/// [`SharedIntentionIndex`].
#[derive(Debug)]
pub struct IntentionIndex {
    intentions: Box<[Arc<Intention>]>,
    /// Answers destinations in partitions no intention names.
    empty: Candidates,
    partitions: HashMap<Box<str>, PartitionCandidates>,
    default_policy: DefaultPolicy,
}

impl IntentionIndex {
    /// Builds the index; `default_policy` answers connections no intention matches.
    ///
    /// Every intention is [normalized](Intention::normalize) on the way in, so one built by hand
    /// without a precedence cannot silently sort last. Validation is the writer's job: an
    /// invalid `*/name` destination is kept but, as in Consul, matches nothing.
    pub fn new<I>(intentions: I, default_policy: DefaultPolicy) -> IntentionIndex
    where
        I: IntoIterator<Item = Intention>,
    {
        let mut all: Vec<Arc<Intention>> = intentions
            .into_iter()
            .map(|mut ixn| {
                ixn.normalize();
                Arc::new(ixn)
            })
            .collect();
        sort_by_precedence(&mut all);

        // Lists under construction: (namespaces → (names → list, any-name list), any-ns list).
        type Names = HashMap<Box<str>, Vec<Arc<Intention>>>;
        type Namespaces = HashMap<Box<str>, (Names, Vec<Arc<Intention>>)>;
        let mut partitions: HashMap<Box<str>, (Namespaces, Vec<Arc<Intention>>)> =
            HashMap::default();

        // First every key, so that the wildcard intentions of the second pass reach all lists.
        for ixn in &all {
            let (namespaces, _) = partitions
                .entry(or_default(&ixn.destination_partition).into())
                .or_default();
            match Slot::of(ixn) {
                Slot::Service(ns, name) => {
                    let (names, _) = namespaces.entry(ns.into()).or_default();
                    names.entry(name.into()).or_default();
                }
                Slot::Namespace(ns) => {
                    namespaces.entry(ns.into()).or_default();
                }
                Slot::Everywhere | Slot::Nowhere => {}
            }
        }

        // Then each intention, in evaluation order, into every list it belongs to; appending
        // in that order is what keeps every merged list sorted.
        for ixn in &all {
            let Some((namespaces, any_namespace)) =
                partitions.get_mut(or_default(&ixn.destination_partition))
            else {
                continue;
            };
            match Slot::of(ixn) {
                Slot::Everywhere => {
                    any_namespace.push(Arc::clone(ixn));
                    for (names, any_name) in namespaces.values_mut() {
                        any_name.push(Arc::clone(ixn));
                        names
                            .values_mut()
                            .for_each(|list| list.push(Arc::clone(ixn)));
                    }
                }
                Slot::Namespace(ns) => {
                    if let Some((names, any_name)) = namespaces.get_mut(ns) {
                        any_name.push(Arc::clone(ixn));
                        names
                            .values_mut()
                            .for_each(|list| list.push(Arc::clone(ixn)));
                    }
                }
                Slot::Service(ns, name) => {
                    if let Some(list) = namespaces
                        .get_mut(ns)
                        .and_then(|(names, _)| names.get_mut(name))
                    {
                        list.push(Arc::clone(ixn));
                    }
                }
                Slot::Nowhere => {}
            }
        }

        let partitions = partitions
            .into_iter()
            .map(|(partition, (namespaces, any_namespace))| {
                let namespaces = namespaces
                    .into_iter()
                    .map(|(ns, (names, any_name))| {
                        let names = names
                            .into_iter()
                            .map(|(name, list)| (name, Candidates::from(list)))
                            .collect();
                        let any_name = Candidates::from(any_name);
                        (ns, NamespaceCandidates { names, any_name })
                    })
                    .collect();
                let any_namespace = Candidates::from(any_namespace);
                (
                    partition,
                    PartitionCandidates {
                        namespaces,
                        any_namespace,
                    },
                )
            })
            .collect();

        IntentionIndex {
            intentions: all.into_boxed_slice(),
            empty: Candidates::default(),
            partitions,
            default_policy,
        }
    }

    /// The intentions that may decide for `destination`, in evaluation order: the same list
    /// as [`match_intentions`](super::match_intentions) by destination. Its peer is ignored.
    pub fn candidates(&self, destination: &ServiceRef<'_>) -> &[Arc<Intention>] {
        &self.list(destination).intentions
    }

    fn list(&self, destination: &ServiceRef<'_>) -> &Candidates {
        let Some(partition) = self.partitions.get(or_default(destination.partition)) else {
            return &self.empty;
        };
        // A `*` in the query finds no key (wildcard intentions are never keys), so it falls
        // through to the wildcard lists, as Consul's store lookup does.
        let Some(namespace) = partition.namespaces.get(or_default(destination.namespace)) else {
            return &partition.any_namespace;
        };
        namespace
            .names
            .get(destination.name)
            .unwrap_or(&namespace.any_name)
    }

    /// Decides a connection from `source` to `destination`: the first candidate whose source
    /// covers `source` wins, else the default policy.
    pub fn authorize(&self, destination: &ServiceRef<'_>, source: &ServiceRef<'_>) -> Decision {
        let list = self.list(destination);
        let source = Source::of(source);
        match list.sources.iter().position(|m| m.covers(&source)) {
            Some(i) => Decision::from_intention(&list.intentions[i]),
            None => Decision::from_default(self.default_policy),
        }
    }

    /// Every intention in the index, normalized, in evaluation order.
    pub fn intentions(&self) -> &[Arc<Intention>] {
        &self.intentions
    }

    /// What answers connections no intention matches.
    pub fn default_policy(&self) -> DefaultPolicy {
        self.default_policy
    }
}

/// The current [`IntentionIndex`], replaceable while connections are being authorized.
///
/// Readers never wait: a load is lock-free, so an update cannot stall a handshake, and a
/// reader keeps the index it loaded until it is done with it.
#[derive(Debug)]
pub struct SharedIntentionIndex {
    current: ArcSwap<IntentionIndex>,
    /// The store index of the intentions behind `current` (see
    /// [`publish`](Self::publish)); the lock also orders concurrent publishers.
    version: std::sync::Mutex<u64>,
    /// Bumped by every [`store`](Self::store), so that holders of live connections (the TLS
    /// listener's revocation task) learn of a change at once instead of polling.
    changes: tokio::sync::watch::Sender<u64>,
}

impl SharedIntentionIndex {
    /// Starts with `index`.
    pub fn new(index: IntentionIndex) -> SharedIntentionIndex {
        SharedIntentionIndex {
            current: ArcSwap::from_pointee(index),
            version: std::sync::Mutex::new(0),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Publishes `index`, built from the intentions as of store index `version`, unless an
    /// index built from a newer version is already published; returns whether it was.
    ///
    /// Writers rebuild the index after their write commits and outside the store's write
    /// lock, so two of them can finish in either order: without this check the later-built
    /// but older snapshot would replace the newer one, and a saved deny would be missing from
    /// the live authorizer until the next intention write.
    pub fn publish(&self, version: u64, index: impl Into<Arc<IntentionIndex>>) -> bool {
        let mut published = self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if version < *published {
            return false;
        }
        *published = version;
        self.store(index);
        true
    }

    /// The store index of the intentions behind the current index (0 until the first
    /// [`publish`](Self::publish)).
    pub fn version(&self) -> u64 {
        *self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current index; later [`store`](Self::store)s do not change it.
    pub fn load(&self) -> Arc<IntentionIndex> {
        self.current.load_full()
    }

    /// Publishes `index`; authorizations that already loaded the old one finish with it.
    pub fn store(&self, index: impl Into<Arc<IntentionIndex>>) {
        self.current.store(index.into());
        // After the store: a subscriber woken by this sees the new index when it loads.
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// How many times [`store`](Self::store) has published an index.
    pub fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that is marked changed on every [`store`](Self::store) (its value is the
    /// [`generation`](Self::generation)). Cheap: no task, no allocation per store.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// [`IntentionIndex::authorize`] on the current index.
    pub fn authorize(&self, destination: &ServiceRef<'_>, source: &ServiceRef<'_>) -> Decision {
        self.current.load().authorize(destination, source)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::intentions::{
        DecisionReason, IntentionAction, IntentionHttpPermission, IntentionPermission, MatchType,
        authorize, match_intentions,
    };

    /// SplitMix64: deterministic, so a failure reproduces from its case number.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[(self.next() % items.len() as u64) as usize]
        }

        fn one_in(&mut self, n: u64) -> bool {
            self.next().is_multiple_of(n)
        }
    }

    const NAMES: &[&str] = &["web", "db", "api", "*"];
    /// `""` is `default` unnormalized; both must behave the same.
    const NAMESPACES: &[&str] = &["default", "ns1", "*", ""];

    fn random_intention(rng: &mut Rng) -> Intention {
        let mut ixn = Intention {
            source_ns: rng.pick(NAMESPACES).into(),
            source_name: rng.pick(NAMES).into(),
            destination_ns: rng.pick(NAMESPACES).into(),
            destination_name: rng.pick(NAMES).into(),
            action: Some(rng.pick(&[IntentionAction::Allow, IntentionAction::Deny])),
            ..Intention::default()
        };
        if rng.one_in(8) {
            ixn.action = None;
            ixn.permissions = vec![IntentionPermission::new(
                IntentionAction::Allow,
                IntentionHttpPermission {
                    path_prefix: "/".into(),
                    ..IntentionHttpPermission::default()
                },
            )];
        }
        if rng.one_in(10) {
            ixn.destination_partition = "ap1".into();
        }
        if rng.one_in(10) {
            ixn.source_partition = "ap1".into();
        } else if rng.one_in(10) {
            ixn.source_peer = "peer1".into();
        }
        ixn
    }

    fn random_service<'a>(rng: &mut Rng) -> ServiceRef<'a> {
        // Mostly names the intentions use, so that most queries meet some intention.
        ServiceRef {
            partition: if rng.one_in(10) {
                "ap1"
            } else {
                rng.pick(&["", "default"])
            },
            namespace: if rng.one_in(10) {
                "ns2"
            } else {
                rng.pick(&["", "default", "ns1"])
            },
            name: if rng.one_in(10) {
                "cache"
            } else {
                rng.pick(&["web", "db", "api"])
            },
            peer: if rng.one_in(10) { "peer1" } else { "" },
        }
    }

    fn random_policy(rng: &mut Rng) -> DefaultPolicy {
        rng.pick(&[
            DefaultPolicy::ACLS_DISABLED,
            DefaultPolicy::acl(IntentionAction::Allow),
            DefaultPolicy::acl(IntentionAction::Deny),
            DefaultPolicy::intention_policy(IntentionAction::Allow),
            DefaultPolicy::intention_policy(IntentionAction::Deny),
        ])
    }

    /// The index against the straightforward walk (match by destination, sort, first source
    /// match) over random intention sets, including invalid `*/name` shapes, unnormalized
    /// namespaces, partitions, peers and L7 intentions.
    #[test]
    fn index_agrees_with_the_first_match_walk() {
        let mut rng = Rng(0x1d_c0ffee);
        let (mut by_l4, mut by_l7, mut by_default) = (0, 0, 0);
        for case in 0..500 {
            let count = rng.next() % 20;
            let intentions: Vec<Intention> =
                (0..count).map(|_| random_intention(&mut rng)).collect();
            let policy = random_policy(&mut rng);
            let index = IntentionIndex::new(intentions.clone(), policy);

            // The reference gets its own normalized copies, in generation order.
            let reference: Vec<Arc<Intention>> = intentions
                .into_iter()
                .map(|mut ixn| {
                    ixn.normalize();
                    Arc::new(ixn)
                })
                .collect();

            for _ in 0..30 {
                let destination = random_service(&mut rng);
                let source = random_service(&mut rng);
                let want = authorize(&reference, &destination, &source, policy);
                let got = index.authorize(&destination, &source);
                assert_eq!(got, want, "case {case}: {source:?} => {destination:?}");
                match got.reason {
                    DecisionReason::MatchedL4(_) => by_l4 += 1,
                    DecisionReason::MatchedL7(_) => by_l7 += 1,
                    _ => by_default += 1,
                }

                let expected = match_intentions(&reference, MatchType::Destination, &[destination]);
                let expected: Vec<&Intention> = expected[0].iter().map(|ixn| &***ixn).collect();
                let actual: Vec<&Intention> = index
                    .candidates(&destination)
                    .iter()
                    .map(|ixn| &**ixn)
                    .collect();
                assert_eq!(
                    actual, expected,
                    "case {case}: candidates of {destination:?}"
                );
            }
        }
        // Guards the generator: a path that is rarely taken is hardly tested.
        assert!(
            by_l4 > 2500 && by_l7 > 300 && by_default > 2500,
            "L4 {by_l4}, L7 {by_l7}, default {by_default}"
        );
    }

    #[test]
    fn wildcards_are_merged_into_every_list_in_order() {
        let mut all_all = Intention::new("*", "*", IntentionAction::Allow);
        (all_all.source_ns, all_all.destination_ns) = ("*".into(), "*".into());
        let ns_any = Intention::new("web", "*", IntentionAction::Deny);
        let exact = Intention::new("web", "db", IntentionAction::Allow);
        let index = IntentionIndex::new(
            [all_all, ns_any, exact],
            DefaultPolicy::acl(IntentionAction::Deny),
        );
        let precedences = |d: ServiceRef<'_>| -> Vec<u32> {
            index
                .candidates(&d)
                .iter()
                .map(|ixn| ixn.precedence)
                .collect()
        };
        assert_eq!(precedences(ServiceRef::new("db")), [9, 6, 1]);
        assert_eq!(precedences(ServiceRef::new("api")), [6, 1]);
        assert_eq!(precedences(ServiceRef::in_namespace("ns1", "db")), [1]);
        assert_eq!(precedences(ServiceRef::in_namespace("*", "db")), [1]);
        assert_eq!(
            precedences(ServiceRef::in_namespace("default", "*")),
            [6, 1]
        );
        assert!(
            precedences(ServiceRef {
                partition: "ap1",
                ..ServiceRef::new("db")
            })
            .is_empty()
        );

        let d = index.authorize(&ServiceRef::new("api"), &ServiceRef::new("web"));
        assert_eq!((d.allowed, d.precedence), (false, Some(6)));
        let d = index.authorize(&ServiceRef::new("db"), &ServiceRef::new("web"));
        assert_eq!((d.allowed, d.precedence), (true, Some(9)));
        let d = index.authorize(
            &ServiceRef {
                partition: "ap1",
                ..ServiceRef::new("db")
            },
            &ServiceRef::new("web"),
        );
        assert_eq!(
            d.reason,
            DecisionReason::Default(crate::intentions::DefaultSource::Acl)
        );
    }

    #[test]
    fn intentions_are_normalized_on_the_way_in() {
        let raw = Intention {
            source_name: "web".into(),
            destination_name: "db".into(),
            action: Some(IntentionAction::Allow),
            ..Intention::default()
        };
        let index = IntentionIndex::new([raw], DefaultPolicy::ACLS_DISABLED);
        let ixn = &index.intentions()[0];
        assert_eq!((ixn.source_ns.as_str(), ixn.precedence), ("default", 9));
        assert_eq!(index.default_policy(), DefaultPolicy::ACLS_DISABLED);
    }

    #[test]
    fn shared_index_swaps_without_disturbing_readers() {
        let allow = || {
            IntentionIndex::new(
                [Intention::new("web", "db", IntentionAction::Allow)],
                DefaultPolicy::ACLS_DISABLED,
            )
        };
        let deny = || {
            IntentionIndex::new(
                [Intention::new("web", "db", IntentionAction::Deny)],
                DefaultPolicy::ACLS_DISABLED,
            )
        };
        let shared = SharedIntentionIndex::new(allow());
        let (db, web) = (ServiceRef::new("db"), ServiceRef::new("web"));

        let before = shared.load();
        shared.store(deny());
        assert!(!shared.authorize(&db, &web).allowed);
        assert!(
            before.authorize(&db, &web).allowed,
            "a loaded index is a snapshot"
        );
        shared.store(Arc::new(allow()));
        assert!(shared.authorize(&db, &web).allowed);

        // Readers racing a writer always see one whole index: the decision agrees with the
        // intention that made it.
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let d = shared.authorize(&db, &web);
                        let action = d.matched.as_ref().and_then(|ixn| ixn.action);
                        assert_eq!(action == Some(IntentionAction::Allow), d.allowed);
                    }
                });
            }
            for i in 0..200 {
                shared.store(if i % 2 == 0 { deny() } else { allow() });
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
