//! The cache itself: entries, Get, the fetch driver, idle eviction and shutdown.
//!
//! Locking: each registered type has one shard with one `std` mutex over its entries, its
//! expiry heap and every entry's bookkeeping. It is never held across an `.await`, so a
//! critical section is a few field updates; Consul uses a single lock for the whole cache.
//! Waiting happens on per-entry `watch` channels that are subscribed *under* the lock, so a
//! fetch that completes right after a Get decided to wait cannot be missed.

use std::any::{Any, TypeId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::backoff::{backoff_with, random_stagger};
use super::metrics::{Counters, MetricsSnapshot, TypeMetrics, adjust, incr};
use super::ratelimit::TokenBucket;
use super::types::{
    CacheKey, CacheRequest, CacheType, FetchOptions, FetchResult, GetOptions, ResultMeta,
    TypeOptions,
};
use crate::clock::{self, SharedClock};
use crate::error::{Error, ErrorKind, Result};

/// How long a blocking fetch must stay alive before the cache trusts its connection again
/// (yamux keepalive 30 s + 1, ARCHITECTURE.md, cache): until then a refresh type that lost contact
/// keeps reporting its age.
const CONTACT_CONFIRM_AFTER: Duration = Duration::from_secs(31);

/// Cache-wide settings.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// The wall clock behind TTLs and ages; tests pass a [`ManualClock`](crate::ManualClock).
    pub clock: SharedClock,
    /// Fetches per second allowed for one entry; `None` (the default) is unlimited
    /// (Consul's `cache.entry_fetch_rate`).
    pub entry_fetch_rate: Option<f64>,
    /// Fetches one entry may make back to back before the rate applies (default 2,
    /// Consul's `cache.entry_fetch_max_burst`; 0 is read as 1).
    pub entry_fetch_max_burst: u32,
    /// The longest the eviction loop sleeps between checks. It normally wakes exactly when
    /// the next entry expires; this bound is what lets it notice an injected clock that
    /// jumps (default 1 s).
    pub expiry_poll_interval: Duration,
    /// The random stagger added to back-off waits (ARCHITECTURE.md, cache): given the base wait,
    /// returns an extra wait in `[0, base)`. [`random_stagger`] unless a test pins it.
    pub stagger: fn(Duration) -> Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            clock: clock::system(),
            entry_fetch_rate: None,
            entry_fetch_max_burst: 2,
            expiry_poll_interval: Duration::from_secs(1),
            stagger: random_stagger,
        }
    }
}

impl CacheOptions {
    /// The defaults with `clock` instead of the system clock.
    pub fn with_clock(clock: SharedClock) -> Self {
        CacheOptions {
            clock,
            ..CacheOptions::default()
        }
    }
}

/// The agent cache (Consul docs: Agent Caching): typed entries keyed by type, datacenter, ACL token
/// and key, with blocking Gets, request coalescing, background refresh with back-off, idle eviction
/// and metrics.
///
/// `Cache` is a cheap handle: clones share one cache. Its background tasks run on the tokio
/// runtime given to [`Cache::new`] and stop when [`Cache::close`] is called or the last
/// handle is dropped. Async methods must be awaited inside a tokio runtime with time
/// enabled.
///
/// ```no_run
/// use std::sync::Arc;
/// use connect_core::cache::{
///     Cache, CacheKey, CacheOptions, CacheRequest, CacheType, FetchOptions, FetchResult,
///     GetOptions, TypeOptions,
/// };
///
/// #[derive(Clone)]
/// struct RootsRequest { dc: String }
/// impl CacheRequest for RootsRequest {
///     fn cache_key(&self) -> CacheKey { CacheKey::new(&self.dc, "", "roots") }
/// }
///
/// struct Roots;
/// impl CacheType for Roots {
///     const NAME: &'static str = "connect-ca-root";
///     type Request = RootsRequest;
///     type Value = Vec<String>;
///     type State = ();
///     fn options(&self) -> TypeOptions { TypeOptions::blocking_refresh() }
///     async fn fetch(
///         &self,
///         opts: FetchOptions<Vec<String>, ()>,
///         _req: &RootsRequest,
///     ) -> connect_core::Result<FetchResult<Vec<String>, ()>> {
///         // A blocking query for roots newer than opts.min_index goes here.
///         Ok(FetchResult::new(Arc::new(vec![]), opts.min_index + 1))
///     }
/// }
///
/// # async fn run() -> connect_core::Result<()> {
/// let cache = Cache::new(tokio::runtime::Handle::current(), CacheOptions::default())?;
/// cache.register(Roots)?;
/// let req = RootsRequest { dc: "dc1".into() };
/// let (roots, meta) = cache.get::<Roots>(&req, GetOptions::default()).await?;
/// println!("{} roots at index {}", roots.len(), meta.index);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    handle: Arc<LastHandle>,
}

