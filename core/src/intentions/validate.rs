//! Normalisation and validation of intentions (Consul docs: Intentions).

use crate::spiffe::{
    check_default_namespace, check_default_partition, check_service_name_or_wildcard,
};

use super::{
    DEFAULT_NAMESPACE, DEFAULT_PARTITION, Intention, IntentionError, IntentionHttpPermission,
    SOURCE_TYPE_CONSUL, WILDCARD,
};

/// `Description` and `Meta` values, in bytes (Consul's `metaValueMaxLength`).
pub const MAX_DESCRIPTION_LEN: usize = 512;
/// Pairs in `Meta` (`metaMaxKeyPairs`).
pub const MAX_META_PAIRS: usize = 64;
/// `Meta` keys, in bytes (`metaKeyMaxLength`).
pub const MAX_META_KEY_LEN: usize = 128;
/// `Meta` values, in bytes (`metaValueMaxLength`).
pub const MAX_META_VALUE_LEN: usize = 512;

/// The methods Go's `net/http` names; Consul accepts no others.
const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

/// Empty, or `default` in any case, becomes `default`: the index compares namespaces and
/// partitions exactly, so `DEFAULT/web` must not become a namespace of its own that no
/// connection is ever in (a deny written so would never apply).
fn fill(value: &mut String, default: &str) {
    if value.is_empty() || value.eq_ignore_ascii_case(default) {
        default.clone_into(value);
    }
}

impl Intention {
    /// Fills what Consul fills before validating and storing, then recomputes
    /// [`precedence`](Self::precedence).
    ///
    /// Empty namespaces become `default`, empty partitions `default` (the source partition only
    /// for a local source: a peer and a partition exclude each other), an empty source type
    /// `consul`, and L7 methods are upper-cased. Precedence is computed last because it depends
    /// on the filled namespaces.
    pub fn normalize(&mut self) {
        fill(&mut self.source_ns, DEFAULT_NAMESPACE);
        fill(&mut self.destination_ns, DEFAULT_NAMESPACE);
        if self.source_peer.is_empty() {
            fill(&mut self.source_partition, DEFAULT_PARTITION);
        }
        fill(&mut self.destination_partition, DEFAULT_PARTITION);
        if self.source_type.is_empty() {
            SOURCE_TYPE_CONSUL.clone_into(&mut self.source_type);
        }
        for http in self.permissions.iter_mut().filter_map(|p| p.http.as_mut()) {
            for method in &mut http.methods {
                *method = method.to_uppercase();
            }
        }
        self.precedence = self.compute_precedence();
    }

    /// Checks the rules of ARCHITECTURE.md, intentions and returns the first broken one, in
    /// Consul's order and with Consul's message.
    ///
    /// Run [`Intention::normalize`] first: validation, like Consul's, requires the namespaces to
    /// be set and the methods upper-cased.
    pub fn validate(&self) -> Result<(), IntentionError> {
        self.validate_names()?;
        self.validate_tenancy()?;
        self.validate_opaque_values()?;

        if self.permissions.is_empty() {
            if self.action.is_none() {
                return Err(IntentionError::InvalidAction);
            }
        } else {
            if self.action.is_some() {
                return Err(IntentionError::ActionWithPermissions);
            }
            if self.destination_ns == WILDCARD || self.destination_name == WILDCARD {
                return Err(IntentionError::PermissionsOnWildcardDestination);
            }
        }

        if self.source_type != SOURCE_TYPE_CONSUL {
            return Err(IntentionError::InvalidSourceType);
        }

        for (index, permission) in self.permissions.iter().enumerate() {
            let http = permission
                .http
                .as_ref()
                .ok_or(IntentionError::PermissionMissingHttp { index })?;
            validate_http(index, http)?;
        }
        Ok(())
    }

    fn validate_names(&self) -> Result<(), IntentionError> {
        let required = [
            ("SourceNS", &self.source_ns),
            ("SourceName", &self.source_name),
            ("DestinationNS", &self.destination_ns),
            ("DestinationName", &self.destination_name),
        ];
        if let Some((field, _)) = required.iter().find(|(_, value)| value.is_empty()) {
            return Err(IntentionError::MissingField { field });
        }
        validate_wildcards(
            ("SourceNS", &self.source_ns),
            ("SourceName", &self.source_name),
        )?;
        validate_wildcards(
            ("DestinationNS", &self.destination_ns),
            ("DestinationName", &self.destination_name),
        )?;
        check_service_name_or_wildcard("SourceName", &self.source_name)?;
        check_service_name_or_wildcard("DestinationName", &self.destination_name)?;
        Ok(())
    }

