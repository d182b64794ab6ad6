//! PostgreSQL deployment behaviour that only exists there: several gateway instances on one
//! database, and database outages. Skipped (with a message) when
//! `LICENSESEAL_TEST_DATABASE_URL` is unset; CI sets it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fresh_schema_url, Gateway};
use licenseseal_store::postgres::PgConfig;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of PostgreSQL that can be cut (every connection dropped, new ones
/// refused) and restored, to play a database outage without touching the shared server.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let mut cut = gen2.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { port, up, generation }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The fresh-schema URL rewritten to go through the proxy.
fn via_proxy(url: &str, port: u16) -> String {
    url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{port}"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_fails_fast_with_503_and_the_gateway_recovers_by_itself() {
    let Some(url) = fresh_schema_url().await else { return common::skipped() };
    assert!(url.contains("127.0.0.1:5432"), "the outage test proxies 127.0.0.1:5432");
    let proxy = Proxy::start("127.0.0.1:5432".into()).await;
    let config = PgConfig {
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(2),
        ..PgConfig::default()
    };
    let gw = Arc::new(Gateway::start_postgres(&via_proxy(&url, proxy.port), config).await);
    let t = gw.tenant().await;
    gw.grant(&t.key, "g", "alice", 1_000_000).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(Mutex::new(Vec::<(u16, Duration, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (gw, key, acked, statuses, stop) =
                (gw.clone(), t.key.clone(), acknowledged.clone(), statuses.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let started = Instant::now();
                    let r = gw.debit(&key, &format!("w{w}-{i}"), "alice", 1).await;
                    if r.status == 201 {
                        acked.lock().unwrap().push(r.str("event_id"));
                    }
                    let code = r.body["code"].as_str().unwrap_or("").to_owned();
                    statuses.lock().unwrap().push((r.status, started.elapsed(), code));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = gw.call("GET", "/readyz", None, None, None).await;
    assert_eq!((ready.status, ready.body["code"].as_str()), (503, Some("store_unavailable")));
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw.call("GET", "/readyz", None, None, None).await.status != 200 {
        assert!(Instant::now() < deadline, "the gateway did not recover by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let statuses = statuses.lock().unwrap().clone();
    let unavailable: Vec<_> = statuses.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(!unavailable.is_empty(), "the outage was seen by clients");
    for (status, took, code) in &statuses {
        assert!([201, 503].contains(status), "unexpected {status} {code}");
        if *status == 503 {
            assert_eq!(code, "store_unavailable");
            assert!(*took < Duration::from_secs(8), "a 503 must come fast, took {took:?}");
        }
    }
    let after = statuses.iter().rev().take_while(|(s, _, _)| *s == 201).count();
    assert!(after > 0, "debits succeed again after the outage");
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in &acknowledged {
        assert_eq!(gw.get(&format!("/v1/events/{id}"), &t.key).await.status, 200, "acknowledged {id} lost");
    }
    gw.assert_balance_is_sum_of_deltas(&t.key, "alice").await;
}

/// Two real `licenseseal serve` processes on one database; clients spread over both send
/// concurrent debits, grants and refunds to the same accounts, each idempotency key to both
/// instances at once.
#[test]
fn two_instances_on_one_database_keep_one_exact_ledger() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(fresh_schema_url()) else { return common::skipped() };
    // Both start at the same moment: migrations and initialisation must happen exactly once.
    let starting: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                common::process::serve(&[
                    "--database-url",
                    &url,
                    "--master-key",
                    SHARED_MASTER_KEY,
                    "--public-url",
                    "http://licenseseal.test",
                ])
            })
        })
        .collect();
    let mut served: Vec<_> = starting.into_iter().map(|s| s.join().unwrap()).collect();
    let (b, a) = (served.pop().unwrap(), served.pop().unwrap());
    let printed: Vec<_> = [&a, &b].iter().filter_map(|s| s.operator_key.clone()).collect();
    assert_eq!(printed.len(), 1, "exactly one instance initialises the store and prints the key");
    let operator = printed[0].clone();
    let client = reqwest::blocking::Client::new();
    let key = common::process::tenant(&client, &a.base, &operator);
    let bases = [a.base.clone(), b.base.clone()];
    for s in 0..4 {
        let (status, _) = common::process::post(
            &client,
            &bases[s % 2],
            "/v1/grants",
            &key,
            Some(&format!("seed{s}")),
            json!({"subject": format!("s{s}"), "amount": 1000}),
        );
        assert_eq!(status, 201);
    }
    let (status, _) = common::process::post(
        &client,
        &a.base,
        "/v1/grants",
        &key,
        Some("tight"),
        json!({"subject": "tight", "amount": 50}),
    );
    assert_eq!(status, 201);

    // Every operation is sent to both instances at the same moment with the same key.
    let results = Arc::new(Mutex::new(Vec::<(String, u16, serde_json::Value)>::new()));
    let threads: Vec<_> = (0..16)
        .map(|w| {
            let (bases, key, results) = (bases.clone(), key.clone(), results.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                for i in 0..25 {
                    let idem = if i % 5 == 4 { format!("tight-w{w}-{i}") } else { format!("w{w}-{i}") };
                    let (path, body) = match i % 5 {
                        0 => ("/v1/grants", json!({"subject": format!("s{}", w % 4), "amount": 3})),
                        4 => ("/v1/debits", json!({"subject": "tight", "amount": 1})),
                        _ => ("/v1/debits", json!({"subject": format!("s{}", (w + i) % 4), "amount": 2})),
                    };
                    let pair: Vec<_> = bases
                        .iter()
                        .map(|base| {
                            let (client, base, key, idem, body) =
                                (client.clone(), base.clone(), key.clone(), idem.clone(), body.clone());
                            std::thread::spawn(move || {
                                common::process::post(&client, &base, path, &key, Some(&idem), body)
                            })
                        })
                        .collect();
                    for handle in pair {
                        let (status, body) = handle.join().unwrap();
                        results.lock().unwrap().push((idem.clone(), status, body));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let results = results.lock().unwrap().clone();
    let mut by_key: std::collections::HashMap<String, Vec<(u16, serde_json::Value)>> = Default::default();
    for (idem, status, body) in results {
        assert!(status < 500, "{status} {body}");
        by_key.entry(idem).or_default().push((status, body));
    }
    for (idem, answers) in &by_key {
        assert_eq!(answers[0].0, answers[1].0, "{idem}: both instances give the same outcome");
        assert_eq!(answers[0].1["event_id"], answers[1].1["event_id"], "{idem}: one event per key");
    }
    let tight_ok = by_key.iter().filter(|(k, a)| k.starts_with("tight-") && a[0].0 == 201).count();
    assert_eq!(tight_ok, 50, "exactly the 50 credits of `tight` were spent, never more");
    let events = common::process::all_events(&client, &a.base, &key, "");
    let debit_events = events.iter().filter(|e| e["kind"] == "debit").count();
    let applied_debits = by_key.values().filter(|a| a[0].0 == 201 && a[0].1["kind"] == "debit").count();
    assert_eq!(debit_events, applied_debits, "one debit event per applied key");
    for subject in ["s0", "s1", "s2", "s3", "tight"] {
        let sum: i64 = events.iter().filter(|e| e["subject"] == subject).map(|e| e["delta"].as_i64().unwrap()).sum();
        let (_, account) = common::process::get(&client, &b.base, &format!("/v1/accounts/{subject}"), &key);
        assert_eq!(account["balance"].as_i64(), Some(sum), "{subject}: balance = Σ deltas");
    }

    // Authority tokens: issued by one instance, accepted by the other; a rotation made on one
    // instance is picked up by the other when it first meets the new kid.
    let token = |base: &str| {
        let r = client
            .post(format!("{base}/v1/authority/token"))
            .bearer_auth(&key)
            .form(&[("grant_type", "client_credentials"), ("scope", "ledger.read")])
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json::<serde_json::Value>().unwrap()["access_token"].as_str().unwrap().to_owned()
    };
    let from_a = token(&a.base);
    assert_eq!(common::process::get(&client, &b.base, "/v1/accounts/s0", &from_a).0, 200);
    let (status, rotated) = common::process::post(&client, &b.base, "/v1/authority/rotate", &operator, None, json!({}));
    assert_eq!(status, 200, "{rotated}");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // the unknown-kid reload cooldown
    let from_b = token(&b.base);
    assert_eq!(common::process::get(&client, &a.base, "/v1/accounts/s0", &from_b).0, 200);
    assert_eq!(common::process::get(&client, &a.base, "/v1/accounts/s0", &from_a).0, 200);
    a.stop();
    b.stop();
}

/// Base64 of 32 bytes, shared by instances of one deployment (tests only).
const SHARED_MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A PostgreSQL deployment must name its master key: instances cannot each generate one.
#[test]
fn postgres_serve_refuses_to_start_without_a_master_key() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(fresh_schema_url()) else { return common::skipped() };
    let out = std::process::Command::new(common::process::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env_remove("LICENSESEAL_MASTER_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LICENSESEAL_MASTER_KEY"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The nonce of a signed request is claimed in the database, so the same signed request sent
/// to two instances at the same moment is accepted by exactly one of them.
#[test]
fn a_signed_request_nonce_is_accepted_by_only_one_instance() {
    use base64::Engine;
    use licenseseal_auth::httpsig::{sign_request, RequestParts, SigningKey};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(fresh_schema_url()) else { return common::skipped() };
    let args = ["--database-url", &url, "--master-key", SHARED_MASTER_KEY, "--public-url", "http://credits.test"];
    let a = common::process::serve(&args);
    let b = common::process::serve(&args);
    let operator = a.operator_key.clone().or(b.operator_key.clone()).expect("one instance printed the key");
    let client = reqwest::blocking::Client::new();
    let key = common::process::tenant(&client, &a.base, &operator);
    let (status, _) = common::process::post(
        &client,
        &a.base,
        "/v1/grants",
        &key,
        Some("g"),
        json!({"subject": "alice", "amount": 5}),
    );
    assert_eq!(status, 201);
    let (status, created) = common::process::post(
        &client,
        &a.base,
        "/v1/signing-keys",
        &key,
        None,
        json!({"alg": "hmac-sha256", "scopes": ["ledger.read"]}),
    );
    assert_eq!(status, 201, "{created}");
    let secret = base64::engine::general_purpose::STANDARD.decode(created["secret"].as_str().unwrap()).unwrap();
    let signing = SigningKey::Hmac(secret);
    let keyid = created["id"].as_str().unwrap().to_owned();
    for round in 0..10 {
        // Behind a load balancer both instances see the same Host.
        let req = RequestParts {
            method: "GET",
            scheme: "http",
            authority: "credits.test",
            path: "/v1/accounts/alice",
            query: None,
            headers: &[],
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let signed = sign_request(&req, b"", &signing, &keyid, now, &format!("nonce-{round}")).unwrap();
        let statuses: Vec<u16> = [a.base.clone(), b.base.clone()]
            .into_iter()
            .map(|base| {
                let (client, signed) = (client.clone(), signed.clone());
                std::thread::spawn(move || {
                    client
                        .get(format!("{base}/v1/accounts/alice"))
                        .header("host", "credits.test")
                        .header("signature-input", signed.signature_input)
                        .header("signature", signed.signature)
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let mut sorted = statuses.clone();
        sorted.sort();
        assert_eq!(sorted, vec![200, 401], "round {round}: {statuses:?}");
    }
    a.stop();
    b.stop();
}
