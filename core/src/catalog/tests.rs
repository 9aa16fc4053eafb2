use serde_json::{Value, json};

use super::*;

fn decode(value: Value) -> Result<ServiceRegistration, CatalogError> {
    ServiceRegistration::from_json(value.to_string().as_bytes())
}

fn node(name: &str, address: &str) -> Node {
    Node::new(name, address, "dc1")
}

/// A catalog with `web` on two nodes, its sidecar on node1, a native `web` on node2, and an
/// unrelated `db` with its own sidecar.
fn sample() -> Catalog {
    let mut c = Catalog::default();
    c.put_node(node("node1", "10.0.0.5"));
    c.put_node(node("node2", "10.0.0.6"));
    c.put_service(
        "node1",
        decode(json!({"Name": "web", "Port": 8080}))
            .unwrap()
            .to_service(),
    );
    let sidecar = ServiceRegistration::sidecar_proxy("web", 21000);
    let mut sidecar = sidecar.to_service();
    sidecar.proxy.as_mut().unwrap().local_service_port = 8080;
    c.put_service("node1", sidecar);
    let native = decode(
        json!({"Name": "web", "ID": "web-native", "Address": "10.1.1.1",
        "Port": 9090, "Connect": {"Native": true}}),
    )
    .unwrap();
    c.put_service("node2", native.to_service());
    c.put_service("node2", ServiceRegistration::new("db", 5432).to_service());
    c.put_service(
        "node2",
        ServiceRegistration::sidecar_proxy("db", 21001).to_service(),
    );
    c
}

fn ids(entries: &[ServiceEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| (e.node.node.clone(), e.service.id.clone()))
        .collect()
}

#[test]
fn register_json_keys_are_case_insensitive() {
    let r = decode(json!({"name": "web", "port": 8080, "connect": {"native": true}})).unwrap();
    assert_eq!(r.name, "web");
    assert_eq!(r.id, "web", "ID defaults to the name");
    assert_eq!(r.port, 8080);
    assert!(r.connect.as_ref().unwrap().native);
    let s = r.to_service();
    assert_eq!(s.kind, ServiceKind::Typical);
    assert!(s.is_connect_endpoint_for("web"));
    assert!(!s.is_connect_endpoint_for("db"));
}

#[test]
fn register_json_accepts_snake_case_and_ignores_unknown_keys_and_nulls() {
    let r = decode(json!({
        "KIND": "connect-proxy", "name": "web-sidecar-proxy", "Port": 21000,
        "tags": null, "EnableTagOverride": true, "Weights": {"Passing": 1},
        "proxy": {
            "destination_service_name": "web", "destination_service_id": "web",
            "local_service_port": 8080, "config": {"protocol": "http"},
            "upstreams": [{"destination_name": "db", "local_bind_port": 9191,
                           "mesh_gateway": {"mode": "local"}}]
        },
        "check": {"ttl": "15s", "check_id": "sidecar-ttl", "status": "passing"}
    }))
    .unwrap();
    assert_eq!(r.kind, ServiceKind::ConnectProxy);
    assert!(r.tags.is_empty());
    let proxy = r.proxy.as_ref().unwrap();
    assert_eq!(proxy.destination_service_name, "web");
    assert_eq!(proxy.local_service_port, 8080);
    assert_eq!(proxy.config["protocol"], "http");
    assert_eq!(proxy.upstreams[0].destination_name, "db");
    assert_eq!(proxy.upstreams[0].local_bind_port, 9191);
    assert_eq!(proxy.upstreams[0].mesh_gateway.mode, "local");
    let checks = r.health_checks("node1");
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].check_id, "sidecar-ttl");
    assert_eq!(checks[0].status, HealthStatus::Passing);
    assert_eq!(checks[0].definition.ttl, "15s");
    assert_eq!(checks[0].check_type, "ttl");
    assert_eq!(checks[0].service_id, "web-sidecar-proxy");
}

