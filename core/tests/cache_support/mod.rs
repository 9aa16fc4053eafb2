//! Test doubles for the cache: a scriptable fetch function and a request.
//!
//! The cache is generic over its fetch function, so these doubles *are* the thing under the
//! cache in these tests: they count calls, return a controllable index, value or error, and
//! can behave as a blocking query (wait until the index passes `min_index` or the timeout).
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset"
)]

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_core::cache::{
    Cache, CacheKey, CacheOptions, CacheRequest, CacheType, FetchOptions, FetchResult, TypeOptions,
};
use connect_core::{Error, ErrorKind, ManualClock, Result};
use time::macros::datetime;
use tokio::sync::watch;
use tokio::time::Instant;

/// A request for `key` in `dc` with `token`.
#[derive(Debug, Clone)]
pub struct Req {
    pub dc: String,
    pub token: String,
    pub key: String,
}

impl Req {
    pub fn new(key: &str) -> Self {
        Req {
            dc: "dc1".into(),
            token: "token-a".into(),
            key: key.into(),
        }
    }

    pub fn with_token(key: &str, token: &str) -> Self {
        Req {
            token: token.into(),
            ..Req::new(key)
        }
    }
}

impl CacheRequest for Req {
    fn cache_key(&self) -> CacheKey {
        CacheKey::new(&self.dc, &self.token, &self.key)
    }
}

/// What one fetch saw.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub min_index: u64,
    pub timeout: Option<Duration>,
    pub last_index: u64,
    pub had_last_value: bool,
    pub state: u32,
    pub must_revalidate: bool,
    pub key: String,
}

/// The scriptable data source behind a [`Fake`] type.
#[derive(Debug)]
pub struct Script {
    /// The index the source is at.
    pub index: u64,
    /// The value it returns.
    pub value: String,
    /// When set, every fetch fails with this error.
    pub error: Option<Error>,
    /// Answer blocking fetches only once `index > min_index` (or at the timeout).
    pub block: bool,
    /// While true, every fetch waits (to pile up concurrent callers).
    pub hold: bool,
    /// Return no value (state still advances).
    pub no_value: bool,
    /// Report "not modified" with no value.
    pub not_modified: bool,
    /// Panic inside the fetch (a buggy type).
    pub panic: bool,
}

#[derive(Debug)]
pub struct Backend {
    script: Mutex<Script>,
    /// Bumped on every script change, to wake blocked fetches.
    changed: watch::Sender<u64>,
    calls: Mutex<Vec<Call>>,
    /// Fetch futures currently alive (a guard counts them, so a cancelled fetch counts down).
    pub live_fetches: AtomicUsize,
    /// Incremented when the `Fake` owning this backend is dropped: the cache freed its shard,
    /// which only happens after every task holding it has ended.
    pub types_dropped: AtomicUsize,
}

impl Backend {
    pub fn new(index: u64, value: &str) -> Arc<Self> {
        Arc::new(Backend {
            script: Mutex::new(Script {
                index,
                value: value.into(),
                error: None,
                block: false,
                hold: false,
                no_value: false,
                not_modified: false,
                panic: false,
            }),
            changed: watch::channel(0).0,
            calls: Mutex::new(Vec::new()),
            live_fetches: AtomicUsize::new(0),
            types_dropped: AtomicUsize::new(0),
        })
    }

    /// A backend whose fetches behave as blocking queries.
    pub fn blocking(index: u64, value: &str) -> Arc<Self> {
        let b = Backend::new(index, value);
        b.edit(|s| s.block = true);
        b
    }

    pub fn edit(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
        self.changed.send_modify(|g| *g += 1);
    }

    /// Moves the source to a new index and value.
    pub fn publish(&self, index: u64, value: &str) {
        self.edit(|s| {
            s.index = index;
            s.value = value.into();
        });
    }

    pub fn fail(&self, kind: ErrorKind, msg: &str) {
        self.edit(|s| s.error = Some(Error::new(kind, msg)));
    }

    pub fn heal(&self) {
        self.edit(|s| s.error = None);
    }

