//! Server-to-server TLS (Consul docs: WAN federation): a secondary datacenter's server calls the
//! primary's HTTPS API and accepts only a server of the primary datacenter — the chain must
//! verify against the primary's roots and the leaf must name exactly
//! `spiffe://<trust-domain>/agent/server/dc/<primary>` — and presents its own server
//! certificate once it has one.

use std::fmt;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::errors::VerifyFailure;
use super::identity::Bundle;
use super::verify::{PeerRole, check_chain, leaf_identity};
use super::{KeyExchange, crypto_provider};
use crate::spiffe::SpiffeId;
use crate::{Error, ErrorKind, SharedClock};

/// The roots a server-to-server client trusts: first the configured bootstrap file, then the
/// primary's roots as the secondary watches them.
pub type SharedBundle = Arc<ArcSwap<Bundle>>;

/// The certificate a server presents as a client; set once the server has one.
pub type ClientCertSlot = Arc<OnceLock<Arc<ArcSwapOption<CertifiedKey>>>>;

/// The identity a server-to-server peer's chain names, once the chain verified against
/// `bundle` now (both directions of server-to-server TLS check this much).
fn chain_identity(
    bundle: &Bundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    clock: &SharedClock,
    role: PeerRole,
) -> Result<SpiffeId, rustls::Error> {
    check_chain(bundle, end_entity, intermediates, clock.now(), role)?;
    let (id, _) = leaf_identity(end_entity).map_err(VerifyFailure::into_rustls)?;
    Ok(id)
}

struct ServerIdVerifier {
    roots: SharedBundle,
    datacenter: String,
    clock: SharedClock,
}

impl fmt::Debug for ServerIdVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdVerifier")
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

impl ServerIdVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        let bundle = self.roots.load();
        let id = chain_identity(
            &bundle,
            end_entity,
            intermediates,
            &self.clock,
            PeerRole::Server,
        )?;
        let td = bundle.trust_domain().as_str();
        match &id {
            SpiffeId::Server(s)
                if s.host.eq_ignore_ascii_case(td) && s.datacenter == self.datacenter =>
            {
                Ok(())
            }
            other => Err(VerifyFailure::new(
                ErrorKind::PeerIdentityMismatch,
                format!(
                    "peer certificate mismatch got {other}, want spiffe://{td}/agent/server/dc/{}",
                    self.datacenter
                ),
            )
            .into_rustls()),
        }
    }
}

impl ServerCertVerifier for ServerIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ServerCertVerified::assertion())
    }

    super::provider::provider_signature_checks!();
}

#[derive(Debug)]
struct SlotCert(ClientCertSlot);

impl ResolvesClientCert for SlotCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.get().and_then(|c| c.load_full())
    }

    fn has_certs(&self) -> bool {
        self.0.get().is_some_and(|c| c.load().is_some())
    }
}

/// The client side of a call to the servers of `datacenter`: the server must present
/// `spiffe://<td>/agent/server/dc/<datacenter>` chained to `roots` (read on every
/// handshake, so a root update applies to the next connection); `client_cert` is presented
/// when set.
pub fn server_client_config(
    roots: SharedBundle,
    datacenter: &str,
    clock: SharedClock,
    client_cert: ClientCertSlot,
) -> Result<ClientConfig, Error> {
    let verifier = ServerIdVerifier {
        roots,
        datacenter: datacenter.to_owned(),
        clock,
    };
    let mut config = ClientConfig::builder_with_provider(crypto_provider(KeyExchange::default()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::new(ErrorKind::Internal, format!("tls config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SlotCert(client_cert)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session carries the identity of the handshake it resumes: one made before
    // this server had its certificate would keep it anonymous. These calls are few.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// Where a server's HTTPS listener reads the roots that client certificates must chain to
/// (its datacenter's current roots, which in a secondary are the primary's).
pub type RootsSource = Arc<dyn Fn() -> Option<Arc<Bundle>> + Send + Sync>;

/// The server side of server-to-server TLS: a client certificate is optional (API clients
/// authenticate with ACL tokens), but one that is presented must chain to the current roots
/// and name an identity of this trust domain, or the handshake fails; the listener then
/// hands the identity to the handlers (see `crate::http::api::TlsPeer`).
struct OptionalPeerVerifier {
    roots: RootsSource,
    clock: SharedClock,
}

impl fmt::Debug for OptionalPeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptionalPeerVerifier")
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for OptionalPeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = (self.roots)().ok_or_else(|| {
            VerifyFailure::new(ErrorKind::CaNotInitialized, "no CA roots yet").into_rustls()
        })?;
        let id = chain_identity(
            &bundle,
            end_entity,
            intermediates,
            &self.clock,
            PeerRole::Client,
        )?;
        if !id
            .host()
            .eq_ignore_ascii_case(bundle.trust_domain().as_str())
        {
            return Err(VerifyFailure::new(
                ErrorKind::PeerIdentityMismatch,
                format!(
                    "client certificate {id} is not of trust domain {}",
                    bundle.trust_domain().as_str()
                ),
            )
            .into_rustls());
        }
        Ok(ClientCertVerified::assertion())
    }

    super::provider::provider_signature_checks!();
}

/// The client verifier of a server's HTTPS listener: a client certificate is optional (API
/// clients authenticate with ACL tokens), but one that is presented must chain to the current
/// roots and name an identity of this trust domain, or the handshake fails.
pub fn optional_peer_verifier(
    roots: RootsSource,
    clock: SharedClock,
) -> Arc<dyn ClientCertVerifier> {
    Arc::new(OptionalPeerVerifier { roots, clock })
}
