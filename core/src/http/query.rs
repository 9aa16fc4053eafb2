//! Consul's common request conventions (Consul API docs): the ACL token, datacenter, blocking
//! `index`/`wait`, consistency flags, and the response headers of read endpoints.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use crate::duration::parse_go_duration;
use crate::{Error, ErrorKind};

/// Longest blocking wait a client may ask for.
pub(crate) const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
/// Blocking wait when `?wait` is absent.
pub(crate) const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);

/// The parsed query string, multi-valued (`?name=web&name=db`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string.
    pub(crate) fn parse(query: Option<&str>) -> Params {
        Params(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether `key` is present (flags such as `?stale` carry no value).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// A flag that is set when present with no value or with a true value (`?pem`, `?pem=true`).
    pub(crate) fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| matches!(v, "" | "1" | "true" | "t" | "True" | "TRUE"))
    }
}

/// What every read endpoint takes.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct QueryOptions {
    /// The ACL token, if the request carried one.
    pub(crate) token: Option<String>,
    /// `?dc=`.
    pub(crate) datacenter: Option<String>,
    /// `?index=`: block until the result's index exceeds this.
    pub(crate) min_index: u64,
    /// `?wait=`, capped at ten minutes; the default when blocking without it.
    pub(crate) wait: Duration,
    /// `?filter=`.
    pub(crate) filter: Option<String>,
    /// `?stale`.
    pub(crate) stale: bool,
    /// `?consistent`.
    pub(crate) consistent: bool,
    /// `?cached`.
    pub(crate) cached: bool,
    /// `?hash=`: block until the result's content hash differs (hash-based blocking, Consul
    /// API docs, Agent Service).
    pub(crate) hash: Option<String>,
}

impl std::fmt::Debug for QueryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("min_index", &self.min_index)
            .field("wait", &self.wait)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

fn bad(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidParameter, msg)
}

impl QueryOptions {
    /// Reads the options of one request, with Consul's 400 texts on bad input.
    pub(crate) fn from_request(
        headers: &HeaderMap,
        params: &Params,
    ) -> Result<QueryOptions, Error> {
        let mut o = QueryOptions {
            token: token(headers, params),
            datacenter: params
                .get("dc")
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            filter: params
                .get("filter")
                .filter(|f| !f.is_empty())
                .map(str::to_owned),
            stale: params.has("stale"),
            consistent: params.has("consistent"),
            cached: params.has("cached"),
            hash: params
                .get("hash")
                .filter(|h| !h.is_empty())
                .map(str::to_owned),
            wait: DEFAULT_QUERY_TIME,
            min_index: 0,
        };
        if let Some(index) = params.get("index") {
            o.min_index = index.parse().map_err(|_| bad("Invalid index"))?;
        }
        if let Some(wait) = params.get("wait") {
            let d = parse_go_duration(wait).map_err(|_| bad("Invalid wait time"))?;
            o.wait = d.min(MAX_QUERY_TIME);
        }
        if o.stale && o.consistent {
            return Err(bad(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        if o.cached && o.consistent {
            return Err(bad(
                "Cannot specify ?cached with ?consistent, conflicting semantics.",
            ));
        }
        Ok(o)
    }

    /// The wait to block for, with Consul's random jitter of up to `wait / 16` so that many
    /// clients do not return at once.
    pub(crate) fn wait_with_jitter(&self) -> Duration {
        let jitter = self.wait / 16;
        self.wait + jitter.mul_f64(rand::random::<f64>())
    }
}

/// The request's ACL token: `?token=` wins, then `X-Consul-Token`, then
/// `Authorization: Bearer <token>` (scheme case-insensitive).
pub(crate) fn token(headers: &HeaderMap, params: &Params) -> Option<String> {
    if let Some(t) = params.get("token").filter(|t| !t.is_empty()) {
        return Some(t.to_owned());
    }
    if let Some(t) = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_owned());
    }
    let auth = headers.get("authorization")?.to_str().ok()?.trim();
    let mut parts = auth.split_whitespace();
    let scheme = parts.next()?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    parts.next().map(str::to_owned)
}

/// Consul's headers for a read at `index` (never 0: 0 is sent as 1).
pub(crate) fn index_headers(index: u64) -> [(&'static str, HeaderValue); 3] {
    [
        ("x-consul-index", HeaderValue::from(index.max(1))),
        ("x-consul-knownleader", HeaderValue::from_static("true")),
        ("x-consul-lastcontact", HeaderValue::from_static("0")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str, headers: &[(&str, &str)]) -> Result<QueryOptions, Error> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        QueryOptions::from_request(&h, &Params::parse(Some(q)))
    }

    #[test]
    fn token_precedence_is_query_then_header_then_bearer() {
        assert_eq!(
            opts(
                "token=q",
                &[("x-consul-token", "h"), ("authorization", "Bearer b")]
            )
            .unwrap()
            .token
            .as_deref(),
            Some("q")
        );
        assert_eq!(
            opts(
                "",
                &[("x-consul-token", "h"), ("authorization", "Bearer b")]
            )
            .unwrap()
            .token
            .as_deref(),
            Some("h")
        );
        assert_eq!(
            opts("", &[("authorization", "bEaReR   b  extra")])
                .unwrap()
                .token
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            opts("", &[("authorization", "Basic abc")]).unwrap().token,
            None
        );
        assert_eq!(opts("", &[]).unwrap().token, None);
    }

    #[test]
    fn blocking_params_follow_consul() {
        let o = opts(
            "index=42&wait=30s&dc=dc2&filter=Action%20%3D%3D%20allow",
            &[],
        )
        .unwrap();
        assert_eq!(
            (o.min_index, o.wait, o.datacenter.as_deref()),
            (42, Duration::from_secs(30), Some("dc2"))
        );
        assert_eq!(o.filter.as_deref(), Some("Action == allow"));
        assert_eq!(opts("wait=1h", &[]).unwrap().wait, MAX_QUERY_TIME);
        assert_eq!(opts("", &[]).unwrap().wait, DEFAULT_QUERY_TIME);
        let j = opts("wait=16s", &[]).unwrap().wait_with_jitter();
        assert!(j >= Duration::from_secs(16) && j <= Duration::from_secs(17));
    }

    #[test]
    fn bad_params_get_consuls_400_texts() {
        assert_eq!(
            opts("index=abc", &[]).unwrap_err().to_string(),
            "Invalid index"
        );
        assert_eq!(
            opts("wait=soon", &[]).unwrap_err().to_string(),
            "Invalid wait time"
        );
        assert!(
            opts("stale&consistent", &[])
                .unwrap_err()
                .to_string()
                .starts_with("Cannot specify ?stale")
        );
        assert!(
            opts("cached&consistent", &[])
                .unwrap_err()
                .to_string()
                .starts_with("Cannot specify ?cached")
        );
        assert_eq!(
            opts("index=-1", &[]).unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
    }

    #[test]
    fn index_header_is_never_zero_and_token_is_redacted() {
        assert_eq!(index_headers(0)[0].1, HeaderValue::from(1u64));
        assert_eq!(index_headers(7)[0].1, HeaderValue::from(7u64));
        let o = opts("token=secret-123", &[]).unwrap();
        assert!(!format!("{o:?}").contains("secret-123"));
    }
}
