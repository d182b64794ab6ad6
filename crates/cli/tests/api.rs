//! The HTTP contract through the real server: authentication and keys, tenant isolation,
//! bad input (always a problem response, never a write), pagination and correlation ids.

mod common;

use common::{Gateway, Reply};
use serde_json::{json, Value};

/// A 401 body with the correlation id removed: it must be the same for every failure.
fn anonymised(reply: &Reply) -> Value {
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.is_problem());
    let mut body = reply.body.clone();
    body.as_object_mut().unwrap().remove("correlation_id");
    body
}

conformance! {
    async fn every_authentication_failure_gets_the_same_401(gw) {
    let t = gw.tenant().await;
    let revoked = gw.key(&t.key, json!({ "name": "r", "scopes": ["*"] })).await;
    let list = gw.get("/v1/api-keys", &t.key).await;
    let revoked_id = list.body["data"].as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(gw.post(&format!("/v1/api-keys/{revoked_id}/revoke"), &t.key, None, json!({})).await.status, 200);
    let expiring = gw
        .key(&t.key, json!({ "name": "e", "scopes": ["*"], "expires_at": gw.now().plus_seconds(5).to_rfc3339() }))
        .await;
    gw.advance(6);
    let body = json!({ "subject": "a", "amount": 1 });
    let mut bodies = Vec::new();
    let too_long = format!("lsk_{}", "x".repeat(300));
    for key in ["lsk_unknownunknownunknownunknownunkn", "not-a-key", "", &revoked, &expiring, &too_long] {
        let r = gw.post("/v1/debits", key, Some("k"), body.clone()).await;
        assert!(r.header("www-authenticate").is_some());
        bodies.push(anonymised(&r));
    }
    bodies.push(anonymised(&gw.call("POST", "/v1/debits", None, Some("k"), Some(body.clone())).await));
    let two = gw
        .http
        .post(format!("{}/v1/debits", gw.base))
        .header("authorization", format!("Bearer {}", t.key))
        .header("authorization", format!("Bearer {}", t.key))
        .header("idempotency-key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();
    bodies.push(anonymised(&Gateway::reply(two).await));
    let basic = gw
        .http
        .get(format!("{}/v1/events", gw.base))
        .header("authorization", format!("Basic {}", t.key))
        .send()
        .await
        .unwrap();
    bodies.push(anonymised(&Gateway::reply(basic).await));
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "401 bodies differ: {bodies:#?}");
    let text = serde_json::to_string(&bodies).unwrap();
    assert!(!text.contains(&revoked) && !text.contains("lsk_unknown") && !text.contains("revoked"));
    gw.stop().await;
}
}

conformance! {
    async fn missing_scope_is_403_and_scopes_map_to_intents(gw) {
    let t = gw.tenant().await;
    let debit_only = gw.key(&t.key, json!({ "name": "d", "scopes": ["usage.debit"] })).await;
    gw.grant(&t.key, "g", "alice", 10).await;
    assert_eq!(gw.debit(&debit_only, "d", "alice", 1).await.status, 201);
    for (path, body) in [
        ("/v1/grants", json!({ "subject": "alice", "amount": 1 })),
        ("/v1/adjustments", json!({ "subject": "alice", "amount": 1, "reason": "x" })),
        ("/v1/api-keys", json!({ "name": "x", "scopes": ["*"] })),
        ("/v1/tenants", json!({ "name": "x" })),
    ] {
        let r = gw.post(path, &debit_only, Some("x"), body).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(r.is_problem());
    }
    assert_eq!(gw.get("/v1/events", &debit_only).await.status, 403);
    // Tenant keys cannot be given tenants.manage, and with every scope still cannot create tenants.
    let r = gw.post("/v1/api-keys", &t.key, None, json!({ "name": "t", "scopes": ["tenants.manage"] })).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("invalid_scopes")));
    assert_eq!(gw.post("/v1/tenants", &t.key, None, json!({ "name": "x" })).await.status, 403);
    // A key cannot mint a wider key.
    let r = gw
        .post(
            "/v1/api-keys",
            &gw.key(&t.key, json!({"name": "k", "scopes": ["keys.manage"]})).await,
            None,
            json!({ "name": "w", "scopes": ["*"] }),
        )
        .await;
    assert_eq!(r.status, 403);
    gw.stop().await;
}
}

conformance! {
    async fn a_subject_bound_key_acts_for_its_subject_only(gw) {
    let t = gw.tenant().await;
    let bound =
        gw.key(&t.key, json!({ "name": "b", "scopes": ["usage.debit", "ledger.read"], "subject": "alice" })).await;
    gw.grant(&t.key, "g1", "alice", 10).await;
    let bob = gw.grant(&t.key, "g2", "bob", 10).await;
    let own = gw.post("/v1/debits", &bound, Some("d1"), json!({ "amount": 1 })).await;
    assert_eq!((own.status, own.str("subject")), (201, "alice".to_owned()));
    assert_eq!(gw.debit(&bound, "d2", "bob", 1).await.status, 403);
    assert_eq!(gw.account(&bound, "bob").await.status, 403);
    assert_eq!(gw.get(&format!("/v1/events/{}", bob.str("event_id")), &bound).await.status, 404);
    let events = gw.all_events(&bound, "").await;
    assert!(events.iter().all(|e| e["subject"] == "alice"));
    assert_eq!(gw.account(&t.key, "bob").await.i64("balance"), 10);
    gw.stop().await;
}
}

