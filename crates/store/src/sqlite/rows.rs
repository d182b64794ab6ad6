//! Mapping between rows and domain values, shared by the writer and the readers.

use licenseseal_ledger::{
    AccountKey, AccountPolicy, AccountState, ClientCaId, ClientIdentityId, Event, EventId, KeyId, Lot, ProviderId,
    SigningKeyId, SubjectId, TenantId, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

pub(crate) use crate::codec::event_from_row;
use crate::codec::{corrupt, event_body, scopes_from_json, strings_from_json};
use crate::{
    ApiKeyRecord, AuthorityKeyRecord, ClientCaRecord, ClientIdentityRecord, IdentityProviderRecord, SigningKeyRecord,
    StoreError,
};

pub fn ts(micros: Option<i64>) -> Option<Timestamp> {
    micros.map(Timestamp::from_micros)
}

pub fn insert_event(conn: &Connection, event: &Event) -> Result<i64, StoreError> {
    let body = event_body(event)?;
    let tenant = event.tenant_id.as_ref().ok_or_else(|| StoreError::Corrupt("event without tenant".into()))?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO events (id, tenant_id, subject, credit_type, kind, amount, delta, balance_after, created_at, refund_of, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    stmt.execute(params![
        event.id.as_str(),
        tenant.as_str(),
        event.subject.as_str(),
        event.credit_type.as_str(),
        event.kind.as_str(),
        event.amount as i64,
        event.delta,
        event.balance_after,
        event.created_at.micros(),
        event.refund_of.as_ref().map(EventId::as_str),
        body,
    ])?;
    Ok(conn.last_insert_rowid())
}

pub fn load_event(conn: &Connection, tenant: &TenantId, id: &EventId) -> Result<Option<Event>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT tenant_id, body FROM events WHERE id = ?1 AND tenant_id = ?2")?;
    let row = stmt
        .query_row(params![id.as_str(), tenant.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .optional()?;
    row.map(|(t, b)| event_from_row(&t, &b)).transpose()
}

/// Loads an account's balance, policy and live lots; `None` if it has never been used.
pub fn load_account(conn: &Connection, key: &AccountKey) -> Result<Option<(AccountState, Timestamp)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT balance, held, overdraft_limit, max_debit_amount, updated_at FROM accounts
         WHERE tenant_id = ?1 AND subject = ?2 AND credit_type = ?3",
    )?;
    let k = params![key.tenant_id.as_str(), key.subject.as_str(), key.credit_type.as_str()];
    let head = stmt
        .query_row(k, |r| {
            Ok((
                AccountState {
                    balance: r.get(0)?,
                    held: r.get(1)?,
                    policy: AccountPolicy {
                        overdraft_limit: r.get::<_, i64>(2)? as u64,
                        max_debit_amount: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    },
                    lots: Vec::new(),
                },
                Timestamp::from_micros(r.get(4)?),
            ))
        })
        .optional()?;
    let Some((mut state, updated_at)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, priority, expires_at, created_at, remaining FROM lots
         WHERE tenant_id = ?1 AND subject = ?2 AND credit_type = ?3 AND remaining > 0",
    )?;
    let lots = stmt.query_map(k, lot_from_row)?;
    for lot in lots {
        state.lots.push(lot??);
    }
    Ok(Some((state, updated_at)))
}

fn lot_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Lot, StoreError>> {
    let id: String = r.get(0)?;
    Ok(EventId::parse(&id).map_err(corrupt("lot id")).map(|id| Lot {
        id,
        priority: r.get(1).unwrap_or_default(),
        expires_at: ts(r.get(2).unwrap_or_default()),
        created_at: Timestamp::from_micros(r.get(3).unwrap_or_default()),
        remaining: r.get::<_, i64>(4).unwrap_or_default() as u64,
    }))
}

/// Loads one lot by id (a refund may return credit to a drained lot).
pub fn load_lot(conn: &Connection, id: &EventId) -> Result<Option<Lot>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, priority, expires_at, created_at, remaining FROM lots WHERE id = ?1")?;
    stmt.query_row([id.as_str()], lot_from_row).optional()?.transpose()
}

