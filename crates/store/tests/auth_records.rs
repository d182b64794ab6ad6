//! Records for signed requests (RFC 9421 signing keys and their nonces), mutual TLS (client CAs
//! and client identities) and per-tenant authentication settings, on both stores.
//!
//! The same test code runs on each `Backend`: on a `SqliteStore` in a temporary directory, and
//! on a `PgStore` in a fresh schema of the database named by `LICENSESEAL_TEST_DATABASE_URL`
//! (skipped, saying so, when that is unset). Every case also reopens its store (SQLite: shut
//! down and open the same directory again; PostgreSQL: a new connection to the same schema)
//! to check that what it wrote was persisted, not merely remembered.

use std::future::Future;
use std::sync::Arc;

use licenseseal_ledger::{ClientCaId, ClientIdentityId, Scopes, SigningKeyId, SubjectId, TenantId, Timestamp};
use licenseseal_store::postgres::{scratch, PgConfig, PgStore};
use licenseseal_store::sqlite::{SqliteConfig, SqliteStore};
use licenseseal_store::{
    ClientCaRecord, ClientIdentityRecord, LedgerStore, ManualClock, SigningKeyRecord, StoreError, TenantSettings,
};

/// 2026-01-01T00:00:00Z in microseconds.
const START_MICROS: i64 = 1_767_225_600_000_000;
const SECOND: i64 = 1_000_000;
const DATABASE_URL_VAR: &str = "LICENSESEAL_TEST_DATABASE_URL";

/// The PostgreSQL test database, when one is configured.
fn database_url() -> Option<String> {
    std::env::var(DATABASE_URL_VAR).ok().filter(|u| !u.is_empty())
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Where a store lives, so that reopening finds the same data again.
enum Place {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        /// The test database's URL with this case's schema on the search path.
        url: String,
        schema: String,
        /// The database the schema lives in.
        base: String,
    },
}

impl Place {
    async fn new(backend: Backend) -> Place {
        match backend {
            Backend::Sqlite => Place::Sqlite { dir: tempfile::tempdir().expect("temp dir") },
            Backend::Postgres => {
                let base = database_url().unwrap_or_else(|| panic!("{DATABASE_URL_VAR} is not set"));
                let (schema, url) = scratch::create(&base, "ls_authrec")
                    .await
                    .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is set but unusable: {e}"));
                Place::Postgres { url, schema, base }
            }
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Place::Postgres { .. })
    }

    /// Opens the store here (again). On PostgreSQL every call is a separate instance with its
    /// own connection pool.
    async fn open(&self) -> Box<dyn LedgerStore> {
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(START_MICROS)));
        match self {
            Place::Sqlite { dir } => Box::new(
                SqliteStore::open(dir.path(), clock, SqliteConfig { readers_max: 2, ..SqliteConfig::default() })
                    .expect("open the SQLite store"),
            ),
            Place::Postgres { url, .. } => {
                Box::new(PgStore::connect(url, clock, PgConfig::default()).await.expect("connect the PostgreSQL store"))
            }
        }
    }

    /// Rows in the nonce table, read behind the store's back (to see the purge work).
    async fn nonce_rows(&self) -> i64 {
        let sql = "SELECT COUNT(*) FROM signing_nonces";
        match self {
            Place::Sqlite { dir } => {
                let conn = rusqlite::Connection::open(SqliteStore::database_path(dir.path())).expect("open database");
                conn.query_row(sql, [], |r| r.get(0)).expect("count nonces")
            }
            Place::Postgres { url, .. } => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
                tokio::spawn(connection);
                client.query_one(sql, &[]).await.expect("count nonces").get(0)
            }
        }
    }

    /// Shuts `store` down and opens a new one on the same data.
    async fn reopen(&self, store: Box<dyn LedgerStore>) -> Box<dyn LedgerStore> {
        store.shutdown().await;
        drop(store);
        self.open().await
    }

    /// Removes what the case left behind (the temporary directory goes when dropped).
    async fn remove(&self) {
        if let Place::Postgres { schema, base, .. } = self {
            if let Err(e) = scratch::drop(base, schema).await {
                eprintln!("could not drop test schema {schema}: {e}");
            }
        }
    }
}

