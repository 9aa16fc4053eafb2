//! Intentions on the server: storage with Consul's uniqueness and ACL rules, match, check,
//! and the authorize decision (Consul API docs: Intentions, Agent Connect).

use std::collections::BTreeMap;

use super::Server;
use crate::acl::Permission;
use crate::filter::Filter;
use crate::intentions::or_default;
use crate::intentions::{
    Decision, Intention, IntentionIndex, MatchType, ServiceRef, match_intentions,
    sort_by_precedence,
};
use crate::spiffe::{
    DEFAULT_NAMESPACE, DEFAULT_PARTITION, SpiffeId, check_default_namespace,
    check_default_partition, check_service_name_or_wildcard,
};
use crate::state::{Indexed, Table, Tables};
use crate::{Error, ErrorKind};

/// A service name as the intention endpoints take it: `name`, `ns/name` or
/// `partition/ns/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    /// Partition (`default` when not given).
    pub partition: String,
    /// Namespace (`default` when not given).
    pub namespace: String,
    /// Name (may be `*`).
    pub name: String,
}

impl ServiceName {
    fn as_ref(&self) -> ServiceRef<'_> {
        ServiceRef {
            partition: &self.partition,
            namespace: &self.namespace,
            name: &self.name,
            peer: "",
        }
    }
}

/// Parses `name`, `ns/name` or `partition/ns/name`.
pub fn parse_service_name(input: &str, what: &str) -> Result<ServiceName, Error> {
    let parts: Vec<&str> = input.split('/').collect();
    let bad = || {
        Error::new(
            ErrorKind::InvalidParameter,
            format!("Invalid {what}: {input:?}"),
        )
    };
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let (partition, namespace, name) = match parts.as_slice() {
        [name] => ("default", "default", *name),
        [ns, name] => ("default", *ns, *name),
        [ap, ns, name] => (*ap, *ns, *name),
        _ => return Err(bad()),
    };
    // Only the default tenancy exists (as in Consul CE), and names follow the one rule, so a
    // read or delete cannot speak about a service no write could have named.
    check_default_partition("partition", partition)?;
    check_default_namespace("namespace", namespace)?;
    check_service_name_or_wildcard("name", name)?;
    // `DEFAULT` and `default` are one namespace; stored intentions spell it `default`.
    Ok(ServiceName {
        partition: DEFAULT_PARTITION.into(),
        namespace: DEFAULT_NAMESPACE.into(),
        name: name.into(),
    })
}

fn not_found() -> Error {
    Error::new(ErrorKind::NotFound, "Intention not found")
}

impl Server {
    /// Rebuilds the hot-path index from the store's current intentions. Concurrent callers
    /// may finish in any order; the version check keeps the newest snapshot.
    pub(super) fn rebuild_intentions(&self) {
        let view = self.store().view();
        let index = IntentionIndex::new(
            view.intentions().cloned(),
            self.config().intention_default(),
        );
        self.inner
            .intentions
            .publish(view.table_index(Table::Intentions), index);
    }

    fn find_exact(&self, src: &ServiceName, dst: &ServiceName) -> Option<Intention> {
        find_exact_in(&self.store().view(), src, dst).cloned()
    }

    /// Validates, stamps and stores an intention; rebuilds the hot-path index.
    ///
    /// Which row it replaces and Consul's one-intention-per-pair rule are decided inside the
    /// store's write transaction: decided on an earlier snapshot, two concurrent creates of
    /// one pair could both be stored, and the later one in precedence order could shadow a
    /// deny.
    fn store_intention(&self, mut ixn: Intention, target: Target<'_>) -> Result<Intention, Error> {
        self.check_intention_writes()?;
        ixn.normalize();
        ixn.validate()?;
        let (src, dst) = names_of(&ixn);
        let now = self.clock().now();
        let stored = self.store().write(|tx| {
            let same_pair = find_exact_in(tx, &src, &dst);
            let existing = match target {
                Target::New => {
                    if let Some(dup) = same_pair {
                        return Err(duplicate(dup));
                    }
                    None
                }
                Target::Id { id, destination } => {
                    let old = tx.intention(id).ok_or_else(not_found)?;
                    // The caller was authorized against this destination; a concurrent
                    // update may have moved the row since.
                    if old.destination_name != destination {
                        return Err(Error::new(
                            ErrorKind::InvalidIntention,
                            "intention changed concurrently; retry the update",
                        ));
                    }
                    if let Some(dup) = same_pair.filter(|d| d.id != id) {
                        return Err(duplicate(dup));
                    }
                    Some(old.clone())
                }
                Target::Pair => same_pair.cloned(),
            };
            match &existing {
                Some(old) => {
                    ixn.id = old.id.clone();
                    ixn.created_at = old.created_at;
                    ixn.create_index = old.create_index;
                }
                None => {
                    if ixn.id.is_empty() {
                        ixn.id = uuid::Uuid::new_v4().to_string();
                    }
                    ixn.created_at = Some(now);
                }
            }
            ixn.updated_at = Some(now);
            Ok(tx.put_intention(ixn)?)
        })?;
        self.rebuild_intentions();
        Ok(stored.value)
    }

