//! `medgate bench --scale` on small sizes: the entries it writes in bulk through the gateway's
//! ledger writer make a ledger that `ledger verify` accepts (in the bench, and the command on
//! the stopped store), of exactly the sizes asked, and the gateway's indexes serve them: the
//! audited patient's AuditEvent search finds every one of its entries, and the ITI-67 walk
//! every stored document (the bench fails otherwise). No figure is asserted.

#![allow(clippy::unwrap_used, reason = "test")]

mod support;

#[test]
fn bulk_written_ledger_verifies_and_its_indexes_answer() {
    let (report, _) = support::bench_report(&["--scale", "1500,4000", "--scale-documents", "12", "--size", "512"]);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    let walks = report["search_walks"].as_u64().unwrap();
    for (step, size) in steps.iter().zip([1500u64, 4000]) {
        // Grown to the size asked; then each page of the ITI-67 walks is one more entry.
        let searches = walks * step["search_pages_per_walk"].as_u64().unwrap();
        assert_eq!(step["ledger_entries"].as_u64().unwrap(), size + searches, "{step}");
        assert!(step["blocks"].as_u64().unwrap() * report["batch_max_entries"].as_u64().unwrap() >= size, "{step}");
        assert_eq!(step["audit_pages_per_walk"].as_u64().unwrap(), 3, "240 audited entries, 100 a page: {step}");
        // The peak is the kernel's high-water mark, reset at the step's start; a kernel that
        // refuses the reset gives null, never a made-up figure.
        match &step["peak_rss_mib"] {
            serde_json::Value::Null => {}
            peak => assert!(peak.as_f64().is_some_and(|m| m > 1.0), "peak resident memory of a running gateway: {step}"),
        }
    }
    let command = report["verify_command_output"].as_str().unwrap();
    assert!(command.starts_with("ledger OK") && command.contains(&format!("{} entries", steps[1]["ledger_entries"])), "{command}");
    assert!(report["verify_command_seconds"].is_number(), "{report}");
}