/// Closes the cache when the last user handle goes away. Background tasks hold the inner
/// state directly, never a handle, so they cannot keep the cache open by themselves.
struct LastHandle {
    inner: Arc<Inner>,
}

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.handle.inner;
        f.debug_struct("Cache")
            .field("types", &inner.type_names())
            .field("closed", &inner.is_closed())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache whose background tasks run on `runtime`.
    ///
    /// Fails with [`ErrorKind::InvalidParameter`] when `entry_fetch_rate` is not a positive
    /// finite number or `expiry_poll_interval` is zero.
    pub fn new(runtime: Handle, options: CacheOptions) -> Result<Cache> {
        if let Some(rate) = options.entry_fetch_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("cache entry fetch rate must be positive and finite, got {rate}"),
            ));
        }
        if options.expiry_poll_interval.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                "cache expiry poll interval must not be zero",
            ));
        }
        let (shutdown, _) = watch::channel(false);
        let (tasks, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            runtime,
            clock: options.clock.clone(),
            options,
            registry: RwLock::new(HashMap::new()),
            closed: AtomicBool::new(false),
            shutdown,
            tasks,
            next_entry_id: AtomicU64::new(1),
        });
        inner.spawn(expiry_loop(Arc::clone(&inner)));
        Ok(Cache {
            handle: Arc::new(LastHandle { inner }),
        })
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// Registers a type so that [`Cache::get::<T>`](Cache::get) can serve it.
    ///
    /// Fails with [`ErrorKind::InvalidParameter`] if `T` or another type with the same
    /// [`CacheType::NAME`] is already registered (their entry keys and metrics would mix),
    /// and with [`ErrorKind::Closed`] after [`Cache::close`].
    pub fn register<T: CacheType>(&self, ty: T) -> Result<()> {
        let inner = self.inner();
        inner.ensure_open()?;
        let mut reg = inner
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if reg.contains_key(&TypeId::of::<T>()) || reg.values().any(|s| s.name() == T::NAME) {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("cache type {:?} is already registered", T::NAME),
            ));
        }
        let opts = ty.options();
        let shard: Arc<dyn AnyShard> = Arc::new(Shard {
            ty,
            opts,
            counters: Counters::default(),
            state: Mutex::new(ShardState {
                entries: HashMap::new(),
                expiry: BinaryHeap::new(),
            }),
        });
        reg.insert(TypeId::of::<T>(), shard);
        Ok(())
    }

    /// Gets the value for `req` following Consul's algorithm (ARCHITECTURE.md, cache).
    ///
    /// A valid entry is returned at once (`meta.hit`). Otherwise the Get joins the entry's
    /// in-flight fetch or starts one and waits; with `opts.min_index` on a blocking type it
    /// waits for data newer than that index. When `opts.timeout` passes first, the last known
    /// value is returned **without an error**, as a blocking query does; if there is no value
    /// at all the result is [`ErrorKind::Timeout`]. A fetch that fails while the Get waits
    /// fails the Get at once, with the fetch's error.
    ///
    /// Errors: the fetch's error; [`ErrorKind::Timeout`] as above; [`ErrorKind::Closed`]
    /// after [`Cache::close`]; [`ErrorKind::InvalidParameter`] if `T` is not registered;
    /// [`ErrorKind::CacheFetch`] if a bypassing fetch returned no value.
    pub async fn get<T: CacheType>(
        &self,
        req: &T::Request,
        opts: GetOptions,
    ) -> Result<(Arc<T::Value>, ResultMeta)> {
        match self.inner().get::<T>(req, opts).await? {
            GetOutcome::Value(v, meta) => Ok((v, meta)),
            GetOutcome::TimedOutEmpty => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "cache get for {:?} timed out before any value arrived",
                    T::NAME
                ),
            )),
        }
    }

    /// Seeds the entry for `req` with `value` at `index` (coerced to at least 1), as if it had
    /// been fetched now; waiting Gets re-check it. Used to start from material obtained some
    /// other way (Consul seeds auto-encrypt roots and leaf this way, ARCHITECTURE.md, cache). It
    /// does not start background refresh; the next Get that needs newer data does.
    ///
    /// Errors: [`ErrorKind::InvalidParameter`] if `T` is not registered or `req` has an
    /// empty key; [`ErrorKind::Closed`].
    pub fn prepopulate<T: CacheType>(
        &self,
        req: &T::Request,
        value: Arc<T::Value>,
        index: u64,
    ) -> Result<()> {
        self.inner().prepopulate::<T>(req, value, index)
    }

    /// A copy of every metric.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner().metrics()
    }

    /// The metrics in the Prometheus text exposition format
    /// (`libconnect_cache_hit_total{type="connect-ca-root"} 3`, …).
    pub fn prometheus(&self) -> String {
        self.metrics().to_prometheus()
    }

    /// Stops every background task and drops every entry. Idempotent. Gets waiting at that
    /// moment and every later call fail with [`ErrorKind::Closed`]. Tasks end at their next
    /// scheduling point; [`Cache::shutdown`] also waits for that.
    pub fn close(&self) {
        self.inner().close();
    }

    /// Closes the cache and waits until every background task has ended.
    pub async fn shutdown(&self) {
        let inner = self.inner();
        inner.close();
        let mut tasks = inner.tasks.subscribe();
        // The sender lives in `inner`, which we hold, so this cannot fail.
        let _ = tasks.wait_for(|n| *n == 0).await;
    }

    /// True after [`Cache::close`].
    pub fn is_closed(&self) -> bool {
        self.inner().is_closed()
    }
}