    /// `GET /v1/connect/intentions`: every intention the token may read, in precedence
    /// order, optionally filtered.
    pub fn intention_list(
        &self,
        token: Option<&str>,
        filter: Option<&Filter>,
    ) -> Result<Indexed<Vec<Intention>>, Error> {
        let authz = self.authorizer(token)?;
        let Indexed { value, index } = self.store().intentions();
        let mut list: Vec<Intention> = value
            .into_iter()
            .filter(|i| authz.intention_read(&i.destination_name))
            .collect();
        sort_by_precedence(&mut list);
        if let Some(f) = filter {
            list = f.apply(list);
        }
        Ok(Indexed {
            value: list,
            index: index.max(1),
        })
    }

    /// `GET /v1/connect/intentions/:id`.
    pub fn intention_get(
        &self,
        token: Option<&str>,
        id: &str,
    ) -> Result<Indexed<Intention>, Error> {
        let Indexed { value, index } = self.store().intention(id);
        let ixn = value.ok_or_else(not_found)?;
        self.authorizer(token)?
            .require(Permission::IntentionRead(&ixn.destination_name))?;
        Ok(Indexed {
            value: ixn,
            index: index.max(1),
        })
    }

    /// `GET /v1/connect/intentions/exact`.
    pub fn intention_get_exact(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
    ) -> Result<Indexed<Intention>, Error> {
        let src = parse_service_name(source, "source")?;
        let dst = parse_service_name(destination, "destination")?;
        self.authorizer(token)?
            .require(Permission::IntentionRead(&dst.name))?;
        let index = self.store().table_index(Table::Intentions).max(1);
        let ixn = self.find_exact(&src, &dst).ok_or_else(not_found)?;
        Ok(Indexed { value: ixn, index })
    }

    /// Legacy `POST /v1/connect/intentions`: creates, failing if the pair exists.
    pub fn intention_create(
        &self,
        token: Option<&str>,
        mut ixn: Intention,
    ) -> Result<Intention, Error> {
        if !ixn.id.is_empty() {
            return Err(Error::new(ErrorKind::InvalidParameter, "ID must be empty"));
        }
        ixn.normalize();
        self.authorizer(token)?
            .require(Permission::IntentionWrite(&ixn.destination_name))?;
        self.store_intention(ixn, Target::New)
    }

    /// Legacy `PUT /v1/connect/intentions/:id`.
    pub fn intention_update(
        &self,
        token: Option<&str>,
        id: &str,
        mut ixn: Intention,
    ) -> Result<Intention, Error> {
        let existing = self.store().intention(id).value.ok_or_else(not_found)?;
        ixn.normalize();
        let authz = self.authorizer(token)?;
        authz.require(Permission::IntentionWrite(&existing.destination_name))?;
        authz.require(Permission::IntentionWrite(&ixn.destination_name))?;
        self.store_intention(
            ixn,
            Target::Id {
                id,
                destination: &existing.destination_name,
            },
        )
    }

    /// `PUT /v1/connect/intentions/exact`: upsert by (source, destination).
    pub fn intention_upsert_exact(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
        body: Intention,
    ) -> Result<Intention, Error> {
        let src = parse_service_name(source, "source")?;
        let dst = parse_service_name(destination, "destination")?;
        self.authorizer(token)?
            .require(Permission::IntentionWrite(&dst.name))?;
        let mut ixn = body;
        ixn.source_partition = src.partition.clone();
        ixn.source_ns = src.namespace.clone();
        ixn.source_name = src.name.clone();
        ixn.destination_partition = dst.partition.clone();
        ixn.destination_ns = dst.namespace.clone();
        ixn.destination_name = dst.name.clone();
        ixn.id.clear();
        self.store_intention(ixn, Target::Pair)
    }

    /// `DELETE /v1/connect/intentions/:id`.
    pub fn intention_delete(&self, token: Option<&str>, id: &str) -> Result<(), Error> {
        let existing = self.store().intention(id).value.ok_or_else(not_found)?;
        self.authorizer(token)?
            .require(Permission::IntentionWrite(&existing.destination_name))?;
        self.check_intention_writes()?;
        self.store().delete_intention(id)?;
        self.rebuild_intentions();
        Ok(())
    }

    /// `DELETE /v1/connect/intentions/exact`; returns whether an intention was deleted.
    /// Deleting what is not there is not an error, as in Consul (Consul API docs, Connect
    /// Intentions: delete by name answers `true`); the agent's `intention_delete`, which
    /// promises `NotFound`, uses the answer.
    pub fn intention_delete_exact(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
    ) -> Result<bool, Error> {
        let src = parse_service_name(source, "source")?;
        let dst = parse_service_name(destination, "destination")?;
        self.authorizer(token)?
            .require(Permission::IntentionWrite(&dst.name))?;
        self.check_intention_writes()?;
        let Some(existing) = self.find_exact(&src, &dst) else {
            return Ok(false);
        };
        self.store().delete_intention(&existing.id)?;
        self.rebuild_intentions();
        Ok(true)
    }

