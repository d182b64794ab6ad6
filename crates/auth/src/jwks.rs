//! Fetches and caches identity providers' JSON Web Key Sets, so validating a token costs a
//! map lookup, not a round trip, and a misbehaving provider cannot make us hammer it.
//!
//! The cache does not know the JWK format: it is generic over a [`KeySet`] that parses a
//! response body and answers whether a key id is present. One [`JwksCache`] serves every
//! provider, keyed by the `jwks_uri` string.
//!
//! Rules, each bounded by a named field of [`JwksConfig`]:
//! - keys are fetched when there are none yet, when they have expired (`Cache-Control:
//!   max-age` clamped into `[ttl_min, ttl_max]`), or when a token names an unknown key id;
//! - at most one fetch per provider per `refresh_cooldown`, whatever triggered it, and
//!   concurrent callers share that one fetch;
//! - while fetches fail, the last good keys are served up to `staleness_max` past their
//!   expiry; then lookups fail closed;
//! - only https, on every redirect hop too; the body is read chunk by chunk and abandoned past
//!   `body_bytes_max`.
//!
//! Errors and logs carry a short fixed reason, never the upstream error text or the URL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// A parsed key set. The cache only needs to parse a body and ask for a key id.
pub trait KeySet: Send + Sync + Sized + 'static {
    /// Parses a JWKS response body. The error text is dropped; only "bad body" is reported.
    fn parse(body: &[u8]) -> Result<Self, String>;
    fn contains(&self, kid: &str) -> bool;
}

/// Limits of the JWKS cache. `Default` gives the documented production values.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// Whole fetch, connect to last body byte. Default 5 s.
    pub fetch_timeout: Duration,
    /// Largest body read; a larger `Content-Length` or body is a failed fetch. Default 256 KiB.
    pub body_bytes_max: usize,
    /// `Cache-Control: max-age` is clamped into `[ttl_min, ttl_max]`; `no-store`/`no-cache`
    /// give `ttl_min`. Default 60 s.
    pub ttl_min: Duration,
    /// Default 24 h.
    pub ttl_max: Duration,
    /// Used when the response has no usable `Cache-Control`. Default 5 min.
    pub ttl_default: Duration,
    /// At most one fetch per provider per cooldown, whatever the trigger (expiry, unknown key
    /// id, earlier failure). Default 30 s.
    pub refresh_cooldown: Duration,
    /// How long past their expiry the last good keys are still served while fetches fail;
    /// after that lookups fail closed with [`JwksError::Stale`]. Default 1 h.
    pub staleness_max: Duration,
    /// Redirect hops followed; every hop must stay https. Default 3.
    pub redirects_max: usize,
    /// Test only: one more trusted CA certificate (PEM). There is deliberately no switch to
    /// allow plain http.
    pub extra_root_pem: Option<String>,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(5),
            body_bytes_max: 256 * 1024,
            ttl_min: Duration::from_secs(60),
            ttl_max: Duration::from_secs(24 * 60 * 60),
            ttl_default: Duration::from_secs(5 * 60),
            refresh_cooldown: Duration::from_secs(30),
            staleness_max: Duration::from_secs(60 * 60),
            redirects_max: 3,
            extra_root_pem: None,
        }
    }
}

/// Why no keys could be returned. Reasons are fixed strings meant for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("jwks_uri is not an absolute https URL")]
    NotHttps,
    /// The fetch failed: "timeout", "connect" (including TLS), "redirect refused", "request",
    /// "status", "too large", "body read", "bad body" or "internal".
    #[error("jwks fetch failed: {0}")]
    Fetch(&'static str),
    #[error("key id not in the provider's key set")]
    UnknownKid,
    /// No usable keys: the last good ones are past `staleness_max`, or none were ever fetched
    /// and the cooldown forbids another try yet.
    #[error("no usable jwks keys")]
    Stale,
    /// The configuration was refused by [`JwksCache::new`].
    #[error("invalid jwks configuration: {0}")]
    Config(&'static str),
}

/// Counters of one provider. `hits` are lookups answered from cached keys without waiting for
/// a fetch; every other lookup (it waited for a fetch, or found no key) is a miss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwksStats {
    pub fetches: u64,
    pub hits: u64,
    pub misses: u64,
    pub failures: u64,
}

