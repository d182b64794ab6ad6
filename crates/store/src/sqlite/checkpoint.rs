//! The checkpointer: copies committed WAL frames back into the database file from a thread of
//! its own, so that the writer does not stall on it.
//!
//! Copying and the two fsyncs of a checkpoint (WAL before, database after) used to happen on
//! the writer thread, inside the COMMIT that crossed SQLite's auto-checkpoint threshold: about
//! a third of the writer's time under load (BENCHMARKS.md). Here a second connection runs
//! `PASSIVE` checkpoints, which never block the writer or readers. They cannot by themselves
//! let the WAL start over, though: a busy writer keeps appending while they copy, so the WAL
//! is never fully copied when the next write begins. So once the WAL is long, the checkpointer
//! asks the writer to finish: between two batches the writer runs one `PASSIVE` checkpoint of
//! its own, which copies only the few frames appended since, and its next transaction then
//! rewinds the WAL to the start.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::writer::SyncFailure;
use crate::StoreError;

/// How often the checkpointer looks for new frames to copy.
const INTERVAL: Duration = Duration::from_millis(20);

/// Handle held by the writer; dropping it stops the thread.
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    restart_wanted: Arc<AtomicBool>,
    failure: SyncFailure,
}

impl Checkpointer {
    /// Starts checkpointing the database at `db_path`; asks the writer to let the WAL start
    /// over once it holds `restart_pages` frames or more.
    ///
    /// After a failed sync of the WAL (`failure`) it copies nothing more: the kernel may have
    /// dropped pages of the WAL, and only a restart, which checks the WAL, may use it again.
    pub(crate) fn start(db_path: &Path, restart_pages: u32, failure: SyncFailure) -> Result<Self, StoreError> {
        let conn = Connection::open(db_path)?;
        super::schema::configure(&conn)?;
        let restart_wanted = Arc::new(AtomicBool::new(false));
        let wanted = restart_wanted.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let stopped_by_failure = failure.clone();
        let thread = std::thread::Builder::new()
            .name("licenseseal-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    match stopped.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if stopped_by_failure.get().is_some() {
                        return;
                    }
                    match passive_checkpoint(&conn) {
                        Ok(frames) => {
                            failing = false;
                            if frames >= i64::from(restart_pages) {
                                wanted.store(true, Ordering::Release);
                            }
                        }
                        // The next round tries again (a checkpoint changes nothing that is
                        // committed); said once, not every round.
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "store: background checkpoint failed");
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread), restart_wanted, failure })
    }

    /// Called by the writer between batches: if the WAL is long, copies what is left of it so
    /// that the next write transaction starts the WAL over.
    pub(crate) fn finish_if_wanted(&self, conn: &Connection) {
        if self.restart_wanted.swap(false, Ordering::AcqRel) && self.failure.get().is_none() {
            if let Err(e) = passive_checkpoint(conn) {
                tracing::warn!(error = %e, "store: checkpoint before restarting the WAL failed");
            }
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs a `PASSIVE` checkpoint and returns the number of frames in the WAL.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_len(db: &Path) -> u64 {
        std::fs::metadata(super::super::writer::wal_path(db)).map_or(0, |m| m.len())
    }

    /// Writes `rounds` transactions of 40 random-ish rows, calling `between` after each.
    fn write_load(conn: &Connection, rounds: usize, between: impl Fn(&Connection)) {
        for round in 0..rounds {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            for i in 0..40 {
                let k = (round * 7919 + i * 104_729) % 1_000_003;
                conn.execute("INSERT OR REPLACE INTO t (k, v) VALUES (?1, zeroblob(200))", [k as i64]).unwrap();
            }
            conn.execute_batch("COMMIT").unwrap();
            between(conn);
        }
    }

    fn writer_connection(db: &Path) -> Connection {
        let conn = Connection::open(db).unwrap();
        super::super::schema::configure(&conn).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB)").unwrap();
        conn
    }

    /// Runs 300 write transactions beside a checkpointer and returns the WAL's final size.
    fn wal_after_load(writer_finishes: bool) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        let conn = writer_connection(&db);
        let checkpointer = Checkpointer::start(&db, 200, SyncFailure::default()).unwrap();
        write_load(&conn, 300, |c| {
            std::thread::sleep(Duration::from_millis(1));
            if writer_finishes {
                checkpointer.finish_if_wanted(c);
            }
        });
        let len = wal_len(&db);
        // Everything written is in the database, and nothing is left uncopied that could be.
        drop(checkpointer);
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 300 * 40);
        let (_, log, copied): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        assert_eq!(log, copied);
        len
    }

    #[test]
    fn under_continuous_writes_the_wal_starts_over_only_when_the_writer_finishes() {
        // Background checkpoints alone seldom let the WAL start over (only when one happens to
        // finish between two writes): it grows. With the writer finishing when asked, it is
        // rewound and overwritten in place.
        let grown = wal_after_load(false);
        let bounded = wal_after_load(true);
        assert!(bounded < 8 << 20, "the WAL started over: {bounded} bytes");
        assert!(grown > 3 * bounded, "without the writer's part the WAL grows: {grown} against {bounded} bytes");
    }

    #[test]
    fn after_a_failed_sync_nothing_more_is_copied_into_the_database() {
        let db_len_after = |failed: bool| {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("f.db");
            let conn = writer_connection(&db);
            let before = std::fs::metadata(&db).unwrap().len();
            let failure = SyncFailure::default();
            if failed {
                failure.set("the write-ahead log could not be synced: EIO".into()).unwrap();
            }
            let checkpointer = Checkpointer::start(&db, 1, failure).unwrap();
            write_load(&conn, 20, |c| checkpointer.finish_if_wanted(c));
            std::thread::sleep(Duration::from_millis(200));
            checkpointer.finish_if_wanted(&conn);
            drop(checkpointer);
            (before, std::fs::metadata(&db).unwrap().len())
        };
        let (before, after) = db_len_after(true);
        assert_eq!(before, after, "nothing was copied from the WAL after the failure");
        let (before, after) = db_len_after(false);
        assert!(after > before, "without a failure the pages reach the database: {before} → {after}");
    }
}
