//! `medgate audit keys`: the key events of one hospital as its ledger copy records them, each
//! with the officers who approved it, and the officer rules re-checked over the whole chain
//! (`medgate_ledger::officers::audit`): approvals that do not verify, operations without their
//! quorum, requests used twice. Reads the store: stop the gateway first (the journal's view,
//! with the gateway running, is `medgate keys history`).

use std::path::Path;

use medgate_ledger::{Entry, EntryBody};
use serde_json::{json, Value};

use crate::exit::Failure;

/// The hospital's entries in ledger order, from valid batches only.
fn entries(state_dir: &Path, hospital: &str) -> Result<Vec<Entry>, Failure> {
    let db = medgate_store::Db::open(state_dir)
        .map_err(|e| Failure::runtime(format!("{e} (stop the gateway first, or read the journal with `medgate keys history`)")))?;
    let store = medgate_store::ChainStore::open(&db).map_err(|e| Failure::runtime(e.to_string()))?;
    let mut out = Vec::new();
    for block in store.blocks() {
        let block = block.map_err(|e| Failure::runtime(e.to_string()))?;
        for (batch, valid) in block.batches.into_iter().zip(block.valid) {
            if valid && batch.gateway == hospital {
                out.extend(batch.entries);
            }
        }
    }
    Ok(out)
}

/// The report as JSON: the key events with their approvers, the officers, the problems.
pub fn report(state_dir: &Path, hospital: &str, role: Option<&str>) -> Result<Value, Failure> {
    let entries = entries(state_dir, hospital)?;
    let audit = medgate_ledger::officers::audit(&entries);
    let mut approvers: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for e in &entries {
        if let EntryBody::KeyApproval { request, officer, .. } = &e.body {
            approvers.entry(request).or_default().push(officer);
        }
    }
    let events: Vec<Value> = entries
        .iter()
        .filter_map(|e| match &e.body {
            EntryBody::KeyEvent { action, key_role, key_version, key_id, officer, request } if role.is_none_or(|r| r == key_role) => Some(json!({
                "time": e.time, "entry": e.id, "action": action, "role": key_role, "version": key_version,
                "key_id": key_id, "officer": officer, "request": request,
                "approved_by": request.as_deref().and_then(|r| approvers.get(r)).cloned().unwrap_or_default(),
            })),
            EntryBody::OfficerChanged { action, officer, quorum, request, .. } if role.is_none() => Some(json!({
                "time": e.time, "entry": e.id, "action": format!("officer-{action}"), "role": "officers", "version": quorum,
                "key_id": officer, "officer": approvers.get(request.as_str()).map(|v| v.join("+")).unwrap_or_default(), "request": request,
                "approved_by": approvers.get(request.as_str()).cloned().unwrap_or_default(),
            })),
            _ => None,
        })
        .collect();
    Ok(json!({
        "hospital": hospital,
        "officers": {
            "quorum": audit.officers.quorum,
            "names": audit.officers.officers.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
        },
        "events": events,
        "approvals_checked": audit.approvals,
        "problems": audit.problems.iter().map(|(entry, why)| json!({"entry": entry, "problem": why})).collect::<Vec<_>>(),
    }))
}

/// Prints the report as a table.
pub fn print(v: &Value) {
    let officers = &v["officers"];
    let names: Vec<&str> = officers["names"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    println!("hospital {}: officers {} (quorum {})", v["hospital"].as_str().unwrap_or(""), if names.is_empty() { "none".to_owned() } else { names.join(", ") }, officers["quorum"]);
    println!("{:<28} {:<10} {:>3}  {:<16} {:<24} REQUEST", "TIME", "ROLE", "VER", "ACTION", "OFFICERS");
    for e in v["events"].as_array().into_iter().flatten() {
        let request = e["request"].as_str().map_or("-".to_owned(), |r| r.chars().take(16).collect());
        println!(
            "{:<28} {:<10} {:>3}  {:<16} {:<24} {}",
            e["time"].as_str().unwrap_or(""),
            e["role"].as_str().unwrap_or(""),
            e["version"],
            e["action"].as_str().unwrap_or(""),
            e["officer"].as_str().unwrap_or(""),
            request
        );
    }
    let problems = v["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        println!("officer rules: kept ({} approvals checked)", v["approvals_checked"]);
    }
    for p in &problems {
        println!("PROBLEM entry {}: {}", p["entry"].as_str().unwrap_or(""), p["problem"].as_str().unwrap_or(""));
    }
}
