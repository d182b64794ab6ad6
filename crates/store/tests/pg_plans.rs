//! The batch's reads stay index lookups whatever plan PostgreSQL keeps for them. Statements
//! are prepared once per pooled connection, and PostgreSQL may keep a generic plan made while
//! the tables were still empty; that plan must not scan a whole table. Found through
//! `LICENSESEAL_TEST_DATABASE_URL`; skipped (and says so) without it.

use std::sync::Arc;

use licenseseal_store::postgres::{scratch, PgConfig, PgStore, BATCH_READS};
use licenseseal_store::{LedgerStore, SystemClock};

/// The generic plan of `sql` (planned without its arguments, from the current table sizes).
async fn generic_plan(client: &tokio_postgres::Client, name: &str, sql: &str) -> String {
    let params = (1..=9).rev().find(|n| sql.contains(&format!("${n}"))).unwrap_or(0);
    client.batch_execute(&format!("PREPARE {name} AS {sql}")).await.unwrap();
    let nulls = vec!["NULL"; params].join(", ");
    let rows = client.query(&format!("EXPLAIN EXECUTE {name}({nulls})"), &[]).await.unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_planned_on_empty_tables_never_scan_a_whole_table() {
    let Ok(base) = std::env::var("LICENSESEAL_TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: LICENSESEAL_TEST_DATABASE_URL is not set; the PostgreSQL plan test did not run");
        return;
    };
    let (schema, url) = scratch::create(&base, "ls_plans").await.unwrap();
    let store = PgStore::connect(&url, Arc::new(SystemClock), PgConfig::default()).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("SET plan_cache_mode = force_generic_plan").await.unwrap();

    // The check itself can fail: a plain join with unnest, as the reads once were.
    let plain = generic_plan(
        &client,
        "plain_join",
        "SELECT i.* FROM idempotency i JOIN unnest($1::text[], $2::text[]) AS k(t, k)
         ON i.tenant_id = k.t AND i.key = k.k",
    )
    .await;
    assert!(plain.contains("Seq Scan on idempotency"), "{plain}");

    for (i, sql) in BATCH_READS.iter().enumerate() {
        let plan = generic_plan(&client, &format!("batch_read_{i}"), sql).await;
        assert!(!plan.contains("Seq Scan"), "a batch read scans a whole table:\n{sql}\n{plan}");
        assert!(plan.contains("Index"), "{plan}");
    }

    store.shutdown().await;
    scratch::drop(&base, &schema).await.unwrap();
}
