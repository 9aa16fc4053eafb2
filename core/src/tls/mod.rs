//! Mutual TLS between services, with Consul Connect's identity rules (Consul docs: Connect-Native).
//!
//! An [`Identity`] holds what one service needs for mTLS: its current leaf ([`Svid`]) and the
//! current trust bundle ([`Bundle`]), published together as an immutable [`Snapshot`] with a
//! generation counter. Updates are validated before they are published, and a failed update
//! leaves the last good snapshot in place (ARCHITECTURE.md, tls).
//!
//! On top of it:
//!
//! * [`mtls_server`] builds a rustls `ServerConfig` whose certificate resolver serves the
//!   current leaf on every handshake and whose client verifier checks the chain against all
//!   current roots, the peer's SPIFFE ID and then an [`Authorizer`] (intentions, usually) —
//!   **inside the handshake**, so a denied client gets a TLS `access_denied` alert and the
//!   application never sees its connection.
//! * [`mtls_client`] builds a `ClientConfig` that checks the server's chain and that the server
//!   names the service we meant to reach, the way Consul's Go client compares URIs
//!   (ARCHITECTURE.md, Differences from Consul).
//! * [`Service`] adds tokio `listen`/`dial_addr` (callers with no async runtime drive them
//!   through [`crate::blocking`]).
//! * [`Material`] and [`Service::authorize_peer`] serve applications that keep their own TLS
//!   stack (OpenSSL, Python `ssl`, Node `tls`).
//!
//! ```no_run
//! use connect_core::tls::{self, Identity, Service};
//!
//! # async fn run(identity: Identity) -> connect_core::Result<()> {
//! let service = Service::new(identity, tls::authorizer::any())?;
//! let mut listener = service.listen("127.0.0.1:0").await?;
//! let conn = listener.accept().await?;
//! println!("peer is {}", conn.peer_id());
//! # Ok(()) }
//! ```
//!
//! # Protocol choices
//!
//! * TLS 1.3 is preferred and TLS 1.2 is allowed, because Consul's Go peers and older OpenSSL
//!   builds still negotiate 1.2 (ARCHITECTURE.md, tls). Cipher suites are aws-lc-rs's
//!   defaults: AES-GCM first, then ChaCha20-Poly1305, ECDHE only.
//! * Hostname verification is not done, as in Consul: the identity is the URI SAN, checked
//!   against the expected service; SNI is not sent unless configured.
//! * Session resumption is on (server: in-memory session cache and rotating tickets; client:
//!   an in-memory cache per expected peer). A resumed handshake skips the certificate
//!   verifiers, so [`Service`] re-checks the peer's stored chain and authorization after every
//!   resumed handshake and drops the connection when they no longer pass: an intention
//!   changed to deny is not bypassed by a ticket.
//!
//! # Revocation of live connections
//!
//! Consul checks intentions only when a connection is made (its issue 5277). A [`Listener`]
//! here keeps a registry of the connections it accepted and re-authorizes each one when the
//! authorizer reports a change (intentions: every store of the index) and at least every
//! [`DEFAULT_REVOCATION_INTERVAL`] (configurable, or off, with
//! [`MtlsServerBuilder::revocation_interval`]). A peer that is no longer allowed has its TCP
//! socket shut down: the application's next read on the server side ends (end-of-stream or
//! an unexpected-EOF error), and the client sees the connection close. This goes on after the
//! listener itself is dropped, for as long as connections it accepted are open. Connections made with
//! [`MtlsServer::accept`] directly, or taken apart with [`Connection::into_inner`], are not
//! tracked.
//!
//! # Key exchange: X25519MLKEM768 first, then X25519, then P-256
//!
//! rustls 0.23 with aws-lc-rs offers the hybrid post-quantum group X25519MLKEM768. It protects
//! today's recorded traffic against a future quantum computer ("harvest now, decrypt later"),
//! which matters for service-to-service data that can stay sensitive for years. Its cost is
//! size: the ClientHello carries an ML-KEM-768 encapsulation key (1184 bytes) and the
//! ServerHello a ciphertext (1088 bytes) on top of the X25519 shares. Measured by
//! `tls::tests::kx_cost_of_a_full_handshake` (in memory, a full TLS 1.3 mTLS handshake
//! between two P-256 leaves of the built-in CA; the server's flight includes its two session
//! tickets):
//!
//! | group | client → server | server → client | time, both sides (debug build) |
//! |---|---|---|---|
//! | X25519 | 935 B | 2 378 B | 0.51–0.52 ms |
//! | X25519MLKEM768 | 2 157 B (+1 222) | 3 466 B (+1 088) | 0.58–0.59 ms |
//!
//! About 2.3 KB more per full handshake (resumed handshakes pay it too, since TLS 1.3
//! resumption still runs a key exchange) and about 70 µs of CPU for both sides together.
//! Against one full handshake per connection of a long-lived service pair that is cheap, so
//! the default
//! ([`KeyExchange::HybridPostQuantum`]) offers X25519MLKEM768 first, with X25519 and P-256
//! behind it for peers without ML-KEM (OpenSSL 3.0, Python `ssl` on it, Go before 1.24): such a
//! peer simply picks X25519 — the client also sends an X25519 share, so there is no extra
//! round trip (the interop tests run exactly that against OpenSSL 3.0 and Python).
//! [`KeyExchange::Classical`] (X25519, P-256) is there for links where every byte counts or
//! a middlebox mishandles a ClientHello that no longer fits one packet.
//!
//! # One crypto provider
//!
//! aws-lc-rs is the only provider: the CA already signs with it, rustls is built with only its
//! `aws_lc_rs` feature, every config names the provider explicitly (so another provider
//! enabled elsewhere in a build is never picked up by accident), and this crate's `ring`
//! feature exists only to make asking for a second provider a compile error.