conformance! {
    async fn tenants_never_see_each_other(gw) {
    let a = gw.tenant().await;
    let b = gw.tenant().await;
    let grant = gw.grant(&a.key, "g", "alice", 100).await;
    let debit = gw.debit(&a.key, "d", "alice", 10).await;
    assert_eq!(gw.get(&format!("/v1/events/{}", grant.str("event_id")), &b.key).await.status, 404);
    assert_eq!(gw.account(&b.key, "alice").await.status, 404);
    assert!(gw.all_events(&b.key, "").await.is_empty());
    let refund = gw.post("/v1/refunds", &b.key, Some("r"), json!({ "refund_of": debit.str("event_id") })).await;
    assert_eq!((refund.status, refund.body["code"].as_str()), (404, Some("event_not_found")));
    // Naming another tenant is "not found", too.
    let r =
        gw.post("/v1/grants", &b.key, Some("x"), json!({ "tenant_id": a.id, "subject": "alice", "amount": 5 })).await;
    assert_eq!(r.status, 404);
    // The same idempotency key in two tenants names two attempts.
    assert_eq!(gw.grant(&b.key, "g", "alice", 7).await.i64("balance"), 7);
    assert_eq!(gw.account(&a.key, "alice").await.i64("balance"), 90);
    gw.stop().await;
}
}

conformance! {
    async fn operators_act_on_a_tenant_by_naming_it(gw) {
    let t = gw.tenant().await;
    let op = gw.operator_key.clone();
    let r = gw.post("/v1/grants", &op, Some("g"), json!({ "tenant_id": t.id, "subject": "alice", "amount": 5 })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = gw.post("/v1/grants", &op, Some("g2"), json!({ "subject": "alice", "amount": 5 })).await;
    assert_eq!((r.status, r.body["code"].as_str()), (400, Some("tenant_id_required")));
    let r = gw
        .post(
            "/v1/grants",
            &op,
            Some("g3"),
            json!({ "tenant_id": "ten_0190aaaaaaaa7aaa8aaaaaaaaaaaaaaa", "subject": "a", "amount": 5 }),
        )
        .await;
    assert_eq!(r.status, 404);
    let acct = gw.get(&format!("/v1/accounts/alice?tenant_id={}", t.id), &op).await;
    assert_eq!(acct.i64("balance"), 5);
    assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 5);
    gw.stop().await;
}
}