/// What a Get ended with, before the public API turns "timed out with nothing" into an
/// error (the watcher treats that case as a quiet retry instead).
pub(crate) enum GetOutcome<V> {
    Value(Arc<V>, ResultMeta),
    TimedOutEmpty,
}

/// The state shared by handles and background tasks.
pub(crate) struct Inner {
    runtime: Handle,
    clock: SharedClock,
    options: CacheOptions,
    registry: RwLock<HashMap<TypeId, Arc<dyn AnyShard>>>,
    closed: AtomicBool,
    /// Flips to `true` once, on close; every task selects on it.
    shutdown: watch::Sender<bool>,
    /// Live background tasks.
    tasks: watch::Sender<u64>,
    next_entry_id: AtomicU64,
}

/// Keeps the live-task count honest however a task ends (finished, cancelled, or dropped
/// with its runtime).
struct TaskGuard(Arc<Inner>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Inner {
    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn stagger(&self) -> fn(Duration) -> Duration {
        self.options.stagger
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shutdown.send_replace(true);
        for s in self.shards() {
            s.clear();
        }
    }

    /// The registered types' shards, read-locked (a poisoned lock is read anyway: inserts
    /// are single calls, so a panic cannot leave the map half-written).
    fn registry(&self) -> RwLockReadGuard<'_, HashMap<TypeId, Arc<dyn AnyShard>>> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A snapshot of the shards, so that work on them runs without the registry lock.
    fn shards(&self) -> Vec<Arc<dyn AnyShard>> {
        self.registry().values().cloned().collect()
    }

    fn type_names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.registry().values().map(|s| s.name()).collect();
        v.sort_unstable();
        v
    }

    /// Runs `fut` as a counted background task; nothing is started once closed.
    pub(crate) fn spawn<F>(self: &Arc<Self>, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.is_closed() {
            return;
        }
        self.tasks.send_modify(|n| *n += 1);
        let guard = TaskGuard(Arc::clone(self));
        self.runtime.spawn(async move {
            let _guard = guard;
            fut.await;
        });
    }

    pub(crate) fn shard<T: CacheType>(&self) -> Result<Arc<Shard<T>>> {
        let shard = self
            .registry()
            .get(&TypeId::of::<T>())
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidParameter,
                    format!("cache type {:?} is not registered", T::NAME),
                )
            })?;
        let any: Arc<dyn Any + Send + Sync> = shard;
        any.downcast::<Shard<T>>().map_err(|_| {
            Error::new(
                ErrorKind::Internal,
                format!("cache shard for {:?} has the wrong type", T::NAME),
            )
        })
    }

    fn metrics(&self) -> MetricsSnapshot {
        let types: BTreeMap<&'static str, TypeMetrics> = self
            .registry()
            .values()
            .map(|s| (s.name(), s.metrics()))
            .collect();
        MetricsSnapshot::new(types, *self.tasks.borrow())
    }

    pub(crate) async fn get<T: CacheType>(
        self: &Arc<Self>,
        req: &T::Request,
        opts: GetOptions,
    ) -> Result<GetOutcome<T::Value>> {
        self.ensure_open()?;
        let shard = self.shard::<T>()?;
        let key = req.cache_key();
        if key.is_bypass() {
            return self.bypass(&shard, req, opts).await;
        }
        let mut shutdown = self.shutdown.subscribe();
        let mut deadline: Option<Instant> = None;
        let mut first = true;
        let mut must_revalidate = opts.must_revalidate;
        loop {
            let now = self.clock.now();
            let (mut done, last) = {
                let mut st = shard.lock();
                // Checked under the shard lock: `close` sets the flag before it clears the
                // shards, so either this sees it or the entry made here is cleared.
                self.ensure_open()?;
                let entry = shard.entry_or_insert(&mut st, self, &key, req, now);
                // Every attempt counts as use, valid or not (ARCHITECTURE.md, cache).
                entry.touch(now, shard.opts.last_get_ttl);
                if shard.is_valid(entry, &opts, must_revalidate, now)
                    && let Some(value) = &entry.value
                {
                    let meta = ResultMeta {
                        hit: first,
                        index: entry.index,
                        age: shard.age(entry, now),
                    };
                    if first {
                        incr(&shard.counters.hits);
                    }
                    return Ok(GetOutcome::Value(Arc::clone(value), meta));
                }
                // A waiter that saw a fetch complete with an error reports it now instead of
                // blocking until its timeout (ARCHITECTURE.md, cache).
                if !first && let Some(err) = &entry.error {
                    return Err(err.clone());
                }
                if first {
                    if opts.min_index == 0 {
                        incr(&shard.counters.misses_new);
                    } else {
                        incr(&shard.counters.misses_block);
                    }
                }
                let last = entry.value.as_ref().map(|v| {
                    let meta = ResultMeta {
                        hit: false,
                        index: entry.index,
                        age: shard.age(entry, now),
                    };
                    (Arc::clone(v), meta)
                });
                let done = self.start_fetch(&shard, &key, entry, req, must_revalidate);
                (done, last)
            };
            first = false;
            if deadline.is_none() {
                deadline = opts.timeout.map(|t| Instant::now() + t);
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|c| *c) => return Err(closed_error()),
                // The fetch dropped the sender on completion (or the entry was evicted or
                // cleared): looking the entry up again finds the result, recreates the entry
                // or reports the closed cache.
                _ = done.changed() => {
                    // One completed fetch satisfies a revalidation (Consul resets the flag
                    // after the first wait).
                    must_revalidate = false;
                }
                () = sleep_until_opt(deadline) => {
                    return Ok(match last {
                        Some((v, meta)) => GetOutcome::Value(v, meta),
                        None => GetOutcome::TimedOutEmpty,
                    });
                }
            }
        }
    }

    /// Makes sure a fetch is running for `entry` and returns a receiver that changes when it
    /// completes. Called with the shard lock held.
    fn start_fetch<T: CacheType>(
        self: &Arc<Self>,
        shard: &Arc<Shard<T>>,
        key: &CacheKey,
        entry: &mut Entry<T>,
        req: &T::Request,
        must_revalidate: bool,
    ) -> watch::Receiver<()> {
        let done = entry
            .done
            .get_or_insert_with(|| watch::channel(()).0)
            .subscribe();
        if entry.fetching {
            // Request coalescing: everyone waits on the one fetch in flight.
            return done;
        }
        entry.request = req.clone();
        entry.revalidate = must_revalidate;
        entry.fetching = true;
        match &entry.driver {
            // A refresh loop backing off between fetches: wake it rather than start a
            // second loop for the same entry.
            Driver::Sleeping(kick) => kick.notify_one(),
            Driver::Idle => {
                entry.driver = Driver::Active;
                let (stop, stopped) = watch::channel(false);
                entry.stop = Some(stop);
                self.spawn(drive(
                    Arc::clone(self),
                    Arc::clone(shard),
                    key.clone(),
                    entry.id,
                    stopped,
                ));
            }
            // Active always has `fetching` set; nothing to do.
            Driver::Active => {}
        }
        done
    }

    /// An uncached request: one direct fetch (ARCHITECTURE.md, cache).
    async fn bypass<T: CacheType>(
        &self,
        shard: &Shard<T>,
        req: &T::Request,
        opts: GetOptions,
    ) -> Result<GetOutcome<T::Value>> {
        incr(&shard.counters.bypass);
        let blocking = shard.opts.supports_blocking;
        let fetch_opts = FetchOptions {
            min_index: if blocking { opts.min_index } else { 0 },
            timeout: if blocking {
                Some(
                    opts.timeout
                        .unwrap_or_else(|| shard.opts.effective_query_timeout()),
                )
            } else {
                opts.timeout
            },
            last_value: None,
            last_index: 0,
            state: T::State::default(),
            must_revalidate: opts.must_revalidate,
        };
        let mut shutdown = self.shutdown.subscribe();
        let result = tokio::select! {
            biased;
            _ = shutdown.wait_for(|c| *c) => return Err(closed_error()),
            r = shard.ty.fetch(fetch_opts, req) => r?,
        };
        match result.value {
            Some(v) => Ok(GetOutcome::Value(
                v,
                ResultMeta {
                    hit: false,
                    index: result.index,
                    age: Duration::ZERO,
                },
            )),
            None => Err(Error::new(
                ErrorKind::CacheFetch,
                format!("uncached {:?} fetch returned no value", T::NAME),
            )),
        }
    }

    fn prepopulate<T: CacheType>(
        self: &Arc<Self>,
        req: &T::Request,
        value: Arc<T::Value>,
        index: u64,
    ) -> Result<()> {
        self.ensure_open()?;
        let shard = self.shard::<T>()?;
        let key = req.cache_key();
        if key.is_bypass() {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("cannot prepopulate {:?} under an empty key", T::NAME),
            ));
        }
        let now = self.clock.now();
        let mut st = shard.lock();
        self.ensure_open()?;
        let entry = shard.entry_or_insert(&mut st, self, &key, req, now);
        entry.touch(now, shard.opts.last_get_ttl);
        shard.set_value(entry, value);
        entry.index = index.max(1);
        entry.error = None;
        entry.fetched_at = Some(now);
        entry.wake_waiters();
        Ok(())
    }
}