#[test]
fn checks_get_consuls_default_ids_names_and_status() {
    let one = decode(json!({"Name": "web", "Check": {"TTL": "10s"}})).unwrap();
    let checks = one.health_checks("n");
    assert_eq!(checks[0].check_id, "service:web");
    assert_eq!(checks[0].name, "Service 'web' check");
    assert_eq!(checks[0].status, HealthStatus::Critical);
    assert_eq!(checks[0].node, "n");

    let many = decode(json!({"Name": "web", "ID": "web-1",
        "Check": {"TTL": "10s"}, "Checks": [{"TTL": "20s"}, {"id": "mine", "TTL": "1m"}]}))
    .unwrap();
    let ids: Vec<_> = many
        .health_checks("n")
        .into_iter()
        .map(|c| c.check_id)
        .collect();
    assert_eq!(ids, ["service:web-1:1", "service:web-1:2", "mine"]);
}

#[test]
fn upstream_datacenter_mode_and_tagged_addresses_round_trip() {
    let reg = ServiceRegistration::from_json(
        br#"{"Kind": "connect-proxy", "Name": "p", "Port": 21000,
            "TaggedAddresses": {"wan": {"Address": "198.51.100.7", "Port": 8443}},
            "Proxy": {"DestinationServiceName": "web", "Upstreams": [{"DestinationName": "db",
              "Datacenter": "dc2", "LocalBindPort": 9191, "MeshGateway": {"Mode": "local"}}]}}"#,
    )
    .unwrap();
    let up = &reg.proxy.as_ref().unwrap().upstreams[0];
    assert_eq!(up.datacenter, "dc2");
    assert_eq!(up.mesh_gateway.parsed_mode(), Some(MeshGatewayMode::Local));
    assert_eq!(
        reg.to_service().tagged_addresses["wan"],
        ServiceAddress::new("198.51.100.7", 8443)
    );
    let entry = ServiceEntry {
        service: reg.to_service(),
        ..ServiceEntry::default()
    };
    assert_eq!(entry.wan_address(), ("198.51.100.7", 8443));
}

