//! The SQLite schema as a versioned history: migration N brings `user_version` from N−1 to N.
//! Migrations only ever append; a released one is never edited.

use rusqlite::Connection;

use crate::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: the v0 ledger.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE tenants (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        id           TEXT NOT NULL UNIQUE,
        tenant_id    TEXT,
        name         TEXT NOT NULL,
        prefix       TEXT NOT NULL,
        hash         BLOB NOT NULL UNIQUE,
        scopes       TEXT NOT NULL,
        subject      TEXT,
        expires_at   INTEGER,
        revoked_at   INTEGER,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER,
        rotated_from TEXT
    );
    CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, seq);
    CREATE UNIQUE INDEX api_keys_one_successor ON api_keys (rotated_from);
    CREATE TABLE accounts (
        tenant_id        TEXT NOT NULL,
        subject          TEXT NOT NULL,
        credit_type      TEXT NOT NULL,
        balance          INTEGER NOT NULL,
        held             INTEGER NOT NULL DEFAULT 0,
        overdraft_limit  INTEGER NOT NULL DEFAULT 0,
        max_debit_amount INTEGER,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, subject, credit_type)
    ) WITHOUT ROWID;
    CREATE TABLE lots (
        id          TEXT PRIMARY KEY,
        tenant_id   TEXT NOT NULL,
        subject     TEXT NOT NULL,
        credit_type TEXT NOT NULL,
        priority    INTEGER NOT NULL,
        expires_at  INTEGER,
        created_at  INTEGER NOT NULL,
        remaining   INTEGER NOT NULL CHECK (remaining >= 0)
    );
    CREATE INDEX lots_live ON lots (tenant_id, subject, credit_type) WHERE remaining > 0;
    CREATE TABLE events (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT NOT NULL UNIQUE,
        tenant_id      TEXT NOT NULL,
        subject        TEXT NOT NULL,
        credit_type    TEXT NOT NULL,
        kind           TEXT NOT NULL,
        amount         INTEGER NOT NULL,
        delta          INTEGER NOT NULL,
        balance_after  INTEGER NOT NULL,
        created_at     INTEGER NOT NULL,
        refund_of      TEXT,
        body           TEXT NOT NULL
    );
    CREATE INDEX events_by_tenant ON events (tenant_id, seq);
    CREATE INDEX events_by_account ON events (tenant_id, subject, credit_type, seq);
    CREATE INDEX events_by_refund_of ON events (refund_of) WHERE refund_of IS NOT NULL;
    CREATE TABLE idempotency (
        tenant_id   TEXT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        refusal     TEXT,
        event_id    TEXT,
        balance     INTEGER,
        available   INTEGER,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, key)
    ) WITHOUT ROWID;
    "#,
    // 2: the token Authority's signing keys and tenants' external identity providers.
    r#"
    CREATE TABLE authority_keys (
        seq                INTEGER PRIMARY KEY AUTOINCREMENT,
        kid                TEXT NOT NULL UNIQUE,
        algorithm          TEXT NOT NULL,
        public_key         BLOB NOT NULL,
        sealed_private_key BLOB NOT NULL,
        created_at         INTEGER NOT NULL,
        superseded_at      INTEGER
    );
    CREATE TABLE identity_providers (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL UNIQUE,
        tenant_id       TEXT NOT NULL,
        issuer          TEXT NOT NULL UNIQUE,
        jwks_uri        TEXT NOT NULL,
        audiences       TEXT NOT NULL,
        algorithms      TEXT NOT NULL,
        subject_claim   TEXT NOT NULL,
        scope_claim     TEXT NOT NULL,
        leeway_seconds  INTEGER NOT NULL,
        required_claims TEXT NOT NULL,
        created_at      INTEGER NOT NULL
    );
    CREATE INDEX identity_providers_by_tenant ON identity_providers (tenant_id, created_at, seq);
    "#,
    // 3: signed requests (RFC 9421) and their nonces, mutual TLS, per-tenant auth settings.
    r#"
    CREATE TABLE signing_keys (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        tenant_id     TEXT NOT NULL,
        alg           TEXT NOT NULL,
        sealed_secret BLOB,
        public_key    BLOB,
        scopes        TEXT NOT NULL,
        subject       TEXT,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER,
        revoked_at    INTEGER,
        rotated_from  TEXT
    );
    CREATE INDEX signing_keys_by_tenant ON signing_keys (tenant_id, created_at, seq);
    CREATE UNIQUE INDEX signing_keys_one_successor ON signing_keys (rotated_from);
    CREATE TABLE signing_nonces (
        key_id     TEXT NOT NULL,
        nonce      TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (key_id, nonce)
    ) WITHOUT ROWID;
    CREATE INDEX signing_nonces_by_expiry ON signing_nonces (expires_at);
    CREATE TABLE client_cas (
        seq                INTEGER PRIMARY KEY AUTOINCREMENT,
        id                 TEXT NOT NULL UNIQUE,
        tenant_id          TEXT NOT NULL,
        pem                TEXT NOT NULL,
        fingerprint_sha256 TEXT NOT NULL,
        created_at         INTEGER NOT NULL,
        UNIQUE (tenant_id, fingerprint_sha256)
    );
    CREATE INDEX client_cas_by_tenant ON client_cas (tenant_id, created_at, seq);
    CREATE TABLE client_identities (
        seq                INTEGER PRIMARY KEY AUTOINCREMENT,
        id                 TEXT NOT NULL UNIQUE,
        tenant_id          TEXT NOT NULL,
        fingerprint_sha256 TEXT,
        san_uri            TEXT,
        san_dns            TEXT,
        subject            TEXT,
        scopes             TEXT NOT NULL,
        created_at         INTEGER NOT NULL
    );
    CREATE INDEX client_identities_by_tenant ON client_identities (tenant_id, created_at, seq);
    CREATE UNIQUE INDEX client_identities_one_matcher ON client_identities
        (tenant_id, COALESCE(fingerprint_sha256, ''), COALESCE(san_uri, ''), COALESCE(san_dns, ''));
    CREATE TABLE tenant_settings (
        tenant_id     TEXT PRIMARY KEY,
        auth_methods  TEXT,
        mtls_hostname TEXT UNIQUE
    );
    "#,
    // 4: idempotency keys of the writes outside the ledger (tenants, keys, settings).
    r#"
    CREATE TABLE request_idempotency (
        scope       TEXT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        status      INTEGER,
        body        TEXT,
        claimed_at  INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID;
    "#,
    // 5: account policy history, so that `as_of` reports the policy of that instant. Policies
    // set before this version are dated to the account's creation.
    r#"
    CREATE TABLE policy_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id        TEXT NOT NULL,
        subject          TEXT NOT NULL,
        credit_type      TEXT NOT NULL,
        at               INTEGER NOT NULL,
        overdraft_limit  INTEGER NOT NULL,
        max_debit_amount INTEGER
    );
    CREATE INDEX policy_changes_by_account ON policy_changes (tenant_id, subject, credit_type, at, seq);
    INSERT INTO policy_changes (tenant_id, subject, credit_type, at, overdraft_limit, max_debit_amount)
        SELECT tenant_id, subject, credit_type, created_at, overdraft_limit, max_debit_amount FROM accounts
        WHERE overdraft_limit <> 0 OR max_debit_amount IS NOT NULL;
    "#,
    // 6: lots clustered by account. A debit's update of its lot's `remaining` then writes one
    // B-tree page; before, it also rewrote the lot's entry in the partial index `lots_live`,
    // whose predicate names `remaining`: one more random page in every debit's commit.
    r#"
    CREATE TABLE lots_by_account (
        tenant_id   TEXT NOT NULL,
        subject     TEXT NOT NULL,
        credit_type TEXT NOT NULL,
        id          TEXT NOT NULL,
        priority    INTEGER NOT NULL,
        expires_at  INTEGER,
        created_at  INTEGER NOT NULL,
        remaining   INTEGER NOT NULL CHECK (remaining >= 0),
        PRIMARY KEY (tenant_id, subject, credit_type, id)
    ) WITHOUT ROWID;
    INSERT INTO lots_by_account (tenant_id, subject, credit_type, id, priority, expires_at, created_at, remaining)
        SELECT tenant_id, subject, credit_type, id, priority, expires_at, created_at, remaining FROM lots;
    DROP TABLE lots;
    ALTER TABLE lots_by_account RENAME TO lots;
    CREATE UNIQUE INDEX lots_by_id ON lots (id);
    "#,
];