fn closed_error() -> Error {
    Error::new(ErrorKind::Closed, "the cache is closed")
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs `f` unless the cache closes or the entry goes away first (`None` then).
async fn until_stopped<F: Future>(
    f: F,
    shutdown: &mut watch::Receiver<bool>,
    stop: &mut watch::Receiver<bool>,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|c| *c) => None,
        // Fired on eviction; an error means the entry (and its sender) is already gone.
        _ = stop.wait_for(|s| *s) => None,
        r = f => Some(r),
    }
}

/// The per-type part of the cache, reached by type-erased code (the eviction loop, close,
/// metrics) through this trait and by typed code by downcasting.
trait AnyShard: Any + Send + Sync {
    fn name(&self) -> &'static str;
    /// Evicts entries idle past their TTL; returns when the next one expires.
    fn sweep(&self, now: OffsetDateTime) -> Option<OffsetDateTime>;
    /// Drops every entry (close).
    fn clear(&self);
    fn metrics(&self) -> TypeMetrics;
}

/// All entries of one type.
pub(crate) struct Shard<T: CacheType> {
    ty: T,
    opts: TypeOptions,
    counters: Counters,
    state: Mutex<ShardState<T>>,
}

struct ShardState<T: CacheType> {
    /// Boxed, and keyed by a key shared with the expiry heap: with tens of thousands of
    /// entries the table's empty slots and a second copy of every key would otherwise cost
    /// as much as the values (BENCHMARKS.md, memory per cached service).
    entries: HashMap<Arc<CacheKey>, Box<Entry<T>>>,
    /// A lazy min-heap of `(expiry, entry id, key)`. Touching an entry does not update it:
    /// when an item comes due, the entry's real expiry decides between evicting and pushing
    /// it back, so a Get costs no heap work.
    expiry: BinaryHeap<Reverse<(OffsetDateTime, u64, Arc<CacheKey>)>>,
}