#[cfg(feature = "ring")]
compile_error!(
    "connect-core has exactly one crypto provider, aws-lc-rs (the CA signs with it too); \
     the `ring` feature cannot be enabled"
);
#[cfg(not(feature = "aws-lc-rs"))]
compile_error!("connect-core needs its `aws-lc-rs` feature: it is the one crypto provider");

pub mod authorizer;
mod client;
mod errors;
mod identity;
mod material;
mod net;
mod provider;
mod server;
mod server_peer;
mod service;
mod verify;

#[cfg(test)]
mod tests;

pub use authorizer::{Authorizer, AuthzDecision, AuthzDenied, SharedAuthorizer};
pub use client::{ExpectedPeer, MtlsClient, MtlsClientBuilder, mtls_client};
pub use errors::error_from_io;
pub(crate) use identity::certified_key;
pub use identity::{Bundle, BundleSource, Identity, Snapshot, Svid, SvidSource};
pub use material::{Material, PeerAuthorization, PeerInput};
pub use net::{Connection, Listener, Revocable, Socket, SyncParts};
pub use provider::{KeyExchange, crypto_provider};
pub(crate) use server::CurrentLeaf;
pub use server::{
    DenyHook, HandshakeErrorHook, MtlsServer, MtlsServerBuilder, ServerStats, mtls_server,
};
pub use server_peer::{
    ClientCertSlot, RootsSource, SharedBundle, optional_peer_verifier, server_client_config,
};
pub use service::Service;
pub use verify::{PeerRole, peer_identity, verify_chain};

/// How long a handshake may take before it fails with [`crate::ErrorKind::Timeout`], unless
/// configured otherwise. Long enough for a loaded machine, short enough that a client that
/// connects and says nothing does not hold a slot for long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a [`Listener`] re-authorizes its live connections when the authorizer cannot
/// report changes, unless configured otherwise
/// ([`MtlsServerBuilder::revocation_interval`]). Intentions report every change, so with them
/// a connection whose peer became denied is closed right after the change reaches this
/// process; the interval is the bound for everything else.
pub const DEFAULT_REVOCATION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
