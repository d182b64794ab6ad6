//! Ledger rules through the real server, as data: each scenario is a small script of
//! operations and the outcome each must have, run by one `check()`.
//!
//! Script lines: `<op> <args…> -> <status> [code] [field=value…] [replayed] [as=label]`
//!   grant <idem> <subject> <amount> [priority=P] [expires=+S]
//!   debit <idem> <subject> <amount>
//!   refund <idem> @<label> [amount]
//!   adjust <idem> <subject> <signed amount>
//!   overdraft <subject> <limit>        (PATCH the account policy)
//!   account <subject>                  (GET the account)
//!   advance <seconds>                  (move the gateway's clock; no expectation)

mod common;

use std::collections::HashMap;

use common::{Gateway, Reply};
use serde_json::{json, Value};

async fn check(gw: Gateway, script: &str) {
    let tenant = gw.tenant().await;
    let key = tenant.key.as_str();
    let mut labels: HashMap<String, String> = HashMap::new();
    let mut subjects = Vec::new();
    for (n, line) in script.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#')) {
        let (op, expect) = line.split_once("->").map_or((line, ""), |(a, b)| (a.trim(), b.trim()));
        let args: Vec<&str> = op.split_whitespace().collect();
        let opts: HashMap<&str, &str> = args.iter().filter_map(|a| a.split_once('=')).collect();
        let reply = match args[0] {
            "advance" => {
                gw.advance(args[1].parse().unwrap());
                continue;
            }
            "grant" => {
                let mut body = json!({ "subject": args[2], "amount": args[3].parse::<i64>().unwrap() });
                if let Some(p) = opts.get("priority") {
                    body["priority"] = json!(p.parse::<i32>().unwrap());
                }
                if let Some(s) = opts.get("expires") {
                    let at = gw.now().plus_seconds(s.trim_start_matches('+').parse().unwrap());
                    body["expires_at"] = json!(at.to_rfc3339());
                }
                subjects.push(args[2].to_owned());
                gw.post("/v1/grants", key, Some(args[1]), body).await
            }
            "debit" => {
                subjects.push(args[2].to_owned());
                gw.debit(key, args[1], args[2], args[3].parse().unwrap()).await
            }
            "refund" => {
                let of = labels.get(args[2].trim_start_matches('@')).cloned().unwrap_or_else(|| args[2].to_owned());
                let mut body = json!({ "refund_of": of });
                if let Some(a) = args.get(3).filter(|a| !a.contains('=')) {
                    body["amount"] = json!(a.parse::<i64>().unwrap());
                }
                gw.post("/v1/refunds", key, Some(args[1]), body).await
            }
            "adjust" => {
                subjects.push(args[2].to_owned());
                let body = json!({ "subject": args[2], "amount": args[3].parse::<i64>().unwrap(), "reason": "test" });
                gw.post("/v1/adjustments", key, Some(args[1]), body).await
            }
            "overdraft" => {
                let body = json!({ "overdraft_limit": args[2].parse::<i64>().unwrap() });
                gw.call("PATCH", &format!("/v1/accounts/{}", args[1]), Some(key), None, Some(body)).await
            }
            "account" => gw.account(key, args[1]).await,
            other => panic!("line {n}: unknown op {other}"),
        };
        expect_reply(n, line, expect, &reply, &mut labels);
    }
    subjects.sort();
    subjects.dedup();
    for subject in subjects {
        gw.assert_balance_is_sum_of_deltas(key, &subject).await;
    }
    gw.stop().await;
}

fn expect_reply(n: usize, line: &str, expect: &str, reply: &Reply, labels: &mut HashMap<String, String>) {
    let ctx = || format!("line {n}: `{line}` got {} {}", reply.status, reply.body);
    let mut words = expect.split_whitespace();
    let status: u16 = words.next().expect("expected status").parse().unwrap();
    assert_eq!(reply.status, status, "{}", ctx());
    if status >= 400 {
        assert!(reply.is_problem(), "{}", ctx());
    }
    let mut replayed = false;
    for word in words {
        match word.split_once('=') {
            Some(("as", label)) => {
                labels.insert(label.to_owned(), reply.str("event_id"));
            }
            Some((field, value)) => {
                let expected: Value = match value.strip_prefix('@') {
                    Some(label) => json!(labels[label]),
                    None => serde_json::from_str(value).unwrap_or_else(|_| json!(value)),
                };
                assert_eq!(reply.body[field], expected, "{field}: {}", ctx());
            }
            None if word == "replayed" => replayed = true,
            None => assert_eq!(reply.body["code"], word, "{}", ctx()),
        }
    }
    assert_eq!(reply.replayed(), replayed, "Idempotent-Replayed: {}", ctx());
}