/// Runs `case` on `backend` in a fresh place, which is removed afterwards even if the case
/// panics.
fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Arc<Place>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if matches!(backend, Backend::Postgres) && database_url().is_none() {
        eprintln!("SKIPPED: PostgreSQL variant (set {DATABASE_URL_VAR} to run it)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        let place = Arc::new(Place::new(backend).await);
        let outcome = tokio::spawn(case(place.clone())).await;
        place.remove().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    });
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros(START_MICROS + seconds * SECOND)
}

fn uuid(kind: u128, n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + (kind << 16) + n)
}

fn tenant(n: u128) -> TenantId {
    TenantId::from_uuid(uuid(0, n))
}

fn scopes(names: &[&str]) -> Scopes {
    Scopes::parse(names.iter().copied()).expect("known scopes")
}

fn expect_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("{what} must be a conflict, got {other:?}"),
    }
}

fn hmac_key(n: u128, tenant: &TenantId, created_s: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        id: SigningKeyId::from_uuid(uuid(1, n)),
        tenant_id: tenant.clone(),
        alg: "hmac-sha256".into(),
        sealed_secret: Some((0..60u8).map(|i| i ^ n as u8).collect()),
        public_key: None,
        scopes: scopes(&["usage.debit", "ledger.read"]),
        subject: Some(SubjectId::parse(&format!("user:{n}")).unwrap()),
        created_at: at(created_s),
        expires_at: None,
        revoked_at: None,
        rotated_from: None,
    }
}

fn ed25519_key(n: u128, tenant: &TenantId, created_s: i64) -> SigningKeyRecord {
    SigningKeyRecord {
        alg: "ed25519".into(),
        sealed_secret: None,
        public_key: Some(vec![n as u8; 32]),
        scopes: scopes(&["*"]),
        subject: None,
        expires_at: Some(at(created_s + 3600)),
        ..hmac_key(n, tenant, created_s)
    }
}