#[test]
fn each_bad_registration_is_a_typed_error_with_a_clear_message() {
    let proxy = |extra: Value| {
        let mut base = json!({"Kind": "connect-proxy", "Name": "p", "Port": 21000,
            "Proxy": {"DestinationServiceName": "web"}});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    let upstream =
        |u: Value| proxy(json!({"Proxy": {"DestinationServiceName": "web", "Upstreams": [u]}}));
    let cases: Vec<(Value, CatalogError, &str)> = vec![
        (
            json!({"Port": 80}),
            CatalogError::MissingServiceName,
            "Missing service name",
        ),
        (
            json!({"Name": ""}),
            CatalogError::MissingServiceName,
            "Missing service name",
        ),
        (
            json!({"Name": "w", "Kind": "sidecar"}),
            CatalogError::InvalidKind {
                kind: "sidecar".into(),
            },
            "Invalid service kind: \"sidecar\"",
        ),
        (
            json!({"Name": "w", "Port": 70000}),
            CatalogError::InvalidPort {
                field: "Port".into(),
                value: "70000".into(),
            },
            "Port must be between 0 and 65535, got 70000",
        ),
        (
            json!({"Name": "w", "Port": -1}),
            CatalogError::InvalidPort {
                field: "Port".into(),
                value: "-1".into(),
            },
            "Port must be between 0 and 65535, got -1",
        ),
        (
            proxy(json!({"Proxy": {"LocalServicePort": 65536, "DestinationServiceName": "web"}})),
            CatalogError::InvalidPort {
                field: "Proxy.LocalServicePort".into(),
                value: "65536".into(),
            },
            "Proxy.LocalServicePort must be between 0 and 65535",
        ),
        (
            upstream(json!({"DestinationName": "db", "LocalBindPort": 1e6})),
            CatalogError::InvalidPort {
                field: "Proxy.Upstreams[0].LocalBindPort".into(),
                value: "1000000.0".into(),
            },
            "Proxy.Upstreams[0].LocalBindPort must be between 0 and 65535",
        ),
        (
            json!({"Kind": "connect-proxy", "Name": "p", "Port": 21000}),
            CatalogError::ProxyMissingDestination,
            "Proxy.DestinationServiceName must be set for a Connect proxy",
        ),
        (
            proxy(json!({"Proxy": {"DestinationServiceName": ""}})),
            CatalogError::ProxyMissingDestination,
            "DestinationServiceName must be set",
        ),
        (
            proxy(json!({"Port": 0})),
            CatalogError::ProxyMissingPort,
            "Port must be set for a Connect proxy",
        ),
        (
            proxy(json!({"Connect": {"Native": true}})),
            CatalogError::NativeProxy,
            "A Proxy cannot also be Connect Native",
        ),
        (
            upstream(json!({"LocalBindPort": 9191})),
            CatalogError::UpstreamMissingName { index: 0 },
            "Proxy.Upstreams[0]: upstream destination name cannot be empty",
        ),
        (
            upstream(json!({"DestinationName": "db", "LocalBindPort": 1, "Datacenter": "DC2"})),
            CatalogError::Name(crate::spiffe::NameError::InvalidDatacenterName {
                field: "Proxy.Upstreams.Datacenter",
                value: crate::spiffe::check_datacenter_name("x", "DC2")
                    .err()
                    .and_then(|e| match e {
                        crate::spiffe::NameError::InvalidDatacenterName { value, .. } => {
                            Some(value)
                        }
                        _ => None,
                    })
                    .unwrap(),
            }),
            "invalid Proxy.Upstreams.Datacenter \"DC2\": a datacenter name must be 1 to 63 \
             characters from a-z, 0-9, '_' and '-'",
        ),
        (
            upstream(json!({"DestinationName": "db", "LocalBindPort": 1,
                "MeshGateway": {"Mode": "Local"}})),
            CatalogError::UpstreamMeshGatewayMode {
                mode: "Local".into(),
            },
            "Proxy.Upstreams.MeshGateway.Mode: invalid mesh gateway mode \"Local\": must be \
             none, local or remote",
        ),
        (
            upstream(json!({"DestinationName": "db"})),
            CatalogError::UpstreamZeroPort { index: 0 },
            "Proxy.Upstreams[0]: upstream local bind port cannot be zero",
        ),
        (
            upstream(json!({"DestinationName": "db", "LocalBindPort": 1, "DestinationType": "x"})),
            CatalogError::UpstreamUnknownType {
                index: 0,
                kind: "x".into(),
            },
            "unknown upstream destination type \"x\"",
        ),
        (
            json!({"Name": "w", "Meta": {"consul-version": "1"}}),
            CatalogError::InvalidMeta {
                message: "key \"consul-version\": reserved key prefix 'consul-' not allowed".into(),
            },
            "reserved key prefix",
        ),
        (
            json!({"Name": "w", "Meta": {"": "1"}}),
            CatalogError::InvalidMeta {
                message: "key cannot be blank".into(),
            },
            "Invalid meta: key cannot be blank",
        ),
        (
            json!({"Name": "w", "Check": {"HTTP": "http://x", "Interval": "10s"}}),
            CatalogError::UnsupportedCheck {
                check: "Check".into(),
                field: "HTTP",
            },
            "HTTP checks are not supported; use a TTL check",
        ),
        (
            json!({"Name": "w", "Checks": [{"TTL": "1s"}, {"id": "t", "tcp": "x:1"}]}),
            CatalogError::UnsupportedCheck {
                check: "t".into(),
                field: "TCP",
            },
            "check \"t\": TCP checks are not supported",
        ),
        (
            json!({"Name": "w", "Check": {"Notes": "n"}}),
            CatalogError::CheckMissingTtl {
                check: "service:w".into(),
            },
            "TTL must be set",
        ),
        (
            json!({"Name": "w", "Check": {"TTL": "soon"}}),
            CatalogError::InvalidTtl {
                check: "service:w".into(),
                value: "soon".into(),
                reason: "time: invalid duration \"soon\"".into(),
            },
            "invalid TTL \"soon\"",
        ),
        (
            json!({"Name": "w", "Check": {"TTL": "0s"}}),
            CatalogError::InvalidTtl {
                check: "service:w".into(),
                value: "0s".into(),
                reason: "must be greater than zero".into(),
            },
            "must be greater than zero",
        ),
        (
            json!({"Name": "w", "Check": {"TTL": "1s", "Status": "ok"}}),
            CatalogError::InvalidCheckStatus {
                check: "service:w".into(),
                value: "ok".into(),
            },
            "must be passing, warning or critical",
        ),
        (
            json!({"Name": "w", "Checks": [{"TTL": "1s", "CheckID": "a"}, {"TTL": "1s", "CheckID": "a"}]}),
            CatalogError::DuplicateCheckId { check: "a".into() },
            "duplicate check ID \"a\"",
        ),
        (
            json!({"Name": "w", "Connect": {"SidecarService": {}}}),
            CatalogError::UnsupportedField {
                field: "Connect.SidecarService",
                hint: "register the sidecar proxy as its own service of kind \"connect-proxy\"",
            },
            "Connect.SidecarService is not supported",
        ),
    ];
    for (input, expected, text) in cases {
        let err = decode(input.clone()).expect_err(&input.to_string());
        assert_eq!(err, expected, "{input}");
        assert!(err.to_string().contains(text), "{input}: {err}");
        let top: crate::Error = err.into();
        assert_eq!(top.kind(), crate::ErrorKind::InvalidParameter);
    }
}

#[test]
fn malformed_bodies_are_json_errors_naming_the_field() {
    let json_error = |bytes: &[u8]| match ServiceRegistration::from_json(bytes) {
        Err(CatalogError::Json { message }) => message,
        other => panic!("expected a JSON error, got {other:?}"),
    };
    assert!(json_error(b"{").contains("EOF"));
    assert_eq!(json_error(b"[1]"), "expected a JSON object");
    let m = json_error(br#"{"Name":"w","Tags":"a"}"#);
    assert!(m.starts_with("Tags: invalid type"), "{m}");
    let m = json_error(br#"{"Name":"w","Port":"80"}"#);
    assert!(m.starts_with("Port: invalid type"), "{m}");
    let m = json_error(br#"{"Name":"w","name":"v"}"#);
    assert!(m.contains("key given more than once"), "{m}");
    let m = json_error(br#"{"Name":"w","Proxy":{"Upstreams":[{"DestinationName":7}]}}"#);
    assert!(m.starts_with("Proxy.Upstreams[0].DestinationName"), "{m}");
}

#[test]
fn a_key_given_twice_names_the_field_at_any_depth() {
    let json_error = |value: Value| match decode(value) {
        Err(CatalogError::Json { message }) => message,
        other => panic!("expected a JSON error, got {other:?}"),
    };
    assert_eq!(
        json_error(json!({"Name": "w", "name": "v"})),
        "Name: key given more than once (keys are case-insensitive)"
    );
    assert_eq!(
        json_error(json!({"Name": "w", "Proxy": {"Upstreams": [
            {"DestinationName": "a", "destination_name": "b", "LocalBindPort": 1}]}})),
        "Proxy.Upstreams[0].DestinationName: key given more than once (keys are case-insensitive)"
    );
    assert_eq!(
        json_error(json!({"Name": "w", "Checks": [{"TTL": "1s", "ttl": "2s"}]})),
        "Checks[0].TTL: key given more than once (keys are case-insensitive)"
    );
}

/// Renames the keys of every object to `rename(key)`, except the keys of the maps whose keys
/// are data (`Meta`, `Config`).
fn rename_keys(value: Value, rename: &dyn Fn(&str) -> String) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .into_iter()
                .map(|(k, v)| {
                    let v = if k == "Meta" || k == "Config" {
                        v
                    } else {
                        rename_keys(v, rename)
                    };
                    (rename(&k), v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| rename_keys(v, rename)).collect())
        }
        other => other,
    }
}

fn snake_case(key: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() && previous_lower {
            out.push('_');
        }
        previous_lower = c.is_ascii_lowercase();
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Every field of a registration, at every depth, is read whatever the case of its key and in
/// snake_case: the decoder takes the field names from the structs, so there is no table of
/// them that a new field could be missing from.
#[test]
fn every_registration_field_is_read_in_any_case_and_in_snake_case() {
    let full = json!({
        "Kind": "connect-proxy", "ID": "web-proxy-1", "Name": "web-proxy", "Tags": ["a"],
        "Address": "10.0.0.9", "Port": 21000, "Meta": {"Owner": "team-a"},
        "Proxy": {
            "DestinationServiceName": "web", "DestinationServiceID": "web-1",
            "LocalServiceAddress": "127.0.0.2", "LocalServicePort": 8080,
            "Config": {"Protocol": "http"},
            "Upstreams": [{
                "DestinationType": "service", "DestinationNamespace": "default",
                "DestinationPartition": "default", "DestinationPeer": "peer-1",
                "DestinationName": "db", "Datacenter": "dc2", "LocalBindAddress": "127.0.0.3",
                "LocalBindPort": 9191, "Config": {"ConnectTimeoutMs": 500},
                "MeshGateway": {"Mode": "local"}
            }]
        },
        "Connect": {},
        "Check": {"CheckID": "c1", "Name": "ttl one", "TTL": "10s", "Status": "passing",
                  "Notes": "n1"},
        "Checks": [{"CheckID": "c2", "Name": "ttl two", "TTL": "20s", "Status": "warning",
                    "Notes": "n2"}]
    });
    let expected = decode(full.clone()).unwrap();
    // Nothing was dropped: what is read is written back unchanged.
    assert_eq!(serde_json::to_value(&expected).unwrap(), full);
    for rename in [
        &snake_case as &dyn Fn(&str) -> String,
        &|k: &str| k.to_ascii_lowercase(),
        &|k: &str| k.to_ascii_uppercase(),
    ] {
        let renamed = rename_keys(full.clone(), rename);
        assert_eq!(decode(renamed.clone()).unwrap(), expected, "{renamed}");
    }
}

#[test]
fn health_connect_returns_sidecars_and_native_services() {
    let c = sample();
    let web = c.health_connect("web", false);
    assert_eq!(
        ids(&web),
        [
            ("node1".to_owned(), "web-sidecar-proxy".to_owned()),
            ("node2".to_owned(), "web-native".to_owned())
        ]
    );
    assert_eq!(web[0].dial_address(), ("10.0.0.5", 21000), "node address");
    assert_eq!(web[1].dial_address(), ("10.1.1.1", 9090), "service address");
    assert_eq!(
        ids(&c.health_connect("db", false)),
        [("node2".to_owned(), "db-sidecar-proxy".to_owned())]
    );
    assert!(c.health_connect("nope", false).is_empty());
    // The plain service is not a Connect endpoint, but is a health/service result.
    assert_eq!(
        ids(&c.health_service("web", false)),
        [
            ("node1".to_owned(), "web".to_owned()),
            ("node2".to_owned(), "web-native".to_owned())
        ]
    );
}

#[test]
fn passing_filter_drops_entries_with_any_non_passing_check() {
    let mut c = sample();
    let mut svc_check = HealthCheck::node_check("node1", "sidecar-ttl", HealthStatus::Passing);
    svc_check.service_id = "web-sidecar-proxy".into();
    c.put_check(svc_check.clone());
    c.put_check(HealthCheck::node_check(
        "node1",
        "serfHealth",
        HealthStatus::Passing,
    ));
    c.put_check(HealthCheck::node_check(
        "node2",
        "serfHealth",
        HealthStatus::Warning,
    ));
    let all = c.health_connect("web", false);
    assert_eq!(all.len(), 2);
    let node1_checks: Vec<_> = all[0].checks.iter().map(|c| c.check_id.as_str()).collect();
    assert_eq!(node1_checks, ["serfHealth", "sidecar-ttl"]);
    assert_eq!(
        ids(&c.health_connect("web", true)),
        [("node1".to_owned(), "web-sidecar-proxy".to_owned())],
        "node2 is only warning, which is not passing"
    );
    svc_check.status = HealthStatus::Critical;
    c.put_check(svc_check);
    assert!(c.health_connect("web", true).is_empty());
    // The plain web service on node1 does not see the sidecar's check.
    assert_eq!(c.health_service("web", true).len(), 1);
}

#[test]
fn catalog_services_lists_names_with_merged_tags() {
    let mut c = sample();
    let mut r = ServiceRegistration::new("web", 8081);
    r.id = "web-2".into();
    r.tags = vec!["v2".into(), "blue".into()];
    c.put_service("node2", r.to_service());
    let mut r = ServiceRegistration::new("web", 8082);
    r.id = "web-3".into();
    r.tags = vec!["blue".into()];
    c.put_service("node2", r.to_service());
    let services = c.catalog_services();
    assert_eq!(services["web"], ["blue", "v2"]);
    assert!(services["db"].is_empty());
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        ["db", "db-sidecar-proxy", "web", "web-sidecar-proxy"]
    );
    let rows = c.catalog_service("db");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].node, "node2");
    assert_eq!(rows[0].address, "10.0.0.6");
    assert_eq!(rows[0].service_port, 5432);
    assert_eq!(c.catalog_connect("web").len(), 2);
}

#[test]
fn health_json_has_consuls_shape() {
    let c = sample();
    let entry = &c.health_connect("web", false)[0];
    let json = serde_json::to_value(entry).unwrap();
    assert_eq!(json["Node"]["Node"], "node1");
    assert_eq!(json["Node"]["Address"], "10.0.0.5");
    assert_eq!(json["Node"]["Datacenter"], "dc1");
    assert_eq!(json["Node"]["TaggedAddresses"]["lan"], "10.0.0.5");
    assert_eq!(json["Node"]["Meta"], json!({}));
    let s = &json["Service"];
    assert_eq!(s["Kind"], "connect-proxy");
    assert_eq!(s["ID"], "web-sidecar-proxy");
    assert_eq!(s["Service"], "web-sidecar-proxy");
    assert_eq!(s["Address"], "");
    assert_eq!(s["Port"], 21000);
    assert_eq!(
        s["Proxy"],
        json!({"DestinationServiceName": "web", "DestinationServiceID": "web",
               "LocalServicePort": 8080, "Upstreams": []})
    );
    assert_eq!(s["Connect"], json!({}));
    assert_eq!(json["Checks"], json!([]));
    let native = serde_json::to_value(&c.health_connect("web", false)[1]).unwrap();
    assert_eq!(native["Service"]["Kind"], "");
    assert_eq!(native["Service"]["Connect"], json!({"Native": true}));
    assert!(native["Service"].get("Proxy").is_none());
    // What we write, we read back.
    let back: ServiceEntry = serde_json::from_value(json).unwrap();
    assert_eq!(&back, entry);

    let check = HealthCheck::node_check("node1", "serfHealth", HealthStatus::Passing);
    let json = serde_json::to_value(&check).unwrap();
    assert_eq!(json["CheckID"], "serfHealth");
    assert_eq!(json["Status"], "passing");
    assert_eq!(json["ServiceID"], "");
    let row = serde_json::to_value(&c.catalog_service("db")[0]).unwrap();
    for key in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceMeta",
        "ServicePort",
        "ServiceConnect",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(row.get(key).is_some(), "{key}");
    }
}

#[test]
fn service_kinds_round_trip_and_unknown_kinds_are_refused() {
    for kind in ServiceKind::ALL {
        let json = serde_json::to_value(kind).unwrap();
        assert_eq!(json, kind.as_str());
        assert_eq!(serde_json::from_value::<ServiceKind>(json).unwrap(), *kind);
    }
    assert!(serde_json::from_value::<ServiceKind>(json!("Connect-Proxy")).is_err());
}
