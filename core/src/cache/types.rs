//! The contract between the cache and the things it caches.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long an entry lives after its last Get unless the type says otherwise (the "3 days"
/// of Consul docs: Agent Caching).
pub const DEFAULT_LAST_GET_TTL: Duration = Duration::from_secs(72 * 60 * 60);

/// The server-side wait of a blocking fetch when the type does not set one (ARCHITECTURE.md,
/// cache).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// One kind of cached data (CA roots, a leaf certificate, an intention match, …) and the
/// function that fetches it.
///
/// A cache is generic over its types the way Consul's cache is generic over registered
/// `cache.Type`s: the cache owns blocking, coalescing, refresh and eviction; the type only
/// knows how to fetch one value. A type is registered once with
/// [`Cache::register`](super::Cache::register) and then named by its Rust type in
/// [`Cache::get::<T>`](super::Cache::get).
pub trait CacheType: Send + Sync + 'static {
    /// The type's name: the first segment of entry keys and the `type` label of metrics
    /// (`connect-ca-root`, `connect-ca-leaf`, …). Unique within one cache.
    const NAME: &'static str;

    /// What a caller asks for; it names its cache entry through [`CacheRequest`].
    ///
    /// `Clone` because background refresh keeps re-issuing the request after the caller
    /// has gone.
    type Request: CacheRequest + Clone + Send + Sync + 'static;

    /// The cached value, shared with every caller as an `Arc`.
    type Value: Send + Sync + 'static;

    /// Per-entry state private to the type, handed to every fetch of that entry and replaced
    /// by what the fetch returns (the leaf type keeps its renewal bookkeeping here,
    /// ARCHITECTURE.md, agent). Use `()` when there is none.
    type State: Clone + Default + Send + Sync + 'static;

    /// How the cache treats this type.
    fn options(&self) -> TypeOptions;

    /// Fetches the value for `req`.
    ///
    /// For a blocking type, `opts.min_index > 0` asks the fetch to wait (up to
    /// `opts.timeout`) until the data's index exceeds it; returning the same index at the
    /// timeout is a normal outcome. The future may be dropped at any time (the cache was
    /// closed or the entry evicted), so it must be cancel-safe.
    fn fetch(
        &self,
        opts: FetchOptions<Self::Value, Self::State>,
        req: &Self::Request,
    ) -> impl Future<Output = Result<FetchResult<Self::Value, Self::State>>> + Send;

    /// Whether two values hold the same data. Only watchers of types without blocking use
    /// it: they see a value after every poll and report it only if it changed (Consul
    /// compares with `reflect.DeepEqual`). The default compares identity (the same `Arc`),
    /// which reports every re-fetch as a change; types with `Value: PartialEq` should
    /// override it with `a == b`.
    fn same_value(&self, a: &Self::Value, b: &Self::Value) -> bool {
        std::ptr::eq(a, b)
    }

    /// An estimate of the bytes `value` holds, for the `bytes` gauge. The default counts only
    /// the shallow size, which undercounts anything with heap data; override it when memory
    /// accounting matters.
    fn size_of(&self, value: &Self::Value) -> usize {
        std::mem::size_of_val(value)
    }
}

/// A request that knows which cache entry answers it.
pub trait CacheRequest {
    /// The entry for this request. An empty [`CacheKey::key`] means "do not cache": the
    /// request is fetched directly every time (ARCHITECTURE.md, cache, metric `bypass`).
    fn cache_key(&self) -> CacheKey;
}

/// Which entry answers a request: the type's key within a datacenter and ACL-token partition.
///
/// The token is part of the key on purpose: data fetched with one token is never served to a
/// caller holding another (ARCHITECTURE.md, cache), at the price of one copy per
/// token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CacheKey {
    /// The datacenter the data comes from.
    pub datacenter: String,
    /// The ACL token the data was fetched with.
    pub token: String,
    /// The type-specific key; empty bypasses the cache.
    pub key: String,
}

impl CacheKey {
    /// A key in `datacenter`'s partition for `token`.
    pub fn new(
        datacenter: impl Into<String>,
        token: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        CacheKey {
            datacenter: datacenter.into(),
            token: token.into(),
            key: key.into(),
        }
    }

    /// Consul's entry key, `<type>/<datacenter>/<token>/<key>`.
    ///
    /// For display and debugging only: the cache indexes entries by the fields themselves,
    /// because the joined string is ambiguous when a part contains `/` (token `a/b` with key
    /// `c` would collide with token `a` and key `b/c`) and a collision across tokens would
    /// leak data between them.
    pub fn entry_key(&self, type_name: &str) -> String {
        format!(
            "{type_name}/{}/{}/{}",
            self.datacenter, self.token, self.key
        )
    }

    /// True when the request must bypass the cache.
    pub fn is_bypass(&self) -> bool {
        self.key.is_empty()
    }
}

impl fmt::Debug for CacheKey {
    // The token is a secret; keep it out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKey")
            .field("datacenter", &self.datacenter)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("key", &self.key)
            .finish()
    }
}

/// How the cache treats one type (Consul's `RegisterOptions`, ARCHITECTURE.md, cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeOptions {
    /// Keep entries fresh with background blocking fetches after the first Get.
    pub refresh: bool,
    /// Extra wait between background fetches, on top of the error back-off.
    pub refresh_timer: Duration,
    /// The wait the cache asks of one blocking fetch; zero means [`DEFAULT_QUERY_TIMEOUT`].
    pub query_timeout: Duration,
    /// Fetches honour `min_index` (blocking queries); without it `min_index` is ignored.
    pub supports_blocking: bool,
    /// Idle time after the last Get before the entry is evicted.
    pub last_get_ttl: Duration,
}