async fn signing_keys(place: Arc<Place>) {
    let mut store = place.open().await;
    let (a, b) = (tenant(1), tenant(2));
    let k1 = hmac_key(1, &a, 10);
    let k2 = ed25519_key(2, &a, 20);
    // Inserted first but created last: lists are ordered by creation time.
    let k3 = hmac_key(3, &a, 30);
    store.insert_signing_key(k3.clone()).await.unwrap();
    store.insert_signing_key(k1.clone()).await.unwrap();
    store.insert_signing_key(k2.clone()).await.unwrap();

    assert_eq!(store.signing_key(&k1.id).await.unwrap(), Some(k1.clone()));
    assert_eq!(store.signing_key(&k2.id).await.unwrap(), Some(k2.clone()));
    assert_eq!(store.signing_key(&SigningKeyId::from_uuid(uuid(1, 99))).await.unwrap(), None);
    assert_eq!(store.signing_keys(&a).await.unwrap(), vec![k1.clone(), k2.clone(), k3.clone()]);
    assert_eq!(store.signing_keys(&b).await.unwrap(), vec![]);

    // A duplicate id: refused.
    expect_conflict(store.insert_signing_key(hmac_key(1, &b, 40)).await, "a duplicate signing key id");
    assert_eq!(store.signing_keys(&b).await.unwrap(), vec![], "a refused key is not written");

    // Rotation: one successor per key.
    let k4 = SigningKeyRecord { rotated_from: Some(k1.id.clone()), ..hmac_key(4, &a, 40) };
    store.insert_signing_key(k4.clone()).await.unwrap();
    let k5 = SigningKeyRecord { rotated_from: Some(k1.id.clone()), ..hmac_key(5, &a, 50) };
    expect_conflict(store.insert_signing_key(k5.clone()).await, "a second successor of one key");
    assert_eq!(store.signing_key(&k5.id).await.unwrap(), None, "the refused successor is not written");
    let k6 = SigningKeyRecord { rotated_from: Some(k4.id.clone()), ..ed25519_key(6, &a, 60) };
    store.insert_signing_key(k6.clone()).await.unwrap();

    // Retiring lowers the expiry, never raises it.
    store.retire_signing_key(&k1.id, at(100), false).await.unwrap();
    let mut k1_now = SigningKeyRecord { expires_at: Some(at(100)), ..k1.clone() };
    assert_eq!(store.signing_key(&k1.id).await.unwrap(), Some(k1_now.clone()));
    store.retire_signing_key(&k1.id, at(200), false).await.unwrap();
    assert_eq!(store.signing_key(&k1.id).await.unwrap(), Some(k1_now.clone()), "a later expiry is ignored");
    store.retire_signing_key(&k1.id, at(50), false).await.unwrap();
    k1_now.expires_at = Some(at(50));
    assert_eq!(store.signing_key(&k1.id).await.unwrap(), Some(k1_now.clone()));
    assert!(k1_now.is_active(at(49)) && !k1_now.is_active(at(50)));
    let k2_expiry = k2.expires_at.unwrap();
    store.retire_signing_key(&k2.id, k2_expiry.plus_seconds(10), false).await.unwrap();
    assert_eq!(store.signing_key(&k2.id).await.unwrap(), Some(k2.clone()), "an earlier expiry is kept");

    // Revoking sets revoked_at; the first revocation time is kept.
    store.retire_signing_key(&k3.id, at(70), true).await.unwrap();
    store.retire_signing_key(&k3.id, at(80), true).await.unwrap();
    let k3_now = SigningKeyRecord { revoked_at: Some(at(70)), ..k3.clone() };
    assert_eq!(store.signing_key(&k3.id).await.unwrap(), Some(k3_now.clone()));
    assert!(!k3_now.is_active(at(0)), "a revoked key is never active");
    assert!(k2.is_active(at(21)));

    // Retiring an unknown key is a no-op.
    store.retire_signing_key(&SigningKeyId::from_uuid(uuid(1, 98)), at(1), true).await.unwrap();

    let all = vec![k1_now.clone(), k2.clone(), k3_now.clone(), k4.clone(), k6.clone()];
    assert_eq!(store.signing_keys(&a).await.unwrap(), all);

    store = place.reopen(store).await;
    assert_eq!(store.signing_keys(&a).await.unwrap(), all, "signing keys survive reopening");
    assert_eq!(store.signing_key(&k6.id).await.unwrap(), Some(k6.clone()));
    expect_conflict(store.insert_signing_key(k5).await, "a second successor after reopening");
    store.shutdown().await;
}

async fn nonces(place: Arc<Place>) {
    let mut store = place.open().await;
    assert_eq!(store.nonces_are_shared(), place.is_postgres(), "only PostgreSQL shares nonces across instances");
    let (k1, k2) = (SigningKeyId::from_uuid(uuid(1, 1)), SigningKeyId::from_uuid(uuid(1, 2)));

    assert!(store.claim_nonce(&k1, "n-1", at(0), at(300)).await.unwrap(), "first use");
    assert!(!store.claim_nonce(&k1, "n-1", at(10), at(310)).await.unwrap(), "a replay");
    assert!(!store.claim_nonce(&k1, "n-1", at(299), at(599)).await.unwrap(), "a replay just before expiry");
    assert!(store.claim_nonce(&k2, "n-1", at(10), at(310)).await.unwrap(), "another key's nonce is separate");
    assert!(store.claim_nonce(&k1, "n-2", at(10), at(310)).await.unwrap(), "another nonce of the key");

    // At its expiry the nonce may be claimed again, and is then held until the new expiry.
    assert!(store.claim_nonce(&k1, "n-1", at(300), at(600)).await.unwrap(), "expired: claimable again");
    assert!(!store.claim_nonce(&k1, "n-1", at(301), at(601)).await.unwrap(), "held until the new expiry");

    // Unusual nonce text is stored as is.
    let odd = "ünï \"quoted\" 'nonce' \\ %_";
    assert!(store.claim_nonce(&k1, odd, at(10), at(310)).await.unwrap());
    assert!(!store.claim_nonce(&k1, odd, at(11), at(310)).await.unwrap());
    assert!(store.claim_nonce(&k1, &odd.to_uppercase(), at(11), at(310)).await.unwrap(), "nonces are case-sensitive");

    // Many short-lived nonces: the opportunistic purge runs along the way and never forgets a
    // live nonce.
    for i in 0..200 {
        assert!(store.claim_nonce(&k2, &format!("burst-{i}"), at(400 + i), at(401 + i)).await.unwrap());
    }
    let rows = place.nonce_rows().await;
    assert!(rows < 100, "expired nonces are purged as claims go on: {rows} rows left of 206");
    assert!(!store.claim_nonce(&k1, "n-1", at(599), at(900)).await.unwrap(), "a live nonce survives purges");
    assert!(!store.claim_nonce(&k2, "burst-199", at(599), at(900)).await.unwrap(), "still live at 599");
    assert!(store.claim_nonce(&k2, "burst-0", at(599), at(900)).await.unwrap(), "expired long ago");

    store = place.reopen(store).await;
    assert!(!store.claim_nonce(&k1, "n-1", at(400), at(700)).await.unwrap(), "nonces survive reopening");
    assert!(!store.claim_nonce(&k2, "burst-0", at(600), at(900)).await.unwrap());
    assert!(store.claim_nonce(&k1, "n-1", at(600), at(900)).await.unwrap(), "and still expire");
    store.shutdown().await;
}

