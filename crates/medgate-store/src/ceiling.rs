//! The store's own write rate, for the benchmark that prints it beside the gateway's figures:
//! values the size of a sealed record written to a throwaway database in the same directory as
//! the gateway's, `per_flush` of them per flush (one sled batch, then one fsync), repeated for a
//! while. What the disk and sled allow with medgate doing nothing else.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::StoreError;

/// What [`write_flush_rate`] measured.
#[derive(Debug, Clone, Copy)]
pub struct WriteRate {
    /// Values written and flushed per second.
    pub values_per_second: f64,
    /// Flushes per second.
    pub flushes_per_second: f64,
}

/// Writes `per_flush` values of `value_size` bytes, then flushes, over and over for `duration`,
/// in a new database under `dir` (removed afterwards).
pub fn write_flush_rate(dir: &Path, value_size: usize, per_flush: usize, duration: Duration) -> Result<WriteRate, StoreError> {
    let tmp = dir.join(format!("store-ceiling-{}", std::process::id()));
    // The gateway's own configuration and flush, so that the ceiling is the store it runs on.
    let db = crate::Db::open(&tmp)?;
    let tree = db.0.open_tree("records")?;
    // Incompressible bytes, as ciphertext is.
    let mut value = vec![0u8; value_size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in value.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let (mut values, mut flushes) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < duration {
        let mut batch = sled::Batch::default();
        for _ in 0..per_flush.max(1) {
            value[..8].copy_from_slice(&values.to_be_bytes());
            batch.insert(&values.to_be_bytes(), value.as_slice());
            values += 1;
        }
        tree.apply_batch(batch)?;
        db.flush_blocking()?;
        flushes += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(WriteRate { values_per_second: values as f64 / secs, flushes_per_second: flushes as f64 / secs })
}
