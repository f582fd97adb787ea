//! `medgate bench` on a small load: its JSON report carries, for every level, the rate, the
//! same-run ceilings and the CPU each record cost, and the figures agree with
//! what one ITI-65 request is (two data keys wrapped, one per DocumentReference and
//! SubmissionSet). No speed is asserted.

#![allow(clippy::unwrap_used, reason = "test")]

mod support;

#[test]
fn every_level_reports_its_rate_its_ceilings_and_its_cpu_per_record() {
    let (report, stderr) = support::bench_report(&["--records", "30", "--concurrency", "1,4", "--ceiling-seconds", "0.05"]);
    assert!(report["wrap_ceiling"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    let levels = report["levels"].as_array().unwrap();
    assert_eq!(levels.iter().map(|l| l["concurrency"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 4]);
    for l in levels {
        let f = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {l}"));
        assert!(f("records_per_s") > 0.0 && f("null_per_s") > 0.0 && f("store_per_s") > 0.0, "{l}");
        assert_eq!(f("wraps_per_record"), 2.0, "a data key for the document and one for its SubmissionSet: {l}");
        // getrusage over the level: the gateway's records cost more CPU than the null
        // endpoint's empty answers, which still cost the generator, TLS and HTTP something.
        assert!(f("null_cpu_us_per_request") > 0.0, "{l}");
        assert!(f("cpu_us_per_record") > f("null_cpu_us_per_request"), "{l}");
    }
    // A progress line per level on standard error, with its CPU per record.
    assert_eq!(stderr.matches("CPU µs each").count(), 2, "{stderr}");
}
