//! The gateway's one sled database.

use std::path::Path;

use crate::StoreError;

/// sled's page cache, as sled counts it (the size each page takes in its log, rounded up to a
/// power of two); the leaves it holds take more in memory, and the accesses it has not yet counted
/// keep more leaves beside it. With a million ledger entries a 32 MiB cache left the gateway at
/// 211–240 MiB resident, 64 MiB at 264; ingest into a vault of a million records ran within 3 %
/// of the rate with either (tests/benches/README.md).
const CACHE_BYTES: u64 = 32 << 20;

/// Hands this thread's deferred frees to sled's epoch collector and collects what is due.
///
/// sled replaces its 512 KiB log buffer at every flush and frees the old one through
/// crossbeam-epoch, which keeps up to 64 deferred frees in a bag per thread and publishes the bag
/// only when it is full or the thread ends. Flushes run on tokio's blocking threads, so every one
/// of them could hold up to 32 MiB of dead log buffers: the gateway's resident memory grew by
/// hundreds of MiB under load while its live data stayed small. Publishing the bag after each
/// flush lets the buffers go as soon as no reader can still see them.
pub(crate) fn release_deferred() {
    crossbeam_epoch::pin().flush();
}

/// The gateway's database (`<state_directory>/medgate.sled`). Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Db(pub(crate) sled::Db);

impl Db {
    /// Opens (creating) the database under `dir`. Fails when another process holds it.
    pub fn open(dir: &Path) -> Result<Db, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Storage(format!("{}: {e}", dir.display())))?;
        sled::Config::new()
            .path(dir.join("medgate.sled"))
            .mode(sled::Mode::HighThroughput)
            // sled caches up to 1 GiB by default: bound it, so the gateway's resident memory stays
            // small however large the vault grows (records are read by id, rarely twice).
            .cache_capacity(CACHE_BYTES)
            .open()
            .map(Db)
            .map_err(|e| StoreError::Storage(format!("{}: {e}", dir.join("medgate.sled").display())))
    }

    /// Opens the database under `dir` again after this process dropped its handle (unit tests
    /// of durability). sled lets go of its file lock only once the last of its I/O tasks and of
    /// its deferred frees has dropped its reference, which can be just after the handle is
    /// gone: until then an open meets this process's own lock. Waits for that release, driving
    /// the deferred frees, for at most 30 s.
    #[cfg(test)]
    pub(crate) fn reopen(dir: &Path) -> Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Db::open(dir) {
                Ok(db) => return db,
                Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                    release_deferred();
                    // Polls the lock itself: what holds it is a thread of this process finishing.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => panic!("reopening {}: {e}", dir.display()),
            }
        }
    }

    /// A throwaway database that lives in memory (unit tests of the layers above).
    pub fn temporary() -> Result<Db, StoreError> {
        Ok(Db(sled::Config::new().temporary(true).open()?))
    }

    /// Flushes to disk without blocking the async runtime.
    ///
    /// sled 0.34's `flush_async` deadlocks when several flushes run at once (sled issue 1308:
    /// every sled I/O thread waits in `make_stable` and no future is ever woken; seen under the
    /// load generator in a release build). A blocking `flush` on tokio's blocking pool does not.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.0.clone();
        match tokio::task::spawn_blocking(move || {
            let r = db.flush();
            release_deferred();
            r
        })
        .await
        {
            Ok(r) => r.map(|_| ()).map_err(StoreError::from),
            Err(e) => Err(StoreError::Storage(format!("flush task: {e}"))),
        }
    }

    /// Flushes to disk from a blocking thread.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let r = self.0.flush();
        release_deferred();
        r?;
        Ok(())
    }

    /// A small flushed write (`/readyz`, the watchdog): catches a full or read-only disk.
    pub fn check_writable(&self, now: &str) -> Result<(), StoreError> {
        self.0.open_tree("health")?.insert(b"last_check", now.as_bytes())?;
        self.flush_blocking()
    }
}
