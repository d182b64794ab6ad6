//! The JWKS cache against a real HTTPS server on loopback (testkit's `JwksServer`, certificates
//! from a throwaway CA): caching, Cache-Control, rotation, single flight under a storm of
//! unknown key ids, stale keys during an outage, and every refused fetch.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use licenseseal_auth::jwks::{check_https, JwksCache, JwksConfig, JwksError, KeySet};
use licenseseal_testkit::{JwksServer, TestCa};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

/// Just enough of a JWKS: the `kid` of every key.
struct Kids(HashSet<String>);

impl KeySet for Kids {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|error| error.to_string())?;
        let keys = value.get("keys").and_then(Value::as_array).ok_or("no keys array")?;
        let kids = keys.iter().map(|key| key.get("kid").and_then(Value::as_str).map(str::to_owned));
        Ok(Self(kids.collect::<Option<_>>().ok_or("key without kid")?))
    }

    fn contains(&self, kid: &str) -> bool {
        self.0.contains(kid)
    }
}

fn jwks(kids: &[&str]) -> Value {
    json!({ "keys": kids.iter().map(|kid| json!({ "kid": kid, "kty": "EC" })).collect::<Vec<_>>() })
}

/// Short limits so the whole file runs in a few seconds; the test CA is trusted.
fn config(ca: &TestCa) -> JwksConfig {
    JwksConfig {
        fetch_timeout: Duration::from_secs(2),
        ttl_min: Duration::from_millis(100),
        ttl_default: Duration::from_secs(60),
        refresh_cooldown: Duration::from_millis(200),
        staleness_max: Duration::from_secs(60),
        extra_root_pem: Some(ca.cert_pem()),
        ..JwksConfig::default()
    }
}

/// A server publishing `kids` and a cache built by `tune` from the default test config.
async fn provider(kids: &[&str], tune: impl FnOnce(&mut JwksConfig)) -> (JwksServer, JwksCache<Kids>) {
    let ca = TestCa::new("licenseseal test ca");
    let server = JwksServer::start(&ca).await;
    server.set_body(jwks(kids));
    let mut config = config(&ca);
    tune(&mut config);
    (server, JwksCache::new(config).expect("valid config"))
}