    fn validate_tenancy(&self) -> Result<(), IntentionError> {
        for (field, value) in [
            ("SourcePartition", &self.source_partition),
            ("DestinationPartition", &self.destination_partition),
        ] {
            if value.contains(WILDCARD) {
                return Err(IntentionError::WildcardPartition { field });
            }
        }
        if self.source_peer.contains(WILDCARD) {
            return Err(IntentionError::WildcardPeer);
        }
        if !self.source_peer.is_empty() && !self.source_partition.is_empty() {
            return Err(IntentionError::PeerAndPartition);
        }
        // Like Consul CE: one namespace and one partition, and `*` is not special. Checked
        // after Consul's own rules so that their messages keep precedence.
        check_default_namespace("SourceNS", &self.source_ns)?;
        check_default_namespace("DestinationNS", &self.destination_ns)?;
        check_default_partition("SourcePartition", &self.source_partition)?;
        check_default_partition("DestinationPartition", &self.destination_partition)?;
        Ok(())
    }

    fn validate_opaque_values(&self) -> Result<(), IntentionError> {
        if self.description.len() > MAX_DESCRIPTION_LEN {
            return Err(IntentionError::DescriptionTooLong);
        }
        if self.meta.len() > MAX_META_PAIRS {
            return Err(IntentionError::TooManyMeta);
        }
        for (key, value) in &self.meta {
            if key.len() > MAX_META_KEY_LEN {
                return Err(IntentionError::MetaKeyTooLong { key: key.clone() });
            }
            if value.len() > MAX_META_VALUE_LEN {
                return Err(IntentionError::MetaValueTooLong { key: key.clone() });
            }
        }
        Ok(())
    }
}

