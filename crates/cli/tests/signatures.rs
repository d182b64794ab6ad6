//! Signed requests (RFC 9421) through the real server, signed with the documented client
//! helper `licenseseal_auth::httpsig::sign_request`: both algorithms, replays, the time window,
//! body and query tampering (A9, A11), rotation and revocation, ambiguity, tenants requiring
//! signatures, and registration errors.

mod common;

use base64::Engine;
use common::{Gateway, Reply};
use licenseseal_auth::httpsig::{sign_request, RequestParts, SigningKey};
use ring::signature::KeyPair;
use serde_json::{json, Value};

/// A signing credential as the client holds it.
struct Credential {
    id: String,
    key: SigningKey,
}

async fn hmac_credential(gw: &Gateway, tenant_key: &str, scopes: &[&str], subject: Option<&str>) -> Credential {
    let mut body = json!({ "alg": "hmac-sha256", "scopes": scopes });
    if let Some(s) = subject {
        body["subject"] = json!(s);
    }
    let r = gw.post("/v1/signing-keys", tenant_key, None, body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = base64::engine::general_purpose::STANDARD.decode(r.str("secret")).unwrap();
    assert_eq!(secret.len(), 32);
    Credential { id: r.str("id"), key: SigningKey::Hmac(secret) }
}

async fn ed25519_credential(gw: &Gateway, tenant_key: &str, scopes: &[&str]) -> Credential {
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let r = gw
        .post("/v1/signing-keys", tenant_key, None, json!({ "alg": "ed25519", "public_key": public, "scopes": scopes }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body.get("secret").is_none());
    Credential { id: r.str("id"), key: SigningKey::ed25519_from_pkcs8(doc.as_ref()).unwrap() }
}

/// How a test request is signed and what is then actually sent.
#[derive(Clone)]
struct Signed<'a> {
    method: &'a str,
    path: &'a str,
    body: Option<Value>,
    idem: Option<&'a str>,
    nonce: String,
    created_offset: i64,
    /// Sent instead of the signed path (tampering).
    sent_path: Option<&'a str>,
    /// Sent instead of the signed body (tampering).
    sent_body: Option<Value>,
    extra: Vec<(&'a str, String)>,
}

impl<'a> Signed<'a> {
    fn new(method: &'a str, path: &'a str, body: Option<Value>, idem: Option<&'a str>) -> Self {
        Signed {
            method,
            path,
            body,
            idem,
            nonce: uuid::Uuid::now_v7().simple().to_string(),
            created_offset: 0,
            sent_path: None,
            sent_body: None,
            extra: Vec::new(),
        }
    }
}

async fn send(gw: &Gateway, c: &Credential, s: Signed<'_>) -> Reply {
    send_as(gw, &c.key, &c.id, s).await
}

async fn send_as(gw: &Gateway, key: &SigningKey, keyid: &str, s: Signed<'_>) -> Reply {
    let authority = gw.base.trim_start_matches("http://").to_owned();
    let (path, query) = match s.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s.path, None),
    };
    let body = s.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
    let req = RequestParts { method: s.method, scheme: "http", authority: &authority, path, query, headers: &[] };
    let created = gw.now().micros() / 1_000_000 + s.created_offset;
    let headers = sign_request(&req, body.as_bytes(), key, keyid, created, &s.nonce).unwrap();
    let method = reqwest::Method::from_bytes(s.method.as_bytes()).unwrap();
    let mut r = gw
        .http
        .request(method, format!("{}{}", gw.base, s.sent_path.unwrap_or(s.path)))
        .header("signature-input", headers.signature_input)
        .header("signature", headers.signature);
    if let Some(digest) = headers.content_digest {
        r = r.header("content-digest", digest);
    }
    let sent = s.sent_body.map(|b| b.to_string()).unwrap_or(body);
    if !sent.is_empty() {
        r = r.header("content-type", "application/json").body(sent);
    }
    if let Some(idem) = s.idem {
        r = r.header("idempotency-key", idem);
    }
    for (name, value) in s.extra {
        r = r.header(name, value);
    }
    Gateway::reply(r.send().await.unwrap()).await
}

fn debit<'a>(idem: &'a str, subject: &str) -> Signed<'a> {
    Signed::new("POST", "/v1/debits", Some(json!({ "subject": subject, "amount": 1 })), Some(idem))
}

fn assert_401(r: &Reply) {
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.is_problem());
    assert_eq!(r.body["detail"], "authentication failed");
}