#[tokio::test]
async fn first_lookup_fetches_once_and_repeated_lookups_hit_the_cache() {
    let (server, cache) = provider(&["a", "b"], |_| {}).await;
    let uri = server.url();
    for kid in ["a", "b", "a", "a", "b"] {
        let keys = cache.keys_for(&uri, kid).await.expect("known kid");
        assert!(keys.contains(kid));
    }
    assert_eq!(server.fetches(), 1);
    let stats = cache.stats(&uri);
    assert_eq!((stats.fetches, stats.hits, stats.misses, stats.failures), (1, 4, 1, 0));

    cache.forget(&uri);
    assert_eq!(cache.stats(&uri), Default::default());
    cache.keys_for(&uri, "a").await.expect("fetched again after forget");
    assert_eq!(server.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_lookups_share_one_fetch() {
    let (server, cache) = provider(&["a"], |_| {}).await;
    server.set_delay(Duration::from_millis(200));
    let cache = Arc::new(cache);
    let lookups = (0..50).map(|_| {
        let (cache, uri) = (cache.clone(), server.url());
        tokio::spawn(async move { cache.keys_for(&uri, "a").await.map(|_| ()) })
    });
    for lookup in lookups.collect::<Vec<_>>() {
        assert_eq!(lookup.await.unwrap(), Ok(()));
    }
    assert_eq!(server.fetches(), 1);
    assert_eq!(server.max_concurrent(), 1);
}

#[tokio::test]
async fn max_age_below_ttl_min_is_raised_to_ttl_min() {
    let (server, cache) = provider(&["a"], |config| config.ttl_min = Duration::from_millis(1500)).await;
    server.set_cache_control(Some("public, max-age=1".to_owned()));
    cache.keys_for(&server.url(), "a").await.unwrap();
    sleep(Duration::from_millis(1200)).await;
    cache.keys_for(&server.url(), "a").await.unwrap();
    assert_eq!(server.fetches(), 1, "max-age=1 is raised to ttl_min (1.5 s)");
    sleep(Duration::from_millis(500)).await;
    cache.keys_for(&server.url(), "a").await.unwrap();
    assert_eq!(server.fetches(), 2, "refetched once ttl_min has passed");
}

#[tokio::test]
async fn max_age_is_honoured_between_the_bounds() {
    let (server, cache) = provider(&["a"], |_| {}).await;
    server.set_cache_control(Some("max-age=1".to_owned()));
    cache.keys_for(&server.url(), "a").await.unwrap();
    sleep(Duration::from_millis(600)).await;
    cache.keys_for(&server.url(), "a").await.unwrap();
    assert_eq!(server.fetches(), 1, "still fresh under max-age=1");
    sleep(Duration::from_millis(600)).await;
    cache.keys_for(&server.url(), "a").await.unwrap();
    assert_eq!(server.fetches(), 2, "refetched after max-age");
}

#[tokio::test]
async fn max_age_above_ttl_max_and_no_store_are_clamped() {
    let (server, cache) = provider(&["a"], |config| {
        config.ttl_min = Duration::from_millis(200);
        config.ttl_default = Duration::from_millis(400);
        config.ttl_max = Duration::from_millis(400);
    })
    .await;
    server.set_cache_control(Some("max-age=86400".to_owned()));
    cache.keys_for(&server.url(), "a").await.unwrap();
    sleep(Duration::from_millis(500)).await;
    cache.keys_for(&server.url(), "a").await.unwrap();
    assert_eq!(server.fetches(), 2, "a day of max-age is cut to ttl_max (400 ms)");

    server.set_cache_control(Some("no-store, max-age=86400".to_owned()));
    sleep(Duration::from_millis(500)).await;
    cache.keys_for(&server.url(), "a").await.unwrap();
    sleep(Duration::from_millis(300)).await;
    cache.keys_for(&server.url(), "a").await.unwrap();
    assert_eq!(server.fetches(), 4, "no-store keeps keys for ttl_min (200 ms) only");
}

#[tokio::test]
async fn unknown_kid_refreshes_once_per_cooldown_and_finds_a_rotated_key() {
    let (server, cache) = provider(&["old"], |config| config.refresh_cooldown = Duration::from_millis(300)).await;
    let uri = server.url();
    cache.keys_for(&uri, "old").await.unwrap();
    server.set_body(jwks(&["old", "new"]));

    let early = cache.keys_for(&uri, "new").await;
    assert_eq!(early.err(), Some(JwksError::UnknownKid), "no refresh within the cooldown");
    assert_eq!(server.fetches(), 1);

    sleep(Duration::from_millis(350)).await;
    let keys = cache.keys_for(&uri, "new").await.expect("one refresh finds the rotated key");
    assert!(keys.contains("new"));
    assert_eq!(server.fetches(), 2);
    assert_eq!(cache.keys_for(&uri, "other").await.err(), Some(JwksError::UnknownKid));
    assert_eq!(server.fetches(), 2, "the next unknown kid waits for the cooldown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_unknown_kids_costs_one_fetch_and_known_kids_keep_working() {
    let cooldown = Duration::from_secs(1);
    let (server, cache) = provider(&["known"], |config| config.refresh_cooldown = cooldown).await;
    let (cache, uri) = (Arc::new(cache), server.url());
    cache.keys_for(&uri, "known").await.unwrap();
    sleep(cooldown + Duration::from_millis(50)).await;
    // The storm's one refresh stays in flight long enough for every lookup to pile onto it.
    server.set_delay(Duration::from_millis(300));
    let storm_started = Instant::now();

    let storm: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, uri) = (cache.clone(), uri.clone());
            let kid = format!("random-{:016x}", rand::random::<u64>());
            tokio::spawn(async move { cache.keys_for(&uri, &kid).await.map(|_| ()) })
        })
        .collect();
    let known = {
        let (cache, uri) = (cache.clone(), uri.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..100 {
                let started = Instant::now();
                cache.keys_for(&uri, "known").await.expect("a known kid keeps working");
                slowest = slowest.max(started.elapsed());
                sleep(Duration::from_millis(3)).await;
            }
            slowest
        })
    };

    for lookup in storm {
        assert_eq!(lookup.await.unwrap(), Err(JwksError::UnknownKid));
    }
    let slowest_known = known.await.unwrap();
    assert!(storm_started.elapsed() < cooldown, "the storm fitted in one cooldown");
    assert_eq!(server.fetches(), 2, "one initial fetch, one refresh for the whole storm");
    assert_eq!(server.max_concurrent(), 1);
    assert!(slowest_known < Duration::from_millis(200), "known kids never waited for the refresh: {slowest_known:?}");
    let stats = cache.stats(&uri);
    assert_eq!((stats.fetches, stats.failures), (2, 0));
    assert_eq!(stats.hits + stats.misses, 1 + 1000 + 100);
}

