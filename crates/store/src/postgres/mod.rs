//! The PostgreSQL backend: several stateless gateway instances on one database, with the
//! same semantics as the embedded store. Ledger writes are grouped per instance (see
//! `batch.rs`); everything else is a plain query on a bounded connection pool.

mod batch;
pub use batch::{key_listing_barrier_id, listing_barrier_id, BATCH_READS};
mod schema;
pub mod scratch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use licenseseal_ledger::{
    AccountKey, ClientCaId, ClientIdentityId, Command, Event, EventId, KeyId, ProviderId, SigningKeyId, SubjectId,
    TenantId, Timestamp,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_postgres::{NoTls, Row};

use self::batch::{account_key, account_state_from, lock_accounts, lot_from, run_batch};
use crate::codec::{corrupt, event_from_row, scopes_from_json, scopes_json, strings_from_json, strings_json};
use crate::{
    AccountView, ApiKeyRecord, AuthorityKeyRecord, ClientCaRecord, ClientIdentityRecord, Clock, EventFilter, Execution,
    IdentityProviderRecord, LedgerStore, Page, PolicyChange, RequestClaim, SigningKeyRecord, StoreError, Tenant,
    TenantSettings,
};

/// Named limits of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Connections in the pool.
    pub pool_size_max: usize,
    /// Longest wait for a pooled connection (or a new one) before a request fails with 503.
    pub acquire_timeout: Duration,
    /// Longest a statement may run on the server.
    pub statement_timeout: Duration,
    /// Most commands in one batch (one transaction).
    pub batch_size_max: usize,
    /// Batches of one instance in flight at once.
    pub batches_in_flight_max: usize,
    /// Retries of a batch that lost a race with another transaction.
    pub retries_max: u32,
    /// Commands waiting for a batch before callers are made to wait.
    pub queue_depth_max: usize,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            pool_size_max: 16,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            batch_size_max: 512,
            batches_in_flight_max: 4,
            retries_max: 8,
            queue_depth_max: 16_384,
        }
    }
}

struct Job {
    command: Command,
    reply: oneshot::Sender<Result<Execution, StoreError>>,
}

pub struct PgStore {
    pool: Pool,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    batcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    clock: Arc<dyn Clock>,
    /// Nonce claims made by this instance; every `NONCE_PURGE_EVERY`th also purges expired nonces.
    nonce_claims: AtomicU64,
}

/// One claim in this many also deletes expired nonces (pipelined with the claim, so no extra round trip).
const NONCE_PURGE_EVERY: u64 = 64;
/// Most expired nonces one purge deletes.
const NONCE_PURGE_MAX: i64 = 256;

