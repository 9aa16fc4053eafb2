//! The agent's HTTPS listener: the same router over TLS, with a certificate the CA issues to
//! this node (a client-agent SPIFFE ID with DNS SAN `localhost` and the loopback IPs), renewed
//! in its renewal window and reissued when the active root changes. Connections are
//! accepted, handshaken (within `limits.https_handshake_timeout`) and served by
//! [`crate::http_server`], as on the HTTP listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use connect_core::ca::{SignPolicy, generate_leaf_request, pick_renewal_time};
use connect_core::server::Server;
use connect_core::spiffe::{AgentId, TrustDomain};
use connect_core::state::Table;
use connect_core::{Error, ErrorKind};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The certificate currently served; swapped on renewal.
#[derive(Debug)]
struct CurrentCert {
    key: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

/// What the certificate is for.
#[derive(Debug, Clone)]
pub(crate) struct CertSubject {
    node: String,
    ips: Vec<IpAddr>,
}

impl CertSubject {
    /// For `node`, reachable at `bind` (added as an IP SAN when it is a specific address).
    pub(crate) fn new(node: &str, bind: IpAddr) -> CertSubject {
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        if !bind.is_unspecified() && !ips.contains(&bind) {
            ips.push(bind);
        }
        CertSubject {
            node: node.to_owned(),
            ips,
        }
    }
}

/// A certificate for this node, with the instant to renew it.
pub(crate) type Issued = (CertifiedKey, time::OffsetDateTime);

/// Issues a certificate for this node (blocking: it signs and reserves serials).
pub(crate) fn issue(server: &Server, subject: &CertSubject) -> Result<Issued, Error> {
    let td = TrustDomain::new(&server.trust_domain())?;
    let uri = AgentId::new(&td, server.datacenter(), &subject.node).uri();
    let req = generate_leaf_request(&uri, &["localhost".to_owned()], &subject.ips)?;
    let issued = server.sign_local(&req.csr_pem, SignPolicy::ServiceOrAgent)?;
    let chain = connect_core::certs::parse_pem_certificates(&issued.cert_pem)?;
    let key_pem = req.key.to_pem();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("HTTPS key: {e}")))?;
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("HTTPS key: {e}")))?;
    let renew_at = pick_renewal_time(
        issued.valid_after,
        issued.valid_before,
        server.clock().now(),
    );
    Ok((CertifiedKey::new(chain, signing), renew_at))
}

/// The TLS configuration serving `first`, and a task that keeps its certificate current.
pub(crate) fn tls_config(
    server: &Server,
    subject: CertSubject,
    first: Issued,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let (key, renew_at) = first;
    let current = Arc::new(CurrentCert {
        key: ArcSwap::from_pointee(key),
    });
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Tls, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(current.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio::spawn(renew(server.clone(), subject, current, renew_at));
    Ok(Arc::new(config))
}

/// Reissues the certificate at its renewal time, or when the roots change.
async fn renew(
    server: Server,
    subject: CertSubject,
    current: Arc<CurrentCert>,
    mut renew_at: time::OffsetDateTime,
) {
    loop {
        let roots_index = server.store().table_index(Table::CaRoots);
        let until = Duration::try_from(renew_at - server.clock().now()).unwrap_or_default();
        // Cap the wait so that a long sleep never outlives a changed clock by much.
        let wait = until.min(Duration::from_secs(3600));
        server.wait(&[Table::CaRoots], roots_index, wait).await;
        let rotated = server.store().table_index(Table::CaRoots) != roots_index;
        if !rotated && server.clock().now() < renew_at {
            continue;
        }
        let (s, subj) = (server.clone(), subject.clone());
        match tokio::task::spawn_blocking(move || issue(&s, &subj)).await {
            Ok(Ok((key, next))) => {
                current.key.store(Arc::new(key));
                renew_at = next;
                tracing::info!(rotated, "HTTPS certificate renewed");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "renewing the HTTPS certificate failed; retrying in 1m");
                renew_at = server.clock().now() + Duration::from_secs(60);
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the HTTPS certificate panicked");
                renew_at = server.clock().now() + Duration::from_secs(60);
            }
        }
    }
}