/// 16 tasks claim one nonce at once; exactly one wins. On PostgreSQL the tasks are spread over
/// two store instances (two connection pools), as two gateway processes would be.
async fn concurrent_nonces(place: Arc<Place>) {
    const TASKS: usize = 16;
    let mut stores: Vec<Arc<dyn LedgerStore>> = vec![Arc::from(place.open().await)];
    if place.is_postgres() {
        stores.push(Arc::from(place.open().await));
    }
    let key = SigningKeyId::from_uuid(uuid(1, 1));
    let race = |nonce: String, now: Timestamp, expires_at: Timestamp| {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let (store, barrier, key, nonce) =
                    (stores[i % stores.len()].clone(), barrier.clone(), key.clone(), nonce.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.claim_nonce(&key, &nonce, now, expires_at).await.unwrap()
                })
            })
            .collect();
        async move {
            let mut wins = 0;
            for task in tasks {
                wins += usize::from(task.await.unwrap());
            }
            wins
        }
    };
    for round in 0..20 {
        let nonce = format!("race-{round}");
        assert_eq!(race(nonce.clone(), at(0), at(60)).await, 1, "round {round}: exactly one fresh claim wins");
        // The same nonce once it has expired: the take-over of the stale row is raced too.
        assert_eq!(race(nonce.clone(), at(60), at(120)).await, 1, "round {round}: exactly one take-over wins");
        assert_eq!(race(nonce, at(61), at(120)).await, 0, "round {round}: then every claim is a replay");
    }
    for store in stores {
        store.shutdown().await;
    }
}

fn client_ca(n: u128, tenant: &TenantId, fingerprint: &str, created_s: i64) -> ClientCaRecord {
    ClientCaRecord {
        id: ClientCaId::from_uuid(uuid(2, n)),
        tenant_id: tenant.clone(),
        pem: format!("-----BEGIN CERTIFICATE-----\nMIIB{n}\n-----END CERTIFICATE-----\n"),
        fingerprint_sha256: fingerprint.to_owned(),
        created_at: at(created_s),
    }
}

