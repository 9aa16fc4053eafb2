//! String → [`SpiffeId`], following Consul's `ParseCertURI` (ARCHITECTURE.md, spiffe).
//!
//! Consul runs Go's URL parser and then regexes over the path. Here the URI is split by hand and
//! the path matched segment by segment, which is equivalent because every regex segment is
//! `[^/]+`: matching the raw (still escaped) path and unescaping each captured segment on its own
//! is what keeps `%2F` inside a name. The hand split is stricter than Go's URL parser where Go is
//! merely lenient (whitespace, user info, port, query, fragment, empty host), since none of those
//! can appear in an identity Consul issues.

use super::id::{AgentId, DEFAULT_PARTITION, MeshGatewayId, ServerId, ServiceId, SigningId};
use super::trust_domain::is_trust_domain_byte;
use super::{SpiffeId, SpiffeIdError, UnescapeError};

/// The two parts of a `spiffe://host/path` URI that identities are made of.
struct RawUri<'a> {
    host: &'a str,
    /// Still percent-encoded; empty or starting with `/`.
    path: &'a str,
}

pub(super) fn parse(input: &str) -> Result<SpiffeId, SpiffeIdError> {
    let RawUri { host, path } = split_uri(input)?;

    if let Some(id) = match_path(host, path)? {
        return Ok(id);
    }

    // A non-empty raw path never decodes to an empty one, so testing the raw path is testing the
    // decoded path as Consul's parser does.
    if path.is_empty()
        && let Some((cluster_id, domain)) = host.split_once('.')
        && !cluster_id.is_empty()
    {
        return Ok(SpiffeId::Signing(SigningId {
            cluster_id: cluster_id.to_owned(),
            domain: domain.to_owned(),
        }));
    }

    Err(SpiffeIdError::NotExpectedFormat {
        uri: input.to_owned(),
    })
}

