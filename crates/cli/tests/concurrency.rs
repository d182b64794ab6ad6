//! Concurrency at the API boundary: duplicates fired together apply once, concurrent debits
//! never overspend, and mixed load never deadlocks or fails.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn rng() -> rand::rngs::StdRng {
    let seed: u64 = rand::random();
    println!("seed: {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

conformance! {
    async fn concurrent_debits_with_duplicate_retries_apply_once_per_key(gw) {
    let gw = Arc::new(gw);
    let t = gw.tenant().await;
    gw.grant(&t.key, "g", "alice", 1_000).await;
    let mut rng = rng();
    let mut sends: Vec<String> = Vec::new();
    for i in 0..200 {
        let copies = rng.gen_range(1..=3);
        sends.extend(std::iter::repeat_n(format!("debit-{i}"), copies));
    }
    sends.shuffle(&mut rng);
    let tasks = sends.into_iter().map(|idem| {
        let (gw, key) = (gw.clone(), t.key.clone());
        tokio::spawn(async move {
            let r = gw.debit(&key, &idem, "alice", 1).await;
            (idem, r)
        })
    });
    let mut by_key: HashMap<String, HashSet<String>> = HashMap::new();
    for task in tasks.collect::<Vec<_>>() {
        let (idem, r) = task.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        by_key.entry(idem).or_default().insert(r.str("event_id"));
    }
    assert_eq!(by_key.len(), 200);
    assert!(by_key.values().all(|ids| ids.len() == 1), "every retry of a key returns the same event");
    let debits = gw.all_events(&t.key, "kind=debit").await;
    assert_eq!(debits.len(), 200, "one event per idempotency key");
    assert_eq!(gw.assert_balance_is_sum_of_deltas(&t.key, "alice").await, 800);
}
}

conformance! {
    async fn concurrent_debits_never_overspend(gw) {
    let gw = Arc::new(gw);
    let t = gw.tenant().await;
    gw.grant(&t.key, "g", "alice", 50).await;
    gw.grant(&t.key, "g1", "last", 1).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (gw, key) = (gw.clone(), t.key.clone());
            tokio::spawn(async move { gw.debit(&key, &format!("d{i}"), "alice", 1).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 50);
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 50);
    assert_eq!(gw.assert_balance_is_sum_of_deltas(&t.key, "alice").await, 0);
    // Balance 1, two concurrent debits of 1 with different keys: exactly one wins.
    let (a, b) = tokio::join!(gw.debit(&t.key, "x1", "last", 1), gw.debit(&t.key, "x2", "last", 1));
    let mut pair = [a.status, b.status];
    pair.sort();
    assert_eq!(pair, [201, 402]);
    assert_eq!(gw.all_events(&t.key, "subject=last&kind=debit").await.len(), 1);
    assert_eq!(gw.assert_balance_is_sum_of_deltas(&t.key, "last").await, 0);
}
}

conformance! {
    async fn a_brand_new_account_overdraws_once_under_concurrency(gw) {
    let gw = Arc::new(gw);
    let t = gw.tenant().await;
    let p = gw.call("PATCH", "/v1/accounts/newbie", Some(&t.key), None, Some(json!({"overdraft_limit": 200}))).await;
    assert_eq!(p.status, 200);
    let (a, b) = tokio::join!(gw.debit(&t.key, "a", "newbie", 200), gw.debit(&t.key, "b", "newbie", 200));
    let mut pair = [a.status, b.status];
    pair.sort();
    assert_eq!(pair, [201, 402]);
    assert_eq!(gw.assert_balance_is_sum_of_deltas(&t.key, "newbie").await, -200);
}
}

conformance! {
    async fn duplicate_grants_sent_together_apply_once(gw) {
    let gw = Arc::new(gw);
    let t = gw.tenant().await;
    let first = gw.grant(&t.key, "K", "alice", 100).await;
    let again = gw.grant(&t.key, "K", "alice", 100).await;
    let (c1, c2) = tokio::join!(gw.grant(&t.key, "K2", "alice", 100), gw.grant(&t.key, "K2", "alice", 100));
    assert_eq!(first.str("event_id"), again.str("event_id"));
    assert_eq!(c1.str("event_id"), c2.str("event_id"));
    assert!(c1.replayed() ^ c2.replayed(), "exactly one of two concurrent duplicates is the original");
    assert_eq!(gw.all_events(&t.key, "kind=grant").await.len(), 2);
    assert_eq!(gw.assert_balance_is_sum_of_deltas(&t.key, "alice").await, 200);
}
}

// 1,000 mixed operations across 50 subjects, fired together in random order: no client ever
// sees a 5xx and every balance equals the sum of its events afterwards.
conformance! {
    async fn mixed_load_across_many_subjects_never_fails_or_deadlocks(gw) {
    let gw = Arc::new(gw);
    let t = gw.tenant().await;
    let mut debit_ids = Vec::new();
    for s in 0..50 {
        gw.grant(&t.key, &format!("seed{s}"), &format!("s{s}"), 100).await;
        let d = gw.debit(&t.key, &format!("seed-debit{s}"), &format!("s{s}"), 20).await;
        debit_ids.push(d.str("event_id"));
    }
    let mut rng = rng();
    let ops: Vec<(String, serde_json::Value, String)> = (0..1000)
        .map(|i| {
            let subject = format!("s{}", rng.gen_range(0..50));
            let idem = format!("op{i}");
            match rng.gen_range(0..4) {
                0 => ("/v1/grants".into(), json!({"subject": subject, "amount": rng.gen_range(1..50)}), idem),
                1 => ("/v1/debits".into(), json!({"subject": subject, "amount": rng.gen_range(1..50)}), idem),
                2 => {
                    let of = debit_ids.choose(&mut rng).unwrap().clone();
                    ("/v1/refunds".into(), json!({"refund_of": of, "amount": rng.gen_range(1..8)}), idem)
                }
                _ => {
                    let amount = rng.gen_range(-30..30i64);
                    let amount = if amount == 0 { 1 } else { amount };
                    ("/v1/adjustments".into(), json!({"subject": subject, "amount": amount, "reason": "load"}), idem)
                }
            }
        })
        .collect();
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|(path, body, idem)| {
            let (gw, key) = (gw.clone(), t.key.clone());
            tokio::spawn(async move { gw.post(&path, &key, Some(&idem), body).await })
        })
        .collect();
    for task in tasks {
        let r = task.await.unwrap();
        assert!(r.status < 500, "{} {}", r.status, r.body);
        assert!([201, 402, 409].contains(&r.status), "{} {}", r.status, r.body);
    }
    for s in 0..50 {
        gw.assert_balance_is_sum_of_deltas(&t.key, &format!("s{s}")).await;
    }
    let refunds = gw.all_events(&t.key, "kind=refund").await;
    for id in &debit_ids {
        let refunded: i64 =
            refunds.iter().filter(|e| e["refund_of"] == id.as_str()).map(|e| e["amount"].as_i64().unwrap()).sum();
        assert!(refunded <= 20, "refunds of {id} exceed the debit: {refunded}");
    }
}
}
