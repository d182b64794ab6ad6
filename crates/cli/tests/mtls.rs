//! Mutual TLS through the real server: real handshakes over loopback with certificates made
//! in the test (a CA per tenant), identity rules, the SNI/Host binding, forwarded certificate
//! headers, and tenants requiring mTLS (auth scenarios A12–A15).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{Gateway, Reply};
use licenseseal_testkit::{ClientCertSpec, TestCa};
use serde_json::{json, Value};

const ACME: &str = "acme.mtls.test";
const BETA: &str = "beta.mtls.test";

struct Setup {
    gw: Gateway,
    server_ca: TestCa,
    acme_ca: TestCa,
    beta_ca: TestCa,
    acme: common::Tenant,
    beta: common::Tenant,
}

/// Two tenants bound to two hostnames, each trusting its own CA; acme maps the URI SAN
/// `spiffe://acme/billing` to subject alice with debit and read scopes.
async fn setup() -> Setup {
    let server_ca = TestCa::new("server-ca");
    let gw = Gateway::start_sqlite_tls(&server_ca, &[ACME, BETA, "localhost"]).await;
    let (acme_ca, beta_ca) = (TestCa::new("acme-ca"), TestCa::new("beta-ca"));
    let acme = gw.tenant().await;
    let beta = gw.tenant().await;
    for (tenant, host, ca) in [(&acme, ACME, &acme_ca), (&beta, BETA, &beta_ca)] {
        let r = gw.call("PATCH", "/v1/tenant", Some(&tenant.key), None, Some(json!({ "mtls_hostname": host }))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = gw.post("/v1/client-cas", &tenant.key, None, json!({ "pem": ca.cert_pem() })).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let rule =
        json!({ "san_uri": "spiffe://acme/billing", "subject": "alice", "scopes": ["usage.debit", "ledger.read"] });
    let r = gw.post("/v1/client-identities", &acme.key, None, rule).await;
    assert_eq!(r.status, 201, "{}", r.body);
    gw.grant(&acme.key, "g1", "alice", 100).await;
    gw.grant(&acme.key, "g2", "bob", 100).await;
    gw.grant(&beta.key, "g1", "carol", 100).await;
    Setup { gw, server_ca, acme_ca, beta_ca, acme, beta }
}

fn billing() -> ClientCertSpec {
    ClientCertSpec { san_uri: vec!["spiffe://acme/billing".into()], ..ClientCertSpec::default() }
}

/// An HTTPS client for `host` (resolved to the gateway's TLS address), with a client
/// certificate when given.
fn client(s: &Setup, host: &str, cert: Option<(String, String)>) -> reqwest::Client {
    let addr: SocketAddr = s.gw.tls_addr.expect("tls listener");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(s.server_ca.cert_pem().as_bytes()).unwrap())
        .resolve(host, addr);
    if let Some((cert, key)) = cert {
        builder = builder.identity(reqwest::Identity::from_pem(format!("{key}\n{cert}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn send(
    client: &reqwest::Client,
    s: &Setup,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<Reply, reqwest::Error> {
    let port = s.gw.tls_addr.unwrap().port();
    let url = format!("https://{host}:{port}{path}");
    let mut req = match &body {
        Some(b) => client.post(url).json(b),
        None => client.get(url),
    };
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    Ok(Gateway::reply(req.send().await?).await)
}

async fn debit(client: &reqwest::Client, s: &Setup, idem: &str, subject: &str) -> Result<Reply, reqwest::Error> {
    send(client, s, ACME, "/v1/debits", &[("idempotency-key", idem)], Some(json!({ "subject": subject, "amount": 1 })))
        .await
}

fn refused(result: Result<Reply, reqwest::Error>) {
    match result {
        Err(_) => {} // the handshake refused the certificate
        Ok(r) => assert!(r.status == 401 && r.is_problem(), "{} {}", r.status, r.body), // or the uniform 401
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_acts_for_the_principal_its_rule_names() {
    let s = setup().await;
    let good = client(&s, ACME, Some(s.acme_ca.client_cert(&billing())));
    let d = debit(&good, &s, "d1", "alice").await.unwrap();
    assert_eq!(d.status, 201, "{}", d.body);
    assert_eq!(debit(&good, &s, "d2", "bob").await.unwrap().status, 403, "bound to alice");
    let g = send(
        &good,
        &s,
        ACME,
        "/v1/grants",
        &[("idempotency-key", "g")],
        Some(json!({ "subject": "alice", "amount": 1 })),
    );
    assert_eq!(g.await.unwrap().status, 403, "no credits.grant scope");

    // By fingerprint, too; a typed SAN matches only its own type.
    let (cert, key) = s.acme_ca.client_cert(&ClientCertSpec { common_name: "fp".into(), ..ClientCertSpec::default() });
    let fp = licenseseal_auth::mtls::fingerprint(&pem_der(&cert));
    let r =
        s.gw.post(
            "/v1/client-identities",
            &s.acme.key,
            None,
            json!({ "fingerprint_sha256": fp, "scopes": ["ledger.read"] }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let by_fp = client(&s, ACME, Some((cert, key)));
    assert_eq!(send(&by_fp, &s, ACME, "/v1/accounts/alice", &[], None).await.unwrap().status, 200);
    let dns_rule = json!({ "san_dns": "billing.acme.internal", "scopes": ["ledger.read"] });
    assert_eq!(s.gw.post("/v1/client-identities", &s.acme.key, None, dns_rule).await.status, 201);
    let uri_not_dns = ClientCertSpec { san_uri: vec!["billing.acme.internal".into()], ..ClientCertSpec::default() };
    refused(
        send(&client(&s, ACME, Some(s.acme_ca.client_cert(&uri_not_dns))), &s, ACME, "/v1/accounts/alice", &[], None)
            .await,
    );
    let dns = ClientCertSpec { san_dns: vec!["billing.acme.internal".into()], ..ClientCertSpec::default() };
    let r = send(&client(&s, ACME, Some(s.acme_ca.client_cert(&dns))), &s, ACME, "/v1/accounts/alice", &[], None).await;
    assert_eq!(r.unwrap().status, 200);

    // A certificate matching no rule, or presented with a second credential, is refused.
    let stranger = ClientCertSpec { san_uri: vec!["spiffe://acme/other".into()], ..ClientCertSpec::default() };
    refused(debit(&client(&s, ACME, Some(s.acme_ca.client_cert(&stranger))), &s, "d3", "alice").await);
    let bearer = format!("Bearer {}", s.acme.key);
    refused(send(&good, &s, ACME, "/v1/accounts/alice", &[("authorization", &bearer)], None).await);

    // Other methods work on the TLS listener too; healthz needs nothing.
    let anonymous = client(&s, ACME, None);
    assert_eq!(send(&anonymous, &s, ACME, "/healthz", &[], None).await.unwrap().status, 200);
    let with_key = send(&anonymous, &s, ACME, "/v1/accounts/alice", &[("authorization", &bearer)], None).await;
    assert_eq!(with_key.unwrap().status, 200);

    // Removing the rule ends the certificate's access.
    let rules = s.gw.get("/v1/client-identities", &s.acme.key).await;
    for rule in rules.body["data"].as_array().unwrap() {
        let id = rule["id"].as_str().unwrap();
        let r = s.gw.call("DELETE", &format!("/v1/client-identities/{id}"), Some(&s.acme.key), None, None).await;
        assert_eq!(r.status, 204);
    }
    refused(debit(&client(&s, ACME, Some(s.acme_ca.client_cert(&billing()))), &s, "d4", "alice").await);
    assert_eq!(s.gw.account(&s.acme.key, "alice").await.i64("balance"), 99);
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// A12 and the other certificates the handshake or the rules must refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_certificates_are_refused() {
    let s = setup().await;
    let cases = [
        ("serverAuth only", ClientCertSpec { client_auth: false, server_auth: true, ..billing() }, &s.acme_ca),
        (
            "emailProtection only",
            ClientCertSpec { client_auth: false, email_protection: true, ..billing() },
            &s.acme_ca,
        ),
        ("no extended key usage", ClientCertSpec { client_auth: false, ..billing() }, &s.acme_ca),
        ("expired", ClientCertSpec { not_before_days: -30, not_after_days: -1, ..billing() }, &s.acme_ca),
        ("not yet valid", ClientCertSpec { not_before_days: 2, not_after_days: 30, ..billing() }, &s.acme_ca),
        ("another tenant's CA", billing(), &s.beta_ca),
        ("an unknown CA", billing(), &TestCa::new("rogue")),
    ];
    for (i, (name, spec, ca)) in cases.iter().enumerate() {
        let result = debit(&client(&s, ACME, Some(ca.client_cert(spec))), &s, &format!("x{i}"), "alice").await;
        match result {
            Err(_) => {}
            Ok(r) => assert_eq!(r.status, 401, "{name}: {}", r.body),
        }
    }
    // With clientAuth it is accepted (the control of A12).
    assert_eq!(
        debit(&client(&s, ACME, Some(s.acme_ca.client_cert(&billing()))), &s, "ok", "alice").await.unwrap().status,
        201
    );
    assert_eq!(s.gw.account(&s.acme.key, "alice").await.i64("balance"), 99);
}

/// A13: the TLS name and the HTTP host must agree, on HTTP/1.1 and across HTTP/2 requests
/// of one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tls_name_and_the_http_host_must_agree() {
    let s = setup().await;
    // A handshake for a name without client-certificate requirements, then acme's Host.
    let plain = client(&s, "localhost", None);
    let port = s.gw.tls_addr.unwrap().port();
    let r = plain
        .get(format!("https://localhost:{port}/v1/accounts/alice"))
        .header("host", ACME)
        .bearer_auth(&s.acme.key)
        .send()
        .await
        .unwrap();
    let r = Gateway::reply(r).await;
    assert_eq!(r.status, 421, "{}", r.body);
    assert!(r.is_problem());

    // HTTP/2: one connection opened for acme with acme's certificate; a second request on it
    // for beta's authority is refused.
    let (cert, key) = s.acme_ca.client_cert(&billing());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(pem_der(&s.server_ca.cert_pem()))).unwrap();
    let key = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![pem_der(&cert).into()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.gw.tls_addr.unwrap()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(ACME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |authority: &str| {
        hyper::Request::get(format!("https://{authority}:{port}/v1/accounts/alice"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let first = sender.send_request(get(ACME)).await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = sender.send_request(get(BETA)).await.unwrap();
    assert_eq!(second.status().as_u16(), 421);
    let third = sender.send_request(get(ACME)).await.unwrap();
    assert_eq!(third.status().as_u16(), 200, "the connection still serves its own host");
}

/// A14: certificate headers from clients are stripped and never give an identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_certificate_headers_are_never_trusted() {
    let s = setup().await;
    let (cert, _) = s.acme_ca.client_cert(&billing());
    let encoded: String = cert.lines().filter(|l| !l.starts_with("-----")).collect();
    let forged = [
        ("x-forwarded-client-cert", format!("Hash=abc;Cert=\"{}\";URI=spiffe://acme/billing", encoded)),
        ("client-cert", format!(":{encoded}:")),
    ];
    for (name, value) in &forged {
        let r = s.gw.http.get(format!("{}/v1/accounts/alice", s.gw.base)).header(*name, value).send().await.unwrap();
        assert_eq!(Gateway::reply(r).await.status, 401, "{name} over plain HTTP");
        let tls = client(&s, ACME, None);
        let r = send(&tls, &s, ACME, "/v1/accounts/alice", &[(name, value.as_str())], None).await.unwrap();
        assert_eq!(r.status, 401, "{name} over TLS without a certificate");
    }
}

/// A15: a tenant that requires mTLS refuses its own valid API key, on either listener; other
/// tenants are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_requiring_mtls_refuses_other_methods() {
    let s = setup().await;
    let r = s.gw.call("PATCH", "/v1/tenant", Some(&s.acme.key), None, Some(json!({ "auth_methods": ["mtls"] }))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["auth_methods"], json!(["mtls"]));
    let key_alone = s.gw.debit(&s.acme.key, "k1", "alice", 1).await;
    assert_eq!(key_alone.status, 401, "{}", key_alone.body);
    let over_tls = send(
        &client(&s, ACME, None),
        &s,
        ACME,
        "/v1/debits",
        &[("authorization", &format!("Bearer {}", s.acme.key)), ("idempotency-key", "k2")],
        Some(json!({ "subject": "alice", "amount": 1 })),
    )
    .await
    .unwrap();
    assert_eq!(over_tls.status, 401);
    let cert = client(&s, ACME, Some(s.acme_ca.client_cert(&billing())));
    assert_eq!(debit(&cert, &s, "c1", "alice").await.unwrap().status, 201);
    assert_eq!(s.gw.debit(&s.beta.key, "b1", "carol", 1).await.status, 201, "beta still takes API keys");
    // The operator can always repair the setting.
    let body = json!({ "tenant_id": s.acme.id, "auth_methods": null });
    assert_eq!(s.gw.call("PATCH", "/v1/tenant", Some(&s.gw.operator_key), None, Some(body)).await.status, 200);
    assert_eq!(s.gw.debit(&s.acme.key, "k3", "alice", 1).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registration_refuses_bad_bundles_rules_and_settings() {
    let s = setup().await;
    let key = &s.acme.key;
    let (leaf, leaf_key) = s.acme_ca.client_cert(&billing());
    let garbage = "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n";
    for pem in
        [String::new(), "hello".into(), garbage.into(), leaf.clone(), format!("{}{leaf_key}", s.acme_ca.cert_pem())]
    {
        let r = s.gw.post("/v1/client-cas", key, None, json!({ "pem": pem })).await;
        assert_eq!(r.status, 400, "{pem:.40} → {}", r.body);
        assert!(r.is_problem());
    }
    let dup = s.gw.post("/v1/client-cas", key, None, json!({ "pem": s.acme_ca.cert_pem() })).await;
    assert_eq!(dup.status, 409);
    for rule in [
        json!({ "scopes": ["ledger.read"] }),
        json!({ "san_uri": "a", "san_dns": "b", "scopes": ["ledger.read"] }),
        json!({ "fingerprint_sha256": "xyz", "scopes": ["ledger.read"] }),
        json!({ "san_uri": "a", "scopes": [] }),
    ] {
        assert_eq!(s.gw.post("/v1/client-identities", key, None, rule.clone()).await.status, 400, "{rule}");
    }
    for patch in [
        json!({ "auth_methods": [] }),
        json!({ "auth_methods": ["password"] }),
        json!({ "mtls_hostname": "not a host" }),
    ] {
        let r = s.gw.call("PATCH", "/v1/tenant", Some(key), None, Some(patch.clone())).await;
        assert_eq!(r.status, 400, "{patch}");
    }
    let taken = s.gw.call("PATCH", "/v1/tenant", Some(key), None, Some(json!({ "mtls_hostname": BETA }))).await;
    assert_eq!((taken.status, taken.body["code"].as_str()), (409, Some("mtls_hostname_taken")));
    assert_eq!(s.gw.get("/v1/tenant", key).await.body["mtls_hostname"], ACME);
    let bound = s.gw.key(key, json!({ "name": "b", "scopes": ["keys.manage"], "subject": "alice" })).await;
    assert_eq!(s.gw.post("/v1/client-cas", &bound, None, json!({ "pem": s.beta_ca.cert_pem() })).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_that_expires_stops_working_on_a_live_connection() {
    let s = setup().await;
    // One client, one kept-alive connection: the handshake happened while the certificate was
    // valid; every request still checks its validity against the gateway's clock.
    let cert = client(&s, ACME, Some(s.acme_ca.client_cert(&ClientCertSpec { not_after_days: 2, ..billing() })));
    assert_eq!(debit(&cert, &s, "e1", "alice").await.unwrap().status, 201);
    s.gw.advance(3 * 86_400);
    let r = debit(&cert, &s, "e2", "alice").await.unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.is_problem());
    s.gw.advance(-3 * 86_400);
    assert_eq!(debit(&cert, &s, "e3", "alice").await.unwrap().status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_can_be_exchanged_for_a_token_that_ends_with_its_rule() {
    let s = setup().await;
    let cert = client(&s, ACME, Some(s.acme_ca.client_cert(&billing())));
    let r = send(&cert, &s, ACME, "/v1/authority/token", &[], Some(json!({ "grant_type": "client_credentials" })))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["scope"], "usage.debit ledger.read");
    let token = r.str("access_token");
    // The token carries the rule's subject and scopes, on the plain listener too.
    assert_eq!(s.gw.debit(&token, "t1", "alice", 1).await.status, 201);
    assert_eq!(s.gw.debit(&token, "t2", "bob", 1).await.status, 403, "bound to alice");
    // A certificate plus an API key in the form is two credentials.
    let both = send(
        &cert,
        &s,
        ACME,
        "/v1/authority/token",
        &[("authorization", &format!("Bearer {}", s.acme.key))],
        Some(json!({ "grant_type": "client_credentials" })),
    )
    .await
    .unwrap();
    assert_eq!(both.status, 401);
    // Removing the rule the certificate matched ends the tokens it was exchanged for.
    let rules = s.gw.get("/v1/client-identities", &s.acme.key).await;
    for rule in rules.body["data"].as_array().unwrap() {
        let path = format!("/v1/client-identities/{}", rule["id"].as_str().unwrap());
        assert_eq!(s.gw.call("DELETE", &path, Some(&s.acme.key), None, None).await.status, 204);
    }
    assert_eq!(s.gw.debit(&token, "t3", "alice", 1).await.status, 401);
}

/// Over HTTP/2 an early refusal (before the body is read) must reach the client as a
/// response: curl reported "Stream error in the HTTP/2 framing layer" for about half of such
/// requests when the unread body was reset. Uses the curl binary, as that is the client that
/// showed it; without curl the test says so and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn early_refusals_over_http2_reach_curl_as_responses() {
    let s = setup().await;
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("server-ca.pem");
    std::fs::write(&ca, s.server_ca.cert_pem()).unwrap();
    let port = s.gw.tls_addr.unwrap().port();
    for i in 0..20 {
        let out = tokio::process::Command::new("curl")
            .args(["--http2", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("{ACME}:{port}:127.0.0.1")])
            .args(["-H", "content-type: application/json", "-H", &format!("idempotency-key: h2-{i}")])
            .args(["-d", r#"{"subject":"alice","amount":1}"#])
            .arg(format!("https://{ACME}:{port}/v1/debits"))
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "request {i}: curl failed: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "request {i}");
    }
}
