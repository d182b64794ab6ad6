//! PostgreSQL with several writers: an event gets its `seq` when inserted but becomes visible
//! when its transaction commits, so a later `seq` can be visible before an earlier one. A
//! listing must never page past an event that is still being written, or a cursor would skip
//! it forever. Found through `LICENSESEAL_TEST_DATABASE_URL`; skipped (and says so) without it.

use std::sync::Arc;
use std::time::Duration;

use licenseseal_ledger::{
    Amount, Command, CommandKind, CreditType, Fingerprint, IdempotencyKey, Outcome, SubjectId, TenantId,
};
use licenseseal_store::postgres::{listing_barrier_id, scratch, PgConfig, PgStore};
use licenseseal_store::{Clock, EventFilter, Execution, LedgerStore, ManualClock, Page, SystemClock, Tenant};

fn command(tenant: &TenantId, key: &str, kind: CommandKind) -> Command {
    Command {
        tenant_id: tenant.clone(),
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        fingerprint: Fingerprint::of(&[key.as_bytes()]),
        correlation_id: key.to_owned(),
        kind,
    }
}

fn grant(amount: u64) -> CommandKind {
    CommandKind::Grant {
        subject: SubjectId::parse("alice").unwrap(),
        credit_type: CreditType::default(),
        amount: Amount::new(amount).unwrap(),
        priority: 0,
        expires_at: None,
        metadata: None,
    }
}

fn debit(amount: u64) -> CommandKind {
    CommandKind::Debit {
        subject: SubjectId::parse("alice").unwrap(),
        credit_type: CreditType::default(),
        amount: Amount::new(amount).unwrap(),
        metadata: None,
    }
}

async fn applied_id(store: &PgStore, command: Command) -> String {
    match store.execute(command).await.unwrap() {
        Execution::Fresh(Outcome::Applied(applied)) => applied.event.id.to_string(),
        other => panic!("not applied: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_never_pages_past_an_event_still_being_written() {
    let Ok(base) = std::env::var("LICENSESEAL_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: LICENSESEAL_TEST_DATABASE_URL is not set; the PostgreSQL listing test did not run");
        return;
    };
    let (schema, url) = scratch::create(&base, "ls_listing").await.unwrap();
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let store = Arc::new(PgStore::connect(&url, clock.clone(), PgConfig::default()).await.unwrap());
    let tenant = TenantId::from_uuid(uuid::Uuid::now_v7());
    store.create_tenant(Tenant { id: tenant.clone(), name: "t".into(), created_at: clock.now() }).await.unwrap();
    let granted = applied_id(&store, command(&tenant, "g1", grant(100))).await;

    // Another writer (think: a second gateway instance) is mid-transaction: it holds the
    // tenant's barrier as every batch does and has inserted an event, so that event has a
    // lower seq than anything written after it.
    let (raw, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    raw.batch_execute("BEGIN").await.unwrap();
    raw.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&listing_barrier_id(&tenant)]).await.unwrap();
    raw.execute(
        "INSERT INTO events (id, tenant_id, subject, credit_type, kind, amount, delta, balance_after, created_at, refund_of, body)
         SELECT 'evt_' || md5(random()::text), tenant_id, subject, credit_type, kind, amount, delta, balance_after,
                created_at, refund_of, body
         FROM events WHERE id = $1",
        &[&granted],
    )
    .await
    .unwrap();
    // This instance commits a debit meanwhile, with a higher seq.
    applied_id(&store, command(&tenant, "d1", debit(5))).await;

    // A listing now would show the debit but not the open writer's event, and the cursor after
    // the debit would skip that event forever; instead the listing waits for the writer.
    let lister = store.clone();
    let listed_tenant = tenant.clone();
    let listing = tokio::spawn(async move {
        lister.events(&listed_tenant, &EventFilter::default(), Page { after: None, limit: 10 }).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!listing.is_finished(), "the listing must wait for the open writer");
    raw.batch_execute("COMMIT").await.unwrap();
    let rows = tokio::time::timeout(Duration::from_secs(5), listing).await.unwrap().unwrap().unwrap();
    assert_eq!(rows.len(), 3, "grant, the other writer's event and the debit: nothing skipped");
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "in seq order");

    // Writers are not held up by each other, only briefly by a listing.
    applied_id(&store, command(&tenant, "d2", debit(5))).await;
    store.shutdown().await;
    scratch::drop(&base, &schema).await.unwrap();
}

fn key_record(tenant: &TenantId, n: u8) -> licenseseal_store::ApiKeyRecord {
    licenseseal_store::ApiKeyRecord {
        id: licenseseal_ledger::KeyId::from_uuid(uuid::Uuid::now_v7()),
        tenant_id: Some(tenant.clone()),
        name: format!("k{n}"),
        prefix: format!("lsk_{n:08}"),
        hash: [n; 32],
        scopes: licenseseal_ledger::Scopes::all(),
        subject: None,
        expires_at: None,
        revoked_at: None,
        created_at: SystemClock.now(),
        last_used_at: None,
        rotated_from: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_listing_never_pages_past_a_key_still_being_written() {
    let Ok(base) = std::env::var("LICENSESEAL_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: LICENSESEAL_TEST_DATABASE_URL is not set; the PostgreSQL key listing test did not run");
        return;
    };
    let (schema, url) = scratch::create(&base, "ls_listing").await.unwrap();
    let store = Arc::new(PgStore::connect(&url, Arc::new(SystemClock), PgConfig::default()).await.unwrap());
    let tenant = TenantId::from_uuid(uuid::Uuid::now_v7());
    store.insert_api_key(key_record(&tenant, 1)).await.unwrap();
    // Another instance is mid-insert of a key (lower seq), holding the key barrier as
    // `insert_api_key` does.
    let (raw, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    raw.batch_execute("BEGIN").await.unwrap();
    let barrier = licenseseal_store::postgres::key_listing_barrier_id(Some(&tenant));
    raw.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&barrier]).await.unwrap();
    raw.execute(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, scopes, subject, expires_at, revoked_at, created_at, rotated_from)
         SELECT 'key_' || md5(random()::text), tenant_id, 'raw', prefix, sha256(hash), scopes, subject, expires_at,
                revoked_at, created_at, rotated_from
         FROM api_keys WHERE name = 'k1'",
        &[],
    )
    .await
    .unwrap();
    store.insert_api_key(key_record(&tenant, 2)).await.unwrap();
    let lister = store.clone();
    let listed = tenant.clone();
    let listing = tokio::spawn(async move { lister.api_keys(Some(&listed), Page { after: None, limit: 10 }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!listing.is_finished(), "the key listing must wait for the open writer");
    raw.batch_execute("COMMIT").await.unwrap();
    let rows = tokio::time::timeout(Duration::from_secs(5), listing).await.unwrap().unwrap().unwrap();
    let names: Vec<&str> = rows.iter().map(|(_, k)| k.name.as_str()).collect();
    assert_eq!(names, ["k1", "raw", "k2"], "nothing skipped, in seq order");
    store.shutdown().await;
    scratch::drop(&base, &schema).await.unwrap();
}