async fn client_cas(place: Arc<Place>) {
    let mut store = place.open().await;
    let (a, b) = (tenant(1), tenant(2));
    let (fp1, fp2) = ("aa".repeat(32), "0b".repeat(32));
    let ca1 = client_ca(1, &a, &fp1, 10);
    // Given in upper case, stored in lower case.
    let ca2_given = client_ca(2, &a, &fp2.to_uppercase(), 20);
    let ca2 = ClientCaRecord { fingerprint_sha256: fp2.clone(), ..ca2_given.clone() };
    store.insert_client_ca(ca2_given).await.unwrap();
    store.insert_client_ca(ca1.clone()).await.unwrap();
    assert_eq!(store.client_cas(&a).await.unwrap(), vec![ca1.clone(), ca2.clone()]);
    assert_eq!(store.client_cas(&b).await.unwrap(), vec![]);

    // The same certificate twice for one tenant: refused, whatever the case of its fingerprint.
    expect_conflict(store.insert_client_ca(client_ca(3, &a, &fp1, 30)).await, "a duplicate CA fingerprint");
    expect_conflict(
        store.insert_client_ca(client_ca(3, &a, &fp2.to_uppercase(), 30)).await,
        "a duplicate CA fingerprint in upper case",
    );
    expect_conflict(store.insert_client_ca(client_ca(1, &b, &"cc".repeat(32), 30)).await, "a duplicate CA id");
    assert_eq!(store.client_cas(&a).await.unwrap(), vec![ca1.clone(), ca2.clone()], "nothing written");
    // Another tenant may trust the same CA.
    let b1 = client_ca(4, &b, &fp1, 40);
    store.insert_client_ca(b1.clone()).await.unwrap();
    assert_eq!(store.client_cas(&b).await.unwrap(), vec![b1.clone()]);

    assert!(!store.delete_client_ca(&b, &ca1.id).await.unwrap(), "another tenant's CA");
    assert_eq!(store.client_cas(&a).await.unwrap(), vec![ca1.clone(), ca2.clone()], "kept");

    store = place.reopen(store).await;
    assert_eq!(store.client_cas(&a).await.unwrap(), vec![ca1.clone(), ca2.clone()], "CAs survive reopening");
    assert!(store.delete_client_ca(&a, &ca1.id).await.unwrap());
    assert!(!store.delete_client_ca(&a, &ca1.id).await.unwrap(), "already gone");
    assert_eq!(store.client_cas(&a).await.unwrap(), vec![ca2.clone()]);
    // Its fingerprint is free again.
    let ca5 = client_ca(5, &a, &fp1, 50);
    store.insert_client_ca(ca5.clone()).await.unwrap();

    store = place.reopen(store).await;
    assert_eq!(store.client_cas(&a).await.unwrap(), vec![ca2, ca5]);
    assert_eq!(store.client_cas(&b).await.unwrap(), vec![b1]);
    store.shutdown().await;
}

fn identity(n: u128, tenant: &TenantId, created_s: i64) -> ClientIdentityRecord {
    ClientIdentityRecord {
        id: ClientIdentityId::from_uuid(uuid(3, n)),
        tenant_id: tenant.clone(),
        fingerprint_sha256: None,
        san_uri: None,
        san_dns: None,
        subject: None,
        scopes: scopes(&["usage.debit"]),
        created_at: at(created_s),
    }
}

