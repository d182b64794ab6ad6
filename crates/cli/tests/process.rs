//! The real `licenseseal` binary: init, serve on a fresh data directory, graceful shutdown on
//! SIGTERM, and durability across `kill -9`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{get, post, sigterm, tenant, Served, BIN};
use serde_json::{json, Value};

fn serve(data_dir: &Path) -> Served {
    common::process::serve(&["--data-dir", data_dir.to_str().expect("utf-8 path")])
}

#[test]
fn init_prints_the_operator_key_once_and_refuses_an_existing_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Command::new(BIN).args(["init", "--data-dir"]).arg(&data).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let printed: Value = serde_json::from_slice(&first.stdout).expect("JSON on stdout");
    let key = printed["operator_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("lsk_"));
    let db = data.join("licenseseal.db");
    let before = std::fs::read(&db).unwrap();
    let second = Command::new(BIN).args(["init", "--data-dir"]).arg(&data).output().unwrap();
    assert!(!second.status.success());
    assert!(second.stdout.is_empty(), "no second key is printed");
    assert!(String::from_utf8_lossy(&second.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&db).unwrap(), before, "a refused init changes nothing");
    // The key from init works against a server on that store, which prints no new key.
    let served = serve(&data);
    assert_eq!(served.operator_key, None);
    let client = reqwest::blocking::Client::new();
    tenant(&client, &served.base, &key);
    sigterm(&served.child);
    let mut child = served.child;
    assert!(child.wait().unwrap().success());
}

#[test]
fn serve_initialises_an_empty_data_dir_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path());
    let operator = served.operator_key.clone().expect("serve prints the operator key on a fresh store");
    let client = reqwest::blocking::Client::new();
    let key = tenant(&client, &served.base, &operator);
    let (status, _) = post(&client, &served.base, "/v1/grants", &key, Some("g"), json!({"subject": "a", "amount": 10}));
    assert_eq!(status, 201);
    // A second process on the same data directory is refused: one writer per store.
    let second = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run a second serve");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another licenseseal process"));
    sigterm(&served.child);
    let mut child = served.child;
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status:?}");
    // Restart: nothing lost, no new operator key.
    let again = serve(dir.path());
    assert_eq!(again.operator_key, None);
    let (status, account) = get(&client, &again.base, "/v1/accounts/a", &key);
    assert_eq!((status, account["balance"].as_i64()), (200, Some(10)));
    sigterm(&again.child);
    let mut child = again.child;
    assert!(child.wait().unwrap().success());
}

