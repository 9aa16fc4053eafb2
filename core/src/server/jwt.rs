//! JWT-SVIDs of this datacenter's trust domain (SPIFFE spec: JWT-SVID): the signing keys live
//! beside the CA and follow its active root (`ca::JwtKeySet`). The SPIFFE Workload API of
//! `connect agent` signs in process for the workloads it attested, with no ACL token
//! ([`Server::sign_jwt_svid_local`], as [`Server::sign_local`]); agents and the bindings ask
//! through [`Server::jwt_svid`] (`service:write`, as for a leaf) over
//! `PUT /v1/agent/connect/jwt-svid/:service`.

use std::fmt;
use std::sync::PoisonError;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Server;
use crate::acl::Permission;
use crate::ca::{DEFAULT_JWT_TTL, JwtKeySet, ValidatedJwt};
use crate::spiffe::{ServiceId, SpiffeId, TrustDomain, check_service_name};
use crate::{Error, ErrorKind};

/// A JWT-SVID for a service, as `PUT /v1/agent/connect/jwt-svid/:service` answers it.
/// `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JwtSvid {
    /// The token's subject.
    #[serde(rename = "SpiffeID")]
    pub spiffe_id: String,
    /// The token (JWS compact serialization).
    #[serde(rename = "Token")]
    pub token: String,
}

/// The body of `PUT /v1/agent/connect/jwt/sign/:service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JwtSvidRequest {
    /// The audiences of the token.
    #[serde(rename = "Audience")]
    pub audience: Vec<String>,
}

/// The body of `POST /v1/agent/connect/jwt/validate`. `Debug` hides the token.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JwtValidateRequest {
    /// The JWT-SVID to check.
    #[serde(rename = "Token")]
    pub token: String,
    /// The audience it must hold.
    #[serde(rename = "Audience")]
    pub audience: String,
}

impl fmt::Debug for JwtValidateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidateRequest")
            .field("token", &"<redacted>")
            .field("audience", &self.audience)
            .finish()
    }
}

/// What a valid JWT-SVID says: the answer of `POST /v1/agent/connect/jwt/validate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JwtValidation {
    /// The `sub` claim.
    #[serde(rename = "SpiffeID")]
    pub spiffe_id: String,
    /// Every claim of the payload.
    #[serde(rename = "Claims")]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl From<ValidatedJwt> for JwtValidation {
    fn from(v: ValidatedJwt) -> JwtValidation {
        JwtValidation {
            spiffe_id: v.spiffe_id.to_string(),
            claims: v.claims,
        }
    }
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

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

    /// Signs a JWT-SVID for `service` of this datacenter with `audiences`, valid for
    /// `ca::DEFAULT_JWT_TTL`; the token needs `service:write` on the service, as for its leaf.
    pub fn jwt_svid(
        &self,
        token: Option<&str>,
        service: &str,
        audiences: &[String],
    ) -> Result<JwtSvid, Error> {
        check_service_name("service name", service)?;
        self.authorizer(token)?
            .require(Permission::ServiceWrite(service))?;
        let td = TrustDomain::new(&self.trust_domain())?;
        let id = SpiffeId::Service(ServiceId::new(&td, self.datacenter(), service));
        let token = self.sign_jwt_svid_local(&id, audiences, DEFAULT_JWT_TTL)?;
        Ok(JwtSvid {
            spiffe_id: id.to_string(),
            token,
        })
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
