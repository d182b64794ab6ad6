//! External identity providers through the real server, with a real HTTPS JWKS endpoint
//! (generated CA, loopback): registration rules, tokens used for ledger calls, rotation at the
//! provider, a storm of unknown kids, the provider going down, and forged tokens (auth
//! scenarios A3, A4, A6, A7).

mod common;

use std::time::Duration;

use common::idp::TestIdp;
use common::{Backend, Gateway, Reply};
use licenseseal_server::ServerConfig;
use licenseseal_testkit::{JwksServer, TestCa};
use serde_json::{json, Value};

const AUDIENCE: &str = "https://api.example";

/// A gateway trusting `ca` for JWKS fetches, with `tweak` applied on top.
async fn gateway(backend: Backend, ca: &TestCa, tweak: impl FnOnce(&mut ServerConfig)) -> Option<Gateway> {
    let pem = ca.cert_pem();
    Gateway::start_on_with(backend, move |c| {
        c.providers.jwks.extra_root_pem = Some(pem);
        tweak(c);
    })
    .await
}

fn registration(idp: &TestIdp, server: &JwksServer, algorithms: &[&str]) -> Value {
    json!({ "issuer": idp.issuer, "jwks_uri": server.url(), "audiences": [AUDIENCE], "algorithms": algorithms })
}

async fn register(gw: &Gateway, key: &str, body: Value) -> Reply {
    gw.post("/v1/identity-providers", key, None, body).await
}

fn now_s(gw: &Gateway) -> i64 {
    gw.now().micros() / 1_000_000
}

/// A fresh token (new `jti`, so never served from the verified-token cache).
fn token(gw: &Gateway, idp: &TestIdp, kid: &str, subject: &str, scope: &str) -> String {
    let mut claims = idp.claims(subject, AUDIENCE, scope, now_s(gw));
    claims["jti"] = json!(uuid::Uuid::now_v7().to_string());
    idp.sign(kid, &claims)
}

fn assert_401(r: &Reply) {
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.is_problem());
    assert_eq!(r.body["detail"], "authentication failed");
}