pub const API_KEY_COLUMNS: &str =
    "seq, id, tenant_id, name, prefix, hash, scopes, subject, expires_at, revoked_at, created_at, last_used_at, rotated_from";

pub fn api_key_from_row(r: &Row<'_>) -> rusqlite::Result<Result<(i64, ApiKeyRecord), StoreError>> {
    let seq: i64 = r.get(0)?;
    let id: String = r.get(1)?;
    let tenant: Option<String> = r.get(2)?;
    let hash: Vec<u8> = r.get(5)?;
    let scopes: String = r.get(6)?;
    let subject: Option<String> = r.get(7)?;
    let rotated_from: Option<String> = r.get(12)?;
    let (name, prefix) = (r.get(3)?, r.get(4)?);
    let (expires_at, revoked_at, created_at, last_used_at) = (r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?);
    let build = || -> Result<(i64, ApiKeyRecord), StoreError> {
        Ok((
            seq,
            ApiKeyRecord {
                id: KeyId::parse(&id).map_err(corrupt("key id"))?,
                tenant_id: tenant.as_deref().map(TenantId::parse).transpose().map_err(corrupt("key tenant"))?,
                name,
                prefix,
                hash: hash.try_into().map_err(|_| StoreError::Corrupt("key hash length".into()))?,
                scopes: scopes_from_json(&scopes)?,
                subject: subject.as_deref().map(SubjectId::parse).transpose().map_err(corrupt("key subject"))?,
                expires_at: ts(expires_at),
                revoked_at: ts(revoked_at),
                created_at: Timestamp::from_micros(created_at),
                last_used_at: ts(last_used_at),
                rotated_from: rotated_from.as_deref().map(KeyId::parse).transpose().map_err(corrupt("rotated_from"))?,
            },
        ))
    };
    Ok(build())
}

pub const AUTHORITY_KEY_COLUMNS: &str = "kid, algorithm, public_key, sealed_private_key, created_at, superseded_at";

pub fn authority_key_from_row(r: &Row<'_>) -> rusqlite::Result<AuthorityKeyRecord> {
    Ok(AuthorityKeyRecord {
        kid: r.get(0)?,
        algorithm: r.get(1)?,
        public_key: r.get(2)?,
        sealed_private_key: r.get(3)?,
        created_at: Timestamp::from_micros(r.get(4)?),
        superseded_at: ts(r.get(5)?),
    })
}

pub const IDENTITY_PROVIDER_COLUMNS: &str = "id, tenant_id, issuer, jwks_uri, audiences, algorithms, subject_claim, \
     scope_claim, leeway_seconds, required_claims, created_at";

pub fn identity_provider_from_row(r: &Row<'_>) -> rusqlite::Result<Result<IdentityProviderRecord, StoreError>> {
    let id: String = r.get(0)?;
    let tenant: String = r.get(1)?;
    let (issuer, jwks_uri) = (r.get(2)?, r.get(3)?);
    let (audiences, algorithms): (String, String) = (r.get(4)?, r.get(5)?);
    let (subject_claim, scope_claim) = (r.get(6)?, r.get(7)?);
    let leeway_seconds: i64 = r.get(8)?;
    let required_claims: String = r.get(9)?;
    let created_at: i64 = r.get(10)?;
    let build = || -> Result<IdentityProviderRecord, StoreError> {
        Ok(IdentityProviderRecord {
            id: ProviderId::parse(&id).map_err(corrupt("provider id"))?,
            tenant_id: TenantId::parse(&tenant).map_err(corrupt("provider tenant"))?,
            issuer,
            jwks_uri,
            audiences: strings_from_json(&audiences, "provider audiences")?,
            algorithms: strings_from_json(&algorithms, "provider algorithms")?,
            subject_claim,
            scope_claim,
            leeway_seconds: u32::try_from(leeway_seconds)
                .map_err(|_| StoreError::Corrupt(format!("provider leeway {leeway_seconds}")))?,
            required_claims: strings_from_json(&required_claims, "provider required claims")?,
            created_at: Timestamp::from_micros(created_at),
        })
    };
    Ok(build())
}