/// Who is fetching for an entry.
enum Driver {
    /// No task; the next Get that needs data starts one.
    Idle,
    /// A task is fetching (or waiting for the rate limiter).
    Active,
    /// A refresh task is backing off; notifying wakes it early. A fresh `Notify` per sleep
    /// keeps a late wake-up from cutting the *next* back-off short.
    Sleeping(Arc<Notify>),
}

/// One cached value and its bookkeeping.
struct Entry<T: CacheType> {
    /// Distinguishes this entry from a later one under the same key, so a task of an evicted
    /// entry never writes into its successor.
    id: u64,
    /// The request background refresh re-issues: the one of the latest Get that started a
    /// fetch.
    request: T::Request,
    value: Option<Arc<T::Value>>,
    value_bytes: u64,
    index: u64,
    /// The error of the latest fetch, cleared by the next success. It can coexist with an
    /// older good value, which stays servable.
    error: Option<Error>,
    state: T::State,
    fetched_at: Option<OffsetDateTime>,
    /// When background refresh first failed since its last success.
    lost_contact: Option<OffsetDateTime>,
    expires_at: OffsetDateTime,
    fetching: bool,
    /// Passed to the next fetch as `must_revalidate`.
    revalidate: bool,
    driver: Driver,
    limiter: TokenBucket,
    /// What Gets waiting for a fetch wait on; dropped (which wakes them) when the fetch
    /// completes or a value is prepopulated. Only there while someone waits: a channel costs
    /// a few hundred bytes, and most entries of a large cache are idle.
    done: Option<watch::Sender<()>>,
    /// There while a driver task runs; set when the entry is removed, so the task stops even
    /// mid-fetch.
    stop: Option<watch::Sender<bool>>,
}