    pub fn fetches(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<String, u32>,
        req: &Req,
    ) -> Result<FetchResult<String, u32>> {
        let _live = LiveFetch::new(&self.live_fetches);
        self.calls.lock().unwrap().push(Call {
            at: Instant::now(),
            min_index: opts.min_index,
            timeout: opts.timeout,
            last_index: opts.last_index,
            had_last_value: opts.last_value.is_some(),
            state: opts.state,
            must_revalidate: opts.must_revalidate,
            key: req.key.clone(),
        });
        if self.script.lock().unwrap().panic {
            panic!("fetch panicked on purpose");
        }
        let mut changed = self.changed.subscribe();
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let mut expired = false;
        loop {
            let hold = {
                let s = self.script.lock().unwrap();
                if !s.hold {
                    if let Some(e) = &s.error {
                        return Err(e.clone());
                    }
                    let waiting = s.block && opts.min_index > 0 && s.index <= opts.min_index;
                    if !waiting || expired {
                        break;
                    }
                }
                s.hold
            };
            match deadline.filter(|_| !expired && !hold) {
                Some(d) => tokio::select! {
                    _ = changed.changed() => {}
                    () = tokio::time::sleep_until(d) => expired = true,
                },
                None => {
                    let _ = changed.changed().await;
                }
            }
        }
        if self.script.lock().unwrap().no_value {
            // Realistic types return "no value" only after waiting (a blocking query that
            // timed out, a rate limit): waiting Gets re-fetch at once when it arrives.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let s = self.script.lock().unwrap();
        let state = opts.state + 1;
        if s.not_modified {
            return Ok(FetchResult::not_modified(s.index).with_state(state));
        }
        if s.no_value {
            return Ok(FetchResult {
                value: None,
                index: s.index,
                state,
                not_modified: false,
            });
        }
        Ok(FetchResult::new(Arc::new(s.value.clone()), s.index).with_state(state))
    }
}

struct LiveFetch<'a>(&'a AtomicUsize);

impl<'a> LiveFetch<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        LiveFetch(c)
    }
}

impl Drop for LiveFetch<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Names a [`Fake`] type, so one test can register several.
pub trait Name: Send + Sync + 'static {
    const NAME: &'static str;
}

/// The default test type name.
pub struct A;
impl Name for A {
    const NAME: &'static str = "test-a";
}

/// A second test type name.
pub struct B;
impl Name for B {
    const NAME: &'static str = "test-b";
}

/// A cache type whose fetch is a [`Backend`]. Its state counts the fetches of the entry.
pub struct Fake<N: Name = A> {
    pub backend: Arc<Backend>,
    pub opts: TypeOptions,
    _name: PhantomData<N>,
}

impl<N: Name> Fake<N> {
    pub fn new(backend: &Arc<Backend>, opts: TypeOptions) -> Self {
        Fake {
            backend: Arc::clone(backend),
            opts,
            _name: PhantomData,
        }
    }
}

impl<N: Name> Drop for Fake<N> {
    fn drop(&mut self) {
        self.backend.types_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl<N: Name> CacheType for Fake<N> {
    const NAME: &'static str = N::NAME;
    type Request = Req;
    type Value = String;
    type State = u32;

    fn options(&self) -> TypeOptions {
        self.opts
    }

    async fn fetch(
        &self,
        opts: FetchOptions<String, u32>,
        req: &Req,
    ) -> Result<FetchResult<String, u32>> {
        self.backend.fetch(opts, req).await
    }

    fn same_value(&self, a: &String, b: &String) -> bool {
        a == b
    }

    fn size_of(&self, value: &String) -> usize {
        value.len()
    }
}

pub const T0: time::OffsetDateTime = datetime!(2018-01-01 00:00:00 UTC);

/// A cache on the current runtime with a manual clock and no back-off stagger (so back-off
/// waits are exact).
pub fn cache_with(clock: &ManualClock, tweak: impl FnOnce(&mut CacheOptions)) -> Cache {
    let mut opts = CacheOptions::with_clock(Arc::new(clock.clone()));
    opts.stagger = |_| Duration::ZERO;
    tweak(&mut opts);
    Cache::new(tokio::runtime::Handle::current(), opts).unwrap()
}

/// A cache with one registered [`Fake`] type over `backend`.
pub fn cache_for(backend: &Arc<Backend>, opts: TypeOptions) -> (Cache, ManualClock) {
    let clock = ManualClock::new(T0);
    let cache = cache_with(&clock, |_| {});
    cache.register(Fake::<A>::new(backend, opts)).unwrap();
    (cache, clock)
}

/// Lets every runnable task run (paused time does not move while anything can run).
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Sleeps on paused tokio time; auto-advance makes this instant in real time.
pub async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
    settle().await;
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