conformance! {
    async fn keys_are_shown_once_rotated_with_grace_and_revoked(gw) {
    let t = gw.tenant().await;
    let created = gw.post("/v1/api-keys", &t.key, None, json!({ "name": "svc", "scopes": ["ledger.read"] })).await;
    let (id, old) = (created.str("id"), created.str("key"));
    assert!(old.starts_with("lsk_") && old.starts_with(&created.str("prefix")));
    let listed = gw.get("/v1/api-keys", &t.key).await;
    let text = listed.body.to_string();
    assert!(!text.contains(&old) && !text.contains(&t.key) && !text.contains("hash"), "{text}");
    assert!(listed.body["data"].as_array().unwrap().iter().any(|k| k["id"] == id.as_str()));

    let rotated = gw.post(&format!("/v1/api-keys/{id}/rotate"), &t.key, None, json!({ "grace_seconds": 60 })).await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    let new = rotated.str("key");
    assert_eq!(rotated.str("rotated_from"), id);
    assert_eq!(gw.get("/v1/events", &old).await.status, 200, "old key works during the grace period");
    assert_eq!(gw.get("/v1/events", &new).await.status, 200);
    gw.advance(61);
    assert_eq!(gw.get("/v1/events", &old).await.status, 401, "old key stops after the grace period");
    assert_eq!(gw.get("/v1/events", &new).await.status, 200);

    let new_id = rotated.str("id");
    let revoked = gw.post(&format!("/v1/api-keys/{new_id}/revoke"), &t.key, None, json!({})).await;
    assert_eq!(revoked.status, 200);
    assert!(revoked.body["revoked_at"].is_string());
    assert_eq!(gw.get("/v1/events", &new).await.status, 401);
    // Rotation with no grace ends the old key at once; a body is optional.
    let k = gw.post("/v1/api-keys", &t.key, None, json!({ "name": "x", "scopes": ["ledger.read"] })).await;
    let r = gw.call("POST", &format!("/v1/api-keys/{}/rotate", k.str("id")), Some(&t.key), None, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(gw.get("/v1/events", &k.str("key")).await.status, 401);
    // Another tenant cannot see or touch the key.
    let other = gw.tenant().await;
    assert_eq!(gw.post(&format!("/v1/api-keys/{}/revoke", r.str("id")), &other.key, None, json!({})).await.status, 404);
    gw.stop().await;
}
}

conformance! {
    async fn last_used_time_is_recorded_without_a_write_per_request(gw) {
    let t = gw.tenant().await;
    let k = gw.post("/v1/api-keys", &t.key, None, json!({ "name": "svc", "scopes": ["ledger.read"] })).await;
    for _ in 0..20 {
        assert_eq!(gw.get("/v1/events", &k.str("key")).await.status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let list = gw.get("/v1/api-keys", &t.key).await;
    let entry = list.body["data"].as_array().unwrap().iter().find(|e| e["id"] == k.str("id").as_str()).unwrap().clone();
    assert!(entry["last_used_at"].is_string(), "{entry}");
    gw.stop().await;
}
}

// Requests that must be refused with a problem response and write nothing.
conformance! {
    async fn bad_input_is_a_clear_problem_and_writes_nothing(gw) {
    let t = gw.tenant().await;
    let long_subject = "a".repeat(129);
    let long_key = "k".repeat(256);
    let huge = format!("{{\"subject\":\"alice\",\"amount\":1,\"metadata\":{{\"x\":\"{}\"}}}}", "y".repeat(70_000));
    let cases: Vec<(&str, &str, Option<&str>, String, u16)> = vec![
        ("malformed json", "application/json", Some("k"), "{\"subject\":".into(), 400),
        ("unknown field", "application/json", Some("k"), r#"{"subject":"alice","amount":1,"amout":2}"#.into(), 400),
        ("wrong type", "application/json", Some("k"), r#"{"subject":5,"amount":1}"#.into(), 400),
        ("float", "application/json", Some("k"), r#"{"subject":"alice","amount":1.5}"#.into(), 400),
        ("float with zero fraction", "application/json", Some("k"), r#"{"subject":"alice","amount":1.0}"#.into(), 400),
        ("exponent", "application/json", Some("k"), r#"{"subject":"alice","amount":1e2}"#.into(), 400),
        ("zero", "application/json", Some("k"), r#"{"subject":"alice","amount":0}"#.into(), 400),
        ("negative", "application/json", Some("k"), r#"{"subject":"alice","amount":-5}"#.into(), 400),
        (
            "beyond 2^53-1",
            "application/json",
            Some("k"),
            r#"{"subject":"alice","amount":9007199254740992}"#.into(),
            400,
        ),
        (
            "beyond u64",
            "application/json",
            Some("k"),
            r#"{"subject":"alice","amount":99999999999999999999999}"#.into(),
            400,
        ),
        ("string amount", "application/json", Some("k"), r#"{"subject":"alice","amount":"10"}"#.into(), 400),
        ("null amount", "application/json", Some("k"), r#"{"subject":"alice","amount":null}"#.into(), 400),
        ("missing amount", "application/json", Some("k"), r#"{"subject":"alice"}"#.into(), 400),
        (
            "over-long subject",
            "application/json",
            Some("k"),
            format!(r#"{{"subject":"{long_subject}","amount":1}}"#),
            400,
        ),
        ("ill-formed subject", "application/json", Some("k"), r#"{"subject":"al ice/..","amount":1}"#.into(), 400),
        ("empty subject", "application/json", Some("k"), r#"{"subject":"","amount":1}"#.into(), 400),
        (
            "metadata not an object",
            "application/json",
            Some("k"),
            r#"{"subject":"a","amount":1,"metadata":[1]}"#.into(),
            400,
        ),
        ("body over 64 KiB", "application/json", Some("k"), huge, 400),
        ("array body", "application/json", Some("k"), "[]".into(), 400),
        ("empty body", "application/json", Some("k"), String::new(), 400),
        ("text/plain", "text/plain", Some("k"), r#"{"subject":"alice","amount":1}"#.into(), 415),
        ("no content type", "", Some("k"), r#"{"subject":"alice","amount":1}"#.into(), 415),
        ("missing idempotency key", "application/json", None, r#"{"subject":"alice","amount":1}"#.into(), 400),
        (
            "over-long idempotency key",
            "application/json",
            Some(&long_key),
            r#"{"subject":"alice","amount":1}"#.into(),
            400,
        ),
    ];
    for (name, content_type, idem, body, status) in cases {
        let mut req = gw.http.post(format!("{}/v1/debits", gw.base)).bearer_auth(&t.key).body(body);
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        if let Some(idem) = idem {
            req = req.header("idempotency-key", idem);
        }
        let reply = Gateway::reply(req.send().await.unwrap()).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        assert!(reply.is_problem(), "{name}: not a problem response: {:?} {}", reply.headers, reply.body);
        assert!(!reply.body["detail"].as_str().unwrap().is_empty(), "{name}");
    }
    let bad_idem = gw
        .http
        .post(format!("{}/v1/debits", gw.base))
        .bearer_auth(&t.key)
        .header("idempotency-key", "tab\tkey")
        .json(&json!({"subject": "alice", "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_idem.status(), 400);
    assert!(gw.all_events(&t.key, "").await.is_empty(), "bad input must write nothing");
    // The key "k" was never consumed: the first valid request with it is fresh.
    gw.grant(&t.key, "g", "alice", 5).await;
    let ok = gw.debit(&t.key, "k", "alice", 1).await;
    assert_eq!((ok.status, ok.replayed()), (201, false));
    gw.stop().await;
}
}

conformance! {
    async fn bad_paths_queries_and_cursors_are_problems(gw) {
    let t = gw.tenant().await;
    let other = gw.tenant().await;
    for i in 0..5 {
        gw.grant(&t.key, &format!("g{i}"), "alice", 1).await;
        gw.grant(&other.key, &format!("g{i}"), "alice", 1).await;
    }
    let page = gw.get("/v1/events?limit=2", &t.key).await;
    let cursor = page.str("next_cursor");
    assert_eq!(gw.get(&format!("/v1/events?limit=2&cursor={cursor}"), &t.key).await.status, 200);
    for path in [
        format!("/v1/events?limit=2&cursor={cursor}x"),
        "/v1/events?cursor=AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        "/v1/events?cursor=%%%".to_owned(),
        format!("/v1/events?limit=2&subject=bob&cursor={cursor}"),
        "/v1/events?limit=0".to_owned(),
        "/v1/events?limit=100000".to_owned(),
        "/v1/events?kind=teleport".to_owned(),
        "/v1/events?from=yesterday".to_owned(),
        "/v1/events?colour=blue".to_owned(),
        "/v1/accounts/bad%20subject".to_owned(),
        "/v1/accounts/alice?as_of=noon".to_owned(),
    ] {
        let r = gw.get(&path, &t.key).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.is_problem(), "{path}");
    }
    // A cursor issued to one tenant is refused for another.
    let foreign = gw.get(&format!("/v1/events?limit=2&cursor={cursor}"), &other.key).await;
    assert_eq!((foreign.status, foreign.body["code"].as_str()), (400, Some("invalid_cursor")));
    assert_eq!(gw.get("/v1/events/evt_nope", &t.key).await.status, 404);
    let unknown = gw.get("/v1/nothing-here", &t.key).await;
    assert_eq!((unknown.status, unknown.is_problem()), (404, true));
    let method = gw.call("DELETE", "/v1/debits", Some(&t.key), None, None).await;
    assert_eq!((method.status, method.is_problem()), (405, true));
    gw.stop().await;
}
}

conformance! {
    async fn pagination_walks_every_event_once_in_order(gw) {
    let t = gw.tenant().await;
    for i in 0..25 {
        gw.grant(&t.key, &format!("g{i}"), if i % 2 == 0 { "even" } else { "odd" }, i + 1).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/events?limit=4&subject=even".to_owned();
    loop {
        let page = gw.get(&path, &t.key).await;
        assert_eq!(page.status, 200, "{}", page.body);
        seen.extend(page.body["data"].as_array().unwrap().iter().map(|e| e["amount"].as_i64().unwrap()));
        match page.body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/events?limit=4&subject=even&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).filter(|i| i % 2 == 0).map(|i| i + 1).collect::<Vec<_>>());
    let grants = gw.all_events(&t.key, "kind=grant").await;
    assert_eq!(grants.len(), 25);
    gw.stop().await;
}
}

conformance! {
    async fn correlation_ids_are_honoured_echoed_and_recorded(gw) {
    let t = gw.tenant().await;
    let r = gw
        .http
        .post(format!("{}/v1/grants", gw.base))
        .bearer_auth(&t.key)
        .header("idempotency-key", "g")
        .header("x-request-id", "support-ticket-42")
        .json(&json!({ "subject": "alice", "amount": 5 }))
        .send()
        .await
        .unwrap();
    let r = Gateway::reply(r).await;
    assert_eq!(r.header("x-request-id"), Some("support-ticket-42"));
    assert_eq!(r.str("correlation_id"), "support-ticket-42");
    let event = gw.get(&format!("/v1/events/{}", r.str("event_id")), &t.key).await;
    assert_eq!(event.str("correlation_id"), "support-ticket-42");
    let tp = gw
        .http
        .get(format!("{}/v1/nothing", gw.base))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    let tp = Gateway::reply(tp).await;
    assert_eq!(tp.str("correlation_id"), "4bf92f3577b34da6a3ce929d0e0e4736");
    let generated = gw.call("GET", "/healthz", None, None, None).await;
    assert!(generated.header("x-request-id").is_some());
    gw.stop().await;
}
}

conformance! {
    async fn health_and_readiness(gw) {
    assert_eq!(gw.call("GET", "/healthz", None, None, None).await.status, 200);
    assert_eq!(gw.call("GET", "/readyz", None, None, None).await.body["status"], "ready");
    gw.stop().await;
}
}

conformance! {
    async fn a_key_has_at_most_one_successor_even_under_concurrent_rotations(gw) {
        let gw = std::sync::Arc::new(gw);
        let t = gw.tenant().await;
        let k = gw.post("/v1/api-keys", &t.key, None, json!({ "name": "svc", "scopes": ["ledger.read"] })).await;
        let path = format!("/v1/api-keys/{}/rotate", k.str("id"));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (gw, key, path) = (gw.clone(), t.key.clone(), path.clone());
                tokio::spawn(async move { gw.post(&path, &key, None, json!({ "grace_seconds": 60 })).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            let r = task.await.unwrap();
            if r.status == 409 {
                assert_eq!(r.body["code"], "key_already_rotated");
            }
            statuses.push(r.status);
        }
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 9, "{statuses:?}");
        let again = gw.post(&path, &t.key, None, json!({})).await;
        assert_eq!(again.status, 409);
    }

    async fn subjects_that_cannot_travel_in_a_path_are_refused(gw) {
        let t = gw.tenant().await;
        for subject in [".", ".."] {
            let r = gw.grant(&t.key, "g", subject, 5).await;
            assert_eq!(r.status, 400, "{subject}: {}", r.body);
        }
        assert_eq!(gw.grant(&t.key, "g", "a.b", 5).await.status, 201);
    }

    async fn idempotency_keys_on_writes_outside_the_ledger_replay(gw) {
        let op = gw.operator_key.clone();
        // Tenants: the same key and request → the first tenant again, marked as a replay.
        let first = gw.call("POST", "/v1/tenants", Some(&op), Some("t-1"), Some(json!({ "name": "Acme" }))).await;
        assert_eq!(first.status, 201, "{}", first.body);
        assert_eq!(first.header("idempotent-replayed"), None);
        // Every mutating response carries its correlation id.
        assert_eq!(first.body["correlation_id"].as_str(), first.header("x-request-id"), "{}", first.body);
        // The same request spelled differently (whitespace, member order) is the same request.
        let again = gw.http.post(format!("{}/v1/tenants", gw.base)).bearer_auth(&op)
            .header("idempotency-key", "t-1").header("content-type", "application/json")
            .body("{ \"name\" :  \"Acme\" }").send().await.unwrap();
        let again = common::Gateway::reply(again).await;
        assert_eq!(again.status, 201, "{}", again.body);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.body, first.body);
        // Another request under the key → 422; without a key → a new tenant each time.
        let other = gw.call("POST", "/v1/tenants", Some(&op), Some("t-1"), Some(json!({ "name": "Other" }))).await;
        assert_eq!((other.status, other.is_problem()), (422, true), "{}", other.body);
        let a = gw.call("POST", "/v1/tenants", Some(&op), None, Some(json!({ "name": "Acme" }))).await;
        let b = gw.call("POST", "/v1/tenants", Some(&op), None, Some(json!({ "name": "Acme" }))).await;
        assert_ne!(a.str("id"), b.str("id"));
        // A refused request stores nothing: the key is free for the corrected request.
        let bad = gw.call("POST", "/v1/tenants", Some(&op), Some("t-2"), Some(json!({ "nom": "x" }))).await;
        assert_eq!(bad.status, 400, "{}", bad.body);
        let good = gw.call("POST", "/v1/tenants", Some(&op), Some("t-2"), Some(json!({ "name": "Fixed" }))).await;
        assert_eq!((good.status, good.header("idempotent-replayed")), (201, None), "{}", good.body);
        let bad_key = gw.call("POST", "/v1/tenants", Some(&op), Some(&"k".repeat(256)), Some(json!({ "name": "x" }))).await;
        assert_eq!((bad_key.status, bad_key.is_problem()), (400, true));

        // API keys: the replay names the same key but never shows its secret again.
        let t = gw.tenant().await;
        let body = json!({ "name": "ci", "scopes": ["ledger.read"] });
        let created = gw.call("POST", "/v1/api-keys", Some(&t.key), Some("k-1"), Some(body.clone())).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let secret = created.str("key");
        let replay = gw.call("POST", "/v1/api-keys", Some(&t.key), Some("k-1"), Some(body.clone())).await;
        assert_eq!((replay.status, replay.header("idempotent-replayed")), (201, Some("true")));
        assert_eq!(replay.body["id"], created.body["id"]);
        assert!(replay.body.get("key").is_none(), "{}", replay.body);
        assert!(!replay.body.to_string().contains(&secret));
        let keys = gw.get("/v1/api-keys", &t.key).await;
        let named: Vec<_> = keys.body["data"].as_array().unwrap().iter().filter(|k| k["name"] == "ci").collect();
        assert_eq!(named.len(), 1, "one key created");
        assert_eq!(gw.get("/v1/events", &secret).await.status, 200);
        // A replay is only for a caller the route would let through: a read-only key using the
        // same key is refused like any request it may not make, and learns nothing.
        let read_only = gw.key(&t.key, json!({ "name": "ro", "scopes": ["ledger.read"] })).await;
        let nosy = gw.call("POST", "/v1/api-keys", Some(&read_only), Some("k-1"), Some(body.clone())).await;
        assert_eq!((nosy.status, nosy.header("idempotent-replayed")), (403, None), "{}", nosy.body);
        assert!(nosy.body.get("id").is_none());
        // Subject-bound callers: their bound subject is part of the request.
        let as_alice = gw.key(&t.key, json!({ "name": "a", "scopes": ["keys.manage", "accounts.manage", "ledger.read"], "subject": "alice" })).await;
        let as_bob = gw.key(&t.key, json!({ "name": "b", "scopes": ["keys.manage", "accounts.manage", "ledger.read"], "subject": "bob" })).await;
        let mine = json!({ "name": "mine", "scopes": ["ledger.read"] });
        let alices = gw.call("POST", "/v1/api-keys", Some(&as_alice), Some("sb-1"), Some(mine.clone())).await;
        assert_eq!((alices.status, alices.body["subject"].as_str()), (201, Some("alice")), "{}", alices.body);
        let bobs = gw.call("POST", "/v1/api-keys", Some(&as_bob), Some("sb-1"), Some(mine)).await;
        assert_eq!(bobs.status, 422, "bob's request is not alice's: {}", bobs.body);
        let policy = json!({ "overdraft_limit": 50 });
        let alice_policy = gw.call("PATCH", "/v1/accounts/alice", Some(&as_alice), Some("sb-2"), Some(policy.clone())).await;
        assert_eq!(alice_policy.status, 200, "{}", alice_policy.body);
        let other = gw.call("PATCH", "/v1/accounts/alice", Some(&as_bob), Some("sb-2"), Some(policy)).await;
        assert_eq!((other.status, other.header("idempotent-replayed")), (403, None), "{}", other.body);

        // Keys are scoped per tenant: another tenant's "k-1" is its own.
        let u = gw.tenant().await;
        let theirs = gw.call("POST", "/v1/api-keys", Some(&u.key), Some("k-1"), Some(body)).await;
        assert_eq!((theirs.status, theirs.header("idempotent-replayed")), (201, None));

        // Account policy.
        let policy = json!({ "overdraft_limit": 50 });
        let set = gw.call("PATCH", "/v1/accounts/alice", Some(&t.key), Some("p-1"), Some(policy.clone())).await;
        assert_eq!(set.status, 200, "{}", set.body);
        let replay = gw.call("PATCH", "/v1/accounts/alice", Some(&t.key), Some("p-1"), Some(policy)).await;
        assert_eq!((replay.status, replay.header("idempotent-replayed")), (200, Some("true")));
        let changed = gw.call("PATCH", "/v1/accounts/alice", Some(&t.key), Some("p-1"), Some(json!({ "overdraft_limit": 9 }))).await;
        assert_eq!(changed.status, 422);
        assert_eq!(gw.account(&t.key, "alice").await.i64("overdraft_limit"), 50);
        // An unauthenticated request with a key is refused like any other, and claims nothing.
        let anon = gw.call("POST", "/v1/tenants", Some("lsk_wrong"), Some("t-3"), Some(json!({ "name": "x" }))).await;
        assert_eq!(anon.status, 401);
        let later = gw.call("POST", "/v1/tenants", Some(&op), Some("t-3"), Some(json!({ "name": "x" }))).await;
        assert_eq!((later.status, later.header("idempotent-replayed")), (201, None));
    }

    async fn a_key_has_one_scope_per_tenant_across_ledger_and_other_writes(gw) {
        let t = gw.tenant().await;
        let key_body = json!({ "name": "x", "scopes": ["ledger.read"] });
        // A key a grant used is taken for a key creation: a different request under it.
        assert_eq!(gw.grant(&t.key, "shared-1", "alice", 10).await.status, 201);
        let created = gw.call("POST", "/v1/api-keys", Some(&t.key), Some("shared-1"), Some(key_body.clone())).await;
        assert_eq!((created.status, created.is_problem()), (422, true), "{}", created.body);
        // And the other way round: a key that created an API key is taken for a debit, which
        // charges nothing.
        let first = gw.call("POST", "/v1/api-keys", Some(&t.key), Some("shared-2"), Some(key_body.clone())).await;
        assert_eq!(first.status, 201, "{}", first.body);
        let debit = gw.debit(&t.key, "shared-2", "alice", 3).await;
        assert_eq!((debit.status, debit.is_problem()), (422, true), "{}", debit.body);
        assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 10);
        assert_eq!(gw.all_events(&t.key, "").await.len(), 1, "only the grant");
        let keys = gw.get("/v1/api-keys", &t.key).await;
        assert_eq!(keys.body["data"].as_array().unwrap().iter().filter(|k| k["name"] == "x").count(), 1);
        // Each request under its own key still replays.
        let replay = gw.call("POST", "/v1/api-keys", Some(&t.key), Some("shared-2"), Some(key_body)).await;
        assert_eq!((replay.status, replay.header("idempotent-replayed")), (201, Some("true")));
        assert!(gw.grant(&t.key, "shared-1", "alice", 10).await.replayed());
        // Another tenant's keys are its own.
        let u = gw.tenant().await;
        assert_eq!(gw.grant(&u.key, "shared-2", "alice", 1).await.status, 201);
    }

    async fn concurrent_duplicates_of_a_write_outside_the_ledger_create_one_thing(gw) {
        let t = gw.tenant().await;
        let body = json!({ "name": "dup", "scopes": ["ledger.read"] });
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let request = gw.http.post(format!("{}/v1/api-keys", gw.base)).bearer_auth(&t.key)
                .header("idempotency-key", "same").json(&body);
            calls.spawn(async move { common::Gateway::reply(request.send().await.unwrap()).await });
        }
        let replies = calls.join_all().await;
        let mut ids = std::collections::HashSet::new();
        for r in &replies {
            assert_eq!(r.status, 201, "{}", r.body);
            ids.insert(r.str("id"));
        }
        assert_eq!(ids.len(), 1, "every duplicate answered with the one key");
        assert_eq!(replies.iter().filter(|r| r.body.get("key").is_some()).count(), 1, "the secret shown once");
    }

    async fn bodies_must_be_json_objects(gw) {
        // serde would fill a struct from an array, field by field; a body is an object or refused.
        let t = gw.tenant().await;
        gw.grant(&t.key, "g1", "alice", 100).await;
        for (path, body) in [
            ("/v1/debits", r#"[null,"alice",1,null,null]"#),
            ("/v1/grants", r#"[null,"alice",5,null,null,null,null]"#),
            ("/v1/debits", r#" ["alice"]"#),
            ("/v1/debits", "1"),
            ("/v1/debits", r#""text""#),
        ] {
            let r = gw.http.post(format!("{}{path}", gw.base)).bearer_auth(&t.key)
                .header("content-type", "application/json").header("idempotency-key", "arr").body(body)
                .send().await.unwrap();
            let r = common::Gateway::reply(r).await;
            assert_eq!((r.status, r.body["code"].as_str()), (400, Some("invalid_body")), "{path} {body}: {}", r.body);
            assert!(!r.body.to_string().contains("struct"), "no internal type names: {}", r.body);
        }
        let op = gw.http.post(format!("{}/v1/tenants", gw.base)).bearer_auth(&gw.operator_key)
            .header("content-type", "application/json").body(r#"["Seq"]"#).send().await.unwrap();
        assert_eq!(op.status().as_u16(), 400);
        assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 100);
        assert_eq!(gw.get("/v1/events", &t.key).await.body["data"].as_array().unwrap().len(), 1);
        // Routes that take no body refuse one they would ignore, and do nothing.
        let victim = gw.post("/v1/api-keys", &t.key, None, json!({ "name": "v", "scopes": ["ledger.read"] })).await;
        let revoke = format!("/v1/api-keys/{}/revoke", victim.str("id"));
        for body in ["[]", "1", r#"{"now":true}"#, "{\"a\":"] {
            let r = gw.http.post(format!("{}{revoke}", gw.base)).bearer_auth(&t.key)
                .header("content-type", "application/json").body(body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 400, "{body}");
        }
        assert_eq!(gw.get("/v1/events", &victim.str("key")).await.status, 200, "still active");
        let rotate = gw.http.post(format!("{}/v1/authority/rotate", gw.base)).bearer_auth(&gw.operator_key)
            .header("content-type", "application/json").body("[1]").send().await.unwrap();
        assert_eq!(rotate.status().as_u16(), 400);
        assert_eq!(gw.post(&revoke, &t.key, None, json!({})).await.status, 200);
    }

    async fn balances_stay_within_what_json_clients_read_exactly(gw) {
        let t = gw.tenant().await;
        assert_eq!(gw.grant(&t.key, "g1", "rich", 9_007_199_254_740_991).await.status, 201);
        let r = gw.grant(&t.key, "g2", "rich", 1).await;
        assert_eq!((r.status, r.body["code"].as_str()), (422, Some("balance_overflow")));
        assert_eq!(gw.account(&t.key, "rich").await.i64("balance"), 9_007_199_254_740_991);
    }
}

/// A client that never finishes its request headers is cut off, and cannot hold a graceful
/// shutdown open.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start_sqlite().await;
    let mut slow = tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut buf)).await;
    let elapsed = started.elapsed();
    assert!(read.is_ok(), "the connection was still open after 10 s");
    assert!(elapsed < std::time::Duration::from_secs(6), "cut off after {elapsed:?}");
    let mut other = tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let stopped = std::time::Instant::now();
    gw.stop().await;
    assert!(stopped.elapsed() < std::time::Duration::from_secs(6), "shutdown waited {:?}", stopped.elapsed());
}

/// An over-long request target or oversized headers get a 414 or 431 problem response (not
/// hyper's empty one) and write nothing; headers within the limits pass.
#[tokio::test]
async fn oversized_request_heads_are_problems_and_write_nothing() {
    let gw = Gateway::start_sqlite().await;
    let t = gw.tenant().await;
    gw.grant(&t.key, "g", "alice", 5).await;
    let debit = |idem: &str| {
        gw.http
            .post(format!("{}/v1/debits", gw.base))
            .bearer_auth(&t.key)
            .header("idempotency-key", idem)
            .json(&json!({"subject": "alice", "amount": 1}))
    };
    let many = (0..120).fold(debit("many"), |req, i| req.header(format!("x-extra-{i}"), "v"));
    let cases = [
        ("one 40 KiB header", debit("big").header("x-big", "a".repeat(40 * 1024)), 431),
        ("120 header fields", many, 431),
        (
            "a 9 KiB query",
            gw.http.get(format!("{}/v1/events?x={}", gw.base, "a".repeat(9 * 1024))).bearer_auth(&t.key),
            414,
        ),
    ];
    for (name, request, status) in cases {
        let reply = Gateway::reply(request.send().await.unwrap()).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        assert!(reply.is_problem(), "{name}: not a problem response: {:?} {}", reply.headers, reply.body);
    }
    let within = Gateway::reply(debit("within").header("x-big", "a".repeat(20 * 1024)).send().await.unwrap()).await;
    assert_eq!(within.status, 201, "{}", within.body);
    let events = gw.all_events(&t.key, "").await;
    assert_eq!(events.len(), 2, "the grant and the one debit within the limits: {events:?}");
    gw.stop().await;
}

/// Sends `request` on a fresh connection (half-closing it after, if asked) and returns the
/// status line and body of the answer, or `None` if the connection closed without one.
async fn raw_exchange(gw: &Gateway, request: &str, half_close: bool) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned));
                length.and_then(|l| l.trim().parse::<usize>().ok()).is_some_and(|l| body.len() >= l)
            });
            if n == 0 || complete {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read).await.expect("an answer within 5 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// Bodies that cannot be taken are refused before they are read, with a problem body: one
/// announced over 64 KiB (at once, not after the request timeout), a compressed one, a broken
/// chunked one. A client that half-closes after its request still gets the answer.
#[tokio::test]
async fn body_heads_are_checked_before_the_body_and_half_closed_clients_get_answers() {
    let gw = Gateway::start_sqlite().await;
    let t = gw.tenant().await;
    let head = |extra: &str| {
        format!(
            "POST /v1/grants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nIdempotency-Key: g\r\nContent-Type: application/json\r\n{extra}\r\n",
            t.key
        )
    };
    let body = r#"{"subject":"alice","amount":5}"#;
    let started = std::time::Instant::now();
    let cases = [
        (head("Content-Length: 70000\r\n"), "400", "body_too_large"),
        (
            head(&format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", body.len())) + body,
            "415",
            "unsupported_content_encoding",
        ),
        (head("Transfer-Encoding: chunked\r\n") + "zz\r\n", "400", "invalid_body"),
        (
            head("Transfer-Encoding: chunked\r\n") + &format!("{:x}\r\n{}\r\n0\r\n\r\n", 70_000, "a".repeat(70_000)),
            "400",
            "body_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let (line, answer) = raw_exchange(&gw, &request, false).await.expect("an answer");
        assert!(line.contains(status), "{line} {answer}");
        let problem: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(problem["code"], code, "{answer}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "refused at once: {:?}", started.elapsed());
    assert!(gw.all_events(&t.key, "").await.is_empty(), "nothing written");
    let request = head(&format!("Content-Length: {}\r\nConnection: close\r\n", body.len())) + body;
    let (line, answer) = raw_exchange(&gw, &request, true).await.expect("an answer after a half-close");
    assert!(line.contains("201"), "{line} {answer}");
    assert_eq!(gw.all_events(&t.key, "").await.len(), 1);
    gw.stop().await;
}

/// A connection that sends nothing is closed after the header timeout, and one that went
/// quiet after a response after the idle timeout: idle sockets cannot pile up.
#[tokio::test]
async fn quiet_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start_sqlite_with(|c| c.idle_timeout = std::time::Duration::from_secs(1)).await;
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let closed_within = |mut stream: tokio::net::TcpStream, limit: u64| async move {
        let mut buf = [0u8; 1024];
        let started = std::time::Instant::now();
        let read = tokio::time::timeout(std::time::Duration::from_secs(limit), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        assert!(read.await.is_ok(), "still open after {limit} s");
        started.elapsed()
    };
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let waited = closed_within(silent, 6).await;
    assert!(waited >= std::time::Duration::from_millis(1500), "closed after the 2 s header timeout: {waited:?}");
    let mut served = tokio::net::TcpStream::connect(&addr).await.unwrap();
    served.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let waited = closed_within(served, 4).await;
    assert!(waited >= std::time::Duration::from_millis(900), "closed after the 1 s idle timeout: {waited:?}");
    gw.stop().await;
}