async fn registration_rules_on(backend: Backend) {
    let ca = TestCa::new("idp-ca");
    let server = JwksServer::start(&ca).await;
    let Some(gw) = gateway(backend, &ca, |_| {}).await else { return common::skipped() };
    let idp = TestIdp::new("https://idp.example/a");
    let a = gw.tenant().await;
    let b = gw.tenant().await;
    let bad = [
        json!({ "jwks_uri": format!("http://127.0.0.1:{}/jwks.json", server.port()) }),
        json!({ "jwks_uri": "file:///etc/passwd" }),
        json!({ "algorithms": ["HS256"] }),
        json!({ "algorithms": ["none"] }),
        json!({ "algorithms": [] }),
        json!({ "audiences": [] }),
        json!({ "leeway_seconds": 86_400 }),
        json!({ "issuer": "" }),
        json!({ "issuer": gw.base }),
    ];
    for change in bad {
        let mut body = registration(&idp, &server, &["EdDSA"]);
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = register(&gw, &a.key, body.clone()).await;
        assert_eq!(r.status, 400, "{body} → {}", r.body);
        assert!(r.is_problem());
    }
    let unknown_field = register(
        &gw,
        &a.key,
        json!({ "issuer": "x", "jwks_uri": server.url(), "audiences": ["a"], "algorithms": ["EdDSA"], "jku": "x" }),
    )
    .await;
    assert_eq!(unknown_field.status, 400);
    assert_eq!(server.fetches(), 0, "registration never fetches");

    let created = register(&gw, &a.key, registration(&idp, &server, &["EdDSA", "ES256"])).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.str("id");
    assert!(id.starts_with("idp_"));
    assert_eq!((created.str("subject_claim"), created.str("scope_claim")), ("sub".into(), "scope".into()));
    assert_eq!(created.i64("leeway_seconds"), 60);
    let taken = register(&gw, &b.key, registration(&idp, &server, &["EdDSA"])).await;
    assert_eq!((taken.status, taken.body["code"].as_str()), (409, Some("issuer_taken")));

    let list = gw.get("/v1/identity-providers", &a.key).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(gw.get("/v1/identity-providers", &b.key).await.body["data"], json!([]));
    let one = gw.get(&format!("/v1/identity-providers/{id}"), &a.key).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["jwks"]["fetches"], 0);
    assert_eq!(gw.get(&format!("/v1/identity-providers/{id}"), &b.key).await.status, 404);
    let foreign_delete = gw.call("DELETE", &format!("/v1/identity-providers/{id}"), Some(&b.key), None, None).await;
    assert_eq!(foreign_delete.status, 404);
    let bound = gw.key(&a.key, json!({ "name": "bound", "scopes": ["keys.manage"], "subject": "alice" })).await;
    assert_eq!(gw.get("/v1/identity-providers", &bound).await.status, 403);
    let deleted = gw.call("DELETE", &format!("/v1/identity-providers/{id}"), Some(&a.key), None, None).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(gw.get(&format!("/v1/identity-providers/{id}"), &a.key).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registration_rules_sqlite() {
    registration_rules_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registration_rules_postgres() {
    registration_rules_on(Backend::Postgres).await;
}

async fn provider_tokens_on(backend: Backend) {
    let ca = TestCa::new("idp-ca");
    let server = JwksServer::start(&ca).await;
    let Some(gw) = gateway(backend, &ca, |_| {}).await else { return common::skipped() };
    let idp = TestIdp::new("https://idp.example/tokens");
    let mut jwks = idp.jwks(&["ed-1", "es-1"]);
    // RFC 7517 A.1's RSA key is published too, for the algorithm-confusion attack (A3).
    let rsa = json!({ "kty": "RSA", "kid": "2011-04-29", "use": "sig", "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw" });
    jwks["keys"].as_array_mut().unwrap().push(rsa.clone());
    server.set_body(jwks);
    let t = gw.tenant().await;
    let created = register(&gw, &t.key, registration(&idp, &server, &["EdDSA", "RS256"])).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.str("id");
    gw.grant(&t.key, "g1", "alice", 100).await;
    gw.grant(&t.key, "g2", "bob", 100).await;

    // A provider token acts for its subject with the scopes its scope claim names.
    let alice = token(&gw, &idp, "ed-1", "alice", "openid usage.debit ledger.read");
    let d = gw.debit(&alice, "d1", "alice", 10).await;
    assert_eq!(d.status, 201, "{}", d.body);
    assert_eq!(gw.debit(&alice, "d2", "bob", 10).await.status, 403, "bound to its subject");
    assert_eq!(gw.grant(&alice, "g3", "alice", 10).await.status, 403, "no credits.grant scope");
    assert_eq!(gw.account(&alice, "alice").await.i64("balance"), 90);
    assert_eq!(server.fetches(), 1);

    // Refused: wrong audience, expired, an algorithm the provider does not allow (ES256),
    // an unknown issuer.
    let mut claims = idp.claims("alice", "https://other.example", "usage.debit", now_s(&gw));
    assert_401(&gw.debit(&idp.sign("ed-1", &claims), "x1", "alice", 1).await);
    claims = idp.claims("alice", AUDIENCE, "usage.debit", now_s(&gw) - 1000);
    assert_401(&gw.debit(&idp.sign("ed-1", &claims), "x2", "alice", 1).await);
    assert_401(&gw.debit(&token(&gw, &idp, "es-1", "alice", "usage.debit"), "x3", "alice", 1).await);
    let stranger = TestIdp::new("https://stranger.example");
    assert_401(&gw.debit(&token(&gw, &stranger, "ed-1", "alice", "usage.debit"), "x4", "alice", 1).await);

    // A3: HS256 MACed with the provider's RSA public key, in every encoding.
    let claims = idp.claims("alice", AUDIENCE, "usage.debit", now_s(&gw)).to_string();
    let header = json!({ "alg": "HS256", "kid": "2011-04-29" }).to_string();
    for secret in [rsa.to_string(), rsa["n"].as_str().unwrap().to_owned(), "-----BEGIN PUBLIC KEY-----".to_owned()] {
        assert_401(&gw.debit(&common::idp::hs256(&header, &claims, secret.as_bytes()), "x5", "alice", 1).await);
    }
    // A4: keys carried by the token are never used and cause no fetch.
    let fetches = server.fetches();
    let claims_v = idp.claims("alice", AUDIENCE, "usage.debit", now_s(&gw));
    for extra in [
        json!({ "jwk": idp.jwks(&["ed-1"])["keys"][0] }),
        json!({ "jku": server.url() }),
        json!({ "x5u": server.url() }),
        json!({ "x5c": ["MIIB"] }),
        json!({ "crit": ["exp"] }),
    ] {
        assert_401(&gw.debit(&idp.sign_with_header("ed-1", extra.clone(), &claims_v), "x6", "alice", 1).await);
    }
    assert_eq!(server.fetches(), fetches, "forged headers fetched nothing");

    // A provider token can be exchanged for an Authority token, which hangs on the provider.
    let exchanged = gw
        .http
        .post(format!("{}/v1/authority/token", gw.base))
        .bearer_auth(token(&gw, &idp, "ed-1", "alice", "usage.debit"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let exchanged = Gateway::reply(exchanged).await;
    assert_eq!(exchanged.status, 200, "{}", exchanged.body);
    let ours = exchanged.str("access_token");
    assert_eq!(gw.debit(&ours, "d3", "alice", 1).await.status, 201);

    // Deleting the provider ends its tokens, verified ones and exchanged ones alike.
    let deleted = gw.call("DELETE", &format!("/v1/identity-providers/{id}"), Some(&t.key), None, None).await;
    assert_eq!(deleted.status, 204);
    assert_401(&gw.debit(&alice, "d4", "alice", 1).await);
    assert_401(&gw.debit(&ours, "d5", "alice", 1).await);
    assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 89);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_tokens_sqlite() {
    provider_tokens_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_tokens_postgres() {
    provider_tokens_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_kid_at_the_provider_is_accepted_after_one_refresh() {
    let ca = TestCa::new("idp-ca");
    let server = JwksServer::start(&ca).await;
    let cooldown = Duration::from_millis(300);
    let gw = gateway(Backend::Sqlite, &ca, |c| c.providers.jwks.refresh_cooldown = cooldown).await.unwrap();
    let mut idp = TestIdp::new("https://idp.example/rotation");
    idp.add_ed25519("ed-2");
    server.set_body(idp.jwks(&["ed-1"]));
    let t = gw.tenant().await;
    assert_eq!(register(&gw, &t.key, registration(&idp, &server, &["EdDSA"])).await.status, 201);
    gw.grant(&t.key, "g1", "alice", 100).await;

    assert_eq!(gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), "d1", "alice", 1).await.status, 201);
    assert_eq!(server.fetches(), 1);
    // The provider rotates: ed-2 appears. A token signed with it triggers one refresh.
    tokio::time::sleep(cooldown).await;
    server.set_body(idp.jwks(&["ed-1", "ed-2"]));
    assert_eq!(gw.debit(&token(&gw, &idp, "ed-2", "alice", "usage.debit"), "d2", "alice", 1).await.status, 201);
    assert_eq!(server.fetches(), 2);
    assert_eq!(gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), "d3", "alice", 1).await.status, 201);
    assert_eq!(server.fetches(), 2, "both kids now cached");
}

/// A6: a thousand random kids with garbage signatures are all refused, cause at most one JWKS
/// fetch per cooldown and never two at once, and valid tokens keep working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_unknown_kids_causes_at_most_one_fetch_per_cooldown() {
    let ca = TestCa::new("idp-ca");
    let server = JwksServer::start(&ca).await;
    server.set_delay(Duration::from_millis(50));
    let gw = gateway(Backend::Sqlite, &ca, |_| {}).await.unwrap();
    let idp = TestIdp::new("https://idp.example/storm");
    server.set_body(idp.jwks(&["ed-1"]));
    let t = gw.tenant().await;
    assert_eq!(register(&gw, &t.key, registration(&idp, &server, &["EdDSA"])).await.status, 201);
    gw.grant(&t.key, "g1", "alice", 1_000_000).await;
    assert_eq!(gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), "warm", "alice", 1).await.status, 201);
    assert_eq!(server.fetches(), 1);

    let claims = idp.claims("alice", AUDIENCE, "usage.debit", now_s(&gw)).to_string();
    let mut storm = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let header = json!({ "alg": "EdDSA", "kid": format!("random-{i}-{}", uuid::Uuid::now_v7()) }).to_string();
        let forged = common::idp::forge(&header, &claims, &[7u8; 64]);
        let (http, url) = (gw.http.clone(), format!("{}/v1/debits", gw.base));
        storm.spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(forged)
                .header("idempotency-key", format!("storm-{i}"))
                .json(&json!({ "subject": "alice", "amount": 1 }))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        });
    }
    let mut valid = Vec::new();
    for i in 0..20 {
        valid.push(
            gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), &format!("ok{i}"), "alice", 1).await.status,
        );
    }
    while let Some(status) = storm.join_next().await {
        assert_eq!(status.unwrap(), 401);
    }
    assert!(valid.iter().all(|s| *s == 201), "{valid:?}");
    assert!(server.fetches() <= 2, "fetches: {}", server.fetches());
    assert_eq!(server.max_concurrent(), 1);
    assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 1_000_000 - 21);
}