impl Default for TypeOptions {
    /// Consul's "NoRefresh": neither blocking nor refreshing.
    fn default() -> Self {
        TypeOptions {
            refresh: false,
            refresh_timer: Duration::ZERO,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            supports_blocking: false,
            last_get_ttl: DEFAULT_LAST_GET_TTL,
        }
    }
}

impl TypeOptions {
    /// Consul's "BlockingRefresh" (roots, intention match, health): blocking fetches kept
    /// running in the background.
    pub fn blocking_refresh() -> Self {
        TypeOptions {
            refresh: true,
            supports_blocking: true,
            ..TypeOptions::default()
        }
    }

    /// Consul's "BlockingNoRefresh" (leaf certificates): blocking, fetched only on demand.
    pub fn blocking_no_refresh() -> Self {
        TypeOptions {
            supports_blocking: true,
            ..TypeOptions::default()
        }
    }

    /// Consul's "NoRefresh" (prepared queries): plain request/response.
    pub fn no_refresh() -> Self {
        TypeOptions::default()
    }

    /// The query timeout with zero read as the default.
    pub(crate) fn effective_query_timeout(&self) -> Duration {
        if self.query_timeout.is_zero() {
            DEFAULT_QUERY_TIMEOUT
        } else {
            self.query_timeout
        }
    }
}

/// What the cache tells one fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions<V, S> {
    /// Wait until the data's index is above this (blocking types; 0 = answer at once).
    pub min_index: u64,
    /// How long a blocking fetch may wait; `None` for non-blocking fetches.
    pub timeout: Option<Duration>,
    /// The entry's current value, if it has one.
    pub last_value: Option<Arc<V>>,
    /// The entry's current index (0 for a new entry).
    pub last_index: u64,
    /// The entry's type-private state.
    pub state: S,
    /// The Get that started this fetch asked for revalidation; a blocking type should answer
    /// without waiting (the leaf type re-checks its signing key instead, ARCHITECTURE.md, agent).
    pub must_revalidate: bool,
}

/// What one fetch returns.
#[derive(Debug, Clone)]
pub struct FetchResult<V, S> {
    /// The new value. `None` keeps the entry as it was but still stores `state`, so a type
    /// can retry internally (a rate-limited first leaf) without surfacing an error. Gets
    /// waiting on an entry that still has no value start the next fetch at once (as in
    /// Consul), so return `None` only after having waited for something, such as the
    /// blocking timeout.
    pub value: Option<Arc<V>>,
    /// The data's index; values below 1 are stored as 1 (a zero index would make the next
    /// blocking fetch return at once, forever), but a zero index still counts as a failed
    /// attempt for back-off.
    pub index: u64,
    /// The entry's new type-private state, stored whether or not there is a value.
    pub state: S,
    /// The data did not change: the entry keeps its value (any `value` here is ignored) but
    /// takes the new index and counts as freshly fetched.
    pub not_modified: bool,
}

impl<V, S: Default> FetchResult<V, S> {
    /// A changed value at `index`, with default state.
    pub fn new(value: Arc<V>, index: u64) -> Self {
        FetchResult {
            value: Some(value),
            index,
            state: S::default(),
            not_modified: false,
        }
    }

    /// "Nothing changed" at `index`, with default state.
    pub fn not_modified(index: u64) -> Self {
        FetchResult {
            value: None,
            index,
            state: S::default(),
            not_modified: true,
        }
    }
}

impl<V, S> FetchResult<V, S> {
    /// The same result carrying `state`.
    pub fn with_state(self, state: S) -> Self {
        FetchResult { state, ..self }
    }
}

/// How one Get wants to be answered (Consul's `RequestInfo` minus the key, ARCHITECTURE.md, cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetOptions {
    /// Block until the entry's index is above this (blocking types only; 0 = any value).
    pub min_index: u64,
    /// Give up waiting after this long and return the last known value without an error;
    /// `None` waits for the fetch to finish.
    pub timeout: Option<Duration>,
    /// Refuse a cached value older than this (non-refresh types only).
    pub max_age: Option<Duration>,
    /// Refuse the cached value unless a fetch is already in flight (non-refresh types only).
    pub must_revalidate: bool,
}

impl GetOptions {
    /// A blocking Get: wait for an index above `min_index`, at most `timeout`.
    pub fn blocking(min_index: u64, timeout: Duration) -> Self {
        GetOptions {
            min_index,
            timeout: Some(timeout),
            ..GetOptions::default()
        }
    }
}

/// How a Get was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ResultMeta {
    /// Answered from the cache without waiting for a fetch (HTTP `X-Cache: HIT`).
    pub hit: bool,
    /// The index of the value returned.
    pub index: u64,
    /// How stale the value may be: for refresh types, zero unless background refresh has lost
    /// contact (then the time since the first failure); for others, the time since it was
    /// fetched. Becomes the HTTP `Age` header.
    pub age: Duration,
}

/// One update delivered by [`Cache::notify`](super::Cache::notify).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpdateEvent<V> {
    /// The new value; `None` when the event carries an error.
    pub value: Option<Arc<V>>,
    /// The index of `value`.
    pub index: u64,
    /// The fetch error, when the first attempt failed (later errors at an unchanged index are
    /// not delivered; the watcher backs off and retries).
    pub error: Option<Error>,
}

impl<V> UpdateEvent<V> {
    /// A new value at `index`.
    pub(crate) fn of_value(value: Arc<V>, index: u64) -> Self {
        UpdateEvent {
            value: Some(value),
            index,
            error: None,
        }
    }

    /// The failure of a watch's first fetch.
    pub(crate) fn of_error(error: Error) -> Self {
        UpdateEvent {
            value: None,
            index: 0,
            error: Some(error),
        }
    }
}