async fn client_identities(place: Arc<Place>) {
    let mut store = place.open().await;
    let (a, b) = (tenant(1), tenant(2));
    let fp = "de".repeat(32);
    let by_fingerprint = ClientIdentityRecord {
        fingerprint_sha256: Some(fp.clone()),
        subject: Some(SubjectId::parse("svc:billing").unwrap()),
        ..identity(1, &a, 10)
    };
    let by_uri = ClientIdentityRecord {
        san_uri: Some("spiffe://acme.example/ns/prod/sa/worker".into()),
        scopes: scopes(&["usage.debit", "credits.grant"]),
        ..identity(2, &a, 20)
    };
    let by_dns = ClientIdentityRecord { san_dns: Some("worker.acme.example".into()), ..identity(3, &a, 30) };
    // Given in upper case, stored in lower case.
    let by_fingerprint_given =
        ClientIdentityRecord { fingerprint_sha256: Some(fp.to_uppercase()), ..by_fingerprint.clone() };
    store.insert_client_identity(by_dns.clone()).await.unwrap();
    store.insert_client_identity(by_fingerprint_given).await.unwrap();
    store.insert_client_identity(by_uri.clone()).await.unwrap();
    let all = vec![by_fingerprint.clone(), by_uri.clone(), by_dns.clone()];
    assert_eq!(store.client_identities(&a).await.unwrap(), all);
    assert_eq!(store.client_identities(&b).await.unwrap(), vec![]);

    // The same matcher twice for one tenant would be ambiguous: refused.
    let again = ClientIdentityRecord { san_uri: by_uri.san_uri.clone(), ..identity(4, &a, 40) };
    expect_conflict(store.insert_client_identity(again).await, "a duplicate matcher");
    expect_conflict(
        store
            .insert_client_identity(ClientIdentityRecord { san_dns: Some("other.example".into()), ..by_uri.clone() })
            .await,
        "a duplicate identity id",
    );
    assert_eq!(store.client_identities(&a).await.unwrap(), all, "nothing written");
    // Another tenant may map the same certificate, and one tenant may combine matchers.
    let b1 = ClientIdentityRecord { san_uri: by_uri.san_uri.clone(), ..identity(5, &b, 50) };
    let combined = ClientIdentityRecord {
        fingerprint_sha256: Some(fp.clone()),
        san_dns: by_dns.san_dns.clone(),
        ..identity(6, &a, 60)
    };
    store.insert_client_identity(b1.clone()).await.unwrap();
    store.insert_client_identity(combined.clone()).await.unwrap();

    assert!(!store.delete_client_identity(&b, &by_uri.id).await.unwrap(), "another tenant's identity");
    let all = vec![by_fingerprint.clone(), by_uri.clone(), by_dns.clone(), combined.clone()];
    assert_eq!(store.client_identities(&a).await.unwrap(), all, "kept");

    store = place.reopen(store).await;
    assert_eq!(store.client_identities(&a).await.unwrap(), all, "identities survive reopening");
    assert_eq!(store.client_identities(&b).await.unwrap(), vec![b1.clone()]);
    assert!(store.delete_client_identity(&a, &by_uri.id).await.unwrap());
    assert!(!store.delete_client_identity(&a, &by_uri.id).await.unwrap(), "already gone");

    store = place.reopen(store).await;
    assert_eq!(store.client_identities(&a).await.unwrap(), vec![by_fingerprint, by_dns, combined]);
    assert_eq!(store.client_identities(&b).await.unwrap(), vec![b1]);
    store.shutdown().await;
}