conformance! {
    async fn both_algorithms_sign_ledger_calls_once_per_nonce(gw) {
        let t = gw.tenant().await;
        gw.grant(&t.key, "g1", "alice", 100).await;
        let hmac = hmac_credential(&gw, &t.key, &["usage.debit", "ledger.read"], None).await;
        let ed = ed25519_credential(&gw, &t.key, &["usage.debit", "ledger.read"]).await;
        for (i, c) in [&hmac, &ed].into_iter().enumerate() {
            let idem = format!("d{i}");
            let r = send(&gw, c, debit(&idem, "alice")).await;
            assert_eq!(r.status, 201, "{}", r.body);
            let read = send(&gw, c, Signed::new("GET", "/v1/accounts/alice", None, None)).await;
            assert_eq!(read.status, 200, "{}", read.body);
        }
        assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 98);
        let listed = gw.get("/v1/signing-keys", &t.key).await;
        assert_eq!(listed.body["data"].as_array().unwrap().len(), 2);
        assert!(listed.body["data"].as_array().unwrap().iter().all(|k| k.get("secret").is_none()));

        // The same signed request again is a replay: refused before anything else happens.
        let once = debit("r1", "alice");
        assert_eq!(send(&gw, &hmac, once.clone()).await.status, 201);
        assert_401(&send(&gw, &hmac, once).await);
        // Grant is not in the credential's scopes.
        let grant = Signed::new("POST", "/v1/grants", Some(json!({ "subject": "alice", "amount": 5 })), Some("g2"));
        assert_eq!(send(&gw, &hmac, grant).await.status, 403);
        assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 97);
    }

    async fn tampering_time_and_ambiguity_are_refused(gw) {
        let t = gw.tenant().await;
        gw.grant(&t.key, "g1", "alice", 100).await;
        let c = hmac_credential(&gw, &t.key, &["usage.debit", "ledger.read"], None).await;
        // A11: the body changed after signing, every header kept.
        let mut tampered = debit("t1", "alice");
        tampered.sent_body = Some(json!({ "subject": "alice", "amount": 90 }));
        assert_401(&send(&gw, &c, tampered).await);
        // A9: `+` is not a space.
        let mut plus = Signed::new("GET", "/v1/events?subject=a+b", None, None);
        plus.sent_path = Some("/v1/events?subject=a%20b");
        assert_401(&send(&gw, &c, plus).await);
        let plus = Signed::new("GET", "/v1/events?subject=alice", None, None);
        assert_eq!(send(&gw, &c, plus).await.status, 200);
        let mut other_path = Signed::new("GET", "/v1/accounts/alice", None, None);
        other_path.sent_path = Some("/v1/accounts/bob");
        assert_401(&send(&gw, &c, other_path).await);
        // The window: 300 s back plus 60 s leeway; 60 s ahead.
        for (offset, ok) in [(-350, true), (-370, false), (50, true), (70, false)] {
            let mut s = Signed::new("GET", "/v1/accounts/alice", None, None);
            s.created_offset = offset;
            let r = send(&gw, &c, s).await;
            assert_eq!(r.status == 200, ok, "created {offset}: {}", r.body);
        }
        // A signature beside a bearer credential, or a second signature label: ambiguous.
        let mut both = Signed::new("GET", "/v1/accounts/alice", None, None);
        both.extra.push(("authorization", format!("Bearer {}", t.key)));
        assert_401(&send(&gw, &c, both).await);
        // Unknown key id, a key id of the wrong shape, and an Ed25519 signature under an HMAC key id.
        assert_401(&send_as(&gw, &c.key, "sig_0193a0a0a0a07000800000000000000a", Signed::new("GET", "/v1/accounts/alice", None, None)).await);
        assert_401(&send_as(&gw, &c.key, "nope", Signed::new("GET", "/v1/accounts/alice", None, None)).await);
        let ed = SigningKey::ed25519_from_seed(&[7; 32]).unwrap();
        assert_401(&send_as(&gw, &ed, &c.id, Signed::new("GET", "/v1/accounts/alice", None, None)).await);
        // Headers without meaning.
        for (input, signature) in [("garbage", "garbage"), ("sig1=();created=1", "sig1=:AAAA:"), ("", "")] {
            let r = gw.http.get(format!("{}/v1/accounts/alice", gw.base))
                .header("signature-input", input).header("signature", signature).send().await.unwrap();
            assert_401(&Gateway::reply(r).await);
        }
        assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 100, "nothing refused wrote anything");
    }

    async fn rotation_overlaps_and_revocation_is_immediate(gw) {
        let t = gw.tenant().await;
        gw.grant(&t.key, "g1", "alice", 100).await;
        let old = hmac_credential(&gw, &t.key, &["usage.debit"], Some("alice")).await;
        let r = gw.post(&format!("/v1/signing-keys/{}/rotate", old.id), &t.key, None, json!({ "grace_seconds": 60 })).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let new = Credential {
            id: r.str("id"),
            key: SigningKey::Hmac(base64::engine::general_purpose::STANDARD.decode(r.str("secret")).unwrap()),
        };
        assert_eq!(send(&gw, &old, debit("o1", "alice")).await.status, 201, "inside the grace period");
        assert_eq!(send(&gw, &new, debit("n1", "alice")).await.status, 201);
        assert_eq!(send(&gw, &new, debit("n2", "bob")).await.status, 403, "the successor keeps the subject binding");
        gw.advance(61);
        assert_401(&send(&gw, &old, debit("o2", "alice")).await);
        let again = gw.post(&format!("/v1/signing-keys/{}/rotate", old.id), &t.key, None, json!({})).await;
        assert_eq!(again.status, 422, "an expired key cannot be rotated again");
        let revoked = gw.post(&format!("/v1/signing-keys/{}/revoke", new.id), &t.key, None, json!({})).await;
        assert_eq!(revoked.status, 200, "{}", revoked.body);
        assert!(revoked.body["revoked_at"].is_string());
        assert_401(&send(&gw, &new, debit("n3", "alice")).await);
        assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 98);
    }

    async fn tenants_can_require_signatures_and_registration_is_strict(gw) {
        let t = gw.tenant().await;
        gw.grant(&t.key, "g1", "alice", 100).await;
        let c = ed25519_credential(&gw, &t.key, &["usage.debit", "keys.manage"]).await;
        let set = gw.call("PATCH", "/v1/tenant", Some(&t.key), None, Some(json!({ "auth_methods": ["http_signature"] }))).await;
        assert_eq!(set.status, 200, "{}", set.body);
        assert_401(&gw.debit(&t.key, "k1", "alice", 1).await);
        assert_eq!(send(&gw, &c, debit("s1", "alice")).await.status, 201);
        let reset = Signed::new("PATCH", "/v1/tenant", Some(json!({ "auth_methods": null })), None);
        assert_eq!(send(&gw, &c, reset).await.status, 200, "a signed request can change the setting back");
        assert_eq!(gw.debit(&t.key, "k2", "alice", 1).await.status, 201);

        for body in [
            json!({ "alg": "hmac-sha512", "scopes": ["usage.debit"] }),
            json!({ "alg": "hmac-sha256", "public_key": "AAAA", "scopes": ["usage.debit"] }),
            json!({ "alg": "ed25519", "scopes": ["usage.debit"] }),
            json!({ "alg": "ed25519", "public_key": "not base64!", "scopes": ["usage.debit"] }),
            json!({ "alg": "ed25519", "public_key": "AAAA", "scopes": ["usage.debit"] }),
            json!({ "alg": "hmac-sha256", "scopes": [] }),
            json!({ "alg": "hmac-sha256", "scopes": ["usage.debit"], "secret": "mine" }),
        ] {
            let r = gw.post("/v1/signing-keys", &t.key, None, body.clone()).await;
            assert_eq!(r.status, 400, "{body} → {}", r.body);
            assert!(r.is_problem());
        }
        let narrow = gw.key(&t.key, json!({ "name": "n", "scopes": ["keys.manage"] })).await;
        let wide = gw.post("/v1/signing-keys", &narrow, None, json!({ "alg": "hmac-sha256", "scopes": ["credits.grant"] })).await;
        assert_eq!(wide.status, 403, "no widening");
        let other = gw.tenant().await;
        let foreign = gw.post(&format!("/v1/signing-keys/{}/revoke", c.id), &other.key, None, json!({})).await;
        assert_eq!(foreign.status, 404);
    }

    async fn a_signing_credential_can_be_exchanged_for_a_token_that_ends_with_it(gw) {
        let t = gw.tenant().await;
        gw.grant(&t.key, "g1", "alice", 100).await;
        let c = hmac_credential(&gw, &t.key, &["usage.debit"], Some("alice")).await;
        let r = send(&gw, &c, Signed::new("POST", "/v1/authority/token", Some(json!({ "grant_type": "client_credentials" })), None)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["scope"], "usage.debit");
        let token = r.str("access_token");
        assert_eq!(gw.debit(&token, "t1", "alice", 1).await.status, 201);
        assert_eq!(gw.debit(&token, "t2", "bob", 1).await.status, 403, "bound to the credential's subject");
        // A signature beside client id and secret is two credentials.
        let (id, secret) = {
            let k = gw.post("/v1/api-keys", &t.key, None, json!({ "name": "k", "scopes": ["usage.debit"] })).await;
            (k.str("id"), k.str("key"))
        };
        let both = Signed::new("POST", "/v1/authority/token", Some(json!({ "grant_type": "client_credentials", "client_id": id, "client_secret": secret })), None);
        assert_401(&send(&gw, &c, both).await);
        // Revoking the signing credential ends its tokens.
        let revoked = gw.post(&format!("/v1/signing-keys/{}/revoke", c.id), &t.key, None, json!({})).await;
        assert_eq!(revoked.status, 200, "{}", revoked.body);
        assert_401(&gw.debit(&token, "t3", "alice", 1).await);
    }
}
