//! JWT-SVIDs of this datacenter's trust domain (SPIFFE spec: JWT-SVID): the signing keys live
//! beside the CA and follow its active root (`ca::JwtKeySet`). Used by the SPIFFE Workload API
//! of `connect agent`, in process: the caller has attested the workload, so these methods take
//! no ACL token, as [`Server::sign_local`] does not.

use std::sync::PoisonError;
use std::time::Duration;

use super::Server;
use crate::ca::{JwtKeySet, ValidatedJwt};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::{Error, ErrorKind};

impl Server {
    /// Runs `f` on the key set, first brought in line with the CA: a new key after the active
    /// root changed, expired keys out.
    fn with_jwt_keys<T>(&self, f: impl FnOnce(&JwtKeySet) -> Result<T, Error>) -> Result<T, Error> {
        let roots = self.ca_roots().value;
        let root_id = roots
            .active()
            .map(|r| r.id.clone())
            .ok_or_else(|| Error::new(ErrorKind::CaNotInitialized, "no active root"))?;
        let td = TrustDomain::new(&roots.trust_domain)?;
        let now = self.clock().now();
        let mut keys = self
            .inner
            .jwt
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let set = match keys.as_mut() {
            Some(set) => {
                set.sync(&td, &root_id, now)?;
                set
            }
            None => keys.insert(JwtKeySet::new(td, &root_id)?),
        };
        f(set)
    }

    /// Signs a JWT-SVID for `subject` (a SPIFFE ID of this trust domain) with `audiences`,
    /// valid for `ttl` (at most `ca::MAX_JWT_TTL`).
    pub fn sign_jwt_svid_local(
        &self,
        subject: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<String, Error> {
        let now = self.clock().now();
        self.with_jwt_keys(|set| set.sign(subject, audiences, now, ttl))
    }

    /// The JWT bundle: the trust domain and its JWKS document (every key whose tokens may
    /// still be valid).
    pub fn jwt_bundle(&self) -> Result<(TrustDomain, String), Error> {
        self.with_jwt_keys(|set| Ok((set.trust_domain().clone(), set.jwks())))
    }

    /// Validates a JWT-SVID for `audience`: signature by one of the bundle's keys, expiry,
    /// audience, subject in this trust domain. Failures are `InvalidParameter`.
    pub fn validate_jwt_svid(&self, token: &str, audience: &str) -> Result<ValidatedJwt, Error> {
        let now = self.clock().now();
        self.with_jwt_keys(|set| set.validate(token, audience, now))
    }
}