fn split_uri(input: &str) -> Result<RawUri<'_>, SpiffeIdError> {
    let owned = || input.to_owned();

    // Checked first so that every later message can show the input without hiding anything.
    // Byte by byte while the input is ASCII, as every ID a peer presents is: decoding
    // characters made this check the largest part of parsing (BENCHMARKS.md, issue 18).
    let refused = |c: char| c.is_whitespace() || c.is_control();
    let bad = if input.is_ascii() {
        input.bytes().map(char::from).find(|&c| refused(c))
    } else {
        input.chars().find(|&c| refused(c))
    };
    if let Some(ch) = bad {
        return Err(SpiffeIdError::InvalidCharacter { ch, input: owned() });
    }

    let (scheme, rest) = match input.split_once(':') {
        Some((scheme, rest)) if is_scheme(scheme) => (scheme, rest),
        _ => return Err(SpiffeIdError::MissingScheme { input: owned() }),
    };
    // URI schemes are case-insensitive and Go's URL parser lowercases them before Consul
    // compares, so `SPIFFE://` is accepted as Consul accepts it.
    if !scheme.eq_ignore_ascii_case("spiffe") {
        return Err(SpiffeIdError::WrongScheme {
            scheme: scheme.to_owned(),
            input: owned(),
        });
    }

    let Some(rest) = rest.strip_prefix("//") else {
        return Err(SpiffeIdError::MissingAuthority { input: owned() });
    };
    let authority_end = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (host, rest) = rest.split_at(authority_end);

    if host.contains('@') {
        return Err(SpiffeIdError::UserInfo { input: owned() });
    }
    // A bracketed IPv6 literal holds ':' too; it is no trust domain, not a port.
    if host.contains(':') && !host.starts_with('[') {
        return Err(SpiffeIdError::Port { input: owned() });
    }
    if host.is_empty() {
        return Err(SpiffeIdError::EmptyHost { input: owned() });
    }
    if !host.bytes().all(is_trust_domain_byte) {
        return Err(SpiffeIdError::InvalidHost {
            host: host.to_owned(),
            input: owned(),
        });
    }

    if rest.bytes().any(|b| matches!(b, b'?' | b'#')) {
        return Err(SpiffeIdError::QueryOrFragment { input: owned() });
    }

    Ok(RawUri { host, path: rest })
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Matches the path against the service, agent, mesh gateway and server grammars, in Consul's
/// order. `Ok(None)` means no grammar matched; an error means one matched but a captured
/// segment did not unescape.
fn match_path(host: &str, path: &str) -> Result<Option<SpiffeId>, SpiffeIdError> {
    let Some(path) = path.strip_prefix('/') else {
        return Ok(None);
    };
    // Every grammar segment is a literal or `[^/]+`, so an empty segment (trailing slash, `//`,
    // the path "/") can never match; nor can more than eight segments, the longest form
    // (`ap/<p>/ns/<n>/dc/<d>/svc/<s>`), so they fit on the stack.
    let mut segments = [""; 8];
    let mut count = 0;
    for segment in path.split('/') {
        if segment.is_empty() || count == segments.len() {
            return Ok(None);
        }
        segments[count] = segment;
        count += 1;
    }

    // The optional `/ap/<partition>` prefix. No unprefixed grammar starts with `ap`, so taking
    // the prefix whenever it is there never hides a match.
    let (raw_partition, tail) = match &segments[..count] {
        ["ap", partition, tail @ ..] => (Some(*partition), tail),
        all => (None, all),
    };
    let partition = || -> Result<String, SpiffeIdError> {
        match raw_partition {
            Some(raw) => unescape(raw).map_err(|reason| SpiffeIdError::InvalidPartition {
                segment: raw.to_owned(),
                reason,
            }),
            None => Ok(DEFAULT_PARTITION.to_owned()),
        }
    };

    let id = match tail {
        ["ns", namespace, "dc", datacenter, "svc", service] => SpiffeId::Service(ServiceId {
            host: host.to_owned(),
            partition: partition()?,
            namespace: field(namespace, invalid_namespace)?,
            datacenter: field(datacenter, invalid_datacenter)?,
            service: field(service, invalid_service)?,
        }),
        ["agent", "client", "dc", datacenter, "id", agent] => SpiffeId::Agent(AgentId {
            host: host.to_owned(),
            partition: partition()?,
            datacenter: field(datacenter, invalid_datacenter)?,
            agent: field(agent, invalid_node)?,
        }),
        ["gateway", "mesh", "dc", datacenter] => SpiffeId::MeshGateway(MeshGatewayId {
            host: host.to_owned(),
            partition: partition()?,
            datacenter: field(datacenter, invalid_datacenter)?,
        }),
        // Server IDs never carry a partition.
        ["agent", "server", "dc", datacenter] if raw_partition.is_none() => {
            SpiffeId::Server(ServerId {
                host: host.to_owned(),
                datacenter: field(datacenter, invalid_datacenter)?,
            })
        }
        _ => return Ok(None),
    };
    Ok(Some(id))
}

type SegmentError = fn(String, UnescapeError) -> SpiffeIdError;

fn field(raw: &str, error: SegmentError) -> Result<String, SpiffeIdError> {
    unescape(raw).map_err(|reason| error(raw.to_owned(), reason))
}

fn invalid_namespace(segment: String, reason: UnescapeError) -> SpiffeIdError {
    SpiffeIdError::InvalidNamespace { segment, reason }
}

fn invalid_datacenter(segment: String, reason: UnescapeError) -> SpiffeIdError {
    SpiffeIdError::InvalidDatacenter { segment, reason }
}

fn invalid_service(segment: String, reason: UnescapeError) -> SpiffeIdError {
    SpiffeIdError::InvalidService { segment, reason }
}

fn invalid_node(segment: String, reason: UnescapeError) -> SpiffeIdError {
    SpiffeIdError::InvalidNode { segment, reason }
}

