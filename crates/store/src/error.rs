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
}

impl StoreError {
    /// Whether the caller should be told to retry later (503) rather than see a 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Closed => true,
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