impl<T: CacheType> Entry<T> {
    fn touch(&mut self, now: OffsetDateTime, ttl: Duration) {
        self.expires_at = now + ttl;
    }

    /// Clears a lost contact, and says so: whichever proof of contact comes first (a fetch
    /// that succeeds, or a blocking one held open 31 s) is the one recovery message.
    fn regain_contact(&mut self, now: OffsetDateTime) {
        if let Some(lost) = self.lost_contact.take() {
            tracing::info!(
                cache_type = T::NAME,
                outage = ?since(now, lost),
                "connect: control plane reachable again"
            );
        }
    }

    /// Wakes every Get waiting on this entry; they look at it again.
    fn wake_waiters(&mut self) {
        self.done = None;
    }

    /// The driver task has ended (or is about to): the next Get that needs data starts one.
    fn release_driver(&mut self) {
        self.driver = Driver::Idle;
        self.fetching = false;
        self.stop = None;
    }
}

impl<T: CacheType> Shard<T> {
    /// The options the type was registered with.
    pub(crate) fn options(&self) -> TypeOptions {
        self.opts
    }

    /// The type's own notion of "unchanged".
    pub(crate) fn same_value(&self, a: &T::Value, b: &T::Value) -> bool {
        self.ty.same_value(a, b)
    }

    fn lock(&self) -> MutexGuard<'_, ShardState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry_or_insert<'a>(
        &self,
        st: &'a mut ShardState<T>,
        inner: &Inner,
        key: &CacheKey,
        req: &T::Request,
        now: OffsetDateTime,
    ) -> &'a mut Entry<T> {
        if !st.entries.contains_key(key) {
            let id = inner.next_entry_id.fetch_add(1, Ordering::Relaxed);
            let expires_at = now + self.opts.last_get_ttl;
            let key = Arc::new(key.clone());
            st.expiry.push(Reverse((expires_at, id, Arc::clone(&key))));
            st.entries.insert(
                key,
                Box::new(Entry {
                    id,
                    request: req.clone(),
                    value: None,
                    value_bytes: 0,
                    index: 0,
                    error: None,
                    state: T::State::default(),
                    fetched_at: None,
                    lost_contact: None,
                    expires_at,
                    fetching: false,
                    revalidate: false,
                    driver: Driver::Idle,
                    limiter: TokenBucket::new(
                        inner.options.entry_fetch_rate,
                        inner.options.entry_fetch_max_burst,
                        Instant::now(),
                    ),
                    done: None,
                    stop: None,
                }),
            );
            adjust(&self.counters.entries, 1);
        }
        match st.entries.get_mut(key) {
            Some(e) => e,
            None => unreachable!("entry inserted above"),
        }
    }

    /// Step 1 of Consul's Get (ARCHITECTURE.md, cache).
    fn is_valid(
        &self,
        e: &Entry<T>,
        opts: &GetOptions,
        must_revalidate: bool,
        now: OffsetDateTime,
    ) -> bool {
        if e.value.is_none() {
            return false;
        }
        if self.opts.supports_blocking && opts.min_index > 0 && opts.min_index >= e.index {
            return false;
        }
        if !self.opts.refresh {
            if let (Some(max_age), Some(fetched)) = (opts.max_age, e.fetched_at)
                && since(now, fetched) > max_age
            {
                return false;
            }
            if must_revalidate {
                // A fetch in flight is by definition revalidating: the value is as current
                // as anything we could wait for.
                return e.fetching;
            }
        }
        true
    }

    fn age(&self, e: &Entry<T>, now: OffsetDateTime) -> Duration {
        if self.opts.refresh {
            e.lost_contact.map_or(Duration::ZERO, |t| since(now, t))
        } else {
            e.fetched_at.map_or(Duration::ZERO, |t| since(now, t))
        }
    }

    fn set_value(&self, e: &mut Entry<T>, value: Arc<T::Value>) {
        let bytes = u64::try_from(self.ty.size_of(&value)).unwrap_or(u64::MAX);
        let delta = i128::from(bytes) - i128::from(e.value_bytes);
        adjust(
            &self.counters.bytes,
            i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX }),
        );
        e.value_bytes = bytes;
        e.value = Some(value);
    }

    /// Stores a fetch result (ARCHITECTURE.md, cache). Returns whether the error forbids further
    /// background refresh. Updates `attempt` for back-off.
    fn apply(
        &self,
        e: &mut Entry<T>,
        result: Result<FetchResult<T::Value, T::State>>,
        now: OffsetDateTime,
        attempt: &mut u32,
    ) -> bool {
        let mut fatal = false;
        match result {
            Ok(r) => {
                // A success clears any older error (Consul issue 4480).
                e.error = None;
                let has_result = match (&r.value, r.not_modified) {
                    (_, true) => e.value.is_some(),
                    (Some(_), false) => true,
                    (None, false) => false,
                };
                if has_result {
                    if let (Some(v), false) = (r.value, r.not_modified) {
                        self.set_value(e, v);
                    }
                    e.index = r.index.max(1);
                    e.fetched_at = Some(now);
                }
                e.state = r.state;
                incr(&self.counters.fetch_success);
                if r.not_modified {
                    incr(&self.counters.fetch_not_modified);
                }
                // A zero index never blocks, so treating it as success would let a refresh
                // loop spin; count it as a failure for back-off only (ARCHITECTURE.md, cache).
                if r.index > 0 {
                    *attempt = 0;
                } else {
                    *attempt = attempt.saturating_add(1);
                }
                if self.opts.refresh {
                    e.regain_contact(now);
                }
            }
            Err(err) => {
                fatal = err.kind() == ErrorKind::AclNotFound;
                e.error = Some(err);
                incr(&self.counters.fetch_error);
                if fatal {
                    incr(&self.counters.fetch_error_fatal);
                }
                *attempt = attempt.saturating_add(1);
                if self.opts.refresh && e.lost_contact.is_none() {
                    e.lost_contact = Some(now);
                    // Once per outage of the entry, not per retry: the back-off keeps retrying.
                    tracing::warn!(
                        cache_type = T::NAME,
                        error = %e.error.as_ref().map_or_else(String::new, ToString::to_string),
                        has_value = e.value.is_some(),
                        "connect: lost contact with the control plane; serving cached values \
                         until it returns"
                    );
                }
            }
        }
        fatal
    }

    /// Runs `f` on the entry under `key` if it is still the entry `id`.
    fn with_entry<R>(
        &self,
        key: &CacheKey,
        id: u64,
        f: impl FnOnce(&mut Entry<T>) -> R,
    ) -> Option<R> {
        let mut st = self.lock();
        match st.entries.get_mut(key) {
            Some(e) if e.id == id => Some(f(&mut **e)),
            _ => None,
        }
    }

    fn remove_locked(&self, st: &mut ShardState<T>, key: &CacheKey) {
        let Some(e) = st.entries.remove(key) else {
            return;
        };
        if let Some(stop) = &e.stop {
            stop.send_replace(true);
        }
        adjust(&self.counters.entries, -1);
        adjust(
            &self.counters.bytes,
            -i64::try_from(e.value_bytes).unwrap_or(i64::MAX),
        );
        // Dropping `e` drops its `done` sender, which wakes its waiters; they look the key
        // up again and find it gone.
    }
}

