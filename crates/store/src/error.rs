//! The store's one error type. Ledger refusals are not errors; these are infrastructure faults.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is not answering in time: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down and accepts no more writes.
    #[error("store is shutting down")]
    Closed,
    /// A unique constraint was hit (for example a duplicate id).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be read back: a bug or corruption, never user input.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The ledger core refused the state it was handed (a store bug).
    #[error("ledger decision failed: {0}")]
    Decide(#[from] licenseseal_ledger::DecideError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A database error that retrying will not fix (a bug, or a schema problem).
    #[error("database: {0}")]
    Database(String),
    /// A conflict with a concurrent transaction (serialization failure, deadlock, or a
    /// duplicate written by another instance): the batch is retried.
    #[error("concurrent conflict: {0}")]
    Contention(String),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No database answer: the connection is gone or the server unreachable.
            return StoreError::Unavailable(e.to_string());
        };
        use tokio_postgres::error::SqlState;
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            StoreError::Conflict(db.message().to_owned())
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
            StoreError::Contention(db.message().to_owned())
        } else if *code == SqlState::QUERY_CANCELED
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || code.code().starts_with("08")
        {
            StoreError::Unavailable(db.message().to_owned())
        } else {
            StoreError::Database(format!("{}: {}", code.code(), db.message()))
        }
    }
}

impl StoreError {
    /// SQLite errors, with unique-constraint violations told apart as `Conflict`.
    pub(crate) fn from_sqlite(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, msg) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                StoreError::Conflict(msg.clone().unwrap_or_else(|| f.to_string()))
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

impl StoreError {
    /// Whether the caller should be told to retry later (503) rather than see a 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Closed | StoreError::Contention(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }
}