/// A wildcard is only ever a whole value, and an exact name under a wildcard namespace would
/// have no precedence slot (Consul docs: Intentions, precedence), so both are refused.
fn validate_wildcards(
    (ns_field, ns): (&'static str, &str),
    (name_field, name): (&'static str, &str),
) -> Result<(), IntentionError> {
    if ns != WILDCARD && ns.contains(WILDCARD) {
        return Err(IntentionError::PartialWildcard { field: ns_field });
    }
    if name != WILDCARD {
        if name.contains(WILDCARD) {
            return Err(IntentionError::PartialWildcard { field: name_field });
        }
        if ns == WILDCARD {
            return Err(IntentionError::ExactAfterWildcardNamespace { field: name_field });
        }
    }
    Ok(())
}

fn validate_http(index: usize, http: &IntentionHttpPermission) -> Result<(), IntentionError> {
    let mut path_matchers = 0;
    for (field, value) in [
        ("PathExact", &http.path_exact),
        ("PathPrefix", &http.path_prefix),
    ] {
        if !value.is_empty() {
            path_matchers += 1;
            if !value.starts_with('/') {
                return Err(IntentionError::PathWithoutSlash {
                    index,
                    field,
                    value: value.clone(),
                });
            }
        }
    }
    if !http.path_regex.is_empty() {
        path_matchers += 1;
    }
    if path_matchers > 1 {
        return Err(IntentionError::MultiplePathMatchers { index });
    }

    for (header_index, header) in http.header.iter().enumerate() {
        if header.name.is_empty() {
            return Err(IntentionError::HeaderMissingName {
                index,
                header: header_index,
            });
        }
        let matchers = [
            header.present,
            !header.exact.is_empty(),
            !header.prefix.is_empty(),
            !header.suffix.is_empty(),
            !header.regex.is_empty(),
        ];
        if matchers.iter().filter(|set| **set).count() != 1 {
            return Err(IntentionError::HeaderMatcherCount {
                index,
                header: header_index,
            });
        }
    }

    for (i, method) in http.methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&method.as_str()) {
            return Err(IntentionError::InvalidMethod {
                index,
                method: method.clone(),
            });
        }
        if http.methods[..i].contains(method) {
            return Err(IntentionError::DuplicateMethod {
                index,
                method: method.clone(),
            });
        }
    }

    if path_matchers == 0 && http.header.is_empty() && http.methods.is_empty() {
        return Err(IntentionError::EmptyHttp { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intentions::{IntentionAction, IntentionHttpHeaderPermission, IntentionPermission};

    fn valid() -> Intention {
        Intention::new("web", "db", IntentionAction::Allow)
    }

    fn l7(http: IntentionHttpPermission) -> Intention {
        let mut ixn = valid();
        ixn.action = None;
        ixn.permissions = vec![IntentionPermission::new(IntentionAction::Allow, http)];
        ixn
    }

    fn http() -> IntentionHttpPermission {
        IntentionHttpPermission {
            path_prefix: "/v2/".into(),
            ..IntentionHttpPermission::default()
        }
    }

    fn header(f: impl FnOnce(&mut IntentionHttpHeaderPermission)) -> IntentionHttpPermission {
        let mut header = IntentionHttpHeaderPermission {
            name: "X-Env".into(),
            ..IntentionHttpHeaderPermission::default()
        };
        f(&mut header);
        IntentionHttpPermission {
            header: vec![header],
            ..IntentionHttpPermission::default()
        }
    }

    /// Applies `change` to a valid intention and returns the validation message.
    fn message(change: impl FnOnce(&mut Intention)) -> String {
        let mut ixn = valid();
        change(&mut ixn);
        ixn.validate().unwrap_err().to_string()
    }

    #[test]
    fn normalize_fills_consul_defaults() {
        let mut ixn = Intention {
            source_name: "web".into(),
            destination_name: "*".into(),
            permissions: vec![IntentionPermission::new(
                IntentionAction::Deny,
                IntentionHttpPermission {
                    methods: vec!["get".into(), "Post".into()],
                    ..IntentionHttpPermission::default()
                },
            )],
            ..Intention::default()
        };
        ixn.normalize();
        assert_eq!(
            (ixn.source_ns.as_str(), ixn.destination_ns.as_str()),
            ("default", "default")
        );
        assert_eq!(
            (
                ixn.source_partition.as_str(),
                ixn.destination_partition.as_str()
            ),
            ("default", "default")
        );
        assert_eq!(ixn.source_type, "consul");
        assert_eq!(
            ixn.permissions[0].http.as_ref().unwrap().methods,
            ["GET", "POST"]
        );
        assert_eq!(ixn.precedence, 6);

        // A peered source has no partition: the two exclude each other.
        let mut peered = Intention {
            source_peer: "cluster-01".into(),
            ..valid()
        };
        peered.source_partition.clear();
        peered.normalize();
        assert_eq!(peered.source_partition, "");
        assert_eq!(peered.validate(), Ok(()));
    }

    #[test]
    fn valid_intentions_pass() {
        assert_eq!(valid().validate(), Ok(()));
        for (src, dst) in [("*", "*"), ("web", "*"), ("*", "db"), ("a.b_c-D", "x")] {
            let mut ixn = valid();
            (ixn.source_ns, ixn.source_name) = ("default".into(), src.into());
            (ixn.destination_ns, ixn.destination_name) = ("Default".into(), dst.into());
            assert_eq!(ixn.validate(), Ok(()), "{src} => {dst}");
        }
        assert_eq!(l7(http()).validate(), Ok(()));
        // A permission needs no path: methods or headers alone are enough (at most one path).
        let methods_only = IntentionHttpPermission {
            methods: vec!["GET".into(), "HEAD".into()],
            ..IntentionHttpPermission::default()
        };
        assert_eq!(l7(methods_only).validate(), Ok(()));
        assert_eq!(l7(header(|h| h.present = true)).validate(), Ok(()));
    }

    #[test]
    fn required_fields() {
        assert_eq!(message(|i| i.source_ns.clear()), "SourceNS must be set");
        assert_eq!(message(|i| i.source_name.clear()), "SourceName must be set");
        assert_eq!(
            message(|i| i.destination_ns.clear()),
            "DestinationNS must be set"
        );
        assert_eq!(
            message(|i| i.destination_name.clear()),
            "DestinationName must be set"
        );
        assert_eq!(
            message(|i| *i = Intention::default()),
            "SourceNS must be set"
        );
    }

    #[test]
    fn wildcards_only_as_whole_values() {
        const PARTIAL: &str = "wildcard character '*' cannot be used with partial values";
        assert_eq!(
            message(|i| i.source_ns = "n*".into()),
            format!("SourceNS: {PARTIAL}")
        );
        assert_eq!(
            message(|i| i.source_name = "*web".into()),
            format!("SourceName: {PARTIAL}")
        );
        assert_eq!(
            message(|i| i.destination_ns = "**".into()),
            format!("DestinationNS: {PARTIAL}")
        );
        assert_eq!(
            message(|i| i.destination_name = "d*b".into()),
            format!("DestinationName: {PARTIAL}")
        );
        assert_eq!(
            message(|i| i.source_ns = "*".into()),
            "SourceName: exact value cannot follow wildcard namespace"
        );
        assert_eq!(
            message(|i| i.destination_ns = "*".into()),
            "DestinationName: exact value cannot follow wildcard namespace"
        );
    }

    #[test]
    fn partitions_and_peers() {
        assert_eq!(
            message(|i| i.source_partition = "*".into()),
            "SourcePartition: cannot use wildcard '*' in partition"
        );
        assert_eq!(
            message(|i| i.destination_partition = "ap-*".into()),
            "DestinationPartition: cannot use wildcard '*' in partition"
        );
        assert_eq!(
            message(|i| {
                i.source_partition.clear();
                i.source_peer = "*".into();
            }),
            "SourcePeer: cannot use wildcard '*' in peer"
        );
        assert_eq!(
            message(|i| i.source_peer = "cluster-01".into()),
            "SourcePeer: cannot set Peer and Partition at the same time."
        );
    }

    #[test]
    fn opaque_value_limits() {
        let mut at_limit = valid();
        at_limit.description = "x".repeat(512);
        assert_eq!(at_limit.validate(), Ok(()));
        // Bytes, as Go's len(): 171 three-byte characters are 513 bytes.
        assert_eq!(
            message(|i| i.description = "€".repeat(171)),
            "Description exceeds maximum length 512"
        );
        assert_eq!(
            message(|i| i.description = "x".repeat(513)),
            "Description exceeds maximum length 512"
        );
        assert_eq!(
            message(|i| i.meta = (0..65).map(|n| (n.to_string(), String::new())).collect()),
            "Meta exceeds maximum element count 64"
        );
        assert_eq!(
            message(|i| {
                i.meta.insert("k".repeat(129), String::new());
            }),
            format!("Meta key {:?} exceeds maximum length 128", "k".repeat(129))
        );
        assert_eq!(
            message(|i| {
                i.meta.insert("owner".into(), "v".repeat(513));
            }),
            "Meta value for key \"owner\" exceeds maximum length 512"
        );
        let mut at_limits = valid();
        at_limits.meta = (0..64)
            .map(|n| (format!("{n:0>128}"), "v".repeat(512)))
            .collect();
        assert_eq!(at_limits.validate(), Ok(()));
    }

    #[test]
    fn names_follow_the_one_rule() {
        let long = "n".repeat(crate::spiffe::MAX_SERVICE_NAME_LEN + 1);
        for bad in ["web\0", "web\n", "a/b", "..", ".", "we b", long.as_str()] {
            for side in ["SourceName", "DestinationName"] {
                let mut ixn = valid();
                if side == "SourceName" {
                    ixn.source_name = bad.into();
                } else {
                    ixn.destination_name = bad.into();
                }
                let err = ixn.validate().unwrap_err();
                assert_eq!(err.kind(), crate::ErrorKind::InvalidParameter, "{bad:?}");
                let text = err.to_string();
                assert!(text.starts_with(&format!("invalid {side} ")), "{text}");
                assert!(text.contains(crate::spiffe::SERVICE_NAME_RULE), "{text}");
            }
        }
    }

    #[test]
    fn default_in_any_case_is_the_default_namespace_and_partition() {
        let mut ixn = valid();
        ixn.source_ns = "DEFAULT".into();
        ixn.destination_ns = "Default".into();
        ixn.source_partition = "DeFault".into();
        ixn.destination_partition = "DEFAULT".into();
        ixn.normalize();
        assert_eq!(ixn.validate(), Ok(()));
        assert_eq!(
            (
                ixn.source_ns.as_str(),
                ixn.destination_ns.as_str(),
                ixn.source_partition.as_str(),
                ixn.destination_partition.as_str()
            ),
            ("default", "default", "default", "default")
        );
    }

    #[test]
    fn only_the_default_namespace_and_partition() {
        // Consul CE refuses these too ("Namespaces is a Consul Enterprise feature"); `*` is
        // pointless with one namespace and refused alike.
        for (change, starts) in [
            (
                (|i: &mut Intention| i.source_ns = "prod".into()) as fn(&mut Intention),
                "namespaces are not supported: SourceNS is \"prod\"",
            ),
            (
                |i: &mut Intention| {
                    (i.destination_ns, i.destination_name) = ("*".into(), "*".into())
                },
                "namespaces are not supported: DestinationNS is \"*\"",
            ),
            (
                |i: &mut Intention| (i.source_ns, i.source_name) = ("*".into(), "*".into()),
                "namespaces are not supported: SourceNS",
            ),
            (
                |i: &mut Intention| i.source_partition = "bizdev".into(),
                "admin partitions are not supported: SourcePartition is \"bizdev\"",
            ),
            (
                |i: &mut Intention| i.destination_partition = "bizdev".into(),
                "admin partitions are not supported: DestinationPartition",
            ),
        ] {
            let mut ixn = valid();
            change(&mut ixn);
            let err = ixn.validate().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidParameter);
            assert!(err.to_string().starts_with(starts), "{err}");
        }
    }

    #[test]
    fn action_rules() {
        assert_eq!(
            message(|i| i.action = None),
            "Action must be set to 'allow' or 'deny'"
        );
        let mut both = l7(http());
        both.action = Some(IntentionAction::Deny);
        assert_eq!(
            both.validate().unwrap_err().to_string(),
            "Action must be omitted if Permissions are specified"
        );
        for (ns, name) in [("default", "*"), ("DEFAULT", "*")] {
            let mut wild = l7(http());
            (wild.destination_ns, wild.destination_name) = (ns.into(), name.into());
            assert_eq!(
                wild.validate(),
                Err(IntentionError::PermissionsOnWildcardDestination),
                "{ns}/{name}"
            );
        }
        assert_eq!(
            IntentionError::PermissionsOnWildcardDestination.to_string(),
            "Permissions cannot be specified on intentions with wildcarded destinations"
        );
    }

    #[test]
    fn source_type_must_be_consul() {
        assert_eq!(
            message(|i| i.source_type = "external".into()),
            "SourceType must be set to 'consul'"
        );
        assert_eq!(
            message(|i| i.source_type.clear()),
            "SourceType must be set to 'consul'"
        );
    }

    #[test]
    fn l7_permission_rules() {
        let check = |http: IntentionHttpPermission| l7(http).validate().unwrap_err().to_string();

        let mut no_http = l7(http());
        no_http.permissions[0].http = None;
        assert_eq!(
            no_http.validate().unwrap_err().to_string(),
            "Permissions[0].HTTP is required"
        );
        assert_eq!(
            check(IntentionHttpPermission::default()),
            "Permissions[0].HTTP should not be empty"
        );

        let exact = IntentionHttpPermission {
            path_exact: "v2".into(),
            ..IntentionHttpPermission::default()
        };
        assert_eq!(
            check(exact),
            "Permissions[0].HTTP.PathExact doesn't start with '/': \"v2\""
        );
        let prefix = IntentionHttpPermission {
            path_prefix: "v2/".into(),
            ..IntentionHttpPermission::default()
        };
        assert_eq!(
            check(prefix),
            "Permissions[0].HTTP.PathPrefix doesn't start with '/': \"v2/\""
        );
        let two_paths = IntentionHttpPermission {
            path_regex: "/v[0-9]+".into(),
            ..http()
        };
        assert_eq!(
            check(two_paths),
            "Permissions[0].HTTP should only contain at most one of PathExact, PathPrefix, or PathRegex"
        );

        assert_eq!(
            check(header(|h| {
                h.name.clear();
                h.present = true;
            })),
            "Permissions[0].HTTP.Header[0] missing required Name field"
        );
        const ONE_OF: &str = "Permissions[0].HTTP.Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex";
        assert_eq!(check(header(|_| {})), ONE_OF);
        assert_eq!(
            check(header(|h| {
                h.present = true;
                h.suffix = "-prod".into();
            })),
            ONE_OF
        );
        assert_eq!(
            check(header(|h| {
                h.prefix = "a".into();
                h.regex = "b".into();
            })),
            ONE_OF
        );

        let methods = |m: &[&str]| IntentionHttpPermission {
            methods: m.iter().map(|s| (*s).to_owned()).collect(),
            ..http()
        };
        assert_eq!(
            check(methods(&["GET", "FETCH"])),
            "Permissions[0].HTTP.Methods contains an invalid method \"FETCH\""
        );
        assert_eq!(
            check(methods(&["get"])),
            "Permissions[0].HTTP.Methods contains an invalid method \"get\""
        );
        assert_eq!(
            check(methods(&["GET", "PUT", "GET"])),
            "Permissions[0].HTTP.Methods contains \"GET\" more than once"
        );
        let mut lower = l7(methods(&["get", "post"]));
        lower.normalize();
        assert_eq!(
            lower.validate(),
            Ok(()),
            "normalize() upper-cases methods first"
        );

        // The index in messages is the permission's position.
        let mut second = l7(http());
        second.permissions.push(IntentionPermission::new(
            IntentionAction::Deny,
            IntentionHttpPermission::default(),
        ));
        assert_eq!(
            second.validate(),
            Err(IntentionError::EmptyHttp { index: 1 })
        );
    }

    #[test]
    fn validation_errors_are_invalid_intention() {
        assert_eq!(
            IntentionError::InvalidAction.kind(),
            crate::ErrorKind::InvalidIntention
        );
        let e: crate::Error = IntentionError::TooManyMeta.into();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidIntention);
    }
}
