//! The embedded SQLite backend: one writer thread with group commit, a small pool of read
//! connections that never wait for it (WAL), and `synchronous = FULL` so that a commit is on
//! disk before any reply is sent.

mod checkpoint;
mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use licenseseal_ledger::{
    AccountKey, ClientCaId, ClientIdentityId, Command, Event, EventId, KeyId, ProviderId, SigningKeyId, TenantId,
    Timestamp,
};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, Semaphore};

use self::rows::{
    api_key_from_row, authority_key_from_row, client_ca_from_row, client_identity_from_row, event_from_row,
    identity_provider_from_row, load_account, load_event, signing_key_from_row, API_KEY_COLUMNS, AUTHORITY_KEY_COLUMNS,
    CLIENT_CA_COLUMNS, CLIENT_IDENTITY_COLUMNS, IDENTITY_PROVIDER_COLUMNS, SIGNING_KEY_COLUMNS,
};
use self::writer::{AccountCache, AdminOp, WriteOp, Writer};
use crate::codec::{scopes_json, strings_from_json, strings_json};
use crate::{
    AccountView, ApiKeyRecord, AuthorityKeyRecord, ClientCaRecord, ClientIdentityRecord, Clock, EventFilter, Execution,
    IdentityProviderRecord, LedgerStore, Page, PolicyChange, RequestClaim, SigningKeyRecord, StoreError, Tenant,
    TenantSettings,
};

/// Most expired nonces one `claim_nonce` deletes (in its own transaction, beside the claim).
const NONCE_PURGE_MAX: i64 = 64;

/// Named limits of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Most operations committed in one transaction.
    pub batch_size_max: usize,
    /// Writes waiting for the writer before callers are made to wait.
    pub queue_depth_max: usize,
    /// Read connections (reads run beside the writer, never behind it).
    pub readers_max: usize,
    /// Accounts the writer keeps in memory.
    pub account_cache_max: usize,
    /// WAL size, in pages, at which the WAL is made to start over (it is copied back into the
    /// database file continuously, by the checkpointer).
    pub wal_checkpoint_pages: u32,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            batch_size_max: 1024,
            queue_depth_max: 16_384,
            readers_max: 4,
            account_cache_max: 100_000,
            wal_checkpoint_pages: 4000,
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    reader_permits: Semaphore,
    clock: Arc<dyn Clock>,
    /// Held until shutdown: one process per data directory, since the writer's cache assumes
    /// it is the only writer.
    lock: Mutex<Option<std::fs::File>>,
    /// Set when the WAL could not be synced: every later write fails and readiness too.
    sync_failure: writer::SyncFailure,
}

impl SqliteStore {
    /// The database file inside a data directory.
    pub fn database_path(data_dir: &Path) -> PathBuf {
        data_dir.join("licenseseal.db")
    }

    /// Opens (creating if needed) the store in `data_dir` and starts its writer.
    pub fn open(data_dir: &Path, clock: Arc<dyn Clock>, config: SqliteConfig) -> Result<Self, StoreError> {
        let lock = lock_data_dir(data_dir)?;
        let path = Self::database_path(data_dir);
        let mut conn = Connection::open(&path)?;
        schema::configure(&conn)?;
        schema::migrate(&mut conn)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('cursor_secret', ?1)",
            [rand::random::<[u8; 32]>().to_vec()],
        )?;
        let (tx, rx) = mpsc::channel(config.queue_depth_max);
        let sync_failure = writer::SyncFailure::default();
        let writer = Writer::new(
            conn,
            &path,
            clock.clone(),
            config.batch_size_max,
            config.account_cache_max,
            config.wal_checkpoint_pages,
            sync_failure.clone(),
        )?;
        let thread = std::thread::Builder::new()
            .name("licenseseal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer: {e}")))?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            readers: Mutex::new(Vec::new()),
            reader_permits: Semaphore::new(config.readers_max),
            clock,
            lock: Mutex::new(Some(lock)),
            sync_failure,
        })
    }

    /// Whether the database file at `path` holds an initialised store, read without writing.
    pub fn is_initialized_at(path: &Path) -> Result<bool, StoreError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let has_meta: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            return Ok(false);
        }
        Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'initialized')", [], |r| r.get(0))?)
    }

    fn sender(&self) -> Result<mpsc::Sender<WriteOp>, StoreError> {
        self.writer.lock().clone().ok_or(StoreError::Closed)
    }

    async fn submit(&self, op: WriteOp) -> Result<(), StoreError> {
        self.sender()?.send(op).await.map_err(|_| StoreError::Closed)
    }

    /// Runs `f` on the writer connection inside the next batch; resolves after the commit.
    async fn admin<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut AccountCache, Timestamp) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let op: AdminOp = Box::new(move |conn, cache, now| {
            let result = f(conn, cache, now);
            let ok = result.is_ok();
            let done: writer::Completion = Box::new(move |fate| {
                let _ = tx.send(fate.and(result));
            });
            (ok, done)
        });
        self.submit(WriteOp::Admin(op)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read connection off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self.reader_permits.acquire().await.map_err(|_| StoreError::Closed)?;
        let conn = match self.readers.lock().pop() {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path)?;
                schema::configure(&conn)?;
                conn
            }
        };
        let (result, conn) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (result, conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?;
        self.readers.lock().push(conn);
        result
    }
}

