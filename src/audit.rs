//! Audit reviews an operator runs: `medgate audit break-glass` lists every read granted without
//! consent as break-glass, on any gateway of the consortium, for the privacy officer's review;
//! `medgate audit keys` lists the hospital's key events with the officers who approved them
//! ([`keys`]). Only pseudonyms, hospital ids, record ids, officer names and codes are shown.

use std::path::Path;

use medgate_gateway::gateway::break_glass_json;

use crate::exit::Failure;

pub mod keys;

/// `medgate audit break-glass`: asks the running gateway on its admin socket; when it is not
/// running, reads the store directly.
pub fn break_glass(config: &Path, as_json: bool) -> Result<(), Failure> {
    let socket = crate::admin_client::socket_of(config).map_err(Failure::config)?;
    let value: serde_json::Value = match crate::admin_client::get(&socket, "/audit/break-glass") {
        Ok((200, body)) => serde_json::from_str(&body).map_err(|e| Failure::runtime(format!("admin socket: {e}")))?,
        Ok((status, body)) => return Err(Failure::runtime(format!("refused ({status}): {}", body.trim()))),
        Err(_) => {
            let cfg = medgate_gateway::config::Config::load(config).map_err(|e| Failure::config(e.to_string()))?;
            let db = medgate_store::Db::open(&cfg.gateway.state_directory).map_err(|e| Failure::runtime(e.to_string()))?;
            let store = medgate_store::ChainStore::open(&db).map_err(|e| Failure::runtime(e.to_string()))?;
            break_glass_json(&store.break_glass_reads().map_err(|e| Failure::runtime(e.to_string()))?)
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&value).map_err(|e| Failure::runtime(e.to_string()))?);
        return Ok(());
    }
    let items = value["break_glass_reads"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no break-glass reads on the ledger");
        return Ok(());
    }
    println!("{:<32} {:<14} {:<14} {:<34} {:<20} USER (pseudonym)", "TIME", "READER", "CUSTODIAN", "RECORD", "ROLE");
    for i in &items {
        println!(
            "{:<32} {:<14} {:<14} {:<34} {:<20} {}",
            i["time"].as_str().unwrap_or(""),
            i["reader"].as_str().unwrap_or(""),
            i["custodian"].as_str().unwrap_or(""),
            i["record"].as_str().unwrap_or(""),
            i["role"].as_str().unwrap_or(""),
            i["user"].as_str().unwrap_or("").chars().take(16).collect::<String>(),
        );
    }
    println!("{} break-glass read(s) to review", items.len());
    Ok(())
}

/// `medgate audit keys`: the hospital's key events and their approvals from the ledger copy.
pub fn key_events(config: &Path, role: Option<&str>, as_json: bool) -> Result<(), Failure> {
    let cfg = medgate_gateway::config::Config::load(config).map_err(|e| Failure::config(e.to_string()))?;
    let v = keys::report(&cfg.gateway.state_directory, &cfg.gateway.hospital_id, role)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Failure::runtime(e.to_string()))?);
    } else {
        keys::print(&v);
    }
    if v["problems"].as_array().is_some_and(|p| !p.is_empty()) {
        return Err(Failure::runtime("the ledger records key operations that break the officer rules (listed above)"));
    }
    Ok(())
}
