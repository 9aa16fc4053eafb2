//! Who may connect: [`Authorizer`] and its constructors (ARCHITECTURE.md, tls).
//!
//! An authorizer runs after the peer's chain has verified and its SPIFFE ID has been parsed,
//! inside the handshake, and returns a reason when it says no: the reason is what operators
//! read in logs and what [`Service::authorize_peer`](super::Service::authorize_peer) explains.

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use crate::intentions::{ServiceRef, SharedIntentionIndex};
use crate::spiffe::{SpiffeId, TrustDomain, check_default_namespace, check_default_partition};

/// Why a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDenied {
    reason: String,
}

impl AuthzDenied {
    /// A denial with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        AuthzDenied {
            reason: reason.into(),
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for AuthzDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for AuthzDenied {}

/// An explained decision: allowed or not, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzDecision {
    /// Whether the peer may connect.
    pub allowed: bool,
    /// Why (Consul's reason text for intentions).
    pub reason: String,
}

/// Decides whether a verified peer may connect.
///
/// Implemented for closures `Fn(&SpiffeId, &[CertificateDer]) -> Result<(), AuthzDenied>`.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok` to let `peer` in; `chain` is what it presented, leaf first, already verified.
    fn authorize(&self, peer: &SpiffeId, chain: &[CertificateDer<'_>]) -> Result<(), AuthzDenied>;

    /// The decision with its reason also when allowed; authorizers that know why (intentions)
    /// say so, the rest answer `allowed`.
    fn explain(&self, peer: &SpiffeId, chain: &[CertificateDer<'_>]) -> AuthzDecision {
        match self.authorize(peer, chain) {
            Ok(()) => AuthzDecision {
                allowed: true,
                reason: "allowed".into(),
            },
            Err(d) => AuthzDecision {
                allowed: false,
                reason: d.reason,
            },
        }
    }

    /// A receiver marked changed whenever decisions may have changed, so that a
    /// [`Listener`](super::Listener) re-authorizes its live connections at once. `None` (the
    /// default) means the authorizer cannot tell; the listener then re-checks on its interval
    /// only (see [`MtlsServerBuilder::revocation_interval`](super::MtlsServerBuilder::revocation_interval)).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A shared, type-erased authorizer, as configs and the C ABI hold it.
pub type SharedAuthorizer = Arc<dyn Authorizer>;

impl<F> Authorizer for F
where
    F: Fn(&SpiffeId, &[CertificateDer<'_>]) -> Result<(), AuthzDenied> + Send + Sync + 'static,
{
    fn authorize(&self, peer: &SpiffeId, chain: &[CertificateDer<'_>]) -> Result<(), AuthzDenied> {
        self(peer, chain)
    }
}

/// Lets every peer with a verified chain in (Consul's dev mode without an API client).
#[derive(Debug, Clone, Copy, Default)]
pub struct Any;

impl Authorizer for Any {
    fn authorize(&self, _: &SpiffeId, _: &[CertificateDer<'_>]) -> Result<(), AuthzDenied> {
        Ok(())
    }
}

/// Every verified peer.
pub fn any() -> Any {
    Any
}

/// Only one identity.
#[derive(Debug, Clone)]
pub struct Exact(SpiffeId);

impl Authorizer for Exact {
    fn authorize(&self, peer: &SpiffeId, _: &[CertificateDer<'_>]) -> Result<(), AuthzDenied> {
        if *peer == self.0 {
            Ok(())
        } else {
            Err(AuthzDenied::new(format!(
                "unexpected peer ID {peer}, want {}",
                self.0
            )))
        }
    }
}

/// Only the peer `id`.
pub fn exact(id: SpiffeId) -> Exact {
    Exact(id)
}

/// Any identity of one trust domain.
#[derive(Debug, Clone)]
pub struct MemberOf(TrustDomain);

impl Authorizer for MemberOf {
    fn authorize(&self, peer: &SpiffeId, _: &[CertificateDer<'_>]) -> Result<(), AuthzDenied> {
        match peer.trust_domain() {
            Ok(td) if td == self.0 => Ok(()),
            _ => Err(AuthzDenied::new(format!(
                "peer {peer} is not a member of trust domain {}",
                self.0.as_str()
            ))),
        }
    }
}

/// Any identity in `trust_domain`.
pub fn member_of(trust_domain: TrustDomain) -> MemberOf {
    MemberOf(trust_domain)
}

/// Consul's intentions, as the agent's authorize endpoint applies them (Consul API docs, Agent
/// Connect): the destination is our service, the source is the peer's service identity.
#[derive(Debug, Clone)]
pub struct Intentions {
    target: String,
    index: Arc<SharedIntentionIndex>,
}

impl Intentions {
    /// The decision, with Consul's reason text whichever way it goes.
    fn decide(&self, peer: &SpiffeId) -> AuthzDecision {
        let Some(src) = peer.as_service() else {
            // Consul's authorize endpoint answers this for agent, server or gateway URIs.
            return AuthzDecision {
                allowed: false,
                reason: "ClientCertURI not a valid Service identifier".into(),
            };
        };
        // As the server's authorize: libconnect has the default namespace and partition only,
        // so a peer naming another one (a certificate from another CA sharing the roots, or
        // one issued before names were checked) matches no intention of its service's and
        // is refused; `default` is matched however the certificate spells it.
        if let Err(e) = check_default_namespace("peer namespace", &src.namespace)
            .and_then(|()| check_default_partition("peer partition", &src.partition))
        {
            return AuthzDecision {
                allowed: false,
                reason: e.to_string(),
            };
        }
        let decision = self.index.authorize(
            &ServiceRef::new(&self.target),
            &ServiceRef::new(&src.service),
        );
        AuthzDecision {
            allowed: decision.allowed,
            reason: decision.reason.to_string(),
        }
    }
}

impl Authorizer for Intentions {
    fn authorize(&self, peer: &SpiffeId, _: &[CertificateDer<'_>]) -> Result<(), AuthzDenied> {
        let d = self.decide(peer);
        if d.allowed {
            Ok(())
        } else if peer.as_service().is_none() {
            Err(AuthzDenied::new(d.reason))
        } else {
            Err(AuthzDenied::new(format!(
                "connect: authz denied: {}",
                d.reason
            )))
        }
    }

    fn explain(&self, peer: &SpiffeId, _: &[CertificateDer<'_>]) -> AuthzDecision {
        self.decide(peer)
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.index.subscribe())
    }
}

/// Intentions for connections to `target_service` (in the default partition and namespace)
/// from the peer's service: allowed or denied by the current index, and by its default policy
/// when no intention matches. Identities that are not services are denied.
pub fn from_intentions(
    target_service: impl Into<String>,
    index: impl Into<Arc<SharedIntentionIndex>>,
) -> Intentions {
    Intentions {
        target: target_service.into(),
        index: index.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intentions::{DefaultPolicy, Intention, IntentionAction, IntentionIndex};

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    fn svc(name: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/{name}")).unwrap()
    }

    #[test]
    fn any_exact_and_member_of() {
        assert!(any().authorize(&svc("web"), &[]).is_ok());
        let e = exact(svc("web"));
        assert!(e.authorize(&svc("web"), &[]).is_ok());
        let d = e.authorize(&svc("api"), &[]).unwrap_err();
        assert!(d.reason().contains("svc/api"), "{d}");
        let m = member_of(TrustDomain::new(TD).unwrap());
        assert!(m.authorize(&svc("web"), &[]).is_ok());
        let other = SpiffeId::parse("spiffe://other.consul/ns/default/dc/dc1/svc/web").unwrap();
        assert!(m.authorize(&other, &[]).is_err());
    }

    #[test]
    fn closures_are_authorizers() {
        let only_web = |p: &SpiffeId, _: &[CertificateDer<'_>]| {
            if p.as_service().is_some_and(|s| s.service == "web") {
                Ok(())
            } else {
                Err(AuthzDenied::new("not web"))
            }
        };
        let shared: SharedAuthorizer = Arc::new(only_web);
        assert!(shared.authorize(&svc("web"), &[]).is_ok());
        assert_eq!(
            shared.explain(&svc("db"), &[]),
            AuthzDecision {
                allowed: false,
                reason: "not web".into()
            }
        );
    }

    #[test]
    fn intentions_deny_with_consuls_reason() {
        let index = IntentionIndex::new(
            [
                Intention::new("*", "db", IntentionAction::Deny),
                Intention::new("web", "db", IntentionAction::Allow),
            ],
            DefaultPolicy::ACLS_DISABLED,
        );
        let a = from_intentions("db", SharedIntentionIndex::new(index));
        assert!(a.authorize(&svc("web"), &[]).is_ok());
        assert!(
            a.explain(&svc("web"), &[])
                .reason
                .starts_with("Matched L4 intention")
        );
        let d = a.authorize(&svc("api"), &[]).unwrap_err();
        assert!(
            d.reason()
                .starts_with("connect: authz denied: Matched L4 intention"),
            "{d}"
        );
        let agent = SpiffeId::parse(&format!("spiffe://{TD}/agent/client/dc/dc1/id/node")).unwrap();
        assert_eq!(
            a.authorize(&agent, &[]).unwrap_err().reason(),
            "ClientCertURI not a valid Service identifier"
        );
    }

    /// A deny on `web` under the default policy allow: a peer certificate naming another
    /// namespace (which the intention index would match against nothing, so the default
    /// allow would apply) is refused, and `DEFAULT` spelled in capitals is still `web`.
    #[test]
    fn peers_of_other_namespaces_are_refused_and_default_matches_in_any_case() {
        let index = IntentionIndex::new(
            [Intention::new("web", "db", IntentionAction::Deny)],
            DefaultPolicy::intention_policy(IntentionAction::Allow),
        );
        let a = from_intentions("db", SharedIntentionIndex::new(index));
        assert!(a.authorize(&svc("api"), &[]).is_ok());
        assert!(a.authorize(&svc("web"), &[]).is_err());
        let upper = SpiffeId::parse(&format!("spiffe://{TD}/ns/DEFAULT/dc/dc1/svc/web")).unwrap();
        assert!(a.authorize(&upper, &[]).is_err());
        let prod = SpiffeId::parse(&format!("spiffe://{TD}/ns/prod/dc/dc1/svc/web")).unwrap();
        let d = a.authorize(&prod, &[]).unwrap_err();
        assert!(d.reason().contains("namespaces are not supported"), "{d}");
        let ap =
            SpiffeId::parse(&format!("spiffe://{TD}/ap/team/ns/default/dc/dc1/svc/api")).unwrap();
        assert!(a.authorize(&ap, &[]).is_err());
    }
}