/// The key sets of every provider, keyed by `jwks_uri`. Entries are made only for URIs the
/// caller passes, which are the registered providers' (never a value taken from a token), so
/// the map is bounded by the provider registry; `forget` removes a deleted provider's entry.
pub struct JwksCache<K: KeySet> {
    fetcher: Arc<Fetcher>,
    providers: Mutex<HashMap<String, Arc<Provider<K>>>>,
}

impl<K: KeySet> JwksCache<K> {
    pub fn new(config: JwksConfig) -> Result<Self, JwksError> {
        let fetcher = Fetcher::new(config)?;
        Ok(Self { fetcher: Arc::new(fetcher), providers: Mutex::new(HashMap::new()) })
    }

    /// Keys that contain `kid`, fetching when there are none yet, when they have expired, or
    /// (at most once per cooldown) when `kid` is unknown. Concurrent callers for one uri share
    /// one fetch; callers holding usable keys that contain `kid` never wait for it.
    pub async fn keys_for(&self, jwks_uri: &str, kid: &str) -> Result<Arc<K>, JwksError> {
        let provider = self.provider(jwks_uri)?;
        let config = &self.fetcher.config;
        let usable = match provider.next(kid, Instant::now(), config, false) {
            Next::Done(result) => return result,
            Next::Fetch { usable } => usable,
        };
        let guard = match usable {
            Some(keys) => match provider.fetch_lock.clone().try_lock_owned() {
                Ok(guard) => guard,
                Err(_) => return Ok(provider.hit(keys)),
            },
            None => provider.fetch_lock.clone().lock_owned().await,
        };
        // Whoever held the lock before us may have fetched already.
        if let Next::Done(result) = provider.next(kid, Instant::now(), config, true) {
            return result;
        }
        provider.state.lock().begin_fetch(Instant::now());
        // The fetch runs in its own task holding the lock, so a caller that gives up (request
        // timeout) neither cancels it nor lets waiters through before it has finished.
        let task = tokio::spawn(refresh(self.fetcher.clone(), jwks_uri.to_owned(), provider.clone(), guard));
        let fetched = task.await.unwrap_or(Err("internal"));
        provider.after_fetch(kid, fetched, Instant::now(), config)
    }

    pub fn stats(&self, jwks_uri: &str) -> JwksStats {
        let provider = self.providers.lock().get(jwks_uri).cloned();
        provider.map(|provider| provider.state.lock().stats).unwrap_or_default()
    }

    /// Drops everything known about a provider (it was deleted). A fetch in flight finishes
    /// into the forgotten entry and is never read.
    pub fn forget(&self, jwks_uri: &str) {
        self.providers.lock().remove(jwks_uri);
    }

    fn provider(&self, jwks_uri: &str) -> Result<Arc<Provider<K>>, JwksError> {
        if let Some(provider) = self.providers.lock().get(jwks_uri) {
            return Ok(provider.clone());
        }
        // Checked once per provider entry; entries exist only for https URLs.
        check_https(jwks_uri)?;
        let mut providers = self.providers.lock();
        Ok(providers.entry(jwks_uri.to_owned()).or_insert_with(|| Arc::new(Provider::default())).clone())
    }
}