#[tokio::test]
async fn an_outage_serves_stale_keys_until_staleness_max_then_fails_closed_then_recovers() {
    let (server, cache) = provider(&["a"], |config| {
        config.ttl_min = Duration::from_millis(300);
        config.ttl_default = Duration::from_millis(300);
        config.refresh_cooldown = Duration::from_millis(200);
        config.staleness_max = Duration::from_millis(800);
    })
    .await;
    let uri = server.url();
    cache.keys_for(&uri, "a").await.unwrap();
    let fetched_at = Instant::now();
    server.set_status(500);

    // Expired (300 ms) but within staleness (300 + 800 ms): served, after one failed refresh.
    sleep(Duration::from_millis(400)).await;
    cache.keys_for(&uri, "a").await.expect("stale keys are served during the outage");
    cache.keys_for(&uri, "a").await.expect("and again, without a fetch in the cooldown");
    assert_eq!(server.fetches(), 2);
    assert_eq!(cache.stats(&uri).failures, 1);

    sleep((fetched_at + Duration::from_millis(1250)).saturating_duration_since(Instant::now())).await;
    assert_eq!(cache.keys_for(&uri, "a").await.err(), Some(JwksError::Stale), "fails closed past staleness_max");
    assert_eq!(cache.keys_for(&uri, "a").await.err(), Some(JwksError::Stale));
    assert_eq!(server.fetches(), 3, "one try per cooldown");

    server.set_status(200);
    assert_eq!(cache.keys_for(&uri, "a").await.err(), Some(JwksError::Stale), "recovery waits for the cooldown");
    sleep(Duration::from_millis(250)).await;
    cache.keys_for(&uri, "a").await.expect("recovered after the cooldown");
    assert_eq!(server.fetches(), 4);
    assert_eq!(cache.stats(&uri).failures, 2);
}

#[tokio::test]
async fn a_provider_slower_than_fetch_timeout_is_a_fetch_error_within_the_timeout() {
    let (server, cache) = provider(&["a"], |config| config.fetch_timeout = Duration::from_millis(300)).await;
    server.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let result = cache.keys_for(&server.url(), "a").await;
    let elapsed = started.elapsed();
    assert_eq!(result.err(), Some(JwksError::Fetch("timeout")));
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(1000), "took {elapsed:?}");
}