/// Go's `url.PathUnescape`, restricted to UTF-8 results: every `%` must start a two-hex-digit
/// escape (the `percent-encoding` crate would pass a bad one through silently).
fn unescape(raw: &str) -> Result<String, UnescapeError> {
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + offset;
        let escape = bytes.get(at + 1..at + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            // Like Go, quote the `%` and at most the two characters after it.
            let shown: String = raw[at..].chars().take(3).collect();
            return Err(UnescapeError::InvalidEscape(shown));
        }
        i = at + 3;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| UnescapeError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind};

    fn service(host: &str, partition: &str, namespace: &str, dc: &str, svc: &str) -> SpiffeId {
        SpiffeId::Service(ServiceId {
            host: host.into(),
            partition: partition.into(),
            namespace: namespace.into(),
            datacenter: dc.into(),
            service: svc.into(),
        })
    }

    fn agent(partition: &str, dc: &str, agent: &str) -> SpiffeId {
        SpiffeId::Agent(AgentId {
            host: "1234.consul".into(),
            partition: partition.into(),
            datacenter: dc.into(),
            agent: agent.into(),
        })
    }

    fn mesh_gateway(partition: &str, dc: &str) -> SpiffeId {
        SpiffeId::MeshGateway(MeshGatewayId {
            host: "1234.consul".into(),
            partition: partition.into(),
            datacenter: dc.into(),
        })
    }

    /// Asserts the exact error, its kind through the top-level `Error`, and that the message
    /// names the input.
    fn rejects(input: &str, expected: SpiffeIdError, kind: ErrorKind) {
        let err = SpiffeId::parse(input).unwrap_err();
        assert_eq!(err, expected, "{input:?}");
        let message = err.to_string();
        let top = Error::from(err);
        assert_eq!(top.kind(), kind, "{input:?}");
        assert_eq!(top.to_string(), message);
    }

    fn not_expected(input: &str) {
        rejects(
            input,
            SpiffeIdError::NotExpectedFormat { uri: input.into() },
            ErrorKind::InvalidSpiffeId,
        );
        assert_eq!(
            SpiffeId::parse(input).unwrap_err().to_string(),
            format!("SPIFFE ID is not in the expected format: {input}")
        );
    }

    // Consul's parse vectors (ARCHITECTURE.md, spiffe), row by row.

    #[test]
    fn vector_http_scheme() {
        let err = SpiffeId::parse("http://google.com/").unwrap_err();
        assert!(err.to_string().contains("scheme"));
        assert!(
            err.to_string()
                .contains("SPIFFE ID must have 'spiffe' scheme")
        );
        rejects(
            "http://google.com/",
            SpiffeIdError::WrongScheme {
                scheme: "http".into(),
                input: "http://google.com/".into(),
            },
            ErrorKind::InvalidSpiffeId,
        );
    }

    #[test]
    fn vector_service_default_partition() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/ns/default/dc/dc01/svc/web").unwrap(),
            service("1234.consul", "default", "default", "dc01", "web")
        );
    }

    #[test]
    fn vector_service_partition() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/ap/bizdev/ns/default/dc/dc01/svc/web").unwrap(),
            service("1234.consul", "bizdev", "default", "dc01", "web")
        );
    }

    #[test]
    fn vector_agent_default_partition() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/agent/client/dc/dc1/id/uuid").unwrap(),
            agent("default", "dc1", "uuid")
        );
    }

    #[test]
    fn vector_agent_partition() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/ap/bizdev/agent/client/dc/dc1/id/uuid").unwrap(),
            agent("bizdev", "dc1", "uuid")
        );
    }

    #[test]
    fn vector_server() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/agent/server/dc/dc1").unwrap(),
            SpiffeId::Server(ServerId {
                host: "1234.consul".into(),
                datacenter: "dc1".into(),
            })
        );
    }

    #[test]
    fn vector_mesh_gateway_default_partition() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/gateway/mesh/dc/dc1").unwrap(),
            mesh_gateway("default", "dc1")
        );
    }

    #[test]
    fn vector_mesh_gateway_partition() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/ap/bizdev/gateway/mesh/dc/dc1").unwrap(),
            mesh_gateway("bizdev", "dc1")
        );
    }

    #[test]
    fn vector_service_escaped_segments() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul/ns/foo%2Fbar/dc/bar%2Fbaz/svc/baz%2Fqux")
                .unwrap(),
            service("1234.consul", "default", "foo/bar", "bar/baz", "baz/qux")
        );
    }

    #[test]
    fn vector_service_escaped_segments_with_partition() {
        assert_eq!(
            SpiffeId::parse(
                "spiffe://1234.consul/ap/biz%2Fdev/ns/foo%2Fbar/dc/bar%2Fbaz/svc/baz%2Fqux"
            )
            .unwrap(),
            service("1234.consul", "biz/dev", "foo/bar", "bar/baz", "baz/qux")
        );
    }

    #[test]
    fn vector_signing() {
        assert_eq!(
            SpiffeId::parse("spiffe://1234.consul").unwrap(),
            SpiffeId::Signing(SigningId {
                cluster_id: "1234".into(),
                domain: "consul".into(),
            })
        );
    }

    // Further accepted forms.

    #[test]
    fn host_case_is_preserved() {
        let id = SpiffeId::parse("spiffe://1234.CONsuL/ns/defAUlt/dc/dc1/svc/WEB").unwrap();
        assert_eq!(
            id,
            service("1234.CONsuL", "default", "defAUlt", "dc1", "WEB")
        );
        let id = SpiffeId::parse("spiffe://ABC.Consul").unwrap();
        assert_eq!(
            id.as_signing(),
            Some(&SigningId {
                cluster_id: "ABC".into(),
                domain: "Consul".into()
            })
        );
    }

    #[test]
    fn scheme_is_case_insensitive_like_go() {
        assert_eq!(
            SpiffeId::parse("SPIFFE://1234.consul/ns/default/dc/dc1/svc/web").unwrap(),
            service("1234.consul", "default", "default", "dc1", "web")
        );
    }

    #[test]
    fn signing_domain_is_everything_after_the_first_dot() {
        let id = SpiffeId::parse("spiffe://abc.example.consul").unwrap();
        assert_eq!(
            id,
            SpiffeId::Signing(SigningId {
                cluster_id: "abc".into(),
                domain: "example.consul".into()
            })
        );
    }

    #[test]
    fn escapes_of_ordinary_characters_decode() {
        let id = SpiffeId::parse("spiffe://1234.consul/ns/default/dc/dc%31/svc/w%65b").unwrap();
        assert_eq!(
            id,
            service("1234.consul", "default", "default", "dc1", "web")
        );
        let id = SpiffeId::parse("spiffe://1234.consul/ns/default/dc/dc1/svc/w%C3%A9b").unwrap();
        assert_eq!(id.as_service().unwrap().service, "wéb");
        let id = SpiffeId::parse("spiffe://1234.consul/ns/default/dc/dc1/svc/wéb").unwrap();
        assert_eq!(id.as_service().unwrap().service, "wéb");
        let id = SpiffeId::parse("spiffe://1234.consul/ns/default/dc/dc1/svc/a+b").unwrap();
        assert_eq!(
            id.as_service().unwrap().service,
            "a+b",
            "'+' is not a space in a path"
        );
        let id = SpiffeId::parse("spiffe://1234.consul/ap/ap/ns/ns/dc/dc/svc/svc").unwrap();
        assert_eq!(id, service("1234.consul", "ap", "ns", "dc", "svc"));
    }

    #[test]
    fn agent_segments_unescape() {
        let id = SpiffeId::parse("spiffe://1234.consul/ap/a%2Fb/agent/client/dc/d%2Fc/id/n%2Fo")
            .unwrap();
        assert_eq!(id, agent("a/b", "d/c", "n/o"));
        let id = SpiffeId::parse("spiffe://1234.consul/agent/server/dc/d%2Fc").unwrap();
        assert_eq!(id.as_server().unwrap().datacenter, "d/c");
        let id = SpiffeId::parse("spiffe://1234.consul/ap/a%2Fb/gateway/mesh/dc/d%2Fc").unwrap();
        assert_eq!(id, mesh_gateway("a/b", "d/c"));
    }

    // Round trips.

    const TRICKY: &[&str] = &[
        "web",
        "a/b",
        "a%b",
        "%2F",
        "a b",
        "a?b",
        "a#b",
        "wéb",
        "日本",
        "a+b",
        "a:b@c",
        "~x.y-z_",
        "!*'()",
        "..",
        ".",
        "\u{1F600}",
        "a\tb",
    ];

    #[test]
    fn round_trip_services() {
        for name in TRICKY {
            for partition in ["default", "bizdev", "biz/dev", name] {
                let id = service("1234.consul", partition, "default", name, name);
                let uri = id.uri();
                let back = SpiffeId::parse(&uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
                let mut expected = id;
                if let SpiffeId::Service(s) = &mut expected {
                    s.partition = s.partition.to_lowercase();
                }
                assert_eq!(back, expected, "{uri}");
                assert_eq!(back.uri(), uri);
            }
        }
    }

    #[test]
    fn round_trip_other_kinds() {
        for name in TRICKY {
            for id in [
                agent("default", name, name),
                mesh_gateway("default", name),
                SpiffeId::Server(ServerId {
                    host: "1234.consul".into(),
                    datacenter: (*name).into(),
                }),
            ] {
                let uri = id.uri();
                assert_eq!(SpiffeId::parse(&uri).unwrap(), id, "{uri}");
            }
        }
        let signing = SpiffeId::Signing(SigningId::new("11111111-2222-3333-4444-555555555555"));
        assert_eq!(SpiffeId::parse(&signing.uri()).unwrap(), signing);
    }

    #[test]
    fn round_trip_from_string() {
        for uri in [
            "spiffe://1234.consul/ns/default/dc/dc01/svc/web",
            "spiffe://1234.consul/ap/bizdev/ns/default/dc/dc01/svc/web",
            "spiffe://1234.consul/agent/client/dc/dc1/id/uuid",
            "spiffe://1234.consul/agent/server/dc/dc1",
            "spiffe://1234.consul/gateway/mesh/dc/dc1",
            "spiffe://1234.consul",
            "spiffe://1234.consul/ap/biz%2Fdev/ns/default/dc/bar%2Fbaz/svc/baz%2Fqux",
        ] {
            let id: SpiffeId = uri.parse().unwrap();
            assert_eq!(id.to_string(), uri);
            assert_eq!(SpiffeId::try_from(uri).unwrap(), id);
        }
    }

    // Rejections.

    #[test]
    fn rejects_trailing_slash() {
        not_expected("spiffe://1234.consul/ns/default/dc/dc1/svc/web/");
        not_expected("spiffe://1234.consul/agent/server/dc/dc1/");
        not_expected("spiffe://1234.consul/gateway/mesh/dc/dc1/");
    }

    #[test]
    fn rejects_root_path() {
        not_expected("spiffe://1234.consul/");
    }

    #[test]
    fn rejects_extra_and_missing_segments() {
        not_expected("spiffe://1234.consul/ns/default/dc/dc1/svc/web/extra");
        not_expected("spiffe://1234.consul/extra/ns/default/dc/dc1/svc/web");
        not_expected("spiffe://1234.consul/ns/default/dc/dc1/svc");
        not_expected("spiffe://1234.consul/ns/default/dc/dc1");
        not_expected("spiffe://1234.consul/ap/bizdev");
        not_expected("spiffe://1234.consul/ap/bizdev/ap/bizdev/ns/default/dc/dc1/svc/web");
        not_expected("spiffe://1234.consul/ns//dc/dc1/svc/web");
        not_expected("spiffe://1234.consul//ns/default/dc/dc1/svc/web");
        not_expected("spiffe://1234.consul/agent/client/dc/dc1/id");
        not_expected("spiffe://1234.consul/agent/client/dc/dc1/id/uuid/more");
    }

    #[test]
    fn rejects_server_with_partition() {
        not_expected("spiffe://1234.consul/ap/bizdev/agent/server/dc/dc1");
    }

    #[test]
    fn rejects_legacy_agent_path() {
        not_expected("spiffe://1234.consul/agent/node1");
    }

    #[test]
    fn rejects_escaped_literals() {
        // Literal segments are matched raw, so an escaped keyword is not the keyword.
        not_expected("spiffe://1234.consul/n%73/default/dc/dc1/svc/web");
        not_expected("spiffe://1234.consul/ns/default/dc/dc1/svc%2Fweb");
    }

    #[test]
    fn rejects_host_without_dot_or_with_leading_dot() {
        not_expected("spiffe://consul");
        not_expected("spiffe://.consul");
    }

    #[test]
    fn rejects_empty_input() {
        rejects(
            "",
            SpiffeIdError::MissingScheme { input: "".into() },
            ErrorKind::InvalidSpiffeId,
        );
        let message = SpiffeId::parse("").unwrap_err().to_string();
        assert!(
            message.contains("SPIFFE ID must have 'spiffe' scheme"),
            "{message}"
        );
    }

    #[test]
    fn rejects_missing_scheme() {
        for input in [
            "1234.consul/ns/default/dc/dc1/svc/web",
            "//1234.consul/ns/default/dc/dc1/svc/web",
            ":foo",
            "1spiffe://1234.consul",
            "/ns/a:b",
        ] {
            rejects(
                input,
                SpiffeIdError::MissingScheme {
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_other_schemes() {
        for (input, scheme) in [
            ("https://1234.consul/ns/default/dc/dc1/svc/web", "https"),
            ("spiffe2://1234.consul", "spiffe2"),
            ("urn:spiffe:1234", "urn"),
        ] {
            rejects(
                input,
                SpiffeIdError::WrongScheme {
                    scheme: scheme.into(),
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_missing_authority() {
        for input in [
            "spiffe:1234.consul",
            "spiffe:/1234.consul/ns/default/dc/dc1/svc/web",
        ] {
            rejects(
                input,
                SpiffeIdError::MissingAuthority {
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_empty_host() {
        for input in ["spiffe://", "spiffe:///ns/default/dc/dc1/svc/web"] {
            rejects(
                input,
                SpiffeIdError::EmptyHost {
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_whitespace_and_control_characters() {
        for (input, ch) in [
            (" spiffe://1234.consul", ' '),
            ("spiffe://1234.consul/ns/default/dc/dc1/svc/web ", ' '),
            ("spiffe://1234.consul/ns/default/dc/dc1/svc/a b", ' '),
            ("spiffe://1234.consul/ns/default/dc/dc1/svc/web\n", '\n'),
            ("spiffe://1234.consul\t", '\t'),
            ("spiffe://1234.consul/ns/default/dc/dc1/svc/w\0b", '\0'),
            (
                "spiffe://1234.consul/ns/default/dc/dc1/svc/w\u{a0}b",
                '\u{a0}',
            ),
        ] {
            rejects(
                input,
                SpiffeIdError::InvalidCharacter {
                    ch,
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_user_info() {
        for input in [
            "spiffe://user@1234.consul/agent/server/dc/dc1",
            "spiffe://u:p@1234.consul",
        ] {
            rejects(
                input,
                SpiffeIdError::UserInfo {
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_port() {
        for input in [
            "spiffe://1234.consul:8443/agent/server/dc/dc1",
            "spiffe://1234.consul:",
        ] {
            rejects(
                input,
                SpiffeIdError::Port {
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_query_and_fragment() {
        for input in [
            "spiffe://1234.consul/ns/default/dc/dc1/svc/web?x=1",
            "spiffe://1234.consul/ns/default/dc/dc1/svc/web#frag",
            "spiffe://1234.consul?x",
            "spiffe://1234.consul#",
        ] {
            rejects(
                input,
                SpiffeIdError::QueryOrFragment {
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn rejects_hosts_outside_the_trust_domain_alphabet() {
        for (input, host) in [
            ("spiffe://1234%2Econsul", "1234%2Econsul"),
            ("spiffe://[::1]/agent/server/dc/dc1", "[::1]"),
            ("spiffe://wéb.consul", "wéb.consul"),
            ("spiffe://a!b.consul", "a!b.consul"),
        ] {
            rejects(
                input,
                SpiffeIdError::InvalidHost {
                    host: host.into(),
                    input: input.into(),
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    fn bad_escape(escape: &str) -> UnescapeError {
        UnescapeError::InvalidEscape(escape.into())
    }

    #[test]
    fn rejects_bad_escape_in_each_segment() {
        let cases = [
            (
                "spiffe://1234.consul/ap/biz%zz/ns/default/dc/dc1/svc/web",
                SpiffeIdError::InvalidPartition {
                    segment: "biz%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid admin partition: ",
            ),
            (
                "spiffe://1234.consul/ns/foo%zz/dc/dc1/svc/web",
                SpiffeIdError::InvalidNamespace {
                    segment: "foo%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid namespace: ",
            ),
            (
                "spiffe://1234.consul/ns/default/dc/dc%zz/svc/web",
                SpiffeIdError::InvalidDatacenter {
                    segment: "dc%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid datacenter: ",
            ),
            (
                "spiffe://1234.consul/ns/default/dc/dc1/svc/web%zz",
                SpiffeIdError::InvalidService {
                    segment: "web%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid service: ",
            ),
            (
                "spiffe://1234.consul/agent/client/dc/dc1/id/uu%zzid",
                SpiffeIdError::InvalidNode {
                    segment: "uu%zzid".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid node: ",
            ),
            (
                "spiffe://1234.consul/ap/%zz/agent/client/dc/dc1/id/uuid",
                SpiffeIdError::InvalidPartition {
                    segment: "%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid admin partition: ",
            ),
            (
                "spiffe://1234.consul/agent/client/dc/%zz/id/uuid",
                SpiffeIdError::InvalidDatacenter {
                    segment: "%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid datacenter: ",
            ),
            (
                "spiffe://1234.consul/ap/%zz/gateway/mesh/dc/dc1",
                SpiffeIdError::InvalidPartition {
                    segment: "%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid admin partition: ",
            ),
            (
                "spiffe://1234.consul/gateway/mesh/dc/%zz",
                SpiffeIdError::InvalidDatacenter {
                    segment: "%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid datacenter: ",
            ),
            (
                "spiffe://1234.consul/agent/server/dc/%zz",
                SpiffeIdError::InvalidDatacenter {
                    segment: "%zz".into(),
                    reason: bad_escape("%zz"),
                },
                "Invalid datacenter: ",
            ),
        ];
        for (input, expected, prefix) in cases {
            let message = expected.to_string();
            assert!(message.starts_with(prefix), "{message}");
            assert!(message.contains(r#"invalid URL escape "%zz""#), "{message}");
            rejects(input, expected, ErrorKind::InvalidSpiffeId);
        }
    }

    #[test]
    fn segments_are_checked_left_to_right() {
        // Two bad segments: the partition is reported, as in Consul.
        let err = SpiffeId::parse("spiffe://1234.consul/ap/%zz/ns/default/dc/dc1/svc/%yy");
        assert!(matches!(err, Err(SpiffeIdError::InvalidPartition { .. })));
        let err = SpiffeId::parse("spiffe://1234.consul/ns/default/dc/%zz/svc/%yy");
        assert!(matches!(err, Err(SpiffeIdError::InvalidDatacenter { .. })));
    }

    #[test]
    fn rejects_truncated_and_non_utf8_escapes() {
        for (segment, reason) in [
            ("web%", bad_escape("%")),
            ("web%2", bad_escape("%2")),
            ("%g0web", bad_escape("%g0")),
            ("%2%41", bad_escape("%2%")),
            ("w%ffb", UnescapeError::NotUtf8),
            ("%C3", UnescapeError::NotUtf8),
        ] {
            let input = format!("spiffe://1234.consul/ns/default/dc/dc1/svc/{segment}");
            rejects(
                &input,
                SpiffeIdError::InvalidService {
                    segment: segment.into(),
                    reason,
                },
                ErrorKind::InvalidSpiffeId,
            );
        }
    }

    #[test]
    fn bad_escape_in_an_unmatched_path_is_a_format_error() {
        not_expected("spiffe://1234.consul/foo/%zz");
    }

    #[test]
    fn unescape_matches_go_path_unescape() {
        assert_eq!(unescape("plain").unwrap(), "plain");
        assert_eq!(unescape("a%2Fb%2fc").unwrap(), "a/b/c");
        assert_eq!(unescape("%25").unwrap(), "%");
        assert_eq!(unescape("a+b").unwrap(), "a+b");
        assert_eq!(unescape("%zz"), Err(bad_escape("%zz")));
        assert_eq!(unescape("é%z"), Err(bad_escape("%z")));
        assert_eq!(unescape("%é"), Err(bad_escape("%é")));
    }
}
