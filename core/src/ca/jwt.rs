//! JWT-SVIDs (SPIFFE spec: JWT-SVID): ES256 tokens signed with a per-trust-domain key the CA
//! side holds, the JWKS bundle that verifies them, and their validation (signature, expiry,
//! audience).
//!
//! [`JwtKeySet`] keeps the keys of one trust domain, newest first. A new key is made when the
//! active root changes ([`JwtKeySet::sync`], called by the server with the active root's ID),
//! and the previous keys stay in the bundle until every token they signed has expired. The
//! keys live in memory only: after a restart a new key signs, and tokens of the old one stop
//! validating (they live at most [`MAX_JWT_TTL`]).
//!
//! ES256 over aws-lc-rs (the one crypto provider) and the JSON through serde: no JOSE crate.

use std::fmt;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::{Error, ErrorKind};

/// The longest lifetime of a JWT-SVID, and so how long a replaced key stays in the bundle.
pub const MAX_JWT_TTL: Duration = Duration::from_secs(3600);
/// The lifetime of a JWT-SVID unless configured otherwise (SPIRE's default).
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// The longest token [`JwtKeySet::validate`] reads; longer input is refused unparsed.
pub const MAX_JWT_LEN: usize = 16 * 1024;
/// At most this many audiences in one token, each at most [`MAX_AUDIENCE_LEN`] bytes.
pub const MAX_AUDIENCES: usize = 32;
/// See [`MAX_AUDIENCES`].
pub const MAX_AUDIENCE_LEN: usize = 1024;

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidParameter, msg)
}

/// One ES256 signing key. `Debug` shows its key ID only.
struct JwtKey {
    kid: String,
    pair: EcdsaKeyPair,
    /// After this instant the key signs nothing more and leaves the bundle once
    /// `retire_at` passes; `None` while it is the current key.
    retire_at: Option<OffsetDateTime>,
}

impl JwtKey {
    fn generate() -> Result<JwtKey, Error> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("JWT key generation: {e}")))?;
        // The key ID: the first 16 bytes of the SHA-256 of the public point, base64url.
        let digest = crate::certs::key_id(pair.public_key().as_ref());
        let kid = B64.encode(&digest[..16]);
        Ok(JwtKey {
            kid,
            pair,
            retire_at: None,
        })
    }

    /// The public key as a JWK (RFC 7517; `use` as the SPIFFE bundle format asks).
    fn jwk(&self) -> Value {
        // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = self.pair.public_key().as_ref();
        let x = point.get(1..33).unwrap_or_default();
        let y = point.get(33..65).unwrap_or_default();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(x),
            "y": B64.encode(y),
            "kid": self.kid,
            "use": "jwt-svid",
        })
    }
}

/// The JWT signing keys of one trust domain, newest first.
pub struct JwtKeySet {
    trust_domain: TrustDomain,
    /// The active root the newest key was made for.
    root_id: String,
    keys: Vec<JwtKey>,
}

impl fmt::Debug for JwtKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeySet")
            .field("trust_domain", &self.trust_domain.as_str())
            .field(
                "kids",
                &self.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What a valid JWT-SVID says.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
}