conformance! {
    async fn outcomes_are_sticky_and_a_refusal_is_never_turned_into_a_charge(gw) {
    check(gw,
        "grant g1 alice 5 -> 201 balance=5
         debit k alice 10 -> 402 insufficient_credits
         grant g2 alice 10 -> 201 balance=15
         debit k alice 10 -> 402 insufficient_credits replayed
         debit k2 alice 10 -> 201 balance=5 available=5",
    )
    .await;
}
}

conformance! {
    async fn a_repeated_grant_applies_once_and_a_changed_one_is_refused(gw) {
    check(gw,
        "grant K alice 100 -> 201 balance=100 as=first
         grant K alice 100 -> 201 balance=100 replayed
         grant K alice 200 -> 422 idempotency_key_reused
         debit K alice 100 -> 422 idempotency_key_reused
         account alice -> 200 balance=100",
    )
    .await;
}
}

conformance! {
    async fn debits_burn_lots_by_priority_then_expiry_then_age(gw) {
    check(gw,
        "grant g1 alice 10 priority=5 -> 201
         grant g2 alice 10 priority=5 expires=+200 -> 201
         grant g3 alice 10 priority=5 expires=+100 -> 201
         grant g4 alice 10 priority=1 -> 201
         debit d1 alice 35 -> 201 balance=5 as=d
         account alice -> 200 balance=5 available=5",
    )
    .await;
}
}

conformance! {
    async fn expired_credit_is_never_spendable_even_before_any_sweep(gw) {
    check(gw,
        "grant g1 alice 1000 expires=+10 -> 201 balance=1000
         advance 11
         account alice -> 200 balance=1000 available=0 expired_pending=1000
         debit d1 alice 500 -> 402 insufficient_credits
         account alice -> 200 balance=0 available=0
         grant g2 alice 10 -> 201 balance=10",
    )
    .await;
}
}

conformance! {
    async fn refunds_are_capped_by_their_debit(gw) {
    check(gw,
        "grant g1 alice 100 -> 201
         debit d1 alice 40 -> 201 balance=60 as=d
         refund r1 @d 30 -> 201 balance=90 refund_of=@d
         refund r2 @d 11 -> 409 refund_exceeds_debit
         refund r3 @d -> 201 balance=100 amount=10
         refund r4 @d -> 409 refund_exceeds_debit
         refund r1 @d 30 -> 201 balance=90 replayed",
    )
    .await;
}
}

conformance! {
    async fn refunds_name_a_debit_of_this_tenant(gw) {
    check(gw,
        "grant g1 alice 100 -> 201 as=g
         refund r1 @g -> 422 not_a_debit
         refund r2 evt_0190aaaaaaaa7aaa8aaaaaaaaaaaaaaa -> 404 event_not_found
         refund r3 not-an-id -> 400 invalid_body",
    )
    .await;
}
}

conformance! {
    async fn credit_refunded_to_an_expired_lot_expires_with_it(gw) {
    check(gw,
        "grant g1 alice 10 expires=+5 -> 201
         debit d1 alice 10 -> 201 balance=0 as=d
         advance 6
         refund r1 @d -> 201 balance=0
         account alice -> 200 balance=0 available=0",
    )
    .await;
}
}

conformance! {
    async fn a_new_subject_may_overdraw_down_to_its_limit_and_no_further(gw) {
    check(gw,
        "overdraft bob 200 -> 200 overdraft_limit=200 balance=0
         debit d1 bob 150 -> 201 balance=-150 available=-150
         debit d2 bob 51 -> 402 insufficient_credits
         debit d3 bob 50 -> 201 balance=-200
         grant g1 bob 300 -> 201 balance=100
         account bob -> 200 balance=100 available=100",
    )
    .await;
}
}