async fn tenant_settings(place: Arc<Place>) {
    let mut store = place.open().await;
    let (a, b, c) = (tenant(1), tenant(2), tenant(3));
    assert_eq!(store.tenant_settings(&a).await.unwrap(), TenantSettings::default(), "defaults when never set");
    assert_eq!(store.tenant_by_mtls_hostname("api.acme.example").await.unwrap(), None);

    let a_settings = TenantSettings {
        auth_methods: Some(vec!["api_key".into(), "mtls".into()]),
        mtls_hostname: Some("Api.Acme.Example".into()),
    };
    store.set_tenant_settings(&a, a_settings).await.unwrap();
    let a_stored = TenantSettings {
        auth_methods: Some(vec!["api_key".into(), "mtls".into()]),
        mtls_hostname: Some("api.acme.example".into()),
    };
    assert_eq!(store.tenant_settings(&a).await.unwrap(), a_stored, "the hostname is stored lowercase");
    assert_eq!(store.tenant_by_mtls_hostname("api.acme.example").await.unwrap(), Some(a.clone()));
    assert_eq!(store.tenant_by_mtls_hostname("API.ACME.EXAMPLE").await.unwrap(), Some(a.clone()));
    assert_eq!(store.tenant_by_mtls_hostname("other.example").await.unwrap(), None);

    // b has settings of its own; binding a's hostname is refused and leaves them as they were.
    let b_settings = TenantSettings { auth_methods: Some(vec!["signature".into()]), mtls_hostname: None };
    store.set_tenant_settings(&b, b_settings.clone()).await.unwrap();
    let steal = TenantSettings { auth_methods: None, mtls_hostname: Some("API.acme.example".into()) };
    expect_conflict(store.set_tenant_settings(&b, steal.clone()).await, "another tenant's hostname");
    assert_eq!(store.tenant_settings(&b).await.unwrap(), b_settings, "nothing written");
    // c never had settings: still none after the refusal.
    expect_conflict(store.set_tenant_settings(&c, steal.clone()).await, "another tenant's hostname");
    assert_eq!(store.tenant_settings(&c).await.unwrap(), TenantSettings::default(), "nothing written");
    assert_eq!(store.tenant_by_mtls_hostname("api.acme.example").await.unwrap(), Some(a.clone()));

    // Setting replaces every field; a tenant may keep its own hostname.
    let a_again = TenantSettings { auth_methods: Some(vec![]), mtls_hostname: Some("api.acme.example".into()) };
    store.set_tenant_settings(&a, a_again.clone()).await.unwrap();
    assert_eq!(store.tenant_settings(&a).await.unwrap(), a_again, "an empty list is not the same as none");

    store = place.reopen(store).await;
    assert_eq!(store.tenant_settings(&a).await.unwrap(), a_again, "settings survive reopening");
    assert_eq!(store.tenant_settings(&b).await.unwrap(), b_settings);
    assert_eq!(store.tenant_by_mtls_hostname("api.acme.example").await.unwrap(), Some(a.clone()));

    // a lets the hostname go; then b may bind it.
    let a_moved = TenantSettings { auth_methods: None, mtls_hostname: Some("mtls.acme.example".into()) };
    store.set_tenant_settings(&a, a_moved.clone()).await.unwrap();
    store.set_tenant_settings(&b, steal).await.unwrap();
    assert_eq!(store.tenant_by_mtls_hostname("api.acme.example").await.unwrap(), Some(b.clone()));
    assert_eq!(store.tenant_by_mtls_hostname("mtls.acme.example").await.unwrap(), Some(a.clone()));
    store.set_tenant_settings(&c, TenantSettings::default()).await.unwrap();
    assert_eq!(store.tenant_settings(&c).await.unwrap(), TenantSettings::default());

    store = place.reopen(store).await;
    assert_eq!(store.tenant_settings(&a).await.unwrap(), a_moved);
    assert_eq!(
        store.tenant_settings(&b).await.unwrap(),
        TenantSettings { auth_methods: None, mtls_hostname: Some("api.acme.example".into()) }
    );
    assert_eq!(store.tenant_by_mtls_hostname("Api.Acme.Example").await.unwrap(), Some(b));
    store.shutdown().await;
}

#[test]
fn signing_keys_sqlite() {
    run(Backend::Sqlite, signing_keys);
}

#[test]
fn signing_keys_postgres() {
    run(Backend::Postgres, signing_keys);
}

#[test]
fn nonces_sqlite() {
    run(Backend::Sqlite, nonces);
}

#[test]
fn nonces_postgres() {
    run(Backend::Postgres, nonces);
}

#[test]
fn concurrent_nonces_sqlite() {
    run(Backend::Sqlite, concurrent_nonces);
}

#[test]
fn concurrent_nonces_postgres_across_instances() {
    run(Backend::Postgres, concurrent_nonces);
}

#[test]
fn client_cas_sqlite() {
    run(Backend::Sqlite, client_cas);
}

#[test]
fn client_cas_postgres() {
    run(Backend::Postgres, client_cas);
}

#[test]
fn client_identities_sqlite() {
    run(Backend::Sqlite, client_identities);
}

#[test]
fn client_identities_postgres() {
    run(Backend::Postgres, client_identities);
}

#[test]
fn tenant_settings_sqlite() {
    run(Backend::Sqlite, tenant_settings);
}

#[test]
fn tenant_settings_postgres() {
    run(Backend::Postgres, tenant_settings);
}

#[test]
fn signing_key_debug_never_shows_the_sealed_secret() {
    let key = SigningKeyRecord { sealed_secret: Some(b"SEALED-SECRET-BYTES".to_vec()), ..hmac_key(7, &tenant(1), 0) };
    let shown = format!("{key:?}");
    assert!(shown.contains("<19 bytes>"), "{shown}");
    assert!(!shown.contains("83, 69, 65, 76"), "{shown}");
    assert!(shown.contains(key.id.as_str()), "{shown}");
}
