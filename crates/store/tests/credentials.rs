//! Authority signing keys and tenants' identity providers, on both stores.
//!
//! The same test code runs on each `Backend`: on a `SqliteStore` in a temporary directory, and
//! on a `PgStore` in a fresh schema of the database named by `LICENSESEAL_TEST_DATABASE_URL`
//! (skipped, saying so, when that is unset). Every case also reopens its store (SQLite: shut
//! down and open the same directory again; PostgreSQL: a new connection to the same schema)
//! to check that what it wrote was persisted, not merely remembered.

use std::future::Future;
use std::sync::Arc;

use licenseseal_ledger::{ProviderId, TenantId, Timestamp};
use licenseseal_store::postgres::{scratch, PgConfig, PgStore};
use licenseseal_store::sqlite::{SqliteConfig, SqliteStore};
use licenseseal_store::{AuthorityKeyRecord, IdentityProviderRecord, LedgerStore, ManualClock, StoreError};

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
                let (schema, url) = scratch::create(&base, "ls_cred")
                    .await
                    .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is set but unusable: {e}"));
                Place::Postgres { url, schema, base }
            }
        }
    }

    /// Opens the store here (again).
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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
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

fn authority_key(n: u8, created_s: i64) -> AuthorityKeyRecord {
    AuthorityKeyRecord {
        kid: format!("kid-{n}-thumbprint"),
        algorithm: "EdDSA".into(),
        public_key: vec![n; 32],
        sealed_private_key: (0..60).map(|i| i ^ n).collect(),
        created_at: at(created_s),
        superseded_at: None,
    }
}

fn superseded(mut key: AuthorityKeyRecord, at_s: i64) -> AuthorityKeyRecord {
    key.superseded_at = Some(at(at_s));
    key
}

fn tenant(n: u128) -> TenantId {
    TenantId::from_uuid(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n))
}

fn provider(n: u128, tenant: &TenantId, issuer: &str, created_s: i64) -> IdentityProviderRecord {
    let odd = !n.is_multiple_of(2);
    IdentityProviderRecord {
        id: ProviderId::from_uuid(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0001_0000 + n)),
        tenant_id: tenant.clone(),
        issuer: issuer.to_owned(),
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        audiences: vec!["api://licenseseal".into(), format!("aud-{n}"), "ünïcode \"quoted\"".into()],
        algorithms: vec!["RS256".into(), "ES256".into()],
        subject_claim: "sub".into(),
        scope_claim: "scp".into(),
        leeway_seconds: if odd { u32::MAX } else { 60 },
        required_claims: if odd { vec!["email".into(), "tid".into()] } else { vec![] },
        created_at: at(created_s),
    }
}

async fn rotation(place: Arc<Place>) {
    let mut store = place.open().await;
    assert_eq!(store.authority_keys().await.unwrap(), vec![], "a new store has no Authority key");

    let (k1, k2, k3) = (authority_key(1, 10), authority_key(2, 20), authority_key(3, 30));
    store.rotate_authority_key(k1.clone()).await.unwrap();
    assert_eq!(store.authority_keys().await.unwrap(), vec![k1.clone()], "the first key supersedes nothing");

    store.rotate_authority_key(k2.clone()).await.unwrap();
    assert_eq!(
        store.authority_keys().await.unwrap(),
        vec![superseded(k1.clone(), 20), k2.clone()],
        "the second key supersedes the first at its own creation time and both are kept"
    );

    store.rotate_authority_key(k3.clone()).await.unwrap();
    let after_three = vec![superseded(k1.clone(), 20), superseded(k2.clone(), 30), k3.clone()];
    assert_eq!(
        store.authority_keys().await.unwrap(),
        after_three,
        "a key is superseded exactly once: the third rotation leaves the first key's time alone"
    );

    // Same kid again, later: refused, and the supersession of the current key rolled back with it.
    let duplicate = AuthorityKeyRecord { public_key: vec![9; 32], ..authority_key(2, 40) };
    match store.rotate_authority_key(duplicate).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a duplicate kid must be a conflict, got {other:?}"),
    }
    assert_eq!(store.authority_keys().await.unwrap(), after_three, "a refused rotation writes nothing");

    store = place.reopen(store).await;
    assert_eq!(store.authority_keys().await.unwrap(), after_three, "keys survive reopening the store");

    let k4 = authority_key(4, 50);
    store.rotate_authority_key(k4.clone()).await.unwrap();
    let keys = store.authority_keys().await.unwrap();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[3], k4);
    assert_eq!(keys[2], superseded(k3, 50), "rotation after reopening supersedes the persisted current key");
    assert_eq!(keys.iter().filter(|k| k.superseded_at.is_none()).count(), 1, "exactly one key signs");
    store.shutdown().await;
}