/// Debits are acknowledged only once durable: after `kill -9` in the middle of a load and a
/// restart, every acknowledged event is there and every balance is the sum of its deltas.
#[test]
fn kill_9_during_debits_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(dir.path());
    let operator = served.operator_key.clone().unwrap();
    let client = reqwest::blocking::Client::new();
    let key = tenant(&client, &served.base, &operator);
    let subjects: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    for s in &subjects {
        let (status, _) = post(
            &client,
            &served.base,
            "/v1/grants",
            &key,
            Some(&format!("g-{s}")),
            json!({"subject": s, "amount": 1_000_000}),
        );
        assert_eq!(status, 201);
    }
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_millis(800);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (base, key, acked, subject) =
                (served.base.clone(), key.clone(), acknowledged.clone(), subjects[w % 8].clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
                for i in 0.. {
                    if Instant::now() > stop_at + Duration::from_secs(2) {
                        break;
                    }
                    let req = client
                        .post(format!("{base}/v1/debits"))
                        .bearer_auth(&key)
                        .header("idempotency-key", format!("w{w}-{i}"))
                        .json(&json!({"subject": subject, "amount": 1}));
                    match req.send() {
                        Ok(resp) if resp.status().as_u16() == 201 => {
                            let body: Value = resp.json().unwrap();
                            acked.lock().unwrap().push(body["event_id"].as_str().unwrap().to_owned());
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(stop_at - Instant::now());
    let mut child = served.child;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 50, "the load ran ({} debits acknowledged)", acknowledged.len());

    let again = serve(dir.path());
    for id in &acknowledged {
        let (status, event) = get(&client, &again.base, &format!("/v1/events/{id}"), &key);
        assert_eq!(status, 200, "acknowledged event {id} lost: {event}");
    }
    for s in &subjects {
        let mut sum = 0i64;
        let mut cursor = String::new();
        loop {
            let (_, page) = get(&client, &again.base, &format!("/v1/events?subject={s}&limit=1000{cursor}"), &key);
            sum += page["data"].as_array().unwrap().iter().map(|e| e["delta"].as_i64().unwrap()).sum::<i64>();
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        let (_, account) = get(&client, &again.base, &format!("/v1/accounts/{s}"), &key);
        assert_eq!(account["balance"].as_i64(), Some(sum), "balance of {s} is the sum of its deltas");
    }
    let mut child = again.child;
    child.kill().unwrap();
    child.wait().unwrap();
}

fn exchange(client: &reqwest::blocking::Client, base: &str, key: &str) -> String {
    let r = client
        .post(format!("{base}/v1/authority/token"))
        .bearer_auth(key)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json::<Value>().unwrap()["access_token"].as_str().unwrap().to_owned()
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
}

/// Authority tokens survive a restart and a key rotation made with the CLI; the generated
/// master key is kept in the data directory, readable by its owner only, and a wrong master
/// key refuses to start instead of minting with a key nobody else knows.
#[test]
fn tokens_survive_restart_and_cli_rotation_under_the_kept_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--data-dir", data, "--public-url", "http://licenseseal.test"];
    let served = common::process::serve(&args);
    let operator = served.operator_key.clone().unwrap();
    let master = dir.path().join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&master).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let client = reqwest::blocking::Client::new();
    let key = tenant(&client, &served.base, &operator);
    let (status, _) = post(&client, &served.base, "/v1/grants", &key, Some("g"), json!({"subject": "a", "amount": 10}));
    assert_eq!(status, 201);
    let token = exchange(&client, &served.base, &key);
    served.stop();

    let rotated = Command::new(BIN).args(["authority", "rotate-key", "--data-dir", data]).output().unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(rotated["previous_kid"].as_str(), Some(kid_of(&token).as_str()));

    let again = common::process::serve(&args);
    let (status, account) = get(&client, &again.base, "/v1/accounts/a", &token);
    assert_eq!((status, account["balance"].as_i64()), (200, Some(10)), "the token outlives restart and rotation");
    let fresh = exchange(&client, &again.base, &key);
    assert_eq!(kid_of(&fresh), rotated["kid"].as_str().unwrap());
    again.stop();

    let wrong = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .env("LICENSESEAL_MASTER_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("master key"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let bad = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .env("LICENSESEAL_MASTER_KEY", "c2hvcnQ=")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("32 bytes"));
}

/// `licenseseal sign` prints headers that the server accepts, for HMAC secrets and Ed25519
/// PEM keys alike.
#[test]
fn the_sign_command_produces_requests_the_server_accepts() {
    use base64::Engine;
    use ring::signature::KeyPair;

    let dir = tempfile::tempdir().unwrap();
    let served = common::process::serve(&["--data-dir", dir.path().to_str().unwrap()]);
    let client = reqwest::blocking::Client::new();
    let key = tenant(&client, &served.base, served.operator_key.as_deref().unwrap());
    let (status, _) =
        post(&client, &served.base, "/v1/grants", &key, Some("g"), json!({"subject": "alice", "amount": 10}));
    assert_eq!(status, 201);

    let (status, hmac) = post(
        &client,
        &served.base,
        "/v1/signing-keys",
        &key,
        None,
        json!({"alg": "hmac-sha256", "scopes": ["usage.debit"]}),
    );
    assert_eq!(status, 201, "{hmac}");
    let secret_file = dir.path().join("secret.b64");
    std::fs::write(&secret_file, hmac["secret"].as_str().unwrap()).unwrap();

    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let public = base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(doc.as_ref())
    );
    let pem_file = dir.path().join("ed25519.pem");
    std::fs::write(&pem_file, pem).unwrap();
    let (status, ed) = post(
        &client,
        &served.base,
        "/v1/signing-keys",
        &key,
        None,
        json!({"alg": "ed25519", "public_key": public, "scopes": ["usage.debit"]}),
    );
    assert_eq!(status, 201, "{ed}");

    let url = format!("{}/v1/debits", served.base);
    for (i, (id, key_args)) in [
        (hmac["id"].as_str().unwrap(), ["--hmac-secret-file", secret_file.to_str().unwrap()]),
        (ed["id"].as_str().unwrap(), ["--ed25519-key-file", pem_file.to_str().unwrap()]),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"subject": "alice", "amount": 1}).to_string();
        let out = Command::new(BIN)
            .args(["sign", "--key-id", id, "--method", "POST", "--url", &url, "--data", &body])
            .args(key_args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut req =
            client.post(&url).header("content-type", "application/json").header("idempotency-key", format!("s{i}"));
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let (name, value) = line.split_once(": ").expect("Name: value lines");
            req = req.header(name, value);
        }
        let resp = req.body(body).send().unwrap();
        assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().unwrap());
    }
    let (_, account) = get(&client, &served.base, "/v1/accounts/alice", &key);
    assert_eq!(account["balance"].as_i64(), Some(8));
    served.stop();
}