impl PgStore {
    /// Connects, runs pending migrations (safe when several instances start together) and
    /// starts this instance's batcher.
    pub async fn connect(url: &str, clock: Arc<dyn Clock>, config: PgConfig) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Unavailable(format!("invalid database url: {e}")))?;
        let options = format!(
            "{} -c statement_timeout={}",
            pg.get_options().unwrap_or_default(),
            config.statement_timeout.as_millis()
        );
        pg.options(options.trim());
        pg.connect_timeout(config.acquire_timeout);
        pg.application_name("licenseseal");
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size_max)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.acquire_timeout))
            .recycle_timeout(Some(config.acquire_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot build the connection pool: {e}")))?;
        schema::migrate(&pool).await?;
        let secret: Vec<u8> = rand::random::<[u8; 32]>().to_vec();
        pool.get()
            .await?
            .execute("INSERT INTO meta (key, value) VALUES ('cursor_secret', $1) ON CONFLICT DO NOTHING", &[&secret])
            .await?;
        let (tx, rx) = mpsc::channel(config.queue_depth_max);
        let batcher = tokio::spawn(batcher(pool.clone(), clock.clone(), rx, config));
        Ok(PgStore {
            pool,
            queue: Mutex::new(Some(tx)),
            batcher: Mutex::new(Some(batcher)),
            clock,
            nonce_claims: AtomicU64::new(0),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Gathers queued commands into batches and runs up to `batches_in_flight_max` at once.
async fn batcher(pool: Pool, clock: Arc<dyn Clock>, mut rx: mpsc::Receiver<Job>, config: PgConfig) {
    let permits = Arc::new(Semaphore::new(config.batches_in_flight_max));
    let mut running = tokio::task::JoinSet::new();
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let mut jobs = vec![first];
        while jobs.len() < config.batch_size_max {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (pool, clock, retries) = (pool.clone(), clock.clone(), config.retries_max);
        running.spawn(async move {
            execute(&pool, clock.as_ref(), jobs, retries).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// Runs a batch with bounded retries on contention. If it still fails for a reason other
/// than an outage, each command is run alone, so one bad command cannot fail the others.
async fn execute(pool: &Pool, clock: &dyn Clock, jobs: Vec<Job>, retries_max: u32) {
    let commands: Vec<&Command> = jobs.iter().map(|j| &j.command).collect();
    match with_retries(pool, clock, &commands, retries_max).await {
        Ok(results) => {
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        Err(e) if jobs.len() > 1 && !e.is_unavailable() => {
            tracing::warn!(error = %e, size = jobs.len(), "store: batch failed; running its commands one by one");
            for job in jobs {
                let result = with_retries(pool, clock, &[&job.command], retries_max).await;
                let _ = job.reply.send(result.and_then(|mut r| r.pop().expect("one result per command")));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "store: batch failed; nothing of it was committed");
            let message = e.to_string();
            let unavailable = e.is_unavailable();
            for job in jobs {
                let err = if unavailable {
                    StoreError::Unavailable(message.clone())
                } else {
                    StoreError::Database(message.clone())
                };
                let _ = job.reply.send(Err(err));
            }
        }
    }
}

async fn with_retries(
    pool: &Pool,
    clock: &dyn Clock,
    commands: &[&Command],
    retries_max: u32,
) -> Result<Vec<Result<Execution, StoreError>>, StoreError> {
    let mut attempt = 0;
    loop {
        match run_batch(pool, clock.now(), commands).await {
            Err(StoreError::Contention(reason)) if attempt < retries_max => {
                attempt += 1;
                tracing::debug!(attempt, reason, "store: batch lost a race; retrying");
                let jitter = rand::random::<u64>() % (2 << attempt.min(6));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            other => return other,
        }
    }
}

async fn insert_key(tx: &tokio_postgres::Transaction<'_>, key: &ApiKeyRecord) -> Result<(), StoreError> {
    // Held until commit, so that a key listing never pages past a key still being written.
    let barrier = batch::key_listing_barrier_id(key.tenant_id.as_ref());
    tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&barrier]).await?;
    tx.execute(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, scopes, subject, expires_at, revoked_at, created_at, rotated_from)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &key.id.as_str(),
                &key.tenant_id.as_ref().map(TenantId::as_str),
                &key.name,
                &key.prefix,
                &&key.hash[..],
                &scopes_json(key.scopes),
                &key.subject.as_ref().map(|s| s.as_str()),
                &key.expires_at.map(Timestamp::micros),
                &key.revoked_at.map(Timestamp::micros),
                &key.created_at.micros(),
                &key.rotated_from.as_ref().map(KeyId::as_str),
            ],
        )
        .await?;
    Ok(())
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_micros)
}

const API_KEY_COLUMNS: &str =
    "seq, id, tenant_id, name, prefix, hash, scopes, subject, expires_at, revoked_at, created_at, last_used_at, rotated_from";

fn api_key_from(row: &Row) -> Result<(i64, ApiKeyRecord), StoreError> {
    let hash: Vec<u8> = row.get(5);
    let record = ApiKeyRecord {
        id: KeyId::parse(row.get(1)).map_err(corrupt("key id"))?,
        tenant_id: row.get::<_, Option<&str>>(2).map(TenantId::parse).transpose().map_err(corrupt("key tenant"))?,
        name: row.get(3),
        prefix: row.get(4),
        hash: hash.try_into().map_err(|_| StoreError::Corrupt("key hash length".into()))?,
        scopes: scopes_from_json(row.get(6))?,
        subject: row
            .get::<_, Option<&str>>(7)
            .map(licenseseal_ledger::SubjectId::parse)
            .transpose()
            .map_err(corrupt("key subject"))?,
        expires_at: ts(row.get(8)),
        revoked_at: ts(row.get(9)),
        created_at: Timestamp::from_micros(row.get(10)),
        last_used_at: ts(row.get(11)),
        rotated_from: row.get::<_, Option<&str>>(12).map(KeyId::parse).transpose().map_err(corrupt("rotated_from"))?,
    };
    Ok((row.get(0), record))
}

/// Lock id serialising Authority key rotations across instances ("LSAUTHKY"), so that two
/// concurrent rotations cannot both leave their key unsuperseded.
const AUTHORITY_ROTATION_LOCK: i64 = 0x4c53_4155_5448_4b59;

const AUTHORITY_KEY_COLUMNS: &str = "kid, algorithm, public_key, sealed_private_key, created_at, superseded_at";

fn authority_key_from(row: &Row) -> AuthorityKeyRecord {
    AuthorityKeyRecord {
        kid: row.get(0),
        algorithm: row.get(1),
        public_key: row.get(2),
        sealed_private_key: row.get(3),
        created_at: Timestamp::from_micros(row.get(4)),
        superseded_at: ts(row.get(5)),
    }
}

const IDENTITY_PROVIDER_COLUMNS: &str = "id, tenant_id, issuer, jwks_uri, audiences, algorithms, subject_claim, \
     scope_claim, leeway_seconds, required_claims, created_at";

fn identity_provider_from(row: &Row) -> Result<IdentityProviderRecord, StoreError> {
    let leeway_seconds: i64 = row.get(8);
    Ok(IdentityProviderRecord {
        id: ProviderId::parse(row.get(0)).map_err(corrupt("provider id"))?,
        tenant_id: TenantId::parse(row.get(1)).map_err(corrupt("provider tenant"))?,
        issuer: row.get(2),
        jwks_uri: row.get(3),
        audiences: strings_from_json(row.get(4), "provider audiences")?,
        algorithms: strings_from_json(row.get(5), "provider algorithms")?,
        subject_claim: row.get(6),
        scope_claim: row.get(7),
        leeway_seconds: u32::try_from(leeway_seconds)
            .map_err(|_| StoreError::Corrupt(format!("provider leeway {leeway_seconds}")))?,
        required_claims: strings_from_json(row.get(9), "provider required claims")?,
        created_at: Timestamp::from_micros(row.get(10)),
    })
}

const SIGNING_KEY_COLUMNS: &str = "id, tenant_id, alg, sealed_secret, public_key, scopes, subject, created_at, \
     expires_at, revoked_at, rotated_from";

fn signing_key_from(row: &Row) -> Result<SigningKeyRecord, StoreError> {
    Ok(SigningKeyRecord {
        id: SigningKeyId::parse(row.get(0)).map_err(corrupt("signing key id"))?,
        tenant_id: TenantId::parse(row.get(1)).map_err(corrupt("signing key tenant"))?,
        alg: row.get(2),
        sealed_secret: row.get(3),
        public_key: row.get(4),
        scopes: scopes_from_json(row.get(5))?,
        subject: row
            .get::<_, Option<&str>>(6)
            .map(SubjectId::parse)
            .transpose()
            .map_err(corrupt("signing key subject"))?,
        created_at: Timestamp::from_micros(row.get(7)),
        expires_at: ts(row.get(8)),
        revoked_at: ts(row.get(9)),
        rotated_from: row
            .get::<_, Option<&str>>(10)
            .map(SigningKeyId::parse)
            .transpose()
            .map_err(corrupt("signing key rotated_from"))?,
    })
}

const CLIENT_CA_COLUMNS: &str = "id, tenant_id, pem, fingerprint_sha256, created_at";

fn client_ca_from(row: &Row) -> Result<ClientCaRecord, StoreError> {
    Ok(ClientCaRecord {
        id: ClientCaId::parse(row.get(0)).map_err(corrupt("client CA id"))?,
        tenant_id: TenantId::parse(row.get(1)).map_err(corrupt("client CA tenant"))?,
        pem: row.get(2),
        fingerprint_sha256: row.get(3),
        created_at: Timestamp::from_micros(row.get(4)),
    })
}

const CLIENT_IDENTITY_COLUMNS: &str =
    "id, tenant_id, fingerprint_sha256, san_uri, san_dns, subject, scopes, created_at";

fn client_identity_from(row: &Row) -> Result<ClientIdentityRecord, StoreError> {
    Ok(ClientIdentityRecord {
        id: ClientIdentityId::parse(row.get(0)).map_err(corrupt("client identity id"))?,
        tenant_id: TenantId::parse(row.get(1)).map_err(corrupt("client identity tenant"))?,
        fingerprint_sha256: row.get(2),
        san_uri: row.get(3),
        san_dns: row.get(4),
        subject: row
            .get::<_, Option<&str>>(5)
            .map(SubjectId::parse)
            .transpose()
            .map_err(corrupt("client identity subject"))?,
        scopes: scopes_from_json(row.get(6))?,
        created_at: Timestamp::from_micros(row.get(7)),
    })
}

const ACCOUNT_COLUMNS: &str =
    "tenant_id, subject, credit_type, balance, held, overdraft_limit, max_debit_amount, updated_at";

#[async_trait::async_trait]
impl LedgerStore for PgStore {
    #[tracing::instrument(skip_all, fields(tenant = %command.tenant_id, correlation_id = %command.correlation_id))]
    async fn execute(&self, command: Command) -> Result<Execution, StoreError> {
        let queue = self.queue.lock().clone().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        queue.send(Job { command, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn set_policy(&self, key: AccountKey, change: PolicyChange) -> Result<AccountView, StoreError> {
        let now = self.clock.now();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        lock_accounts(&tx, [&key]).await?;
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE tenant_id = $1 AND subject = $2 AND credit_type = $3"
        );
        let k: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&key.tenant_id.as_str(), &key.subject.as_str(), &key.credit_type.as_str()];
        let mut state = tx.query_opt(&sql, &k).await?.map(|r| account_state_from(&r)).unwrap_or_default();
        change.apply(&mut state.policy);
        tx.execute(
            "INSERT INTO policy_changes (tenant_id, subject, credit_type, at, overdraft_limit, max_debit_amount)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &key.tenant_id.as_str(),
                &key.subject.as_str(),
                &key.credit_type.as_str(),
                &now.micros(),
                &(state.policy.overdraft_limit as i64),
                &state.policy.max_debit_amount.map(|v| v as i64),
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO accounts (tenant_id, subject, credit_type, balance, held, overdraft_limit, max_debit_amount, created_at, updated_at)
             VALUES ($1, $2, $3, 0, 0, $4, $5, $6, $6)
             ON CONFLICT (tenant_id, subject, credit_type) DO UPDATE SET
               overdraft_limit = EXCLUDED.overdraft_limit, max_debit_amount = EXCLUDED.max_debit_amount,
               updated_at = EXCLUDED.updated_at",
            &[
                &key.tenant_id.as_str(),
                &key.subject.as_str(),
                &key.credit_type.as_str(),
                &(state.policy.overdraft_limit as i64),
                &state.policy.max_debit_amount.map(|v| v as i64),
                &now.micros(),
            ],
        )
        .await?;
        tx.commit().await?;
        drop(client);
        self.account(&key, None).await?.ok_or_else(|| StoreError::Corrupt("account vanished".into()))
    }

    async fn account(&self, key: &AccountKey, as_of: Option<Timestamp>) -> Result<Option<AccountView>, StoreError> {
        let now = self.clock.now();
        let client = self.client().await?;
        let k: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&key.tenant_id.as_str(), &key.subject.as_str(), &key.credit_type.as_str()];
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE tenant_id = $1 AND subject = $2 AND credit_type = $3"
        );
        let lots_sql = "SELECT id, tenant_id, subject, credit_type, priority, expires_at, created_at, remaining
                        FROM lots WHERE tenant_id = $1 AND subject = $2 AND credit_type = $3 AND remaining > 0";
        let (row, lots) = tokio::try_join!(client.query_opt(&sql, &k), client.query(lots_sql, &k))?;
        let Some(row) = row else { return Ok(None) };
        let mut state = account_state_from(&row);
        for lot in &lots {
            state.lots.push(lot_from(lot)?);
        }
        let mut view = AccountView {
            key: account_key(row.get(0), row.get(1), row.get(2))?,
            balance: state.balance,
            held: state.held,
            available: state.available(now),
            expired_pending: state.expired_unswept(now),
            policy: state.policy,
            updated_at: Timestamp::from_micros(row.get(7)),
        };
        if let Some(at) = as_of {
            let at = at.micros();
            let k: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&key.tenant_id.as_str(), &key.subject.as_str(), &key.credit_type.as_str(), &at];
            let (last_event, policy) = tokio::try_join!(
                client.query_opt(
                    "SELECT balance_after, created_at FROM events WHERE tenant_id = $1 AND subject = $2
                     AND credit_type = $3 AND created_at <= $4 ORDER BY seq DESC LIMIT 1",
                    &k,
                ),
                client.query_opt(
                    "SELECT overdraft_limit, max_debit_amount FROM policy_changes WHERE tenant_id = $1
                     AND subject = $2 AND credit_type = $3 AND at <= $4 ORDER BY at DESC, seq DESC LIMIT 1",
                    &k,
                ),
            )?;
            let last_event = last_event.map(|r| (r.get(0), Timestamp::from_micros(r.get(1))));
            let policy = policy.map(|r| licenseseal_ledger::AccountPolicy {
                overdraft_limit: r.get::<_, i64>(0) as u64,
                max_debit_amount: r.get::<_, Option<i64>>(1).map(|v| v as u64),
            });
            view = view.as_of(last_event, policy);
        }
        Ok(Some(view))
    }

    async fn event(&self, tenant: &TenantId, id: &EventId) -> Result<Option<Event>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT tenant_id, body FROM events WHERE id = $1 AND tenant_id = $2",
                &[&id.as_str(), &tenant.as_str()],
            )
            .await?;
        row.map(|r| event_from_row(r.get(0), r.get(1))).transpose()
    }

    async fn events(
        &self,
        tenant: &TenantId,
        filter: &EventFilter,
        page: Page,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        let mut client = self.client().await?;
        // Under the tenant's listing barrier no transaction writing its events is open, so no
        // event with a lower seq than those read can still appear (see `listing_barrier_id`).
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&batch::listing_barrier_id(tenant)]).await?;
        let rows = tx
            .query(
                "SELECT seq, tenant_id, body FROM events
                 WHERE tenant_id = $1 AND seq > $2
                   AND ($3::text IS NULL OR subject = $3)
                   AND ($4::text IS NULL OR kind = $4)
                   AND ($5::text IS NULL OR credit_type = $5)
                   AND ($6::bigint IS NULL OR created_at >= $6)
                   AND ($7::bigint IS NULL OR created_at < $7)
                 ORDER BY seq LIMIT $8",
                &[
                    &tenant.as_str(),
                    &page.after.unwrap_or(0),
                    &filter.subject.as_ref().map(|s| s.as_str()),
                    &filter.kind.map(|k| k.as_str()),
                    &filter.credit_type.as_ref().map(|c| c.as_str()),
                    &filter.from.map(Timestamp::micros),
                    &filter.to.map(Timestamp::micros),
                    &i64::from(page.limit),
                ],
            )
            .await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok((r.get(0), event_from_row(r.get(1), r.get(2))?))).collect()
    }

    async fn create_tenant(&self, tenant: Tenant) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
                &[&tenant.id.as_str(), &tenant.name, &tenant.created_at.micros()],
            )
            .await?;
        Ok(())
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT name, created_at FROM tenants WHERE id = $1", &[&id.as_str()])
            .await?;
        Ok(row.map(|r| Tenant { id: id.clone(), name: r.get(0), created_at: Timestamp::from_micros(r.get(1)) }))
    }

    async fn insert_api_key(&self, key: ApiKeyRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        insert_key(&tx, &key).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn initialize(&self, operator_key: ApiKeyRecord) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let marked = tx
            .execute("INSERT INTO meta (key, value) VALUES ('initialized', '\\x01') ON CONFLICT DO NOTHING", &[])
            .await?;
        if marked == 0 {
            return Ok(false);
        }
        insert_key(&tx, &operator_key).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn api_key_by_hash(&self, hash: [u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE hash = $1");
        let row = self.client().await?.query_opt(&sql, &[&&hash[..]]).await?;
        Ok(row.map(|r| api_key_from(&r)).transpose()?.map(|(_, k)| k))
    }

    async fn api_key(&self, id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = self.client().await?.query_opt(&sql, &[&id.as_str()]).await?;
        Ok(row.map(|r| api_key_from(&r)).transpose()?.map(|(_, k)| k))
    }

    async fn api_keys(&self, tenant: Option<&TenantId>, page: Page) -> Result<Vec<(i64, ApiKeyRecord)>, StoreError> {
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id IS NOT DISTINCT FROM $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let mut client = self.client().await?;
        // Under the barrier no key of this tenant is mid-insert (see `listing_barrier_id`).
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&batch::key_listing_barrier_id(tenant)]).await?;
        let rows =
            tx.query(&sql, &[&tenant.map(TenantId::as_str), &page.after.unwrap_or(0), &i64::from(page.limit)]).await?;
        tx.commit().await?;
        rows.iter().map(api_key_from).collect()
    }

    async fn retire_api_key(&self, id: &KeyId, at: Timestamp, revoke: bool) -> Result<(), StoreError> {
        let sql = if revoke {
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1"
        } else {
            "UPDATE api_keys SET expires_at = LEAST(COALESCE(expires_at, $2), $2) WHERE id = $1"
        };
        self.client().await?.execute(sql, &[&id.as_str(), &at.micros()]).await?;
        Ok(())
    }

    async fn touch_api_keys(&self, used: Vec<(KeyId, Timestamp)>) -> Result<(), StoreError> {
        let ids: Vec<&str> = used.iter().map(|(id, _)| id.as_str()).collect();
        let ats: Vec<i64> = used.iter().map(|(_, at)| at.micros()).collect();
        self.client()
            .await?
            .execute(
                "UPDATE api_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, 0), u.at)
                 FROM unnest($1::text[], $2::bigint[]) AS u(id, at) WHERE k.id = u.id",
                &[&ids, &ats],
            )
            .await?;
        Ok(())
    }

    async fn authority_keys(&self) -> Result<Vec<AuthorityKeyRecord>, StoreError> {
        let sql = format!("SELECT {AUTHORITY_KEY_COLUMNS} FROM authority_keys ORDER BY created_at, seq");
        let rows = self.client().await?.query(&sql, &[]).await?;
        Ok(rows.iter().map(authority_key_from).collect())
    }

    async fn rotate_authority_key(&self, new: AuthorityKeyRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUTHORITY_ROTATION_LOCK]).await?;
        tx.execute(
            "INSERT INTO authority_keys (kid, algorithm, public_key, sealed_private_key, created_at, superseded_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &new.kid,
                &new.algorithm,
                &new.public_key,
                &new.sealed_private_key,
                &new.created_at.micros(),
                &new.superseded_at.map(Timestamp::micros),
            ],
        )
        .await?;
        tx.execute(
            "UPDATE authority_keys SET superseded_at = $1 WHERE superseded_at IS NULL AND kid <> $2",
            &[&new.created_at.micros(), &new.kid],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_identity_provider(&self, provider: IdentityProviderRecord) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO identity_providers (id, tenant_id, issuer, jwks_uri, audiences, algorithms, subject_claim,
                   scope_claim, leeway_seconds, required_claims, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &provider.id.as_str(),
                    &provider.tenant_id.as_str(),
                    &provider.issuer,
                    &provider.jwks_uri,
                    &strings_json(&provider.audiences),
                    &strings_json(&provider.algorithms),
                    &provider.subject_claim,
                    &provider.scope_claim,
                    &i64::from(provider.leeway_seconds),
                    &strings_json(&provider.required_claims),
                    &provider.created_at.micros(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn identity_provider(
        &self,
        tenant: &TenantId,
        id: &ProviderId,
    ) -> Result<Option<IdentityProviderRecord>, StoreError> {
        let sql =
            format!("SELECT {IDENTITY_PROVIDER_COLUMNS} FROM identity_providers WHERE id = $1 AND tenant_id = $2");
        let row = self.client().await?.query_opt(&sql, &[&id.as_str(), &tenant.as_str()]).await?;
        row.map(|r| identity_provider_from(&r)).transpose()
    }

    async fn identity_provider_by_issuer(&self, issuer: &str) -> Result<Option<IdentityProviderRecord>, StoreError> {
        let sql = format!("SELECT {IDENTITY_PROVIDER_COLUMNS} FROM identity_providers WHERE issuer = $1");
        let row = self.client().await?.query_opt(&sql, &[&issuer]).await?;
        row.map(|r| identity_provider_from(&r)).transpose()
    }

    async fn identity_providers(&self, tenant: &TenantId) -> Result<Vec<IdentityProviderRecord>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_PROVIDER_COLUMNS} FROM identity_providers WHERE tenant_id = $1 ORDER BY created_at, seq"
        );
        let rows = self.client().await?.query(&sql, &[&tenant.as_str()]).await?;
        rows.iter().map(identity_provider_from).collect()
    }

    async fn delete_identity_provider(&self, tenant: &TenantId, id: &ProviderId) -> Result<bool, StoreError> {
        let deleted = self
            .client()
            .await?
            .execute(
                "DELETE FROM identity_providers WHERE id = $1 AND tenant_id = $2",
                &[&id.as_str(), &tenant.as_str()],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn insert_signing_key(&self, key: SigningKeyRecord) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO signing_keys (id, tenant_id, alg, sealed_secret, public_key, scopes, subject, created_at,
                   expires_at, revoked_at, rotated_from)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &key.id.as_str(),
                    &key.tenant_id.as_str(),
                    &key.alg,
                    &key.sealed_secret,
                    &key.public_key,
                    &scopes_json(key.scopes),
                    &key.subject.as_ref().map(SubjectId::as_str),
                    &key.created_at.micros(),
                    &key.expires_at.map(Timestamp::micros),
                    &key.revoked_at.map(Timestamp::micros),
                    &key.rotated_from.as_ref().map(SigningKeyId::as_str),
                ],
            )
            .await?;
        Ok(())
    }

    async fn signing_key(&self, id: &SigningKeyId) -> Result<Option<SigningKeyRecord>, StoreError> {
        let sql = format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE id = $1");
        let row = self.client().await?.query_opt(&sql, &[&id.as_str()]).await?;
        row.map(|r| signing_key_from(&r)).transpose()
    }

    async fn signing_keys(&self, tenant: &TenantId) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let sql =
            format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE tenant_id = $1 ORDER BY created_at, seq");
        let rows = self.client().await?.query(&sql, &[&tenant.as_str()]).await?;
        rows.iter().map(signing_key_from).collect()
    }

    async fn retire_signing_key(&self, id: &SigningKeyId, at: Timestamp, revoke: bool) -> Result<(), StoreError> {
        let sql = if revoke {
            "UPDATE signing_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1"
        } else {
            "UPDATE signing_keys SET expires_at = LEAST(COALESCE(expires_at, $2), $2) WHERE id = $1"
        };
        self.client().await?.execute(sql, &[&id.as_str(), &at.micros()]).await?;
        Ok(())
    }

    async fn claim_nonce(
        &self,
        key: &SigningKeyId,
        nonce: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let (key, now, expires_at) = (key.as_str(), now.micros(), expires_at.micros());
        let claim_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&key, &nonce, &now, &expires_at];
        let purge_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&now, &NONCE_PURGE_MAX];
        // One statement, so concurrent claims from any instance serialise on the row: the first
        // inserts (or takes over an expired row), every other one finds it live and gets no row.
        let claim = client.query_opt(
            "INSERT INTO signing_nonces (key_id, nonce, expires_at) VALUES ($1, $2, $4)
             ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at
             WHERE signing_nonces.expires_at <= $3
             RETURNING 1",
            &claim_params,
        );
        if !self.nonce_claims.fetch_add(1, Ordering::Relaxed).is_multiple_of(NONCE_PURGE_EVERY) {
            return Ok(claim.await?.is_some());
        }
        // Pipelined behind the claim on the same connection. Rows another instance is purging
        // (or claiming) right now are skipped, not waited for.
        let purge = client.execute(
            "DELETE FROM signing_nonces WHERE (key_id, nonce) IN
               (SELECT key_id, nonce FROM signing_nonces WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &purge_params,
        );
        let (claimed, purged) = tokio::join!(claim, purge);
        if let Err(e) = purged {
            tracing::warn!(error = %e, "store: purging expired nonces failed");
        }
        Ok(claimed?.is_some())
    }

    async fn claim_request(
        &self,
        scope: &str,
        key: &str,
        fingerprint: [u8; 32],
        now: Timestamp,
        stale_before: Timestamp,
    ) -> Result<RequestClaim, StoreError> {
        let client = self.client().await?;
        let (fp, now, stale) = (&fingerprint[..], now.micros(), stale_before.micros());
        // Keys have one scope per tenant: a key a ledger write used is taken. (A ledger batch
        // checks the other way round; two different requests sent at the same instant under
        // one key, one to the ledger and one not, could still both pass.)
        let used = "SELECT EXISTS (SELECT 1 FROM idempotency WHERE tenant_id = $1 AND key = $2)";
        if client.query_one(used, &[&scope, &key]).await?.get::<_, bool>(0) {
            return Ok(RequestClaim::UsedByLedger);
        }
        // One statement: concurrent claims serialise on the row, and exactly one gets it.
        let claimed = client
            .query_opt(
                "INSERT INTO request_idempotency (scope, key, fingerprint, claimed_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, claimed_at = EXCLUDED.claimed_at
                 WHERE request_idempotency.status IS NULL AND request_idempotency.claimed_at < $5
                 RETURNING 1",
                &[&scope, &key, &fp, &now, &stale],
            )
            .await?;
        if claimed.is_some() {
            return Ok(RequestClaim::Claimed);
        }
        let row = client
            .query_one(
                "SELECT fingerprint, status, body FROM request_idempotency WHERE scope = $1 AND key = $2",
                &[&scope, &key],
            )
            .await?;
        let status: Option<i32> = row.get(1);
        crate::codec::request_claim(row.get(0), status.map(i64::from), row.get(2))
    }

    async fn finish_request(&self, scope: &str, key: &str, response: Option<(u16, String)>) -> Result<(), StoreError> {
        let client = self.client().await?;
        match response {
            Some((status, body)) => {
                let status = i32::from(status);
                client
                    .execute(
                        "UPDATE request_idempotency SET status = $3, body = $4
                         WHERE scope = $1 AND key = $2 AND status IS NULL",
                        &[&scope, &key, &status, &body],
                    )
                    .await?
            }
            None => {
                client
                    .execute(
                        "DELETE FROM request_idempotency WHERE scope = $1 AND key = $2 AND status IS NULL",
                        &[&scope, &key],
                    )
                    .await?
            }
        };
        Ok(())
    }

    fn nonces_are_shared(&self) -> bool {
        true
    }

    async fn insert_client_ca(&self, ca: ClientCaRecord) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO client_cas (id, tenant_id, pem, fingerprint_sha256, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &ca.id.as_str(),
                    &ca.tenant_id.as_str(),
                    &ca.pem,
                    &ca.fingerprint_sha256.to_ascii_lowercase(),
                    &ca.created_at.micros(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn client_cas(&self, tenant: &TenantId) -> Result<Vec<ClientCaRecord>, StoreError> {
        let sql = format!("SELECT {CLIENT_CA_COLUMNS} FROM client_cas WHERE tenant_id = $1 ORDER BY created_at, seq");
        let rows = self.client().await?.query(&sql, &[&tenant.as_str()]).await?;
        rows.iter().map(client_ca_from).collect()
    }

    async fn delete_client_ca(&self, tenant: &TenantId, id: &ClientCaId) -> Result<bool, StoreError> {
        let deleted = self
            .client()
            .await?
            .execute("DELETE FROM client_cas WHERE id = $1 AND tenant_id = $2", &[&id.as_str(), &tenant.as_str()])
            .await?;
        Ok(deleted > 0)
    }

    async fn insert_client_identity(&self, identity: ClientIdentityRecord) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO client_identities (id, tenant_id, fingerprint_sha256, san_uri, san_dns, subject, scopes,
                   created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &identity.id.as_str(),
                    &identity.tenant_id.as_str(),
                    &identity.fingerprint_sha256.as_deref().map(str::to_ascii_lowercase),
                    &identity.san_uri,
                    &identity.san_dns,
                    &identity.subject.as_ref().map(SubjectId::as_str),
                    &scopes_json(identity.scopes),
                    &identity.created_at.micros(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn client_identities(&self, tenant: &TenantId) -> Result<Vec<ClientIdentityRecord>, StoreError> {
        let sql = format!(
            "SELECT {CLIENT_IDENTITY_COLUMNS} FROM client_identities WHERE tenant_id = $1 ORDER BY created_at, seq"
        );
        let rows = self.client().await?.query(&sql, &[&tenant.as_str()]).await?;
        rows.iter().map(client_identity_from).collect()
    }

    async fn delete_client_identity(&self, tenant: &TenantId, id: &ClientIdentityId) -> Result<bool, StoreError> {
        let deleted = self
            .client()
            .await?
            .execute(
                "DELETE FROM client_identities WHERE id = $1 AND tenant_id = $2",
                &[&id.as_str(), &tenant.as_str()],
            )
            .await?;
        Ok(deleted > 0)
    }

    async fn tenant_settings(&self, tenant: &TenantId) -> Result<TenantSettings, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT auth_methods, mtls_hostname FROM tenant_settings WHERE tenant_id = $1",
                &[&tenant.as_str()],
            )
            .await?;
        let Some(row) = row else { return Ok(TenantSettings::default()) };
        Ok(TenantSettings {
            auth_methods: row
                .get::<_, Option<&str>>(0)
                .map(|m| strings_from_json(m, "tenant auth methods"))
                .transpose()?,
            mtls_hostname: row.get(1),
        })
    }

    async fn set_tenant_settings(&self, tenant: &TenantId, settings: TenantSettings) -> Result<(), StoreError> {
        // One statement: a hostname bound to another tenant violates the unique index and
        // nothing is written.
        self.client()
            .await?
            .execute(
                "INSERT INTO tenant_settings (tenant_id, auth_methods, mtls_hostname) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant_id) DO UPDATE
                 SET auth_methods = EXCLUDED.auth_methods, mtls_hostname = EXCLUDED.mtls_hostname",
                &[
                    &tenant.as_str(),
                    &settings.auth_methods.as_deref().map(strings_json),
                    &settings.mtls_hostname.as_deref().map(str::to_ascii_lowercase),
                ],
            )
            .await?;
        Ok(())
    }

    async fn tenant_by_mtls_hostname(&self, hostname: &str) -> Result<Option<TenantId>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT tenant_id FROM tenant_settings WHERE mtls_hostname = $1",
                &[&hostname.to_ascii_lowercase()],
            )
            .await?;
        row.map(|r| TenantId::parse(r.get(0)).map_err(corrupt("settings tenant"))).transpose()
    }

    async fn is_initialized(&self) -> Result<bool, StoreError> {
        let row = self.client().await?.query_opt("SELECT 1 FROM meta WHERE key = 'initialized'", &[]).await?;
        Ok(row.is_some())
    }

    async fn cursor_secret(&self) -> Result<[u8; 32], StoreError> {
        let row = self.client().await?.query_one("SELECT value FROM meta WHERE key = 'cursor_secret'", &[]).await?;
        let v: Vec<u8> = row.get(0);
        v.try_into().map_err(|_| StoreError::Corrupt("cursor secret length".into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    async fn shutdown(&self) {
        drop(self.queue.lock().take());
        let batcher = self.batcher.lock().take();
        if let Some(batcher) = batcher {
            let _ = batcher.await;
        }
        self.pool.close();
    }
}