impl<T: CacheType> AnyShard for Shard<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn sweep(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let mut guard = self.lock();
        let st = &mut *guard;
        while let Some(Reverse((at, _, _))) = st.expiry.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, id, key))) = st.expiry.pop() else {
                break;
            };
            let due = match st.entries.get(&key) {
                Some(e) if e.id == id => Some(e.expires_at),
                // An item of an entry that is already gone.
                _ => None,
            };
            match due {
                Some(expires_at) if expires_at > now => {
                    st.expiry.push(Reverse((expires_at, id, key)));
                }
                Some(_) => {
                    self.remove_locked(st, &key);
                    incr(&self.counters.evictions);
                }
                None => {}
            }
        }
        st.expiry.peek().map(|Reverse((at, _, _))| *at)
    }

    fn clear(&self) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let keys: Vec<Arc<CacheKey>> = st.entries.keys().cloned().collect();
        for key in keys {
            self.remove_locked(st, &key);
        }
        st.expiry.clear();
    }

    fn metrics(&self) -> TypeMetrics {
        self.counters.snapshot()
    }
}

/// The task that fetches for one entry: one fetch for plain types; for refresh types, a loop
/// of fetch, back-off, fetch (ARCHITECTURE.md, cache) until the entry is evicted, the cache closes,
/// or an ACL-not-found error ends it.
async fn drive<T: CacheType>(
    inner: Arc<Inner>,
    shard: Arc<Shard<T>>,
    key: CacheKey,
    id: u64,
    mut stop: watch::Receiver<bool>,
) {
    let _release = DriverRelease {
        shard: Arc::clone(&shard),
        key: key.clone(),
        id,
    };
    let mut shutdown = inner.shutdown.subscribe();
    let blocking = shard.opts.supports_blocking;
    let query_timeout = shard.opts.effective_query_timeout();
    let mut attempt: u32 = 0;
    loop {
        let prepared = shard.with_entry(&key, id, |e| {
            let wait = e.limiter.reserve(Instant::now());
            let opts = FetchOptions {
                min_index: if blocking { e.index } else { 0 },
                timeout: blocking.then_some(query_timeout),
                last_value: e.value.clone(),
                last_index: e.index,
                state: e.state.clone(),
                must_revalidate: std::mem::take(&mut e.revalidate),
            };
            let confirm_contact = shard.opts.refresh
                && blocking
                && e.index > 0
                && query_timeout > CONTACT_CONFIRM_AFTER;
            (wait, opts, e.request.clone(), confirm_contact)
        });
        let Some((wait, opts, request, confirm_contact)) = prepared else {
            return;
        };
        if !wait.is_zero()
            && until_stopped(tokio::time::sleep(wait), &mut shutdown, &mut stop)
                .await
                .is_none()
        {
            return;
        }
        let fetch = fetch_confirming_contact(
            &shard,
            &key,
            id,
            opts,
            &request,
            confirm_contact.then_some(&inner.clock),
        );
        let Some(result) = until_stopped(fetch, &mut shutdown, &mut stop).await else {
            return;
        };
        let now = inner.clock.now();
        let closed = inner.is_closed();
        let next = shard.with_entry(&key, id, |e| {
            let fatal = shard.apply(e, result, now, &mut attempt);
            e.wake_waiters();
            if shard.opts.refresh && !fatal && !closed {
                let kick = Arc::new(Notify::new());
                e.driver = Driver::Sleeping(Arc::clone(&kick));
                e.fetching = false;
                Some(kick)
            } else {
                e.release_driver();
                None
            }
        });
        let Some(Some(kick)) = next else {
            return;
        };
        let wait = backoff_with(attempt, inner.options.stagger) + shard.opts.refresh_timer;
        let pause = async {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = kick.notified() => {}
            }
        };
        if until_stopped(pause, &mut shutdown, &mut stop)
            .await
            .is_none()
        {
            return;
        }
        // Evicted while we slept: do not fetch for (or recreate) an entry nobody wants.
        let rearmed = shard.with_entry(&key, id, |e| {
            e.fetching = true;
            e.driver = Driver::Active;
        });
        if rearmed.is_none() {
            return;
        }
    }
}

