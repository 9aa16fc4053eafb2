//! The TLS server names upstreams put in their ClientHello (Consul docs: Mesh Gateways).
//!
//! Mesh gateways never terminate the end-to-end TLS session: they route purely on these names,
//! so each label must be byte-identical to what Consul's gateways expect. The functions only
//! join labels; choosing the datacenter (the upstream's own, else the local one) is the caller's
//! job, as in Consul.

use super::TrustDomain;
use super::id::{DEFAULT_NAMESPACE, DEFAULT_PARTITION};

fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

/// The SNI of a service (or one of its subsets) in a datacenter:
/// `[<subset>.]<service>.<namespace>.<datacenter>.internal.<trust_domain>` in the default
/// partition, and `[<subset>.]<service>.<namespace>.<partition>.<datacenter>.internal-v1.<trust_domain>`
/// otherwise.
///
/// An empty namespace or partition means `default`, and an empty subset means none, because
/// Consul's configuration leaves those fields empty when unset. The partition test is exact
/// (`default`), as in Consul; the `-v1` suffix exists so that gateways can tell the two label
/// layouts apart.
pub fn service_sni(
    service: &str,
    subset: Option<&str>,
    namespace: &str,
    partition: &str,
    datacenter: &str,
    trust_domain: &TrustDomain,
) -> String {
    let namespace = or_default(namespace, DEFAULT_NAMESPACE);
    let partition = or_default(partition, DEFAULT_PARTITION);
    let prefix = match subset {
        Some(subset) if !subset.is_empty() => format!("{subset}.{service}"),
        _ => service.to_owned(),
    };
    if partition == DEFAULT_PARTITION {
        format!("{prefix}.{namespace}.{datacenter}.internal.{trust_domain}")
    } else {
        format!("{prefix}.{namespace}.{partition}.{datacenter}.internal-v1.{trust_domain}")
    }
}

/// The SNI a gateway uses to route to a whole datacenter: `<datacenter>.internal.<trust_domain>`.
pub fn datacenter_sni(datacenter: &str, trust_domain: &TrustDomain) -> String {
    format!("{datacenter}.internal.{trust_domain}")
}

/// The SNI of a prepared query: `<query>.default.<datacenter>.query.<trust_domain>`.
///
/// The namespace label is the literal `default`: prepared queries are not namespaced, yet the
/// label keeps the layout parallel to service names.
pub fn query_sni(query: &str, datacenter: &str, trust_domain: &TrustDomain) -> String {
    format!("{query}.{DEFAULT_NAMESPACE}.{datacenter}.query.{trust_domain}")
}

/// The SNI of a service exported by a cluster peer:
/// `<service>.<namespace>.<partition>.<peer>.external.<trust_domain>`, where `trust_domain` is
/// the peer's.
///
/// An empty namespace or partition means `default`. `peer` must not be empty: Consul treats that
/// as a programming error (it panics); here the name is still built, and no gateway routes it.
pub fn peered_service_sni(
    service: &str,
    namespace: &str,
    partition: &str,
    peer: &str,
    trust_domain: &TrustDomain,
) -> String {
    let namespace = or_default(namespace, DEFAULT_NAMESPACE);
    let partition = or_default(partition, DEFAULT_PARTITION);
    format!("{service}.{namespace}.{partition}.{peer}.external.{trust_domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD1: &str = "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul";
    const TD2: &str = "d2e1a32e-5733-47f2-a9dd-6cf271aab5b7.consul";
    const LOCAL_DC: &str = "foo";

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    /// The upstream's datacenter overrides the local one, as the caller of `service_sni` does.
    fn upstream_dc(dc: &str) -> &str {
        if dc.is_empty() { LOCAL_DC } else { dc }
    }

    #[test]
    fn service_default_partition() {
        let td1 = td(TD1);
        let td2 = td(TD2);
        assert_eq!(
            service_sni("api", None, "", "", upstream_dc(""), &td1),
            format!("api.default.foo.internal.{TD1}")
        );
        assert_eq!(
            service_sni("api", None, "", "", upstream_dc("bar"), &td1),
            format!("api.default.bar.internal.{TD1}")
        );
        assert_eq!(
            service_sni("api", None, "neighbor", "", upstream_dc(""), &td2),
            format!("api.neighbor.foo.internal.{TD2}")
        );
        assert_eq!(
            service_sni("api", None, "default", "default", "foo", &td1),
            format!("api.default.foo.internal.{TD1}")
        );
    }

    #[test]
    fn service_subsets() {
        let td1 = td(TD1);
        let td2 = td(TD2);
        assert_eq!(
            service_sni("api", Some("v2"), "", "", upstream_dc(""), &td1),
            format!("v2.api.default.foo.internal.{TD1}")
        );
        assert_eq!(
            service_sni(
                "api",
                Some("canary"),
                "neighbor",
                "",
                upstream_dc("bar"),
                &td2
            ),
            format!("canary.api.neighbor.bar.internal.{TD2}")
        );
        assert_eq!(
            service_sni("api", Some(""), "", "", "foo", &td1),
            format!("api.default.foo.internal.{TD1}"),
            "an empty subset is no subset"
        );
    }

    #[test]
    fn service_non_default_partition_uses_internal_v1() {
        assert_eq!(
            service_sni("api", None, "", "part1", upstream_dc(""), &td(TD1)),
            format!("api.default.part1.foo.internal-v1.{TD1}")
        );
        assert_eq!(
            service_sni(
                "api",
                Some("canary"),
                "neighbor",
                "part1",
                upstream_dc(""),
                &td(TD2)
            ),
            format!("canary.api.neighbor.part1.foo.internal-v1.{TD2}")
        );
    }

    #[test]
    fn prepared_query() {
        assert_eq!(
            query_sni("magicquery", upstream_dc(""), &td(TD1)),
            format!("magicquery.default.foo.query.{TD1}")
        );
        assert_eq!(
            query_sni("magicquery", upstream_dc("bar"), &td(TD2)),
            format!("magicquery.default.bar.query.{TD2}")
        );
    }

    #[test]
    fn datacenter() {
        assert_eq!(
            datacenter_sni("foo", &td(TD1)),
            format!("foo.internal.{TD1}")
        );
        assert_eq!(
            datacenter_sni("bar", &td(TD2)),
            format!("bar.internal.{TD2}")
        );
    }

    #[test]
    fn peered_service() {
        assert_eq!(
            peered_service_sni("api", "", "", "peer1", &td(TD2)),
            format!("api.default.default.peer1.external.{TD2}")
        );
        assert_eq!(
            peered_service_sni("api", "neighbor", "part1", "peer1", &td(TD2)),
            format!("api.neighbor.part1.peer1.external.{TD2}")
        );
    }

    #[test]
    fn trust_domain_is_emitted_lowercase() {
        let upper = td("5FCD4B81-A2CA-405A-AC62-0FAC602C1949.CONSUL");
        assert_eq!(datacenter_sni("foo", &upper), format!("foo.internal.{TD1}"));
    }
}
