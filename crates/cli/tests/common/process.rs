//! Helpers for tests that run the real `licenseseal` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_licenseseal");

/// A running `licenseseal serve` and what it printed.
pub struct Served {
    pub child: Child,
    pub base: String,
    pub operator_key: Option<String>,
}

impl Served {
    /// SIGTERM, then asserts a graceful exit with status 0.
    pub fn stop(self) {
        sigterm(&self.child);
        let mut child = self.child;
        let status = child.wait().unwrap();
        assert!(status.success(), "graceful shutdown exits 0, got {status:?}");
    }
}

/// Starts `licenseseal serve --listen 127.0.0.1:0 ARGS…` and waits until it listens.
pub fn serve(args: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("LICENSESEAL_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn licenseseal");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut base = None;
    for line in stderr.by_ref() {
        let line = line.expect("stderr line");
        if let Some(addr) = line.split("listen=").nth(1) {
            base = Some(format!("http://{}", addr.split_whitespace().next().unwrap()));
            break;
        }
    }
    let base = base.expect("the server logs its address");
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || stderr.for_each(drop));
    // The operator key, if printed, is on stdout before the server listens.
    let stdout = child.stdout.take().unwrap();
    let operator_key = read_available_line(stdout);
    Served { child, base, operator_key }
}

/// Reads one line from the child's stdout if one is there within a short time.
fn read_available_line(stdout: std::process::ChildStdout) -> Option<String> {
    let line = Arc::new(Mutex::new(None));
    let slot = line.clone();
    std::thread::spawn(move || {
        let mut first = String::new();
        if BufReader::new(stdout).read_line(&mut first).is_ok() && !first.is_empty() {
            *slot.lock().unwrap() = Some(first);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let text = line.lock().unwrap().clone()?;
    let value: Value = serde_json::from_str(&text).expect("stdout is JSON");
    Some(value["operator_key"].as_str().expect("operator_key").to_owned())
}

pub fn post(
    client: &reqwest::blocking::Client,
    base: &str,
    path: &str,
    key: &str,
    idem: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = client.post(format!("{base}{path}")).bearer_auth(key).json(&body);
    if let Some(idem) = idem {
        req = req.header("idempotency-key", idem);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

pub fn get(client: &reqwest::blocking::Client, base: &str, path: &str, key: &str) -> (u16, Value) {
    let resp = client.get(format!("{base}{path}")).bearer_auth(key).send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Every event matching `query`, following cursors.
pub fn all_events(client: &reqwest::blocking::Client, base: &str, key: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get(client, base, &format!("/v1/events?limit=1000&{query}{cursor}"), key);
        assert_eq!(status, 200, "{page}");
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

/// A tenant with a key having every scope.
pub fn tenant(client: &reqwest::blocking::Client, base: &str, operator: &str) -> String {
    let (status, t) = post(client, base, "/v1/tenants", operator, None, json!({"name": "t"}));
    assert_eq!(status, 201, "{t}");
    let body = json!({"tenant_id": t["id"], "name": "k", "scopes": ["*"]});
    let (status, k) = post(client, base, "/v1/api-keys", operator, None, body);
    assert_eq!(status, 201, "{k}");
    k["key"].as_str().unwrap().to_owned()
}

pub fn sigterm(child: &Child) {
    let rc = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(rc.success());
}