/// Hands an entry back if its driver ends without doing so itself: the type's fetch
/// panicked, or the runtime dropped the task. Without this the entry would stay "fetching"
/// forever and every Get for it would wait for a fetch that never completes. On normal exits
/// the entry is already idle or gone and this does nothing.
struct DriverRelease<T: CacheType> {
    shard: Arc<Shard<T>>,
    key: CacheKey,
    id: u64,
}

impl<T: CacheType> Drop for DriverRelease<T> {
    fn drop(&mut self) {
        self.shard.with_entry(&self.key, self.id, |e| {
            if matches!(e.driver, Driver::Idle) {
                return;
            }
            e.release_driver();
            e.error = Some(Error::new(
                ErrorKind::Internal,
                format!("a {:?} cache fetch ended without a result", T::NAME),
            ));
            e.wake_waiters();
        });
    }
}

/// One fetch; for a refresh type that lost contact, a blocking fetch still alive after 31 s
/// proves the connection is back, so the entry stops reporting an age (ARCHITECTURE.md, cache).
/// `clock` is given when that check applies.
async fn fetch_confirming_contact<T: CacheType>(
    shard: &Shard<T>,
    key: &CacheKey,
    id: u64,
    opts: FetchOptions<T::Value, T::State>,
    request: &T::Request,
    clock: Option<&SharedClock>,
) -> Result<FetchResult<T::Value, T::State>> {
    let fetch = shard.ty.fetch(opts, request);
    let Some(clock) = clock else {
        return fetch.await;
    };
    tokio::pin!(fetch);
    let timer = tokio::time::sleep(CONTACT_CONFIRM_AFTER);
    tokio::pin!(timer);
    let mut armed = true;
    loop {
        tokio::select! {
            r = &mut fetch => return r,
            () = &mut timer, if armed => {
                armed = false;
                let now = clock.now();
                shard.with_entry(key, id, |e| e.regain_contact(now));
            }
        }
    }
}

/// Evicts idle entries (Consul docs: Agent Caching). It sleeps until the next expiry on the
/// injected clock, but never longer than the poll interval, so a clock that jumps is noticed
/// promptly.
async fn expiry_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let now = inner.clock.now();
        let next = inner.shards().iter().filter_map(|s| s.sweep(now)).min();
        let poll = inner.options.expiry_poll_interval;
        let wait = next.map_or(poll, |at| since(at, now).min(poll));
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|c| *c) => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// `now − then`, or zero if `then` is in the future.
fn since(now: OffsetDateTime, then: OffsetDateTime) -> Duration {
    Duration::try_from(now - then).unwrap_or(Duration::ZERO)
}