/// Creates the data directory (owner-only on Unix) and takes its exclusive lock, refusing a
/// second process on the same directory.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, StoreError> {
    let io = |what: &str, e: std::io::Error| StoreError::Unavailable(format!("{what} {}: {e}", data_dir.display()));
    if !data_dir.exists() {
        std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create data directory", e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("cannot restrict data directory", e))?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("licenseseal.lock"))
        .map_err(|e| io("cannot open the lock file in", e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "another licenseseal process is using the data directory {}",
            data_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io("cannot lock the data directory", e)),
    }
}

fn account_view(
    key: AccountKey,
    state: &licenseseal_ledger::AccountState,
    updated_at: Timestamp,
    now: Timestamp,
) -> AccountView {
    AccountView {
        balance: state.balance,
        held: state.held,
        available: state.available(now),
        expired_pending: state.expired_unswept(now),
        policy: state.policy,
        updated_at,
        key,
    }
}

#[async_trait::async_trait]
impl LedgerStore for SqliteStore {
    #[tracing::instrument(skip_all, fields(tenant = %command.tenant_id, correlation_id = %command.correlation_id))]
    async fn execute(&self, command: Command) -> Result<Execution, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.submit(WriteOp::Ledger { command, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn set_policy(&self, key: AccountKey, change: PolicyChange) -> Result<AccountView, StoreError> {
        self.admin(move |conn, cache, now| {
            let mut state = load_account(conn, &key)?.map(|(s, _)| s).unwrap_or_default();
            change.apply(&mut state.policy);
            writer::upsert_account(conn, &key, &state, now)?;
            conn.prepare_cached(
                "INSERT INTO policy_changes (tenant_id, subject, credit_type, at, overdraft_limit, max_debit_amount)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                key.tenant_id.as_str(),
                key.subject.as_str(),
                key.credit_type.as_str(),
                now.micros(),
                state.policy.overdraft_limit as i64,
                state.policy.max_debit_amount.map(|v| v as i64),
            ])?;
            cache.invalidate(&key);
            Ok(account_view(key, &state, now, now))
        })
        .await
    }

    async fn account(&self, key: &AccountKey, as_of: Option<Timestamp>) -> Result<Option<AccountView>, StoreError> {
        let key = key.clone();
        let now = self.clock.now();
        self.read(move |conn| {
            let Some((state, updated_at)) = load_account(conn, &key)? else { return Ok(None) };
            let mut view = account_view(key.clone(), &state, updated_at, now);
            if let Some(at) = as_of {
                let k = params![key.tenant_id.as_str(), key.subject.as_str(), key.credit_type.as_str(), at.micros()];
                let last_event = conn
                    .prepare_cached(
                        "SELECT balance_after, created_at FROM events WHERE tenant_id = ?1 AND subject = ?2
                         AND credit_type = ?3 AND created_at <= ?4 ORDER BY seq DESC LIMIT 1",
                    )?
                    .query_row(k, |r| Ok((r.get(0)?, Timestamp::from_micros(r.get(1)?))))
                    .optional()?;
                let policy = conn
                    .prepare_cached(
                        "SELECT overdraft_limit, max_debit_amount FROM policy_changes WHERE tenant_id = ?1
                         AND subject = ?2 AND credit_type = ?3 AND at <= ?4 ORDER BY at DESC, seq DESC LIMIT 1",
                    )?
                    .query_row(k, |r| {
                        Ok(licenseseal_ledger::AccountPolicy {
                            overdraft_limit: r.get::<_, i64>(0)? as u64,
                            max_debit_amount: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                        })
                    })
                    .optional()?;
                view = view.as_of(last_event, policy);
            }
            Ok(Some(view))
        })
        .await
    }

    async fn event(&self, tenant: &TenantId, id: &EventId) -> Result<Option<Event>, StoreError> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read(move |conn| load_event(conn, &tenant, &id)).await
    }