/// Applies every migration the database has not seen, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this binary ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Connection settings shared by the writer and the readers.
///
/// The page cache is deliberately small: at the end of every write transaction SQLite's page
/// cache truncation walks its whole hash table, whose size follows the number of cached pages;
/// with a 64 MiB cache of 1 KiB pages that walk was a quarter of the writer's time. 4 KiB pages
/// and an 8 MiB cache (2048 pages) made durable debits about 1.5× faster (BENCHMARKS.md).
pub fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "PRAGMA page_size = 4096;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;
         PRAGMA foreign_keys = OFF;
         PRAGMA cache_size = -8192;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store left at version 5 keeps its lots through migration 6, which rebuilds the table.
    #[test]
    fn lots_survive_the_move_to_the_clustered_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("old.db")).unwrap();
        configure(&conn).unwrap();
        for (i, sql) in MIGRATIONS.iter().enumerate().take(5) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO lots (id, tenant_id, subject, credit_type, priority, expires_at, created_at, remaining) VALUES
                 ('evt_a', 'ten_1', 'alice', 'credits', 0, NULL, 10, 5),
                 ('evt_b', 'ten_1', 'alice', 'credits', 2, 99, 11, 0),
                 ('evt_c', 'ten_1', 'bob', 'credits', 1, NULL, 12, 7)",
        )
        .unwrap();

        migrate(&mut conn).unwrap();

        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let lots: Vec<(String, String, i64, Option<i64>, i64)> = conn
            .prepare("SELECT id, subject, priority, expires_at, remaining FROM lots ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            lots,
            vec![
                ("evt_a".into(), "alice".into(), 0, None, 5),
                ("evt_b".into(), "alice".into(), 2, Some(99), 0),
                ("evt_c".into(), "bob".into(), 1, None, 7),
            ]
        );
        // Lot ids stay unique, and a debit's update of `remaining` touches no index.
        let duplicate = conn.execute(
            "INSERT INTO lots (tenant_id, subject, credit_type, id, priority, created_at, remaining)
             VALUES ('ten_1', 'carol', 'credits', 'evt_a', 0, 1, 1)",
            [],
        );
        assert!(duplicate.is_err());
        let indexed: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_info('lots_by_id')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexed, vec!["id".to_owned()]);
    }
}
