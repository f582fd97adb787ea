//! `medgate bench --prefill N`: fills the vault with N records before the levels, so that
//! ingest is measured with a store that already holds them. The records are written straight
//! to the store (no HTTP, no HSM, no ledger), in transactions of a few thousand with one flush
//! each: shaped and sized as the gateway seals a document of the bench's size (base64
//! ciphertext, nonce, wrapped key, sealed metadata, index row), with random bytes where the
//! ciphertext goes. They cannot be decrypted (their data keys were never wrapped by this HSM)
//! and no ledger entry anchors them; ingest never reads them.

use std::path::Path;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use medgate_store::vault::{StoredRecord, Vault, Write};
use medgate_store::Db;
use ring::rand::{SecureRandom, SystemRandom};

use crate::exit::Failure;

/// Records per transaction (and flush).
const CHUNK: usize = 5000;

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    let _ = SystemRandom::new().fill(&mut b);
    b
}

/// A record shaped like a sealed `size`-byte document of patient `pseudonym`.
fn sealed(size: usize, pseudonym: &str, ciphertext: &str) -> StoredRecord {
    StoredRecord {
        id: hex::encode(random(16)),
        created: medgate_gateway::clock::now_rfc3339(),
        custodian: "hospital-bench".into(),
        patient_pseudonym: pseudonym.to_owned(),
        pseudonym_key_version: 1,
        content_type: "application/pdf".into(),
        size: size as u64,
        content_hash: hex::encode(random(32)),
        kek_version: 1,
        wrapped_key: B64.encode(random(61)),
        doc_nonce: B64.encode(random(12)),
        doc_ct: ciphertext.to_owned(),
        meta_nonce: B64.encode(random(12)),
        meta_ct: B64.encode(random(700)),
        entry_id: hex::encode(random(32)),
        erased: None,
        changes: Vec::new(),
    }
}

/// Writes `n` records of `size`-byte documents into the store under `state_dir`, over
/// `patients` patients; prints its progress and rate on standard error.
pub async fn prefill(state_dir: &Path, n: usize, size: usize, patients: usize) -> Result<(), Failure> {
    let db = Db::open(state_dir).map_err(|e| Failure::runtime(e.to_string()))?;
    let vault = Vault::open(&db).map_err(|e| Failure::runtime(e.to_string()))?;
    let pseudonyms: Vec<String> = (0..patients.max(1)).map(|_| hex::encode(random(32))).collect();
    // One random ciphertext per chunk: the bytes differ from chunk to chunk, the size is exact.
    let started = Instant::now();
    let mut written = 0;
    while written < n {
        let ciphertext = B64.encode(random(size + 16));
        let k = CHUNK.min(n - written);
        let records: Vec<StoredRecord> = (0..k).map(|i| sealed(size, &pseudonyms[(written + i) % pseudonyms.len()], &ciphertext)).collect();
        vault.store(&Write { records, ..Write::default() }).await.map_err(|e| Failure::runtime(e.to_string()))?;
        written += k;
        if written % (CHUNK * 20) == 0 || written == n {
            eprintln!("medgate bench: prefilled {written} of {n} records ({:.0}/s)", written as f64 / started.elapsed().as_secs_f64());
        }
    }
    db.flush().await.map_err(|e| Failure::runtime(e.to_string()))?;
    Ok(())
}
