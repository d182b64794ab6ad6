//! The PostgreSQL schema as a versioned history, applied under an advisory lock so that
//! instances starting at the same moment apply each migration exactly once.

use deadpool_postgres::Pool;

use crate::StoreError;

/// Lock id serialising migrations across instances ("LSMIGRAT").
const MIGRATION_LOCK: i64 = 0x4c53_4d49_4752_4154;

const MIGRATIONS: &[&str] = &[
    // 1: the v0 ledger.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    CREATE TABLE tenants (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE api_keys (
        seq          BIGSERIAL PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE,
        tenant_id    TEXT,
        name         TEXT NOT NULL,
        prefix       TEXT NOT NULL,
        hash         BYTEA NOT NULL UNIQUE,
        scopes       TEXT NOT NULL,
        subject      TEXT,
        expires_at   BIGINT,
        revoked_at   BIGINT,
        created_at   BIGINT NOT NULL,
        last_used_at BIGINT,
        rotated_from TEXT
    );
    CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, seq);
    CREATE UNIQUE INDEX api_keys_one_successor ON api_keys (rotated_from);
    CREATE TABLE accounts (
        tenant_id        TEXT NOT NULL,
        subject          TEXT NOT NULL,
        credit_type      TEXT NOT NULL,
        balance          BIGINT NOT NULL,
        held             BIGINT NOT NULL DEFAULT 0,
        overdraft_limit  BIGINT NOT NULL DEFAULT 0,
        max_debit_amount BIGINT,
        created_at       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, subject, credit_type)
    );
    CREATE TABLE lots (
        id          TEXT PRIMARY KEY,
        tenant_id   TEXT NOT NULL,
        subject     TEXT NOT NULL,
        credit_type TEXT NOT NULL,
        priority    INTEGER NOT NULL,
        expires_at  BIGINT,
        created_at  BIGINT NOT NULL,
        remaining   BIGINT NOT NULL CHECK (remaining >= 0)
    );
    CREATE INDEX lots_live ON lots (tenant_id, subject, credit_type) WHERE remaining > 0;
    CREATE TABLE events (
        seq           BIGSERIAL PRIMARY KEY,
        id            TEXT NOT NULL UNIQUE,
        tenant_id     TEXT NOT NULL,
        subject       TEXT NOT NULL,
        credit_type   TEXT NOT NULL,
        kind          TEXT NOT NULL,
        amount        BIGINT NOT NULL,
        delta         BIGINT NOT NULL,
        balance_after BIGINT NOT NULL,
        created_at    BIGINT NOT NULL,
        refund_of     TEXT,
        body          TEXT NOT NULL
    );
    CREATE INDEX events_by_tenant ON events (tenant_id, seq);
    CREATE INDEX events_by_account ON events (tenant_id, subject, credit_type, seq);
    CREATE INDEX events_by_refund_of ON events (refund_of) WHERE refund_of IS NOT NULL;
    CREATE TABLE idempotency (
        tenant_id   TEXT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint BYTEA NOT NULL,
        refusal     TEXT,
        event_id    TEXT,
        balance     BIGINT,
        available   BIGINT,
        created_at  BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, key)
    );
    "#,
    // 2: the token Authority's signing keys and tenants' external identity providers.
    r#"
    CREATE TABLE authority_keys (
        seq                BIGSERIAL PRIMARY KEY,
        kid                TEXT NOT NULL UNIQUE,
        algorithm          TEXT NOT NULL,
        public_key         BYTEA NOT NULL,
        sealed_private_key BYTEA NOT NULL,
        created_at         BIGINT NOT NULL,
        superseded_at      BIGINT
    );
    CREATE TABLE identity_providers (
        seq             BIGSERIAL PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        tenant_id       TEXT NOT NULL,
        issuer          TEXT NOT NULL UNIQUE,
        jwks_uri        TEXT NOT NULL,
        audiences       TEXT NOT NULL,
        algorithms      TEXT NOT NULL,
        subject_claim   TEXT NOT NULL,
        scope_claim     TEXT NOT NULL,
        leeway_seconds  BIGINT NOT NULL,
        required_claims TEXT NOT NULL,
        created_at      BIGINT NOT NULL
    );
    CREATE INDEX identity_providers_by_tenant ON identity_providers (tenant_id, created_at, seq);
    "#,
    // 3: signed requests (RFC 9421) and their nonces, mutual TLS, per-tenant auth settings.
    r#"
    CREATE TABLE signing_keys (
        seq           BIGSERIAL PRIMARY KEY,
        id            TEXT NOT NULL UNIQUE,
        tenant_id     TEXT NOT NULL,
        alg           TEXT NOT NULL,
        sealed_secret BYTEA,
        public_key    BYTEA,
        scopes        TEXT NOT NULL,
        subject       TEXT,
        created_at    BIGINT NOT NULL,
        expires_at    BIGINT,
        revoked_at    BIGINT,
        rotated_from  TEXT
    );
    CREATE INDEX signing_keys_by_tenant ON signing_keys (tenant_id, created_at, seq);
    CREATE UNIQUE INDEX signing_keys_one_successor ON signing_keys (rotated_from);
    CREATE TABLE signing_nonces (
        key_id     TEXT NOT NULL,
        nonce      TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (key_id, nonce)
    );
    CREATE INDEX signing_nonces_by_expiry ON signing_nonces (expires_at);
    CREATE TABLE client_cas (
        seq                BIGSERIAL PRIMARY KEY,
        id                 TEXT NOT NULL UNIQUE,
        tenant_id          TEXT NOT NULL,
        pem                TEXT NOT NULL,
        fingerprint_sha256 TEXT NOT NULL,
        created_at         BIGINT NOT NULL,
        UNIQUE (tenant_id, fingerprint_sha256)
    );
    CREATE INDEX client_cas_by_tenant ON client_cas (tenant_id, created_at, seq);
    CREATE TABLE client_identities (
        seq                BIGSERIAL PRIMARY KEY,
        id                 TEXT NOT NULL UNIQUE,
        tenant_id          TEXT NOT NULL,
        fingerprint_sha256 TEXT,
        san_uri            TEXT,
        san_dns            TEXT,
        subject            TEXT,
        scopes             TEXT NOT NULL,
        created_at         BIGINT NOT NULL
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
        fingerprint BYTEA NOT NULL,
        status      INTEGER,
        body        TEXT,
        claimed_at  BIGINT NOT NULL,
        PRIMARY KEY (scope, key)
    );
    "#,
    // 5: account policy history, so that `as_of` reports the policy of that instant. Policies
    // set before this version are dated to the account's creation.
    r#"
    CREATE TABLE policy_changes (
        seq BIGSERIAL PRIMARY KEY,
        tenant_id        TEXT NOT NULL,
        subject          TEXT NOT NULL,
        credit_type      TEXT NOT NULL,
        at               BIGINT NOT NULL,
        overdraft_limit  BIGINT NOT NULL,
        max_debit_amount BIGINT
    );
    CREATE INDEX policy_changes_by_account ON policy_changes (tenant_id, subject, credit_type, at, seq);
    INSERT INTO policy_changes (tenant_id, subject, credit_type, at, overdraft_limit, max_debit_amount)
        SELECT tenant_id, subject, credit_type, created_at, overdraft_limit, max_debit_amount FROM accounts
        WHERE overdraft_limit <> 0 OR max_debit_amount IS NOT NULL;
    "#,
    // 6: a debit's update of its lot's `remaining` touches no index (PostgreSQL can then make
    // it a HOT update). The partial index named `remaining` in its predicate, so every update
    // wrote a new entry into it and into the primary key index.
    r#"
    CREATE INDEX lots_by_account ON lots (tenant_id, subject, credit_type);
    DROP INDEX lots_live;
    "#,
];

/// Applies every migration the database has not seen, all under one advisory lock.
pub async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS licenseseal_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM licenseseal_migrations", &[]).await?.get(0);
    let current = current as usize;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this binary ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO licenseseal_migrations (version) VALUES ($1)", &[&((i + 1) as i32)]).await?;
    }
    tx.commit().await?;
    Ok(())
}