/// The provider goes down: the last good keys serve until the staleness limit, then tokens
/// are refused (fail closed); meanwhile two-credential requests are refused (A7) and other
/// tenants are served. When the provider is back, it is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_outage_serves_stale_keys_then_fails_closed() {
    let ca = TestCa::new("idp-ca");
    let server = JwksServer::start(&ca).await;
    let gw = gateway(Backend::Sqlite, &ca, |c| {
        let j = &mut c.providers.jwks;
        j.ttl_min = Duration::from_millis(500);
        j.ttl_default = Duration::from_millis(500);
        j.refresh_cooldown = Duration::from_millis(200);
        j.staleness_max = Duration::from_secs(2);
        j.fetch_timeout = Duration::from_millis(500);
    })
    .await
    .unwrap();
    let idp = TestIdp::new("https://idp.example/outage");
    server.set_body(idp.jwks(&["ed-1"]));
    let t = gw.tenant().await;
    let other = gw.tenant().await;
    assert_eq!(register(&gw, &t.key, registration(&idp, &server, &["EdDSA"])).await.status, 201);
    gw.grant(&t.key, "g1", "alice", 100).await;
    gw.grant(&other.key, "g1", "carol", 100).await;
    assert_eq!(gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), "d1", "alice", 1).await.status, 201);

    server.set_status(500);
    tokio::time::sleep(Duration::from_millis(800)).await; // keys expired, provider failing
    assert_eq!(gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), "d2", "alice", 1).await.status, 201);
    let two = gw
        .http
        .post(format!("{}/v1/debits", gw.base))
        .header("authorization", format!("Bearer {}", token(&gw, &idp, "ed-1", "alice", "usage.debit")))
        .header("authorization", format!("Bearer {}", t.key))
        .header("idempotency-key", "two")
        .json(&json!({ "subject": "alice", "amount": 1 }))
        .send()
        .await
        .unwrap();
    assert_401(&Gateway::reply(two).await);
    server.set_delay(Duration::from_secs(2)); // now timing out instead of failing fast
    tokio::time::sleep(Duration::from_millis(2200)).await; // past the staleness limit
    let refused = gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), "d3", "alice", 1).await;
    assert_401(&refused);
    assert_eq!(gw.debit(&other.key, "o1", "carol", 1).await.status, 201, "other tenants unaffected");

    server.set_delay(Duration::ZERO);
    server.set_status(200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.debit(&token(&gw, &idp, "ed-1", "alice", "usage.debit"), "d4", "alice", 1).await.status, 201);
    assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 97);
    let stats = gw.get("/v1/identity-providers", &t.key).await.body["data"][0]["id"].as_str().unwrap().to_owned();
    let one = gw.get(&format!("/v1/identity-providers/{stats}"), &t.key).await;
    assert!(one.body["jwks"]["failures"].as_u64().unwrap() >= 1, "{}", one.body);
}
