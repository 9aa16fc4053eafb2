//! The agent side of leaf certificates (ARCHITECTURE.md, agent): a fresh EC P-256 key and CSR for
//! an identity, and the randomised renewal window.

use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;

use super::keys::{KeySpec, PrivateKey};
use super::{CaError, csr::build_csr};

/// A leaf key generated in this process, with the CSR that asks for its certificate.
#[derive(Debug)]
pub struct LeafCsr {
    /// The new key; it never leaves the process.
    pub key: PrivateKey,
    /// The CSR, PEM.
    pub csr_pem: String,
}

/// Generates an EC P-256 key and a CSR for `uri` (leaf keys are always P-256, whatever the
/// CA's key type), with an empty subject and a critical SAN.
pub fn generate_leaf_request(
    uri: &str,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
) -> Result<LeafCsr, CaError> {
    let key = PrivateKey::generate(KeySpec::EC_P256)?;
    let csr_pem = build_csr(&key, uri, dns_names, ip_addresses, false)?;
    Ok(LeafCsr { key, csr_pem })
}

/// Consul's `calculateSoftExpiry` (ARCHITECTURE.md, agent): the window `[min, max]` in which a leaf
/// valid from `valid_after` to `valid_before` should be renewed, seen at `now`.
///
/// Renewal is spread over 60–90 % of the lifetime so that thousands of instances do not
/// renew at once; lifetimes under 10 minutes renew at once.
pub fn renewal_window(
    valid_after: OffsetDateTime,
    valid_before: OffsetDateTime,
    now: OffsetDateTime,
) -> (OffsetDateTime, OffsetDateTime) {
    let lifetime = valid_before - valid_after;
    if lifetime < time::Duration::minutes(10) {
        return (now, now);
    }
    let soft = valid_after + lifetime * 0.6;
    let hard = valid_after + lifetime * 0.9;
    if now > hard {
        (now, now)
    } else if now > soft {
        (now, hard)
    } else {
        (soft, hard)
    }
}

/// A uniformly random instant in `[min, max)` (or `min` when the window is empty): when
/// this leaf will be renewed.
pub fn pick_renewal_time(
    valid_after: OffsetDateTime,
    valid_before: OffsetDateTime,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let (min, max) = renewal_window(valid_after, valid_before, now);
    let span = Duration::try_from(max - min).unwrap_or_default();
    if span.is_zero() {
        return min;
    }
    min + span.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const ISSUED: OffsetDateTime = datetime!(2018-01-01 00:00:00 UTC);

    /// Every vector of Consul's renewal window (ARCHITECTURE.md, agent).
    #[test]
    fn renewal_window_vectors() {
        let h = |n: i64| time::Duration::hours(n);
        let cases = [
            (
                h(72),
                datetime!(2018-01-01 00:00:01 UTC),
                datetime!(2018-01-02 19:12:00 UTC),
                datetime!(2018-01-03 16:48:00 UTC),
            ),
            (
                h(72),
                datetime!(2018-01-02 20:00:20 UTC),
                datetime!(2018-01-02 20:00:20 UTC),
                datetime!(2018-01-03 16:48:00 UTC),
            ),
            (
                h(72),
                datetime!(2018-01-03 18:00:00 UTC),
                datetime!(2018-01-03 18:00:00 UTC),
                datetime!(2018-01-03 18:00:00 UTC),
            ),
            (
                h(72),
                datetime!(2018-01-05 00:00:00 UTC),
                datetime!(2018-01-05 00:00:00 UTC),
                datetime!(2018-01-05 00:00:00 UTC),
            ),
            (
                h(1),
                datetime!(2018-01-01 00:00:01 UTC),
                datetime!(2018-01-01 00:36:00 UTC),
                datetime!(2018-01-01 00:54:00 UTC),
            ),
            (
                h(1),
                datetime!(2018-01-01 00:40:00 UTC),
                datetime!(2018-01-01 00:40:00 UTC),
                datetime!(2018-01-01 00:54:00 UTC),
            ),
            (
                h(1),
                datetime!(2018-01-01 00:55:00 UTC),
                datetime!(2018-01-01 00:55:00 UTC),
                datetime!(2018-01-01 00:55:00 UTC),
            ),
            (
                h(1),
                datetime!(2018-01-01 01:01:01 UTC),
                datetime!(2018-01-01 01:01:01 UTC),
                datetime!(2018-01-01 01:01:01 UTC),
            ),
            (
                time::Duration::minutes(1),
                datetime!(2018-01-01 01:01:01 UTC),
                datetime!(2018-01-01 01:01:01 UTC),
                datetime!(2018-01-01 01:01:01 UTC),
            ),
        ];
        for (lifetime, now, min, max) in cases {
            assert_eq!(
                renewal_window(ISSUED, ISSUED + lifetime, now),
                (min, max),
                "lifetime {lifetime} now {now}"
            );
        }
    }

    #[test]
    fn picked_time_is_inside_the_window() {
        let before = ISSUED + time::Duration::hours(72);
        let now = datetime!(2018-01-01 00:00:01 UTC);
        let (min, max) = renewal_window(ISSUED, before, now);
        for _ in 0..200 {
            let t = pick_renewal_time(ISSUED, before, now);
            assert!(t >= min && t <= max);
        }
    }
}