/// Accepts an absolute https URL with a host, no userinfo and no fragment; used when a
/// provider is registered, and before its first fetch.
pub fn check_https(uri: &str) -> Result<(), JwksError> {
    let url = reqwest::Url::parse(uri).map_err(|_| JwksError::NotHttps)?;
    let acceptable = url.scheme() == "https"
        && url.host_str().is_some_and(|host| !host.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none();
    if acceptable {
        Ok(())
    } else {
        Err(JwksError::NotHttps)
    }
}

struct Provider<K> {
    state: Mutex<ProviderState<K>>,
    /// Held for the whole of a fetch: the single flight.
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
}

impl<K> Default for Provider<K> {
    fn default() -> Self {
        Self { state: Mutex::new(ProviderState::default()), fetch_lock: Arc::new(tokio::sync::Mutex::new(())) }
    }
}

struct ProviderState<K> {
    cached: Option<Cached<K>>,
    last_fetch_at: Option<Instant>,
    /// Set while a fetch task runs, so that lookups without usable keys wait for its answer.
    fetching: bool,
    stats: JwksStats,
}

impl<K> Default for ProviderState<K> {
    fn default() -> Self {
        Self { cached: None, last_fetch_at: None, fetching: false, stats: JwksStats::default() }
    }
}

struct Cached<K> {
    keys: Arc<K>,
    expires_at: Instant,
}

/// What a lookup does next, decided under the state lock.
enum Next<K> {
    Done(Result<Arc<K>, JwksError>),
    /// A fetch is due. `usable` holds stale-but-servable keys containing the kid: their holder
    /// need not wait if someone else is already fetching.
    Fetch {
        usable: Option<Arc<K>>,
    },
}

impl<K: KeySet> Provider<K> {
    /// Decides a lookup. Without the fetch lock a fetch may be in flight, and callers lacking
    /// usable keys that contain `kid` wait for it rather than answer from the cooldown. With
    /// the lock no fetch is in flight: a fetch holds it throughout.
    fn next(&self, kid: &str, now: Instant, config: &JwksConfig, holding_fetch_lock: bool) -> Next<K> {
        let mut state = self.state.lock();
        let in_flight = state.fetching && !holding_fetch_lock;
        let cooling = state.last_fetch_at.is_some_and(|at| now < at + config.refresh_cooldown);
        let fresh = state.cached.as_ref().is_some_and(|cached| now < cached.expires_at);
        let usable = state.usable(now, config).cloned();
        match usable.as_ref().filter(|keys| keys.contains(kid)) {
            // Fresh keys; or stale ones while a refresh is in flight or not allowed yet.
            Some(keys) if fresh || in_flight || cooling => {
                let keys = keys.clone();
                state.count_answer(holding_fetch_lock);
                Next::Done(Ok(keys))
            }
            Some(keys) => Next::Fetch { usable: Some(keys.clone()) },
            None if in_flight || !cooling => Next::Fetch { usable: None },
            None => {
                state.stats.misses += 1;
                Next::Done(Err(if usable.is_some() { JwksError::UnknownKid } else { JwksError::Stale }))
            }
        }
    }

    fn hit(&self, keys: Arc<K>) -> Arc<K> {
        self.state.lock().stats.hits += 1;
        keys
    }

    /// The answer for the caller that waited for a fetch (the keys, if any, are stored by then).
    fn after_fetch(
        &self,
        kid: &str,
        fetched: Result<(), &'static str>,
        now: Instant,
        config: &JwksConfig,
    ) -> Result<Arc<K>, JwksError> {
        let mut state = self.state.lock();
        state.stats.misses += 1;
        let usable = state.usable(now, config).cloned();
        match (usable, fetched) {
            (Some(keys), _) if keys.contains(kid) => Ok(keys),
            (Some(_), Ok(())) => Err(JwksError::UnknownKid),
            (None, Err(_)) if state.cached.is_some() => Err(JwksError::Stale),
            (_, Err(reason)) => Err(JwksError::Fetch(reason)),
            // Keys stored a moment ago cannot have expired: ttl_min is positive.
            (None, Ok(())) => Err(JwksError::Fetch("internal")),
        }
    }
}

impl<K> ProviderState<K> {
    /// Keys that may still be served: fresh, or expired for less than `staleness_max`.
    fn usable(&self, now: Instant, config: &JwksConfig) -> Option<&Arc<K>> {
        let cached = self.cached.as_ref()?;
        (now < cached.expires_at + config.staleness_max).then_some(&cached.keys)
    }

    fn begin_fetch(&mut self, now: Instant) {
        self.last_fetch_at = Some(now);
        self.fetching = true;
        self.stats.fetches += 1;
    }

    /// A lookup answered with keys: a hit unless it went through the fetch lock.
    fn count_answer(&mut self, through_fetch_lock: bool) {
        if through_fetch_lock {
            self.stats.misses += 1;
        } else {
            self.stats.hits += 1;
        }
    }
}

/// Fetches one provider's keys and stores them; runs in its own task holding the fetch lock.
async fn refresh<K: KeySet>(
    fetcher: Arc<Fetcher>,
    jwks_uri: String,
    provider: Arc<Provider<K>>,
    _single_flight: OwnedMutexGuard<()>,
) -> Result<(), &'static str> {
    let _fetching = FetchingFlag(&provider);
    let fetched = fetcher.fetch::<K>(&jwks_uri).await;
    let mut state = provider.state.lock();
    match fetched {
        Ok((keys, ttl)) => {
            tracing::debug!(target: "licenseseal::jwks", ttl_s = ttl.as_secs(), "jwks fetched");
            state.cached = Some(Cached { keys: Arc::new(keys), expires_at: Instant::now() + ttl });
            Ok(())
        }
        Err(reason) => {
            tracing::warn!(target: "licenseseal::jwks", reason, "jwks fetch failed");
            state.stats.failures += 1;
            Err(reason)
        }
    }
}