pub const SIGNING_KEY_COLUMNS: &str = "id, tenant_id, alg, sealed_secret, public_key, scopes, subject, created_at, \
     expires_at, revoked_at, rotated_from";

pub fn signing_key_from_row(r: &Row<'_>) -> rusqlite::Result<Result<SigningKeyRecord, StoreError>> {
    let (id, tenant): (String, String) = (r.get(0)?, r.get(1)?);
    let alg: String = r.get(2)?;
    let (sealed_secret, public_key): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(3)?, r.get(4)?);
    let scopes: String = r.get(5)?;
    let subject: Option<String> = r.get(6)?;
    let (created_at, expires_at, revoked_at): (i64, Option<i64>, Option<i64>) = (r.get(7)?, r.get(8)?, r.get(9)?);
    let rotated_from: Option<String> = r.get(10)?;
    let build = || -> Result<SigningKeyRecord, StoreError> {
        Ok(SigningKeyRecord {
            id: SigningKeyId::parse(&id).map_err(corrupt("signing key id"))?,
            tenant_id: TenantId::parse(&tenant).map_err(corrupt("signing key tenant"))?,
            alg,
            sealed_secret,
            public_key,
            scopes: scopes_from_json(&scopes)?,
            subject: subject.as_deref().map(SubjectId::parse).transpose().map_err(corrupt("signing key subject"))?,
            created_at: Timestamp::from_micros(created_at),
            expires_at: ts(expires_at),
            revoked_at: ts(revoked_at),
            rotated_from: rotated_from
                .as_deref()
                .map(SigningKeyId::parse)
                .transpose()
                .map_err(corrupt("signing key rotated_from"))?,
        })
    };
    Ok(build())
}

pub const CLIENT_CA_COLUMNS: &str = "id, tenant_id, pem, fingerprint_sha256, created_at";

pub fn client_ca_from_row(r: &Row<'_>) -> rusqlite::Result<Result<ClientCaRecord, StoreError>> {
    let (id, tenant): (String, String) = (r.get(0)?, r.get(1)?);
    let (pem, fingerprint_sha256) = (r.get(2)?, r.get(3)?);
    let created_at: i64 = r.get(4)?;
    let build = || -> Result<ClientCaRecord, StoreError> {
        Ok(ClientCaRecord {
            id: ClientCaId::parse(&id).map_err(corrupt("client CA id"))?,
            tenant_id: TenantId::parse(&tenant).map_err(corrupt("client CA tenant"))?,
            pem,
            fingerprint_sha256,
            created_at: Timestamp::from_micros(created_at),
        })
    };
    Ok(build())
}

pub const CLIENT_IDENTITY_COLUMNS: &str =
    "id, tenant_id, fingerprint_sha256, san_uri, san_dns, subject, scopes, created_at";

pub fn client_identity_from_row(r: &Row<'_>) -> rusqlite::Result<Result<ClientIdentityRecord, StoreError>> {
    let (id, tenant): (String, String) = (r.get(0)?, r.get(1)?);
    let (fingerprint_sha256, san_uri, san_dns) = (r.get(2)?, r.get(3)?, r.get(4)?);
    let subject: Option<String> = r.get(5)?;
    let scopes: String = r.get(6)?;
    let created_at: i64 = r.get(7)?;
    let build = || -> Result<ClientIdentityRecord, StoreError> {
        Ok(ClientIdentityRecord {
            id: ClientIdentityId::parse(&id).map_err(corrupt("client identity id"))?,
            tenant_id: TenantId::parse(&tenant).map_err(corrupt("client identity tenant"))?,
            fingerprint_sha256,
            san_uri,
            san_dns,
            subject: subject
                .as_deref()
                .map(SubjectId::parse)
                .transpose()
                .map_err(corrupt("client identity subject"))?,
            scopes: scopes_from_json(&scopes)?,
            created_at: Timestamp::from_micros(created_at),
        })
    };
    Ok(build())
}