impl JwtKeySet {
    /// A set with one new key for `trust_domain`, made for the active root `root_id`.
    pub fn new(trust_domain: TrustDomain, root_id: &str) -> Result<JwtKeySet, Error> {
        Ok(JwtKeySet {
            trust_domain,
            root_id: root_id.to_owned(),
            keys: vec![JwtKey::generate()?],
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Follows the CA: when `root_id` (the active root) is not the one the newest key was made
    /// for, or the trust domain changed, a new key signs from now on and the previous ones stay
    /// in the bundle for [`MAX_JWT_TTL`]. Keys past that leave. Returns whether the bundle
    /// changed.
    pub fn sync(
        &mut self,
        trust_domain: &TrustDomain,
        root_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, Error> {
        let before = self.keys.len();
        self.keys.retain(|k| k.retire_at.is_none_or(|t| t > now));
        let mut changed = self.keys.len() != before;
        if self.root_id != root_id || &self.trust_domain != trust_domain {
            let new = JwtKey::generate()?;
            if &self.trust_domain != trust_domain {
                // Tokens of another trust domain are not ours to vouch for any more.
                self.keys.clear();
            }
            for k in &mut self.keys {
                k.retire_at.get_or_insert(now + MAX_JWT_TTL);
            }
            self.keys.insert(0, new);
            self.trust_domain = trust_domain.clone();
            self.root_id = root_id.to_owned();
            changed = true;
        }
        Ok(changed)
    }

    /// The key IDs in the bundle, newest (the signing key) first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The bundle: a JWKS document (`{"keys": [...]}`) with every key whose tokens may still
    /// be valid.
    pub fn jwks(&self) -> String {
        let keys: Vec<Value> = self.keys.iter().map(JwtKey::jwk).collect();
        json!({ "keys": keys }).to_string()
    }

    /// Signs a JWT-SVID for `subject` with `audiences` (1 to [`MAX_AUDIENCES`], none empty),
    /// valid from `now` for `ttl` (at most [`MAX_JWT_TTL`]). `subject` must be in this trust
    /// domain.
    pub fn sign(
        &self,
        subject: &SpiffeId,
        audiences: &[String],
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<String, Error> {
        check_audiences(audiences)?;
        if ttl.is_zero() || ttl > MAX_JWT_TTL {
            return Err(invalid(format!(
                "JWT-SVID lifetime must be between 1s and {}s",
                MAX_JWT_TTL.as_secs()
            )));
        }
        if subject.trust_domain().ok().as_ref() != Some(&self.trust_domain) {
            return Err(invalid(format!(
                "{subject} is not in trust domain {}",
                self.trust_domain.as_str()
            )));
        }
        let key = self
            .keys
            .first()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "no JWT signing key"))?;
        let header = json!({ "alg": "ES256", "kid": key.kid, "typ": "JWT" });
        let aud = match audiences {
            [one] => json!(one),
            many => json!(many),
        };
        let iat = now.unix_timestamp();
        let claims = json!({
            "sub": subject.to_string(),
            "aud": aud,
            "exp": iat + ttl.as_secs() as i64,
            "iat": iat,
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = key
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| Error::new(ErrorKind::Internal, format!("JWT signing: {e}")))?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }

    /// Validates `token`: ES256 by a key of this set (by `kid`), `exp` after `now`, `nbf` (if
    /// any) not after it, `aud` holding `audience`, `sub` a SPIFFE ID of this trust domain.
    /// Errors (`InvalidParameter`) say which check failed and never echo the token.
    pub fn validate(
        &self,
        token: &str,
        audience: &str,
        now: OffsetDateTime,
    ) -> Result<ValidatedJwt, Error> {
        if audience.is_empty() {
            return Err(invalid("audience must not be empty"));
        }
        if token.len() > MAX_JWT_LEN {
            return Err(invalid(format!("JWT-SVID longer than {MAX_JWT_LEN} bytes")));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("JWT-SVID is not in JWS compact serialization"));
        };
        let header = decode_object(h, "header")?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(invalid("JWT-SVID algorithm is not ES256"));
        }
        if let Some(typ) = header.get("typ")
            && typ.as_str() != Some("JWT")
            && typ.as_str() != Some("JOSE")
        {
            return Err(invalid("JWT-SVID typ is neither JWT nor JOSE"));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("JWT-SVID header has no kid"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| invalid(format!("JWT-SVID signed by unknown key {kid:?}")))?;
        let sig = B64
            .decode(s)
            .map_err(|_| invalid("JWT-SVID signature is not base64url"))?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.pair.public_key().as_ref())
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| invalid("JWT-SVID signature does not verify"))?;
        let claims = decode_object(p, "payload")?;
        let unix = now.unix_timestamp();
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("JWT-SVID has no exp claim"))?;
        if exp <= unix {
            return Err(invalid("JWT-SVID has expired"));
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64)
            && nbf > unix
        {
            return Err(invalid("JWT-SVID is not valid yet"));
        }
        let has_audience = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !has_audience {
            return Err(invalid(format!(
                "JWT-SVID audience does not include {audience:?}"
            )));
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("JWT-SVID has no sub claim"))?;
        let spiffe_id = SpiffeId::parse(sub)?;
        if spiffe_id.trust_domain().ok().as_ref() != Some(&self.trust_domain) {
            return Err(invalid(format!(
                "JWT-SVID subject is not in trust domain {}",
                self.trust_domain.as_str()
            )));
        }
        Ok(ValidatedJwt { spiffe_id, claims })
    }
}