#[tokio::test]
async fn a_body_over_body_bytes_max_is_a_fetch_error_with_or_without_content_length() {
    let many: Vec<String> = (0..200).map(|i| format!("key-{i:04}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for chunked in [false, true] {
        let (server, cache) = provider(&many, |config| config.body_bytes_max = 2048).await;
        server.set_chunked(chunked);
        let result = cache.keys_for(&server.url(), "key-0000").await;
        assert_eq!(result.err(), Some(JwksError::Fetch("too large")), "chunked: {chunked}");
    }
}

#[tokio::test]
async fn a_body_that_does_not_parse_is_a_fetch_error() {
    let (server, cache) = provider(&[], |_| {}).await;
    server.set_body(json!({ "not": "a key set" }));
    assert_eq!(cache.keys_for(&server.url(), "a").await.err(), Some(JwksError::Fetch("bad body")));
}

#[tokio::test]
async fn a_redirect_to_plain_http_is_refused() {
    let (server, cache) = provider(&["a"], |_| {}).await;
    server.set_redirect(Some(format!("http://localhost:{}/jwks.json", server.port())));
    assert_eq!(cache.keys_for(&server.url(), "a").await.err(), Some(JwksError::Fetch("redirect refused")));
    assert_eq!(server.fetches(), 1, "the http location was never requested");
}

#[tokio::test]
async fn https_redirects_stop_after_redirects_max() {
    let (server, cache) = provider(&["a"], |config| config.redirects_max = 3).await;
    server.set_redirect(Some(server.url()));
    assert_eq!(cache.keys_for(&server.url(), "a").await.err(), Some(JwksError::Fetch("redirect refused")));
    assert_eq!(server.fetches(), 4, "the first request and three followed hops");
}

#[tokio::test]
async fn a_plain_http_uri_is_refused_without_a_request() {
    let (server, cache) = provider(&["a"], |_| {}).await;
    let http = format!("http://localhost:{}/jwks.json", server.port());
    assert_eq!(cache.keys_for(&http, "a").await.err(), Some(JwksError::NotHttps));
    assert_eq!(server.fetches(), 0);
}

#[test]
fn check_https_accepts_only_absolute_https_urls_with_a_host() {
    let cases = [
        ("https://idp.example.com/.well-known/jwks.json", true),
        ("https://127.0.0.1:8443/jwks", true),
        ("HTTPS://idp.example.com/jwks", true),
        ("http://idp.example.com/jwks", false),
        ("ftp://idp.example.com/jwks", false),
        ("https://user:pass@idp.example.com/jwks", false),
        ("https://user@idp.example.com/jwks", false),
        ("https://idp.example.com/jwks#keys", false),
        ("/jwks.json", false),
        ("idp.example.com/jwks", false),
        ("", false),
    ];
    for (uri, accepted) in cases {
        assert_eq!(check_https(uri).is_ok(), accepted, "{uri}");
    }
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_a_fetch_error() {
    let (server, _) = provider(&["a"], |_| {}).await;
    let other_ca = TestCa::new("some other ca");
    for extra_root_pem in [None, Some(other_ca.cert_pem())] {
        let config = JwksConfig { extra_root_pem, ..config(&other_ca) };
        let cache = JwksCache::<Kids>::new(config).unwrap();
        assert_eq!(cache.keys_for(&server.url(), "a").await.err(), Some(JwksError::Fetch("connect")));
    }
    assert_eq!(server.fetches(), 0);
}

#[test]
fn inconsistent_limits_are_refused_at_construction() {
    let config = JwksConfig { ttl_min: Duration::from_secs(600), ..JwksConfig::default() };
    assert!(matches!(JwksCache::<Kids>::new(config), Err(JwksError::Config(_))));
    let config = JwksConfig { body_bytes_max: 0, ..JwksConfig::default() };
    assert!(matches!(JwksCache::<Kids>::new(config), Err(JwksError::Config(_))));
    let config = JwksConfig { extra_root_pem: Some("not a certificate".to_owned()), ..JwksConfig::default() };
    assert!(matches!(JwksCache::<Kids>::new(config), Err(JwksError::Config(_))));
}