conformance! {
    async fn decimal_credits_are_exact_integers(gw) {
    check(gw,
        "grant g1 alice 949899 -> 201
         debit d1 alice 50101 -> 201 balance=899798",
    )
    .await;
}
}

conformance! {
    async fn adjustments_are_signed_and_recorded_with_their_reason(gw) {
    check(gw,
        "grant g1 alice 10 -> 201
         adjust a1 alice -15 -> 201 balance=-5 delta=-15 amount=15 reason=test kind=adjustment
         adjust a2 alice 20 -> 201 balance=15 delta=20
         adjust a3 alice 0 -> 400 invalid_body",
    )
    .await;
}
}

conformance! {
    async fn max_debit_amount_limits_single_debits(gw) {
        let t = gw.tenant().await;
    gw.grant(&t.key, "g", "alice", 100).await;
    let patch =
        gw.call("PATCH", "/v1/accounts/alice", Some(&t.key), None, Some(json!({ "max_debit_amount": 10 }))).await;
    assert_eq!(patch.status, 200, "{}", patch.body);
    assert_eq!(gw.debit(&t.key, "d1", "alice", 11).await.body["code"], "max_debit_amount_exceeded");
    assert_eq!(gw.debit(&t.key, "d2", "alice", 10).await.status, 201);
    let clear =
        gw.call("PATCH", "/v1/accounts/alice", Some(&t.key), None, Some(json!({ "max_debit_amount": null }))).await;
    assert_eq!(clear.body["max_debit_amount"], Value::Null);
    assert_eq!(gw.debit(&t.key, "d3", "alice", 50).await.status, 201);
    gw.stop().await;
}
}

conformance! {
    async fn debit_records_the_lots_it_drew_from(gw) {
        let t = gw.tenant().await;
    let a = gw.post("/v1/grants", &t.key, Some("a"), json!({"subject": "s", "amount": 5, "priority": 1})).await;
    let b = gw.post("/v1/grants", &t.key, Some("b"), json!({"subject": "s", "amount": 5, "priority": 2})).await;
    let d = gw.debit(&t.key, "d", "s", 7).await;
    assert_eq!(
        d.body["allocations"],
        json!([{ "lot_id": a.str("event_id"), "amount": 5 }, { "lot_id": b.str("event_id"), "amount": 2 }])
    );
    let event = gw.get(&format!("/v1/events/{}", d.str("event_id")), &t.key).await;
    assert_eq!(event.body["allocations"], d.body["allocations"]);
    assert_eq!(event.body["balance_after"], 3);
    gw.stop().await;
}
}

conformance! {
    async fn account_as_of_shows_a_past_balance(gw) {
        let t = gw.tenant().await;
    gw.grant(&t.key, "g", "alice", 100).await;
    gw.advance(10);
    let middle = gw.now();
    gw.advance(10);
    gw.debit(&t.key, "d", "alice", 30).await;
    let then = gw.get(&format!("/v1/accounts/alice?as_of={}", middle.to_rfc3339()), &t.key).await;
    assert_eq!(then.i64("balance"), 100, "{}", then.body);
    assert_eq!(gw.account(&t.key, "alice").await.i64("balance"), 70);
    // The policy reported is the one in force at that instant, not today's.
    gw.advance(10);
    let before_policy = gw.now();
    gw.advance(10);
    let set = gw.call("PATCH", "/v1/accounts/alice", Some(&t.key), None, Some(json!({ "overdraft_limit": 50 }))).await;
    assert_eq!(set.status, 200, "{}", set.body);
    let past = gw.get(&format!("/v1/accounts/alice?as_of={}", before_policy.to_rfc3339()), &t.key).await;
    assert_eq!((past.i64("balance"), past.i64("overdraft_limit")), (70, 0), "{}", past.body);
    assert!(past.body["updated_at"].as_str().unwrap() <= before_policy.to_rfc3339().as_str(), "{}", past.body);
    gw.advance(1);
    let after = gw.get(&format!("/v1/accounts/alice?as_of={}", gw.now().to_rfc3339()), &t.key).await;
    assert_eq!(after.i64("overdraft_limit"), 50, "{}", after.body);
    gw.stop().await;
}
}