/// The audience rule of [`JwtKeySet::sign`]: 1 to [`MAX_AUDIENCES`], each non-empty and at
/// most [`MAX_AUDIENCE_LEN`] bytes.
pub fn check_audiences(audiences: &[String]) -> Result<(), Error> {
    if audiences.is_empty() {
        return Err(invalid("at least one audience is required"));
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(invalid(format!("more than {MAX_AUDIENCES} audiences")));
    }
    if audiences
        .iter()
        .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
    {
        return Err(invalid(format!(
            "an audience is empty or longer than {MAX_AUDIENCE_LEN} bytes"
        )));
    }
    Ok(())
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, Error> {
    let bytes = B64
        .decode(part)
        .map_err(|_| invalid(format!("JWT-SVID {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(invalid(format!("JWT-SVID {what} is not a JSON object"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("11111111-2222-3333-4444-555555555555.consul").unwrap()
    }

    fn web() -> SpiffeId {
        SpiffeId::parse(
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
        )
        .unwrap()
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    fn auds(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_signed_token_validates_for_each_of_its_audiences() {
        let set = JwtKeySet::new(td(), "root-1").unwrap();
        let token = set
            .sign(&web(), &auds(&["db", "api"]), at(0), DEFAULT_JWT_TTL)
            .unwrap();
        for aud in ["db", "api"] {
            let v = set.validate(&token, aud, at(10)).unwrap();
            assert_eq!(v.spiffe_id, web());
            assert_eq!(v.claims["sub"], web().to_string());
        }
        let err = set.validate(&token, "other", at(10)).unwrap_err();
        assert!(err.to_string().contains("audience"), "{err}");
    }

    #[test]
    fn expiry_and_tampering_are_refused() {
        let set = JwtKeySet::new(td(), "root-1").unwrap();
        let token = set
            .sign(&web(), &auds(&["db"]), at(0), DEFAULT_JWT_TTL)
            .unwrap();
        let err = set.validate(&token, "db", at(300)).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        // Another payload under the same signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = json!({"sub": web().to_string(), "aud": "db", "exp": 1_900_000_000i64});
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(forged_claims.to_string()),
            parts[2]
        );
        let err = set.validate(&forged, "db", at(1)).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
        // A token of another set (another key) is unknown here.
        let other = JwtKeySet::new(td(), "root-1").unwrap();
        let foreign = other
            .sign(&web(), &auds(&["db"]), at(0), DEFAULT_JWT_TTL)
            .unwrap();
        assert!(set.validate(&foreign, "db", at(1)).is_err());
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            &"x".repeat(MAX_JWT_LEN + 1),
        ] {
            assert_eq!(
                set.validate(junk, "db", at(1)).unwrap_err().kind(),
                ErrorKind::InvalidParameter
            );
        }
    }

    #[test]
    fn rotation_keeps_the_old_key_until_its_tokens_expire() {
        let mut set = JwtKeySet::new(td(), "root-1").unwrap();
        let old = set
            .sign(&web(), &auds(&["db"]), at(0), DEFAULT_JWT_TTL)
            .unwrap();
        assert!(!set.sync(&td(), "root-1", at(1)).unwrap());
        assert!(set.sync(&td(), "root-2", at(1)).unwrap());
        assert_eq!(set.key_ids().len(), 2);
        let new = set
            .sign(&web(), &auds(&["db"]), at(2), DEFAULT_JWT_TTL)
            .unwrap();
        assert_ne!(
            old.split('.').next(),
            new.split('.').next(),
            "a new kid signs"
        );
        set.validate(&old, "db", at(2)).unwrap();
        set.validate(&new, "db", at(2)).unwrap();
        let jwks: Value = serde_json::from_str(&set.jwks()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        // Once every token of the old key has expired, it leaves the bundle.
        let later = at(1) + MAX_JWT_TTL + Duration::from_secs(1);
        assert!(set.sync(&td(), "root-2", later).unwrap());
        assert_eq!(set.key_ids().len(), 1);
    }

    #[test]
    fn bad_requests_are_refused() {
        let set = JwtKeySet::new(td(), "root-1").unwrap();
        assert!(set.sign(&web(), &[], at(0), DEFAULT_JWT_TTL).is_err());
        assert!(
            set.sign(&web(), &auds(&[""]), at(0), DEFAULT_JWT_TTL)
                .is_err()
        );
        let many: Vec<String> = (0..=MAX_AUDIENCES).map(|i| i.to_string()).collect();
        assert!(set.sign(&web(), &many, at(0), DEFAULT_JWT_TTL).is_err());
        assert!(
            set.sign(&web(), &auds(&["db"]), at(0), MAX_JWT_TTL * 2)
                .is_err()
        );
        let foreign = SpiffeId::parse("spiffe://other.consul/ns/default/dc/dc1/svc/web").unwrap();
        assert!(
            set.sign(&foreign, &auds(&["db"]), at(0), DEFAULT_JWT_TTL)
                .is_err()
        );
    }

    #[test]
    fn the_jwks_names_each_key_by_kid() {
        let set = JwtKeySet::new(td(), "root-1").unwrap();
        let jwks: Value = serde_json::from_str(&set.jwks()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], set.key_ids()[0]);
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(B64.decode(key["x"].as_str().unwrap()).unwrap().len(), 32);
        assert_eq!(B64.decode(key["y"].as_str().unwrap()).unwrap().len(), 32);
    }
}
