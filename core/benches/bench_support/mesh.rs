//! The two-service mesh the TLS benches compare stacks on: one CA, leaves for `db` and `web`,
//! libconnect identities and intentions (`web → db` allowed), and the bare rustls configs
//! built from the same certificates, provider, versions, groups, session cache and ticketer.

use std::sync::Arc;

use connect_core::ca::{
    CaConfiguration, CaManager, IndexedCaRoots, SignPolicy, generate_leaf_request,
};
use connect_core::intentions::{
    DefaultPolicy, Intention, IntentionAction, IntentionIndex, SharedIntentionIndex,
};
use connect_core::tls::{self, Bundle, Identity, KeyExchange, Svid};
use connect_core::{ManualClock, SharedClock};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use time::OffsetDateTime;

/// One service's leaf, as both stacks load it.
pub struct Leaf {
    /// Leaf then the active root's intermediates.
    pub chain_pem: String,
    pub key_pem: String,
}

/// The CA's roots and the two services' leaves.
pub struct Mesh {
    pub clock: SharedClock,
    pub roots: IndexedCaRoots,
    pub db: Leaf,
    pub web: Leaf,
}

fn leaf(ca: &mut CaManager, service: &str) -> Leaf {
    let uri = format!(
        "spiffe://{}/ns/default/dc/dc1/svc/{service}",
        ca.trust_domain()
    );
    // A DNS name as well, so that bare rustls can check the server by name; libconnect checks
    // the URI and ignores it.
    let req = generate_leaf_request(&uri, &[service.to_owned()], &[]).unwrap();
    let issued = ca.sign_leaf(&req.csr_pem, SignPolicy::ServiceOnly).unwrap();
    Leaf {
        chain_pem: issued.cert_pem,
        key_pem: req.key.to_pem().to_string(),
    }
}

impl Mesh {
    pub fn new() -> Mesh {
        let clock: SharedClock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
        let cfg = CaConfiguration::consul(json!({}).as_object().cloned().unwrap_or_default());
        let mut ca = CaManager::new_primary("dc1", None, cfg, clock.clone()).unwrap();
        let db = leaf(&mut ca, "db");
        let web = leaf(&mut ca, "web");
        Mesh {
            clock,
            roots: ca.roots(),
            db,
            web,
        }
    }

    /// The roots and both leaves (keys included) as JSON, for a harness whose ends run in
    /// separate processes and must share one CA.
    pub fn to_json(&self) -> String {
        let leaf = |l: &Leaf| json!({"chain_pem": l.chain_pem, "key_pem": l.key_pem});
        json!({"roots": self.roots, "db": leaf(&self.db), "web": leaf(&self.web)}).to_string()
    }

    /// The mesh [`Mesh::to_json`] wrote, with a clock of its own at the present time.
    pub fn from_json(text: &str) -> Mesh {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let leaf = |k: &str| Leaf {
            chain_pem: v[k]["chain_pem"].as_str().unwrap().to_owned(),
            key_pem: v[k]["key_pem"].as_str().unwrap().to_owned(),
        };
        Mesh {
            clock: Arc::new(ManualClock::new(OffsetDateTime::now_utc())),
            roots: serde_json::from_value(v["roots"].clone()).unwrap(),
            db: leaf("db"),
            web: leaf("web"),
        }
    }

    /// A libconnect identity for `name` (`db` or `web`) with the roots and its leaf.
    pub fn identity(&self, name: &str) -> Identity {
        let l = if name == "db" { &self.db } else { &self.web };
        let id = Identity::new(name, self.clock.clone());
        id.update_bundle(Bundle::from_ca_roots(&self.roots).unwrap())
            .unwrap();
        id.update_svid(Svid::from_pem(&l.chain_pem, &l.key_pem).unwrap())
            .unwrap();
        id
    }

    /// `web → db` allowed, everything else denied.
    pub fn intentions() -> SharedIntentionIndex {
        SharedIntentionIndex::new(IntentionIndex::new(
            [Intention::new("web", "db", IntentionAction::Allow)],
            DefaultPolicy::acl(IntentionAction::Deny),
        ))
    }

    /// Bare rustls: db's server (client certificates required, checked against the roots)
    /// and web's client (checks db by its DNS name).
    pub fn bare_configs(&self) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let provider = tls::crypto_provider(KeyExchange::default());
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let mut store = RootCertStore::empty();
        for r in &self.roots.roots {
            for c in CertificateDer::pem_slice_iter(r.root_cert.as_bytes()) {
                store.add(c.unwrap()).unwrap();
            }
        }
        let store = Arc::new(store);
        let chain = |l: &Leaf| {
            CertificateDer::pem_slice_iter(l.chain_pem.as_bytes())
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        };
        let key = |l: &Leaf| PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&store), Arc::clone(&provider))
                .build()
                .unwrap();
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(&self.db), key(&self.db))
            .unwrap();
        server.session_storage = ServerSessionMemoryCache::new(1024);
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .unwrap()
            .with_root_certificates(store)
            .with_client_auth_cert(chain(&self.web), key(&self.web))
            .unwrap();
        (Arc::new(server), Arc::new(client))
    }
}