async fn providers(place: Arc<Place>) {
    let mut store = place.open().await;
    let (a, b) = (tenant(1), tenant(2));
    let a1 = provider(1, &a, "https://idp-one.example", 10);
    let a2 = provider(2, &a, "https://idp-two.example", 20);
    // Registered first but created later: lists are ordered by creation time.
    let a3 = provider(3, &a, "https://idp-three.example", 30);
    store.insert_identity_provider(a3.clone()).await.unwrap();
    store.insert_identity_provider(a1.clone()).await.unwrap();
    store.insert_identity_provider(a2.clone()).await.unwrap();

    assert_eq!(store.identity_provider(&a, &a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(store.identity_provider(&b, &a1.id).await.unwrap(), None, "another tenant's provider is invisible");
    assert_eq!(store.identity_provider_by_issuer("https://idp-two.example").await.unwrap(), Some(a2.clone()));
    assert_eq!(store.identity_provider_by_issuer("https://unknown.example").await.unwrap(), None);
    assert_eq!(store.identity_providers(&a).await.unwrap(), vec![a1.clone(), a2.clone(), a3.clone()]);
    assert_eq!(store.identity_providers(&b).await.unwrap(), vec![]);

    // An issuer another tenant registered: refused, and nothing of it written.
    let b1 = provider(4, &b, "https://idp-one.example", 40);
    match store.insert_identity_provider(b1.clone()).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a registered issuer must be a conflict, got {other:?}"),
    }
    assert_eq!(store.identity_provider(&b, &b1.id).await.unwrap(), None);
    assert_eq!(store.identity_providers(&b).await.unwrap(), vec![]);
    assert_eq!(store.identity_provider_by_issuer("https://idp-one.example").await.unwrap(), Some(a1.clone()));

    // A provider id that is already taken: refused too.
    let same_id = IdentityProviderRecord { issuer: "https://idp-other.example".into(), ..a1.clone() };
    match store.insert_identity_provider(same_id).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a duplicate provider id must be a conflict, got {other:?}"),
    }
    assert_eq!(store.identity_provider_by_issuer("https://idp-other.example").await.unwrap(), None);

    // Another tenant cannot delete it.
    assert!(!store.delete_identity_provider(&b, &a1.id).await.unwrap(), "not b's provider");
    assert_eq!(store.identity_provider(&a, &a1.id).await.unwrap(), Some(a1.clone()), "kept");

    store = place.reopen(store).await;
    assert_eq!(store.identity_providers(&a).await.unwrap(), vec![a1.clone(), a2.clone(), a3.clone()]);
    assert_eq!(store.identity_provider(&a, &a3.id).await.unwrap(), Some(a3.clone()), "survives reopening");
    assert_eq!(store.identity_provider_by_issuer("https://idp-one.example").await.unwrap(), Some(a1.clone()));

    assert!(store.delete_identity_provider(&a, &a1.id).await.unwrap());
    assert!(!store.delete_identity_provider(&a, &a1.id).await.unwrap(), "already gone");
    assert_eq!(store.identity_provider(&a, &a1.id).await.unwrap(), None);
    assert_eq!(store.identity_provider_by_issuer("https://idp-one.example").await.unwrap(), None);
    assert_eq!(store.identity_providers(&a).await.unwrap(), vec![a2.clone(), a3.clone()]);

    // Its issuer is free again.
    store.insert_identity_provider(b1.clone()).await.unwrap();
    assert_eq!(store.identity_provider_by_issuer("https://idp-one.example").await.unwrap(), Some(b1.clone()));
    assert_eq!(store.identity_providers(&b).await.unwrap(), vec![b1.clone()]);

    store = place.reopen(store).await;
    assert_eq!(store.identity_providers(&a).await.unwrap(), vec![a2, a3]);
    assert_eq!(store.identity_providers(&b).await.unwrap(), vec![b1]);
    store.shutdown().await;
}

#[test]
fn authority_key_rotation_sqlite() {
    run(Backend::Sqlite, rotation);
}

#[test]
fn authority_key_rotation_postgres() {
    run(Backend::Postgres, rotation);
}

#[test]
fn identity_providers_sqlite() {
    run(Backend::Sqlite, providers);
}

#[test]
fn identity_providers_postgres() {
    run(Backend::Postgres, providers);
}

#[test]
fn authority_key_debug_never_shows_the_sealed_private_key() {
    let key = AuthorityKeyRecord { sealed_private_key: b"SEALED-SECRET-BYTES".to_vec(), ..authority_key(7, 0) };
    let shown = format!("{key:?}");
    assert!(shown.contains("<19 bytes>"), "{shown}");
    assert!(!shown.contains("83, 69, 65, 76"), "{shown}");
    assert!(shown.contains(&key.kid), "{shown}");
}
