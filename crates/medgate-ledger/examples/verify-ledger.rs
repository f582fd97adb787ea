//! An auditor's check of a medgate ledger with this crate alone: no HSM, no database, no network.
//!
//! ```text
//! cargo run -p medgate-ledger --example verify-ledger -- BLOCKS.jsonl --public-key ledger.pem \
//!     [--public-key other.pem ...] [--genesis genesis.json] [--receipt receipt.json]
//! ```
//!
//! `BLOCKS.jsonl` is what `medgate ledger export` writes: one block per line. The public keys are
//! the ledger keys the gateways' security officers exported (`medgate keys public-key --role
//! ledger`); only batches signed by them count. A consortium ledger is checked from its genesis
//! document. A receipt (as the HIS received it, or `medgate ledger proof` printed it) is checked
//! against the first public key. Exit status 0 when everything verifies, 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use medgate_ledger::keys::read_public_key;
use medgate_ledger::{check_receipt, verify_ledger, Block, LedgerError};

struct Args {
    blocks: PathBuf,
    keys: Vec<PathBuf>,
    genesis: Option<PathBuf>,
    receipt: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args_os().skip(1);
    let (mut blocks, mut keys, mut genesis, mut receipt) = (None, Vec::new(), None, None);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().map(PathBuf::from).ok_or(format!("{name} needs a file"));
        match a.to_str() {
            Some("--public-key") => keys.push(value("--public-key")?),
            Some("--genesis") => genesis = Some(value("--genesis")?),
            Some("--receipt") => receipt = Some(value("--receipt")?),
            Some(flag) if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            _ if blocks.is_none() => blocks = Some(PathBuf::from(a)),
            _ => return Err("one BLOCKS.jsonl file only".into()),
        }
    }
    let blocks = blocks.ok_or("usage: verify-ledger BLOCKS.jsonl --public-key KEY.pem [--genesis G.json] [--receipt R.json]")?;
    if keys.is_empty() {
        return Err("give at least one --public-key: the keys you trust".into());
    }
    Ok(Args { blocks, keys, genesis, receipt })
}

fn run() -> Result<(), String> {
    let a = args()?;
    let keys = a.keys.iter().map(|p| read_public_key(p).map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
    let text = std::fs::read_to_string(&a.blocks).map_err(|e| format!("{}: {e}", a.blocks.display()))?;
    let blocks: Vec<Result<Block, LedgerError>> = text.lines().filter(|l| !l.trim().is_empty()).map(|l| Block::from_bytes(l.as_bytes())).collect();
    let genesis = match &a.genesis {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    // An export carries no key table: every key comes from the trusted list (or the genesis).
    let none = |_: &str, _: u32| -> Option<Vec<u8>> { None };
    let report = verify_ledger(genesis.as_deref(), blocks.iter().cloned(), &none, &keys)
        .map_err(|e| format!("ledger verification FAILED at block {}: {e}", e.height()))?;
    let height = report.height.map_or("empty".to_owned(), |h| h.to_string());
    println!(
        "ledger OK: height {height}, {} blocks, {} batches ({} flagged invalid), {} entries, head {}",
        report.blocks, report.batches, report.invalid_batches, report.entries, report.head
    );
    if let Some(p) = &a.receipt {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let r = check_receipt(&bytes, &keys[0]).map_err(|e| format!("{}: {e}", p.display()))?;
        // The receipt's block must be the block this (verified) copy holds at that height.
        let held = blocks.get(r.height as usize).and_then(|b| b.as_ref().ok()).map(|b| hex_of(&b.hash()));
        if held.as_deref() != Some(r.block_hash.as_str()) {
            return Err(format!("{}: block {} of the receipt is not the block this ledger copy holds", p.display(), r.height));
        }
        println!("receipt OK: entry {} is leaf {} of batch {} signed by {}, in block {} ({})", r.entry.id, r.leaf_index, r.seq, r.gateway, r.height, r.block_hash);
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verify-ledger: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Lowercase hex, as block hashes are spelled in receipts.
fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