    /// `GET /v1/connect/intentions/match`: per name, the intentions whose `by` side covers
    /// it, in evaluation order.
    pub fn intention_match(
        &self,
        token: Option<&str>,
        by: MatchType,
        names: &[&str],
    ) -> Result<Indexed<BTreeMap<String, Vec<Intention>>>, Error> {
        if names.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                "required query parameter 'name' not set",
            ));
        }
        let parsed: Vec<ServiceName> = names
            .iter()
            .map(|n| parse_service_name(n, "name"))
            .collect::<Result<_, _>>()?;
        let authz = self.authorizer(token)?;
        for p in &parsed {
            if by == MatchType::Destination {
                authz.require(Permission::IntentionRead(&p.name))?;
            }
        }
        let Indexed { value, index } = self.store().intentions();
        let refs: Vec<ServiceRef<'_>> = parsed.iter().map(ServiceName::as_ref).collect();
        let matched = match_intentions(&value, by, &refs);
        let mut out = BTreeMap::new();
        for (name, list) in names.iter().zip(matched) {
            let list: Vec<Intention> = list
                .into_iter()
                .filter(|i| authz.intention_read(&i.destination_name))
                .cloned()
                .collect();
            out.insert((*name).to_owned(), list);
        }
        Ok(Indexed {
            value: out,
            index: index.max(1),
        })
    }

    /// `GET /v1/connect/intentions/check`: would `source` be allowed to reach
    /// `destination`? L7 intentions count as deny.
    pub fn intention_check(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
    ) -> Result<bool, Error> {
        let src = parse_service_name(source, "source")?;
        let dst = parse_service_name(destination, "destination")?;
        self.authorizer(token)?
            .require(Permission::IntentionRead(&dst.name))?;
        Ok(self
            .inner
            .intentions
            .authorize(&dst.as_ref(), &src.as_ref())
            .allowed)
    }

    /// `POST /v1/agent/connect/authorize` (Consul API docs, Agent Connect): may the peer with
    /// `client_cert_uri` connect to `target`? The token needs `service:write` on the target.
    pub fn authorize(
        &self,
        token: Option<&str>,
        target: &str,
        client_cert_uri: &str,
    ) -> Result<Decision, Error> {
        let src = self.authorize_request(token, target, client_cert_uri)?;
        let (dst, src) = (ServiceRef::new(target), ServiceRef::new(&src));
        Ok(self.inner.intentions.authorize(&dst, &src))
    }

    /// The checks of [`Server::authorize`], in Consul's order, before any decision: the
    /// request is well formed and `token` has `service:write` on `target`. Returns the
    /// client's service name, which is matched as the one default namespace.
    pub(crate) fn authorize_request(
        &self,
        token: Option<&str>,
        target: &str,
        client_cert_uri: &str,
    ) -> Result<String, Error> {
        let bad = |m: &str| Error::new(ErrorKind::InvalidParameter, m);
        if target.is_empty() {
            return Err(bad("Target service must be specified"));
        }
        let id = SpiffeId::parse(client_cert_uri)
            .map_err(|_| bad("ClientCertURI not a valid Connect identifier"))?;
        let SpiffeId::Service(svc) = &id else {
            return Err(bad("ClientCertURI not a valid Service identifier"));
        };
        // No certificate from this CA names another namespace or partition; answering for one
        // would match it against no intention of its service.
        check_default_namespace("ClientCertURI namespace", &svc.namespace)?;
        check_default_partition("ClientCertURI partition", &svc.partition)?;
        self.authorizer(token)?
            .require(Permission::ServiceWrite(target))?;
        // Matched as the one default namespace, however the URI spelled it.
        Ok(svc.service.clone())
    }
}

fn names_of(ixn: &Intention) -> (ServiceName, ServiceName) {
    (
        ServiceName {
            partition: or_default(&ixn.source_partition).to_owned(),
            namespace: ixn.source_ns.clone(),
            name: ixn.source_name.clone(),
        },
        ServiceName {
            partition: or_default(&ixn.destination_partition).to_owned(),
            namespace: ixn.destination_ns.clone(),
            name: ixn.destination_name.clone(),
        },
    )
}

/// Which stored intention a write replaces.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// None: a new intention, refused if its pair already has one.
    New,
    /// The one with this ID, which the caller was authorized on through `destination`.
    Id { id: &'a str, destination: &'a str },
    /// The one of the same pair, if any (an upsert).
    Pair,
}

fn find_exact_in<'t>(
    tables: &'t Tables,
    src: &ServiceName,
    dst: &ServiceName,
) -> Option<&'t Intention> {
    tables.intentions().find(|i| {
        i.source_name == src.name
            && i.source_ns == src.namespace
            && or_default(&i.source_partition) == src.partition
            && i.destination_name == dst.name
            && i.destination_ns == dst.namespace
            && or_default(&i.destination_partition) == dst.partition
            && i.source_peer.is_empty()
    })
}

fn duplicate(dup: &Intention) -> Error {
    Error::new(
        ErrorKind::InvalidIntention,
        format!("duplicate intention found: {dup}"),
    )
}