/// Clears `ProviderState::fetching` when the fetch task ends, also by a panic in
/// `KeySet::parse`. Dropped before the fetch lock is released.
struct FetchingFlag<'a, K>(&'a Provider<K>);

impl<K> Drop for FetchingFlag<'_, K> {
    fn drop(&mut self) {
        self.0.state.lock().fetching = false;
    }
}

/// The HTTP side: one client, built once, with every limit applied.
struct Fetcher {
    config: JwksConfig,
    client: reqwest::Client,
}

impl Fetcher {
    fn new(config: JwksConfig) -> Result<Self, JwksError> {
        if config.body_bytes_max == 0 || config.fetch_timeout.is_zero() || config.ttl_min.is_zero() {
            return Err(JwksError::Config("body_bytes_max, fetch_timeout and ttl_min must be positive"));
        }
        if !(config.ttl_min <= config.ttl_default && config.ttl_default <= config.ttl_max) {
            return Err(JwksError::Config("need ttl_min <= ttl_default <= ttl_max"));
        }
        let redirects_max = config.redirects_max;
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.url().scheme() != "https" {
                attempt.error("redirect to a non-https URL")
            } else if attempt.previous().len() > redirects_max {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .redirect(redirect)
            .timeout(config.fetch_timeout)
            .connect_timeout(config.fetch_timeout);
        if let Some(pem) = &config.extra_root_pem {
            // `from_pem` would accept text without any certificate and trust nothing more.
            let mut roots = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default();
            let (Some(root), None) = (roots.pop(), roots.pop()) else {
                return Err(JwksError::Config("extra_root_pem must hold exactly one PEM certificate"));
            };
            builder = builder.add_root_certificate(root);
        }
        let client = builder.build().map_err(|_| JwksError::Config("cannot build the http client"))?;
        Ok(Self { config, client })
    }

    async fn fetch<K: KeySet>(&self, jwks_uri: &str) -> Result<(K, Duration), &'static str> {
        let mut response = self.client.get(jwks_uri).send().await.map_err(reason)?;
        if !response.status().is_success() {
            return Err("status");
        }
        let limit = self.config.body_bytes_max;
        if response.content_length().is_some_and(|length| length > limit as u64) {
            return Err("too large");
        }
        let ttl = self.ttl(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(reason)? {
            if body.len() + chunk.len() > limit {
                return Err("too large");
            }
            body.extend_from_slice(&chunk);
        }
        let keys = K::parse(&body).map_err(|_| "bad body")?;
        Ok((keys, ttl))
    }

    /// `Cache-Control` → time to live: `no-store`/`no-cache` give `ttl_min`, `max-age` is
    /// clamped into `[ttl_min, ttl_max]`, anything else gives `ttl_default`.
    fn ttl(&self, headers: &reqwest::header::HeaderMap) -> Duration {
        let config = &self.config;
        let directives = headers
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|directive| directive.trim().to_ascii_lowercase());
        let mut max_age = None;
        for directive in directives {
            if directive == "no-store" || directive == "no-cache" {
                return config.ttl_min;
            }
            if let Some(seconds) = directive.strip_prefix("max-age=") {
                max_age = max_age.or_else(|| seconds.trim_matches('"').parse::<u64>().ok());
            }
        }
        max_age.map_or(config.ttl_default, |seconds| Duration::from_secs(seconds).clamp(config.ttl_min, config.ttl_max))
    }
}

/// The audit reason of a transport error; the error itself (which may hold the URL) is dropped.
fn reason(error: reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_redirect() {
        "redirect refused"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body read"
    } else {
        "request"
    }
}
