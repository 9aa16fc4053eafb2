//! PEM material for applications that keep their own TLS stack, and the explained
//! authorization they call after their handshake.

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::identity::Identity;
use crate::spiffe::SpiffeId;
use crate::{Error, ErrorKind, Result};

/// Everything another TLS stack needs to do what [`Service`](super::Service) does: load
/// `chain_pem` + `key_pem` as its certificate, trust `roots_pem`, require a client
/// certificate, then ask [`Service::authorize_peer`](super::Service::authorize_peer).
///
/// A snapshot: fetch it again when [`generation`](Self::generation) moves (see
/// [`Identity::watch`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Material {
    /// Our identity.
    pub spiffe_id: SpiffeId,
    /// Leaf then intermediates, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PEM; zeroed on drop.
    pub key_pem: Zeroizing<String>,
    /// Every trusted root, PEM.
    pub roots_pem: String,
    /// The trust domain of the roots.
    pub trust_domain: String,
    /// The leaf's NotAfter.
    pub not_after: OffsetDateTime,
    /// The snapshot generation this material comes from.
    pub generation: u64,
}

impl Identity {
    /// The current leaf, key and roots as PEM; `NotReady` until both are set.
    pub fn material(&self) -> Result<Material> {
        let s = self.snapshot();
        let (Some(svid), Some(bundle)) = (s.svid(), s.bundle()) else {
            return Err(Error::new(
                ErrorKind::NotReady,
                format!("service {:?} has no leaf and roots yet", self.service()),
            ));
        };
        Ok(Material {
            spiffe_id: svid.spiffe_id().clone(),
            chain_pem: svid.chain_pem(),
            key_pem: svid.key_pem(),
            roots_pem: bundle.roots_pem(),
            trust_domain: bundle.trust_domain().as_str().to_owned(),
            not_after: svid.not_after(),
            generation: s.generation(),
        })
    }

    /// The current chain (leaf first) as PEM.
    pub fn chain_pem(&self) -> Result<String> {
        Ok(self.require_svid()?.chain_pem())
    }

    /// The current private key as PEM.
    pub fn key_pem(&self) -> Result<Zeroizing<String>> {
        Ok(self.require_svid()?.key_pem())
    }

    /// The current roots as PEM.
    pub fn roots_pem(&self) -> Result<String> {
        Ok(self.require_bundle()?.roots_pem())
    }
}

/// What identifies a peer to [`Service::authorize_peer`](super::Service::authorize_peer).
#[derive(Debug, Clone, Copy)]
pub enum PeerInput<'a> {
    /// The peer's leaf certificate, DER (verified against our roots first).
    CertDer(&'a [u8]),
    /// The peer's chain as PEM, leaf first (verified against our roots first).
    ChainPem(&'a str),
    /// The peer's chain as DER certificates, leaf first, as a TLS stack reports it (verified
    /// against our roots first). An empty chain is an `InvalidCertificate` error.
    ChainDer(&'a [CertificateDer<'a>]),
    /// The peer's SPIFFE ID, already verified by the caller's TLS stack.
    Uri(&'a str),
}

/// The answer of [`Service::authorize_peer`](super::Service::authorize_peer), Consul-style:
/// allowed or not, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerAuthorization {
    /// The peer.
    pub peer: SpiffeId,
    /// Whether it may connect.
    pub allowed: bool,
    /// Why (`Matched L4 intention: …`, `Default behavior configured by ACLs`, …).
    pub reason: String,
}