    async fn events(
        &self,
        tenant: &TenantId,
        filter: &EventFilter,
        page: Page,
    ) -> Result<Vec<(i64, Event)>, StoreError> {
        let (tenant, filter) = (tenant.clone(), filter.clone());
        self.read(move |conn| {
            let mut sql = String::from("SELECT seq, tenant_id, body FROM events WHERE tenant_id = ?1 AND seq > ?2");
            let mut args: Vec<rusqlite::types::Value> =
                vec![tenant.as_str().to_owned().into(), page.after.unwrap_or(0).into()];
            let mut push = |clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&format!(" AND {clause} ?{}", args.len()));
            };
            if let Some(s) = &filter.subject {
                push("subject =", s.as_str().to_owned().into());
            }
            if let Some(k) = filter.kind {
                push("kind =", k.as_str().to_owned().into());
            }
            if let Some(c) = &filter.credit_type {
                push("credit_type =", c.as_str().to_owned().into());
            }
            if let Some(from) = filter.from {
                push("created_at >=", from.micros().into());
            }
            if let Some(to) = filter.to {
                push("created_at <", to.micros().into());
            }
            sql.push_str(&format!(" ORDER BY seq LIMIT {}", page.limit));
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            rows.map(|row| {
                let (seq, tenant, body) = row?;
                Ok((seq, event_from_row(&tenant, &body)?))
            })
            .collect()
        })
        .await
    }

    async fn create_tenant(&self, tenant: Tenant) -> Result<(), StoreError> {
        self.admin(move |conn, _, _| {
            conn.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![tenant.id.as_str(), tenant.name, tenant.created_at.micros()],
            )?;
            Ok(())
        })
        .await
    }

    async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let row = conn
                .prepare_cached("SELECT name, created_at FROM tenants WHERE id = ?1")?
                .query_row([id.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .optional()?;
            Ok(row.map(|(name, created_at)| Tenant { id, name, created_at: Timestamp::from_micros(created_at) }))
        })
        .await
    }

    async fn insert_api_key(&self, key: ApiKeyRecord) -> Result<(), StoreError> {
        self.admin(move |conn, _, _| {
            let scopes = crate::codec::scopes_json(key.scopes);
            conn.execute(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, hash, scopes, subject, expires_at, revoked_at, created_at, rotated_from)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    key.id.as_str(),
                    key.tenant_id.as_ref().map(TenantId::as_str),
                    key.name,
                    key.prefix,
                    &key.hash[..],
                    scopes,
                    key.subject.as_ref().map(|s| s.as_str()),
                    key.expires_at.map(Timestamp::micros),
                    key.revoked_at.map(Timestamp::micros),
                    key.created_at.micros(),
                    key.rotated_from.as_ref().map(KeyId::as_str),
                ],
            )
            .map_err(StoreError::from_sqlite)?;
            Ok(())
        })
        .await
    }

    async fn initialize(&self, operator_key: ApiKeyRecord) -> Result<bool, StoreError> {
        if self.is_initialized().await? {
            return Ok(false);
        }
        let marked = self
            .admin(|conn, _, _| {
                Ok(conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('initialized', 1)", [])?)
            })
            .await?;
        if marked == 0 {
            return Ok(false);
        }
        self.insert_api_key(operator_key).await?;
        Ok(true)
    }

    async fn api_key_by_hash(&self, hash: [u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE hash = ?1");
            let row = conn.prepare_cached(&sql)?.query_row([&hash[..]], api_key_from_row).optional()?;
            Ok(row.transpose()?.map(|(_, k)| k))
        })
        .await
    }

    async fn api_key(&self, id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?1");
            let row = conn.prepare_cached(&sql)?.query_row([id.as_str()], api_key_from_row).optional()?;
            Ok(row.transpose()?.map(|(_, k)| k))
        })
        .await
    }

    async fn api_keys(&self, tenant: Option<&TenantId>, page: Page) -> Result<Vec<(i64, ApiKeyRecord)>, StoreError> {
        let tenant = tenant.cloned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id IS ?1 AND seq > ?2 ORDER BY seq LIMIT {}",
                page.limit
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![tenant.as_ref().map(TenantId::as_str), page.after.unwrap_or(0)], api_key_from_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn retire_api_key(&self, id: &KeyId, at: Timestamp, revoke: bool) -> Result<(), StoreError> {
        let id = id.clone();
        self.admin(move |conn, _, _| {
            if revoke {
                conn.execute(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                    params![id.as_str(), at.micros()],
                )?;
            } else {
                conn.execute(
                    "UPDATE api_keys SET expires_at = MIN(COALESCE(expires_at, ?2), ?2) WHERE id = ?1",
                    params![id.as_str(), at.micros()],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn touch_api_keys(&self, used: Vec<(KeyId, Timestamp)>) -> Result<(), StoreError> {
        self.admin(move |conn, _, _| {
            let mut stmt = conn.prepare_cached(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE id = ?1",
            )?;
            for (id, at) in &used {
                stmt.execute(params![id.as_str(), at.micros()])?;
            }
            Ok(())
        })
        .await
    }

    async fn authority_keys(&self) -> Result<Vec<AuthorityKeyRecord>, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {AUTHORITY_KEY_COLUMNS} FROM authority_keys ORDER BY created_at, seq");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([], authority_key_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn rotate_authority_key(&self, new: AuthorityKeyRecord) -> Result<(), StoreError> {
        // One admin operation: the insert and the supersession commit together or not at all.
        self.admin(move |conn, _, _| {
            conn.execute(
                "INSERT INTO authority_keys (kid, algorithm, public_key, sealed_private_key, created_at, superseded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    new.kid,
                    new.algorithm,
                    new.public_key,
                    new.sealed_private_key,
                    new.created_at.micros(),
                    new.superseded_at.map(Timestamp::micros),
                ],
            )
            .map_err(StoreError::from_sqlite)?;
            conn.execute(
                "UPDATE authority_keys SET superseded_at = ?1 WHERE superseded_at IS NULL AND kid <> ?2",
                params![new.created_at.micros(), new.kid],
            )?;
            Ok(())
        })
        .await
    }

    async fn insert_identity_provider(&self, provider: IdentityProviderRecord) -> Result<(), StoreError> {
        self.admin(move |conn, _, _| {
            conn.execute(
                "INSERT INTO identity_providers (id, tenant_id, issuer, jwks_uri, audiences, algorithms, subject_claim,
                   scope_claim, leeway_seconds, required_claims, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    provider.id.as_str(),
                    provider.tenant_id.as_str(),
                    provider.issuer,
                    provider.jwks_uri,
                    strings_json(&provider.audiences),
                    strings_json(&provider.algorithms),
                    provider.subject_claim,
                    provider.scope_claim,
                    i64::from(provider.leeway_seconds),
                    strings_json(&provider.required_claims),
                    provider.created_at.micros(),
                ],
            )
            .map_err(StoreError::from_sqlite)?;
            Ok(())
        })
        .await
    }

    async fn identity_provider(
        &self,
        tenant: &TenantId,
        id: &ProviderId,
    ) -> Result<Option<IdentityProviderRecord>, StoreError> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read(move |conn| {
            let sql =
                format!("SELECT {IDENTITY_PROVIDER_COLUMNS} FROM identity_providers WHERE id = ?1 AND tenant_id = ?2");
            let row = conn
                .prepare_cached(&sql)?
                .query_row([id.as_str(), tenant.as_str()], identity_provider_from_row)
                .optional()?;
            row.transpose()
        })
        .await
    }

    async fn identity_provider_by_issuer(&self, issuer: &str) -> Result<Option<IdentityProviderRecord>, StoreError> {
        let issuer = issuer.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {IDENTITY_PROVIDER_COLUMNS} FROM identity_providers WHERE issuer = ?1");
            let row = conn.prepare_cached(&sql)?.query_row([issuer.as_str()], identity_provider_from_row).optional()?;
            row.transpose()
        })
        .await
    }

    async fn identity_providers(&self, tenant: &TenantId) -> Result<Vec<IdentityProviderRecord>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {IDENTITY_PROVIDER_COLUMNS} FROM identity_providers WHERE tenant_id = ?1 ORDER BY created_at, seq"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([tenant.as_str()], identity_provider_from_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn delete_identity_provider(&self, tenant: &TenantId, id: &ProviderId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.admin(move |conn, _, _| {
            let deleted = conn.execute(
                "DELETE FROM identity_providers WHERE id = ?1 AND tenant_id = ?2",
                [id.as_str(), tenant.as_str()],
            )?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn insert_signing_key(&self, key: SigningKeyRecord) -> Result<(), StoreError> {
        self.admin(move |conn, _, _| {
            conn.execute(
                "INSERT INTO signing_keys (id, tenant_id, alg, sealed_secret, public_key, scopes, subject, created_at,
                   expires_at, revoked_at, rotated_from)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    key.id.as_str(),
                    key.tenant_id.as_str(),
                    key.alg,
                    key.sealed_secret,
                    key.public_key,
                    scopes_json(key.scopes),
                    key.subject.as_ref().map(|s| s.as_str()),
                    key.created_at.micros(),
                    key.expires_at.map(Timestamp::micros),
                    key.revoked_at.map(Timestamp::micros),
                    key.rotated_from.as_ref().map(SigningKeyId::as_str),
                ],
            )
            .map_err(StoreError::from_sqlite)?;
            Ok(())
        })
        .await
    }

    async fn signing_key(&self, id: &SigningKeyId) -> Result<Option<SigningKeyRecord>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let sql = format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE id = ?1");
            let row = conn.prepare_cached(&sql)?.query_row([id.as_str()], signing_key_from_row).optional()?;
            row.transpose()
        })
        .await
    }

    async fn signing_keys(&self, tenant: &TenantId) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let sql =
                format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE tenant_id = ?1 ORDER BY created_at, seq");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([tenant.as_str()], signing_key_from_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn retire_signing_key(&self, id: &SigningKeyId, at: Timestamp, revoke: bool) -> Result<(), StoreError> {
        let id = id.clone();
        self.admin(move |conn, _, _| {
            let sql = if revoke {
                "UPDATE signing_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1"
            } else {
                "UPDATE signing_keys SET expires_at = MIN(COALESCE(expires_at, ?2), ?2) WHERE id = ?1"
            };
            conn.execute(sql, params![id.as_str(), at.micros()])?;
            Ok(())
        })
        .await
    }

    async fn claim_nonce(
        &self,
        key: &SigningKeyId,
        nonce: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let (key, nonce) = (key.clone(), nonce.to_owned());
        // Through the writer: the embedded store has one writer, which serialises the claims.
        self.admin(move |conn, _, _| {
            // Inserted, or an expired row taken over: a fresh nonce. A live row is left alone: a replay.
            let claimed = conn
                .prepare_cached(
                    "INSERT INTO signing_nonces (key_id, nonce, expires_at) VALUES (?1, ?2, ?4)
                     ON CONFLICT (key_id, nonce) DO UPDATE SET expires_at = excluded.expires_at
                     WHERE signing_nonces.expires_at <= ?3",
                )?
                .execute(params![key.as_str(), nonce, now.micros(), expires_at.micros()])?
                > 0;
            conn.prepare_cached(
                "DELETE FROM signing_nonces WHERE (key_id, nonce) IN
                   (SELECT key_id, nonce FROM signing_nonces WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now.micros(), NONCE_PURGE_MAX])?;
            Ok(claimed)
        })
        .await
    }

    async fn claim_request(
        &self,
        scope: &str,
        key: &str,
        fingerprint: [u8; 32],
        now: Timestamp,
        stale_before: Timestamp,
    ) -> Result<RequestClaim, StoreError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.admin(move |conn, _, _| {
            // Keys have one scope per tenant: a key a ledger write used is taken. Claims and
            // ledger writes both run on the writer, one at a time, so this cannot race.
            if writer::ledger_key_used(conn, &scope, &key)? {
                return Ok(RequestClaim::UsedByLedger);
            }
            let claimed = conn
                .prepare_cached(
                    "INSERT INTO request_idempotency (scope, key, fingerprint, claimed_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (scope, key) DO UPDATE SET fingerprint = excluded.fingerprint, claimed_at = excluded.claimed_at
                     WHERE request_idempotency.status IS NULL AND request_idempotency.claimed_at < ?5",
                )?
                .execute(params![scope, key, &fingerprint[..], now.micros(), stale_before.micros()])?
                > 0;
            if claimed {
                return Ok(RequestClaim::Claimed);
            }
            let (stored, status, body): (Vec<u8>, Option<i64>, Option<String>) = conn
                .prepare_cached("SELECT fingerprint, status, body FROM request_idempotency WHERE scope = ?1 AND key = ?2")?
                .query_row(params![scope, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            crate::codec::request_claim(stored, status, body)
        })
        .await
    }

    async fn finish_request(&self, scope: &str, key: &str, response: Option<(u16, String)>) -> Result<(), StoreError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.admin(move |conn, _, _| {
            match response {
                Some((status, body)) => conn
                    .prepare_cached(
                        "UPDATE request_idempotency SET status = ?3, body = ?4 WHERE scope = ?1 AND key = ?2 AND status IS NULL",
                    )?
                    .execute(params![scope, key, status, body])?,
                None => conn
                    .prepare_cached("DELETE FROM request_idempotency WHERE scope = ?1 AND key = ?2 AND status IS NULL")?
                    .execute(params![scope, key])?,
            };
            Ok(())
        })
        .await
    }

    fn nonces_are_shared(&self) -> bool {
        false
    }

    async fn insert_client_ca(&self, ca: ClientCaRecord) -> Result<(), StoreError> {
        self.admin(move |conn, _, _| {
            conn.execute(
                "INSERT INTO client_cas (id, tenant_id, pem, fingerprint_sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    ca.id.as_str(),
                    ca.tenant_id.as_str(),
                    ca.pem,
                    ca.fingerprint_sha256.to_ascii_lowercase(),
                    ca.created_at.micros(),
                ],
            )
            .map_err(StoreError::from_sqlite)?;
            Ok(())
        })
        .await
    }

    async fn client_cas(&self, tenant: &TenantId) -> Result<Vec<ClientCaRecord>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let sql =
                format!("SELECT {CLIENT_CA_COLUMNS} FROM client_cas WHERE tenant_id = ?1 ORDER BY created_at, seq");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([tenant.as_str()], client_ca_from_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn delete_client_ca(&self, tenant: &TenantId, id: &ClientCaId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.admin(move |conn, _, _| {
            let deleted = conn
                .execute("DELETE FROM client_cas WHERE id = ?1 AND tenant_id = ?2", [id.as_str(), tenant.as_str()])?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn insert_client_identity(&self, identity: ClientIdentityRecord) -> Result<(), StoreError> {
        self.admin(move |conn, _, _| {
            conn.execute(
                "INSERT INTO client_identities (id, tenant_id, fingerprint_sha256, san_uri, san_dns, subject, scopes,
                   created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    identity.id.as_str(),
                    identity.tenant_id.as_str(),
                    identity.fingerprint_sha256.as_deref().map(str::to_ascii_lowercase),
                    identity.san_uri,
                    identity.san_dns,
                    identity.subject.as_ref().map(|s| s.as_str()),
                    scopes_json(identity.scopes),
                    identity.created_at.micros(),
                ],
            )
            .map_err(StoreError::from_sqlite)?;
            Ok(())
        })
        .await
    }

    async fn client_identities(&self, tenant: &TenantId) -> Result<Vec<ClientIdentityRecord>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {CLIENT_IDENTITY_COLUMNS} FROM client_identities WHERE tenant_id = ?1 ORDER BY created_at, seq"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([tenant.as_str()], client_identity_from_row)?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn delete_client_identity(&self, tenant: &TenantId, id: &ClientIdentityId) -> Result<bool, StoreError> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.admin(move |conn, _, _| {
            let deleted = conn.execute(
                "DELETE FROM client_identities WHERE id = ?1 AND tenant_id = ?2",
                [id.as_str(), tenant.as_str()],
            )?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn tenant_settings(&self, tenant: &TenantId) -> Result<TenantSettings, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let row = conn
                .prepare_cached("SELECT auth_methods, mtls_hostname FROM tenant_settings WHERE tenant_id = ?1")?
                .query_row([tenant.as_str()], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?)))
                .optional()?;
            let Some((auth_methods, mtls_hostname)) = row else { return Ok(TenantSettings::default()) };
            Ok(TenantSettings {
                auth_methods: auth_methods.map(|m| strings_from_json(&m, "tenant auth methods")).transpose()?,
                mtls_hostname,
            })
        })
        .await
    }

    async fn set_tenant_settings(&self, tenant: &TenantId, settings: TenantSettings) -> Result<(), StoreError> {
        let tenant = tenant.clone();
        self.admin(move |conn, _, _| {
            conn.execute(
                "INSERT INTO tenant_settings (tenant_id, auth_methods, mtls_hostname) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id) DO UPDATE
                 SET auth_methods = excluded.auth_methods, mtls_hostname = excluded.mtls_hostname",
                params![
                    tenant.as_str(),
                    settings.auth_methods.as_deref().map(strings_json),
                    settings.mtls_hostname.as_deref().map(str::to_ascii_lowercase),
                ],
            )
            .map_err(StoreError::from_sqlite)?;
            Ok(())
        })
        .await
    }

    async fn tenant_by_mtls_hostname(&self, hostname: &str) -> Result<Option<TenantId>, StoreError> {
        let hostname = hostname.to_ascii_lowercase();
        self.read(move |conn| {
            let tenant: Option<String> = conn
                .prepare_cached("SELECT tenant_id FROM tenant_settings WHERE mtls_hostname = ?1")?
                .query_row([hostname.as_str()], |r| r.get(0))
                .optional()?;
            tenant.as_deref().map(TenantId::parse).transpose().map_err(crate::codec::corrupt("settings tenant"))
        })
        .await
    }

    async fn is_initialized(&self) -> Result<bool, StoreError> {
        self.read(|conn| {
            let found: Option<i64> =
                conn.query_row("SELECT 1 FROM meta WHERE key = 'initialized'", [], |r| r.get(0)).optional()?;
            Ok(found.is_some())
        })
        .await
    }

    async fn cursor_secret(&self) -> Result<[u8; 32], StoreError> {
        self.read(|conn| {
            let v: Vec<u8> = conn.query_row("SELECT value FROM meta WHERE key = 'cursor_secret'", [], |r| r.get(0))?;
            v.try_into().map_err(|_| StoreError::Corrupt("cursor secret length".into()))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.sync_failure.get() {
            return Err(StoreError::Unavailable(reason.clone()));
        }
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(drop)?)).await
    }

    async fn shutdown(&self) {
        drop(self.writer.lock().take());
        let thread = self.writer_thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // The last commit is done: another store may now open the directory.
        drop(self.lock.lock().take());
    }
}
